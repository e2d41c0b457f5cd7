//! Jobs the fault tests run in real worker processes (`test-worker`).

use std::io::Write;
use std::time::Duration;

use jobs_core::{JobError, job};

/// Appends `n` as one line to the file at `path` after `pause_ms`: a ledger
/// that survives the worker process, to count runs and duplicates.
#[job(queue = "ledger", retries = 25)]
pub async fn append_to_ledger(path: String, n: u64, pause_ms: u64) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    file.write_all(format!("{n}\n").as_bytes())?;
    Ok(())
}

/// The lines of a ledger file (empty when it does not exist yet).
pub fn ledger_lines(path: &str) -> Vec<u64> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}
