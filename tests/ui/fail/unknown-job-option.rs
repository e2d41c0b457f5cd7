// A misspelled job option is named, with the options that exist.
use jobs_core::job;

#[job(queue = "critical", retry = 5)]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
