//! The profile update of `examples/src/profile.rs` against a real Redis and a
//! real (embedded) SQLite database: a committed update enqueues its e-mail,
//! a rolled-back one enqueues nothing, and a nested service holding the plain
//! client is refused instead of leaking a job.

use examples::profile::{self, ProfileError, UserSafetyDataValidation};
use jobs_core::{Backend, Client, EnqueueError, JobSet, Worker};
use jobs_redis::RedisBackend;
use jobs_redis::testing::RedisServer;

async fn redis(server: &RedisServer) -> (RedisBackend, Client) {
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    (backend, client)
}

async fn queued(backend: &RedisBackend, queue: &str) -> Vec<String> {
    let jobs = backend.list(&JobSet::Queue(queue.into()), 0, 100).await.unwrap();
    jobs.into_iter().map(|job| job.payload).collect()
}

#[tokio::test]
async fn a_committed_update_enqueues_its_confirmation_email_and_a_worker_runs_it() {
    let server = RedisServer::start();
    let (backend, client) = redis(&server).await;
    let pool = profile::open_database().await.unwrap();

    profile::update_email(&pool, &client, 1, "ana@new.example").await.unwrap();

    assert_eq!(profile::email_of(&pool, 1).await.unwrap(), "ana@new.example");
    let mail = queued(&backend, "mail").await;
    assert_eq!(mail.len(), 1);
    assert!(mail[0].contains(r#""job":"send_email_confirmation""#) && mail[0].contains(r#""user_id":1"#), "{mail:?}");
    let report = Worker::builder(backend.clone()).queue("mail", 1).build().unwrap().drain().await.unwrap();
    assert_eq!(report.succeeded, 1);
    assert!(examples::journal().contains(&"send_email_confirmation user_id=1".to_owned()));
}

#[tokio::test]
async fn a_failed_update_rolls_back_and_enqueues_nothing() {
    let server = RedisServer::start();
    let (backend, client) = redis(&server).await;
    let pool = profile::open_database().await.unwrap();

    // ana@example.com belongs to user 1: the UNIQUE constraint fails the update.
    let taken = profile::update_email(&pool, &client, 2, "ana@example.com").await.unwrap_err();
    assert!(matches!(taken, ProfileError::Database(_)), "{taken:?}");
    let missing = profile::update_email(&pool, &client, 99, "new@example.com").await.unwrap_err();
    assert!(matches!(missing, ProfileError::NoSuchUser(99)), "{missing:?}");

    assert_eq!(profile::email_of(&pool, 2).await.unwrap(), "bo@example.com");
    assert!(queued(&backend, "mail").await.is_empty());
    assert_eq!(backend.count(&JobSet::Scheduled).await.unwrap(), 0);
}

#[tokio::test]
async fn a_nested_service_holding_the_plain_client_is_refused_and_nothing_leaks() {
    let server = RedisServer::start();
    let (backend, client) = redis(&server).await;
    let pool = profile::open_database().await.unwrap();
    let built_at_startup = UserSafetyDataValidation::new(client.clone());

    let error =
        profile::update_email_with(&pool, &client, &built_at_startup, 2, "bo@mailinator.com").await.unwrap_err();
    assert!(
        matches!(&error, ProfileError::Enqueue(EnqueueError::InsideTransaction { job }) if job == "notify_security_team"),
        "{error:?}"
    );
    // The update rolled back with it, and neither job reached Redis.
    assert_eq!(profile::email_of(&pool, 2).await.unwrap(), "bo@example.com");
    assert!(queued(&backend, "critical").await.is_empty());
    assert!(queued(&backend, "mail").await.is_empty());

    // Built from the scope's handle, the same service's job waits for the commit.
    profile::update_email(&pool, &client, 2, "bo@mailinator.com").await.unwrap();
    assert_eq!(queued(&backend, "critical").await.len(), 1);
    assert_eq!(queued(&backend, "mail").await.len(), 1);
    // Outside any scope, the plain client works as always.
    built_at_startup.check_email_change(1, "x@mailinator.com").await.unwrap();
    assert_eq!(queued(&backend, "critical").await.len(), 2);
}

#[test]
fn the_transactions_example_shows_commit_rollback_and_the_guard() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_transactions")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let states: Vec<&str> = stdout.lines().filter(|line| line.contains("jobs waiting")).collect();
    assert_eq!(
        states,
        [
            "   database: ana@new.example; jobs waiting: 1 in `mail`, 0 in `critical`",
            "   database: bo@example.com; jobs waiting: 1 in `mail`, 0 in `critical`",
            "   database: bo@example.com; jobs waiting: 1 in `mail`, 0 in `critical`",
            "   database: bo@mailinator.com; jobs waiting: 2 in `mail`, 1 in `critical`",
        ],
        "{stdout}"
    );
    assert!(stdout.contains("UNIQUE constraint failed: users.email"), "{stdout}");
    assert!(stdout.contains("enqueued through the plain client inside a transaction scope"), "{stdout}");
}
