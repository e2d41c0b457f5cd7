// A `SystemTime` is not a job argument (JSON has no lossless form for it, and
// the orphan rule forbids opting it in): pass a `jobs_core::Timestamp`.
use jobs_core::job;

#[job]
async fn remind(user_id: u64, at: std::time::SystemTime) {
    let _ = (user_id, at);
}

fn main() {}
