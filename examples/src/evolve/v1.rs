//! Step 1 of `docs/EVOLVING_JOBS.md`: the first signature.

use jobs_core::{JobError, job};

/// Sends the welcome mail to a new user.
#[job(queue = "mail")]
pub async fn send_welcome_email(user_id: u64) -> Result<(), JobError> {
    println!("v1 welcome mail: user {user_id}");
    Ok(())
}
