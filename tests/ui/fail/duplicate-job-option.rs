// An option given twice is reported at its second occurrence.
use jobs_core::job;

#[job(queue = "critical", retries = 3, queue = "default")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
