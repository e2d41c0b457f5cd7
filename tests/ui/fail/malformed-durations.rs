// Each way a duration can be malformed, with its reason.
use jobs_core::job;

#[job(timeout = "")]
async fn empty(n: u64) { let _ = n; }

#[job(timeout = "30")]
async fn no_unit(n: u64) { let _ = n; }

#[job(timeout = "3w")]
async fn unknown_unit(n: u64) { let _ = n; }

#[job(timeout = "0s")]
async fn zero(n: u64) { let _ = n; }

#[job(timeout = "1m 30s")]
async fn with_a_space(n: u64) { let _ = n; }

#[job(timeout = "s")]
async fn no_number(n: u64) { let _ = n; }

#[job(timeout = "99999999999999999999s")]
async fn number_too_large(n: u64) { let _ = n; }

#[job(timeout = "999999999999999d")]
async fn too_long(n: u64) { let _ = n; }

#[job(timeout = "30s!")]
async fn trailing(n: u64) { let _ = n; }

fn main() {}
