//! The mistake `docs/EVOLVING_JOBS.md` warns about: a parameter added
//! without a default, which fails every version-1 payload still queued.

use jobs_core::{JobError, job};

/// Sends the welcome mail to a new user, in their language.
#[job(queue = "mail", version = 2)]
pub async fn send_welcome_email(user_id: u64, locale: String) -> Result<(), JobError> {
    println!("v2 welcome mail: user {user_id}, locale {locale}");
    Ok(())
}
