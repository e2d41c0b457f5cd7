// Options are separated by exactly one comma; every option is still checked.
use jobs_core::job;

#[job(queue = "critical" retries = 3,, colour = 1)]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
