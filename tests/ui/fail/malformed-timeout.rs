// A duration is an integer and a unit; the error shows the forms that work.
use jobs_core::job;

#[job(timeout = "30 seconds")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
