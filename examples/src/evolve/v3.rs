//! Step 3 of `docs/EVOLVING_JOBS.md`: the parameter made required, once no
//! version-1 payload is left.

use jobs_core::{JobError, job};

/// Sends the welcome mail to a new user, in their language.
#[job(queue = "mail", version = 3)]
pub async fn send_welcome_email(user_id: u64, locale: String) -> Result<(), JobError> {
    println!("v3 welcome mail: user {user_id}, locale {locale}");
    Ok(())
}
