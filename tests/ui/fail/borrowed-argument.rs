// Arguments are stored as JSON and decoded later: they must be owned.
use jobs_core::job;

#[job]
async fn send_sms(phone: &str, user_ids: &[u64], body: impl Into<String>) {
    let _ = (phone, user_ids, body.into());
}

fn main() {}
