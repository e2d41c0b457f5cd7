// A parameter cannot be newer than the job.
use jobs_core::job;

#[job(version = 2)]
async fn send_sms(user_id: u64, #[job(since = 3, default = "en".to_string())] locale: String) {
    let _ = (user_id, locale);
}

fn main() {}
