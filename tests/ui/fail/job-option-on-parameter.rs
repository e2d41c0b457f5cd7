// Job options written on a parameter say where they belong.
use jobs_core::job;

#[job]
async fn send_sms(#[job(queue = "critical")] user_id: u64) {
    let _ = user_id;
}

fn main() {}
