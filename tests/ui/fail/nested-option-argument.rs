// `Option<Option<T>>` loses `Some(None)` in JSON: both read back as `null`.
use jobs_core::job;

#[job]
async fn set_limit(user_id: u64, limit: Option<Option<u64>>) {
    let _ = (user_id, limit);
}

fn main() {}
