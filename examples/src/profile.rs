//! A profile update in a real database transaction (SQLite through `sqlx`)
//! that enqueues a confirmation e-mail only if the transaction commits.
//!
//! The e-mail job must never run for an address change that rolled back: the
//! user would confirm an address the database never stored. `after_commit`
//! stages the job and pushes it once the closure, and so the commit, has
//! succeeded. See `docs/TRANSACTIONS.md`.

use jobs_core::{Client, EnqueueError, FlushError, JobError, after_commit, job};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use crate::note;

/// Asks the user to confirm their new e-mail address.
#[job(queue = "mail", retries = 10)]
pub async fn send_email_confirmation(user_id: u64) -> Result<(), JobError> {
    // A real job loads the user by id here and mails the address it finds.
    note(format!("send_email_confirmation user_id={user_id}"));
    Ok(())
}

/// Tells the security team about a suspicious account change.
#[job(queue = "critical")]
pub async fn notify_security_team(user_id: u64, reason: String) -> Result<(), JobError> {
    note(format!("notify_security_team user_id={user_id} reason={reason}"));
    Ok(())
}

/// Why a profile update failed. Nothing was enqueued in any case.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No user has this id.
    #[error("user {0} does not exist")]
    NoSuchUser(i64),
    /// The database refused the change (e.g. the address is taken).
    #[error("the database refused the update: {0}")]
    Database(#[from] sqlx::Error),
    /// A job could not be staged.
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    /// The update committed, but its jobs could not be pushed; they are in
    /// the error, to retry.
    #[error(transparent)]
    Flush(#[from] FlushError),
}

/// An embedded SQLite database with a `users` table and two users.
pub async fn open_database() -> Result<SqlitePool, sqlx::Error> {
    // One connection: every connection to `sqlite::memory:` is a database of its own.
    let pool = SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await?;
    sqlx::query(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, email_confirmed INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO users (id, email, email_confirmed) VALUES (1, 'ana@example.com', 1), (2, 'bo@example.com', 1)",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// The user's e-mail address as the database holds it.
pub async fn email_of(pool: &SqlitePool, user_id: i64) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT email FROM users WHERE id = ?").bind(user_id).fetch_one(pool).await
}

/// A service other code calls during a profile update: it flags changes to
/// throw-away addresses for the security team.
///
/// It enqueues through the client it is given. Built from the scope's handle
/// (`UserSafetyDataValidation::new(jobs.clone())`), its job waits for the
/// commit like the rest; built once at start-up from the plain client, its
/// enqueue inside the scope fails with `EnqueueError::InsideTransaction`
/// instead of leaking a job about a change that may roll back.
#[derive(Clone)]
pub struct UserSafetyDataValidation {
    jobs: Client,
}

impl UserSafetyDataValidation {
    /// The service, enqueueing through `jobs`.
    pub fn new(jobs: Client) -> Self {
        Self { jobs }
    }

    /// Checks a new address; a throw-away one is reported.
    pub async fn check_email_change(&self, user_id: i64, new_email: &str) -> Result<(), EnqueueError> {
        if new_email.ends_with("@mailinator.com") {
            NotifySecurityTeam::perform_later(&self.jobs, user_id as u64, "throw-away e-mail domain".into()).await?;
        }
        Ok(())
    }
}

/// Changes a user's e-mail address and asks them to confirm it: the update,
/// the safety check and the confirmation job in one transaction; the jobs
/// reach the queue only if the transaction commits.
pub async fn update_email(
    pool: &SqlitePool,
    client: &Client,
    user_id: i64,
    new_email: &str,
) -> Result<(), ProfileError> {
    after_commit(client, |jobs| async move {
        let safety = UserSafetyDataValidation::new(jobs.clone());
        change_email(pool, &jobs, &safety, user_id, new_email).await
    })
    .await
}

/// The same update with a safety service built elsewhere: the mistake the
/// inside-transaction guard catches when that service holds the plain client.
pub async fn update_email_with(
    pool: &SqlitePool,
    client: &Client,
    safety: &UserSafetyDataValidation,
    user_id: i64,
    new_email: &str,
) -> Result<(), ProfileError> {
    after_commit(client, |jobs| async move { change_email(pool, &jobs, safety, user_id, new_email).await }).await
}

async fn change_email(
    pool: &SqlitePool,
    jobs: &Client,
    safety: &UserSafetyDataValidation,
    user_id: i64,
    new_email: &str,
) -> Result<(), ProfileError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query("UPDATE users SET email = ?, email_confirmed = 0 WHERE id = ?")
        .bind(new_email)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(ProfileError::NoSuchUser(user_id)); // dropping `tx` rolls back
    }
    safety.check_email_change(user_id, new_email).await?;
    SendEmailConfirmation::perform_later(jobs, user_id as u64).await?;
    tx.commit().await?;
    Ok(())
}
