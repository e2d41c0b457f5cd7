//! Step 2 of `docs/EVOLVING_JOBS.md`: a parameter added with a default.

use jobs_core::{JobError, job};

/// Sends the welcome mail to a new user, in their language.
#[job(queue = "mail", version = 2)]
pub async fn send_welcome_email(
    user_id: u64,
    // Version-1 payloads lack it and get "en".
    #[job(since = 2, default = "en".to_string())] locale: String,
) -> Result<(), JobError> {
    println!("v2 welcome mail: user {user_id}, locale {locale}");
    Ok(())
}
