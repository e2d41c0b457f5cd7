//! The old worker of the rolling-deploy test (`tests/rolling_deploy.rs`):
//! `greet` at version 1, run through the real worker CLI. It must put back
//! the version-2 payloads it cannot read, for `rolling-v2` to run.
//!
//! Each run appends one line to the file named by `ROLLING_LEDGER`, so the
//! test can see across processes which code ran which payload.

use jobs_core::{JobContext, JobError, job};

#[path = "../ledger_file.rs"]
mod ledger_file;
use ledger_file::record;

/// Greets `name`: version 1, which knows no greeting.
#[job(queue = "rolling", retries = 3)]
async fn greet(name: String, ctx: &JobContext) -> Result<(), JobError> {
    record(&format!("ran=v1 payload=v{} name={name:?}", ctx.payload_version()))
}

fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
