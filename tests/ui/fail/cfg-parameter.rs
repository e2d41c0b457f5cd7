// A parameter is a key of the payload: it cannot exist in some builds only.
use jobs_core::job;

#[job]
async fn send_sms(#[cfg(test)] campaign: u64, user_id: u64) {
    let _ = user_id;
}

fn main() {}
