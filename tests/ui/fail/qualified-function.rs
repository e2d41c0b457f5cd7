// A job is a plain `async fn`: not `const`, `unsafe` or `extern`.
use jobs_core::job;

#[job]
async unsafe extern "C" fn send_sms(user_id: u64) {
    let _ = user_id;
}

fn main() {}
