// A `version` that is not a number is reported once, with no knock-on error
// about `since` being above a version that could not be read.
use jobs_core::job;

#[job(version = "2")]
async fn send_sms(user_id: u64, #[job(since = 2, default)] locale: String) {
    let _ = (user_id, locale);
}

fn main() {}
