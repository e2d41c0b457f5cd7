// A job is an `async fn`.
use jobs_core::job;

#[job]
fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {
    // the function is still emitted, so the rest of the crate checks
    send_sms(1);
}
