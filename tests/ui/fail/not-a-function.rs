// `#[job]` goes on a function, not on a struct.
use jobs_core::job;

#[job]
struct SendSms {
    user_id: u64,
}

fn main() {}
