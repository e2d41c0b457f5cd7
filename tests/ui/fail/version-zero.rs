// Versions start at 1.
use jobs_core::job;

#[job(version = 0)]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
