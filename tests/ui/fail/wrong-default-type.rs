// A default has the parameter's type; a mismatch is reported at the expression.
use jobs_core::job;

#[job(version = 2)]
async fn send_sms(user_id: u64, #[job(since = 2, default = 5)] locale: String) {
    let _ = (user_id, locale);
}

fn main() {}
