//! The new worker of the rolling-deploy test (`tests/rolling_deploy.rs`):
//! the same `greet` at version 2, which added `greeting` with a default, run
//! through the real worker CLI. It runs what `rolling-v1` put back, and
//! fills the default into version-1 payloads.
//!
//! Each run appends one line to the file named by `ROLLING_LEDGER`, so the
//! test can see across processes which code ran which payload.

use jobs_core::{JobContext, JobError, job};

#[path = "../ledger_file.rs"]
mod ledger_file;
use ledger_file::record;

/// Greets `name` with `greeting`: version 2 added the greeting.
#[job(queue = "rolling", version = 2, retries = 3)]
async fn greet(
    name: String,
    #[job(since = 2, default = "Hello".to_string())] greeting: String,
    ctx: &JobContext,
) -> Result<(), JobError> {
    record(&format!("ran=v2 payload=v{} name={name:?} greeting={greeting:?}", ctx.payload_version()))
}

fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
