// Job arguments are owned, so a job has no lifetime parameters.
use jobs_core::job;

#[job]
async fn send_sms<'a>(user_id: u64, name: std::borrow::Cow<'a, str>) {
    let _ = (user_id, name);
}

fn main() {}
