//! The file ledger of the rolling-deploy workers: each run appends one line
//! to the file named by `ROLLING_LEDGER`, so the test sees across processes
//! which code ran which payload. Included by `rolling-v1` and `rolling-v2`.

use std::io::Write;

use jobs_core::JobError;

/// Appends `line` to the ledger file the test reads.
pub fn record(line: &str) -> Result<(), JobError> {
    let path = std::env::var("ROLLING_LEDGER")?;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}
