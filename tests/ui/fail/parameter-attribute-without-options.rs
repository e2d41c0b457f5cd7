// `#[job]` on a parameter does nothing without options.
use jobs_core::job;

#[job]
async fn send_sms(#[job] user_id: u64) {
    let _ = user_id;
}

fn main() {}
