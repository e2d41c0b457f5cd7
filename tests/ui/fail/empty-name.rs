// A job name cannot be empty.
use jobs_core::job;

#[job(name = " ")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
