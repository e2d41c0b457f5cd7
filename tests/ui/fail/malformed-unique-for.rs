// `unique_for` takes the same durations as `timeout`; units go largest first.
use jobs_core::job;

#[job(unique_for = "30s1h")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
