//! Step 4 of `docs/EVOLVING_JOBS.md`: the job renamed, its old name kept as
//! an alias for the payloads still queued under it.

use jobs_core::{JobError, job};

/// Welcomes a new user (by mail today, maybe by SMS tomorrow).
#[job(queue = "mail", version = 3, aliases = ["send_welcome_email"])]
pub async fn send_welcome_message(user_id: u64, locale: String) -> Result<(), JobError> {
    println!("v3 welcome message: user {user_id}, locale {locale}");
    Ok(())
}
