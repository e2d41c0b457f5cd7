// An `Instant` means nothing in another process: it is not a job argument.
use jobs_core::job;

#[job]
async fn expire_session(session_id: u64, started: std::time::Instant) {
    let _ = (session_id, started);
}

fn main() {}
