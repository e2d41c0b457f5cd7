// Every mistake of one item is reported in one build.
use jobs_core::job;

#[job(version = 2, queue = "", colour = "blue", timeout = "soon")]
fn send_sms(
    #[job(since = 3, default = 1)] user_id: u64,
    #[job(since = 2)] locale: String,
    #[job(defualt)] country: String,
) {
    let _ = (user_id, locale, country);
}

fn main() {}
