// A job returns `()` or a `Result` whose error converts into `JobError`.
use jobs_core::job;

#[job]
async fn send_sms(user_id: u64) -> String {
    format!("sent to {user_id}")
}

fn main() {}
