// A parameter's name is its key in the payload, so it must be a plain name.
use jobs_core::job;

#[job]
async fn send_sms((user_id, retry): (u64, bool), _: String) {
    let _ = (user_id, retry);
}

fn main() {}
