// The generated code is warning-free, even for private jobs whose helpers go
// unused, and documented well enough for `missing_docs`.
#![deny(warnings, missing_docs, unused_qualifications, rust_2018_idioms)]
//! A crate of jobs.

use jobs_core::{JobContext, JobError, job};

/// A public job with docs.
#[job(version = 2, retries = 1)]
pub async fn send_email(
    user_id: u64,
    #[job(since = 2, default = 3)] copies: u32,
    ctx: &JobContext,
) -> Result<(), JobError> {
    let _ = (user_id, copies, ctx.attempt());
    Ok(())
}

#[job]
async fn private_cleanup() {}

#[job(queue = "io")]
async fn with_many_arguments(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8) -> Result<(), JobError> {
    let _ = (a, b, c, d, e, f, g);
    Ok(())
}

/// A job whose error is only a message.
#[job]
pub async fn send_sms(user_id: u64) -> Result<u32, String> {
    Ok(user_id as u32)
}

#[job]
async fn call_hook() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

fn main() {}
