// Versions start at 1, so does `since`.
use jobs_core::job;

#[job]
async fn send_sms(#[job(since = 0)] user_id: u64) {
    let _ = user_id;
}

fn main() {}
