// A queue needs a name.
use jobs_core::job;

#[job(queue = "")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
