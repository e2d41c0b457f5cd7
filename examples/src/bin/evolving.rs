//! The story of `docs/EVOLVING_JOBS.md` on the embedded backend, no server
//! needed: one job through five signatures, old payloads waiting in the
//! queue, an old worker beside a new one, and at each step what the
//! compatibility check says and what the census counts.
//!
//! Run it with `cargo run -p examples --bin evolving`.

#[path = "../evolve/v1.rs"]
mod v1;
#[path = "../evolve/v2.rs"]
mod v2;
#[path = "../evolve/v3.rs"]
mod v3;
#[path = "../evolve/v4.rs"]
mod v4;
#[path = "../evolve/v5.rs"]
mod v5;

use jobs_core::schema::{self, Schema};
use jobs_core::{Backend, Client, JobRegistration, MemoryBackend, Registry, Worker, WorkerReport};

// Each step is its own deploy, so each worker knows one version of the job.
static V1: JobRegistration = JobRegistration::of::<v1::SendWelcomeEmail>("v1::send_welcome_email");
static V2: JobRegistration = JobRegistration::of::<v2::SendWelcomeEmail>("v2::send_welcome_email");
static V3: JobRegistration = JobRegistration::of::<v3::SendWelcomeEmail>("v3::send_welcome_email");
static V4: JobRegistration = JobRegistration::of::<v4::SendWelcomeMessage>("v4::send_welcome_message");
static V5: JobRegistration = JobRegistration::of::<v5::SendWelcomeMessage>("v5::send_welcome_message");

type Error = Box<dyn std::error::Error>;

fn registry(job: &'static JobRegistration) -> Result<Registry, Error> {
    Ok(Registry::from_jobs(vec![job])?)
}

fn schema_of(job: &'static JobRegistration) -> Result<Schema, Error> {
    Ok(Schema::of(&registry(job)?))
}

/// A worker of one step's code drains what is ready, one job at a time.
async fn drain(backend: &MemoryBackend, job: &'static JobRegistration) -> Result<WorkerReport, Error> {
    let worker = Worker::builder(backend.clone()).registry(registry(job)?).queue("mail", 1).concurrency(1).build()?;
    let report = worker.drain().await?;
    println!(
        "  worker drained: {} succeeded, {} dead, {} deferred for a newer worker",
        report.succeeded, report.dead, report.deferred
    );
    Ok(report)
}

/// Checks the code of a step against the lock file, as `check jobs.lock.json` would.
fn check(lock: &Schema, job: &'static JobRegistration) -> Result<bool, Error> {
    let report = schema::check(lock, &schema_of(job)?);
    for line in report.render("jobs.lock.json").lines() {
        println!("  {line}");
    }
    Ok(!report.is_breaking())
}

async fn census(backend: &MemoryBackend) -> Result<(), Error> {
    for line in jobs_core::census(backend).await?.to_string().lines() {
        println!("  {line}");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let backend = MemoryBackend::new();
    let client = Client::new(backend.clone());

    println!("1. send_welcome_email(user_id), version 1: recorded in the lock file; two mails enqueued");
    let mut lock = schema_of(&V1)?;
    v1::SendWelcomeEmail::perform_later(&client, 1).await?;
    v1::SendWelcomeEmail::perform_later(&client, 2).await?;

    println!("\n2. version 2 adds `locale` with a default; check:");
    check(&lock, &V2)?;
    println!("  rolling deploy: new web code enqueues version 2 while the old worker still runs");
    v2::SendWelcomeEmail::perform_later(&client, 3, "pt-BR".into()).await?;
    let old = drain(&backend, &V1).await?;
    println!("  an old web process still enqueues version 1");
    v1::SendWelcomeEmail::perform_later(&client, 4).await?;
    census(&backend).await?;
    println!("  the deferred payload's delay passes; the new worker runs both");
    backend.promote_due(Some(u64::MAX)).await?;
    let new = drain(&backend, &V2).await?;
    census(&backend).await?;
    lock = schema_of(&V2)?;

    println!("\n3. version 3 makes `locale` required; check:");
    let accepted_at_once = check(&lock, &V3)?;
    v2::SendWelcomeEmail::perform_later(&client, 5, "de".into()).await?;
    println!("  the census shows no version-1 payload left, so the change is accepted (schema --write)");
    census(&backend).await?;
    lock = schema_of(&V3)?;

    println!("\n4. renamed to send_welcome_message, the old name kept as an alias; check:");
    let renamed = check(&lock, &V4)?;
    drain(&backend, &V4).await?;
    lock = schema_of(&V4)?;

    println!("\n5. version 4 splits `locale` into `language` and `region` with `migrate`; check:");
    let split = check(&lock, &V5)?;
    v4::SendWelcomeMessage::perform_later(&client, 6, "pt-BR".into()).await?;
    v2::SendWelcomeEmail::perform_later(&client, 7, "fr".into()).await?;
    let last = drain(&backend, &V5).await?;

    println!("\nWhat happened:");
    println!(
        "  the old worker ran {} and put {} newer payload back instead of failing it; the new one ran {}.",
        old.succeeded, old.deferred, new.succeeded
    );
    if !accepted_at_once && renamed && split && last.dead == 0 {
        println!("  check refused only the removed default, until the census showed version 1 gone;");
        println!("  the rename and the split passed, and no payload of any version was lost.");
    }
    Ok(())
}
