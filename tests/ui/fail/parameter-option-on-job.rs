// Parameter options written on the job say where they belong.
use jobs_core::job;

#[job(version = 2, since = 2, alias = "send_text")]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
