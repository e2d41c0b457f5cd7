// Job aliases are old names: not empty, not the current name, not repeated.
use jobs_core::job;

#[job(name = "sms.send", aliases = ["send_sms", "sms.send", "", "send_sms"])]
async fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
