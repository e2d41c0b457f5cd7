// A job takes named, typed parameters only; rustc adds its own errors.
use jobs_core::job;

#[job]
async fn send_sms(user_id: u64, ...) {
    let _ = user_id;
}

fn main() {}
