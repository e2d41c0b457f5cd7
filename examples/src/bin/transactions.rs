//! A profile update in a SQLite transaction that enqueues a confirmation
//! e-mail: committed, the job is enqueued; rolled back, it is not; and a
//! service that grabbed the plain client is stopped before it leaks a job.
//! Embedded database and embedded job backend: no server needed.
//!
//! Run it with `cargo run -p examples --bin transactions`.

use examples::profile::{self, ProfileError, UserSafetyDataValidation};
use jobs_core::{Backend, Client, JobSet, MemoryBackend};

async fn waiting(backend: &MemoryBackend) -> Result<String, Box<dyn std::error::Error>> {
    let mail = backend.count(&JobSet::Queue("mail".into())).await?;
    let critical = backend.count(&JobSet::Queue("critical".into())).await?;
    Ok(format!("{mail} in `mail`, {critical} in `critical`"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = profile::open_database().await?;
    let backend = MemoryBackend::new();
    let client = Client::new(backend.clone());

    println!("1. user 1 changes their address to ana@new.example: the transaction commits");
    profile::update_email(&pool, &client, 1, "ana@new.example").await?;
    println!("   database: {}; jobs waiting: {}", profile::email_of(&pool, 1).await?, waiting(&backend).await?);

    println!("2. user 2 tries ana@new.example, which is taken: the update fails and rolls back");
    let taken = profile::update_email(&pool, &client, 2, "ana@new.example").await;
    match &taken {
        Err(ProfileError::Database(error)) => println!("   error: {error}"),
        other => return Err(format!("expected a database error, got {other:?}").into()),
    }
    println!("   database: {}; jobs waiting: {}", profile::email_of(&pool, 2).await?, waiting(&backend).await?);

    println!("3. a safety service built at start-up with the plain client runs inside the transaction");
    let service = UserSafetyDataValidation::new(client.clone());
    let leaked = profile::update_email_with(&pool, &client, &service, 2, "bo@mailinator.com").await;
    match &leaked {
        Err(ProfileError::Enqueue(error)) => println!("   error: {error}"),
        other => return Err(format!("expected the inside-transaction error, got {other:?}").into()),
    }
    println!("   database: {}; jobs waiting: {}", profile::email_of(&pool, 2).await?, waiting(&backend).await?);

    println!("4. the same change with the service built from the scope's handle commits with both jobs");
    profile::update_email(&pool, &client, 2, "bo@mailinator.com").await?;
    println!("   database: {}; jobs waiting: {}", profile::email_of(&pool, 2).await?, waiting(&backend).await?);
    Ok(())
}
