//! Background jobs for Rust: `#[job]` on an `async fn` makes it a registered,
//! versioned job type that web code enqueues and a worker process runs.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use jobs_core::{job, Client, JobError, MemoryBackend, Worker};
//!
//! /// Sends the phone-confirmation code; must not wait behind bulk mail.
//! #[job(queue = "critical", retries = 5)]
//! async fn send_confirmation_sms(user_id: u64) -> Result<(), JobError> {
//!     // load the user by id here: fresh data, not a stale copy
//!     Ok(())
//! }
//!
//! let backend = MemoryBackend::new();
//! let client = Client::new(backend.clone());
//! SendConfirmationSms::perform_later(&client, 42).await?;
//!
//! let worker = Worker::builder(backend).queue("critical", 10).build()?;
//! assert_eq!(worker.drain().await?.succeeded, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! Where things live:
//! - [`job`](macro@job): the attribute; [`Job`], [`JobContext`], [`JobId`] in `job`.
//! - [`JobArg`] and [`Timestamp`]: what an argument may be (`arg`).
//! - [`Envelope`]: the JSON wire format (`envelope`, see `docs/PROTOCOL.md`).
//! - [`Registry`], [`JobRegistration`]: the jobs linked into a binary (`registry`).
//! - [`migrate`]: how older payloads reach the current signature.
//! - [`schema`]: every job's signature as JSON (the lock file) and the compatibility check.
//! - [`Backend`] and its types: the broker contract (`backend`); [`MemoryBackend`] (`memory`).
//! - [`Client`], [`RawJob`]: enqueueing (`client`); [`after_commit`], [`Staged`]: enqueueing
//!   that waits for a database commit (`transaction`, see `docs/TRANSACTIONS.md`).
//! - [`census()`], [`Census`]: how many payloads of each job name and version wait (`census`).
//! - [`admin`]: list the dead, retry and scheduled sets, move their jobs back to a queue, delete them.
//! - [`Worker`], [`RetryPolicy`], [`WorkerReport`]: running (`worker`, `retry`).
//! - [`JobHandle`], [`JobStatus`], [`Event`], [`Client::events`]: results, lifecycle events and
//!   cancellation (`outcome`).
//! - Errors, one enum per boundary: [`EnqueueError`], [`JobError`], [`ArgError`],
//!   [`WorkerError`], [`BackendError`] (`error`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod admin;
mod arg;
mod backend;
pub mod census;
mod client;
mod envelope;
mod error;
mod execute;
mod job;
mod memory;
pub mod migrate;
mod outcome;
mod registry;
mod retry;
pub mod schema;
mod transaction;
mod worker;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// Locks `mutex`, recovering it if a panic poisoned it: every mutex of this
/// crate guards plain collections, which a panic leaves usable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub use arg::{JobArg, Timestamp};
pub use backend::{
    Backend, DeadLimits, EventBatch, EventRecord, FetchRequest, Fetched, JobSet, LONGEST_WAIT, Lease, PushJob,
    PushOutcome, QueueTake, StoredJob, UniqueLock, WorkerId, deadline_after,
};
pub use census::{Census, CensusCounts, CensusRow, census, census_in_batches};
pub use client::{Client, DEFAULT_MAX_PAYLOAD, RawJob};
pub use envelope::{Envelope, millis, now_millis};
pub use error::{ArgError, BackendError, EnqueueError, FailedJob, JobError, WorkerError};
pub use job::{Args, BoxFuture, DEFAULT_KEEP_RESULT, Job, JobContext, JobId, JobOptions, MigrateFn, ParamSpec};
pub use jobs_macros::job;
pub use memory::MemoryBackend;
pub use outcome::{
    CANCEL_TTL, CANCELS_KEPT, Event, EventKind, Events, JobHandle, JobStatus, Outcome, OutcomeRecord, WaitError,
};
pub use registry::{JobRegistration, Registry, RunFn};
pub use retry::RetryPolicy;
pub use transaction::{FlushError, Staged, after_commit};
pub use worker::{Worker, WorkerBuilder, WorkerReport, shutdown_signal};

pub use serde_json;
