// Each option takes one kind of value; a missing or wrong one says which.
use jobs_core::job;

#[job(queue, version = "2", retries = 5000000000, name = send_sms, migrate = "upgrade")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
