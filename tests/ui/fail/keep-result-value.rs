// `keep_result` takes a duration, or `false` to keep no result.
use jobs_core::{JobError, job};

#[job(keep_result = 3600)]
async fn count_pixels(width: u64) -> Result<u64, JobError> {
    Ok(width)
}

#[job(keep_result = "forever")]
async fn count_lines(rows: u64) -> Result<u64, JobError> {
    Ok(rows)
}

fn main() {}
