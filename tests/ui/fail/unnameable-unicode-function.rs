// A name whose struct name would not be an identifier is an error, not a panic.
use jobs_core::job;

#[job]
async fn _٣x(user_id: u64) {
    let _ = user_id;
}

fn main() {}
