//! Managing the jobs that wait: list the dead, the retrying and the scheduled
//! with their errors and attempts, move them to their queue to run now, or
//! delete them. The worker CLI's `dead`, `retry` and `scheduled` commands run
//! on these, and so can an admin page.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use jobs_core::admin::{self, Selection};
//! use jobs_core::{Backend, JobSet, MemoryBackend};
//!
//! let backend = MemoryBackend::new();
//! // … a job fails for good and lands in the dead set …
//! for entry in admin::newest(&backend, &JobSet::Dead, 20).await? {
//!     println!("{} {} attempt {}: {:?}", entry.jid, entry.job, entry.attempt, entry.error);
//! }
//! // The bug is fixed and deployed: give every dead `send_email` one more run.
//! let moved = admin::requeue(&backend, &JobSet::Dead, &Selection::Job("send_email".into())).await?;
//! assert_eq!(moved, 0);
//! # Ok::<(), jobs_core::BackendError>(())
//! # }).unwrap();
//! ```
//!
//! A dead job moved back keeps its attempt count, so it gets one more run: if
//! that fails too it returns to the dead set with the new error (Sidekiq's
//! "retry now" and Oban's `retry_job` do the same). Jobs that enter a set while
//! an operation walks it may or may not be taken, and on a queue that workers
//! are taking from, a selected job may be missed: run the operation again.

use crate::backend::{Backend, JobSet, StoredJob};
use crate::envelope::Envelope;
use crate::error::BackendError;
use crate::job::JobId;

/// How many jobs one [`Backend::list`] call reads while selecting.
const PAGE: usize = 500;

/// One stored job, read for people: who it is, where and when, and its last error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEntry {
    /// The job id (empty when the payload is unreadable).
    pub jid: String,
    /// The job name written in the payload (empty when unreadable).
    pub job: String,
    /// The signature version written in the payload.
    pub version: u32,
    /// The queue it runs on (empty when the payload does not say: a ready job's
    /// payload omits the queue its list names).
    pub queue: String,
    /// Attempts made so far.
    pub attempt: u32,
    /// The last failure's message; for an unreadable payload, why it is unreadable.
    pub error: Option<String>,
    /// When the last failure happened (ms since the Unix epoch).
    pub failed_at: Option<u64>,
    /// When it is due (scheduled, retry), when it died (dead) or when its lease
    /// ends (in flight), in ms since the Unix epoch; 0 for ready jobs.
    pub at: u64,
    /// The payload as stored, which [`Backend::requeue`] and [`Backend::remove`] take.
    pub payload: String,
}

impl JobEntry {
    /// Reads a listed job; a payload that is not an envelope still gives an
    /// entry, with the reason as its `error`.
    pub fn read(stored: StoredJob) -> Self {
        let StoredJob { payload, at } = stored;
        match Envelope::from_json(&payload) {
            Ok(envelope) => JobEntry {
                jid: envelope.jid.as_str().to_owned(),
                job: envelope.job,
                version: envelope.version,
                queue: envelope.queue,
                attempt: envelope.attempt,
                error: envelope.error,
                failed_at: envelope.failed_at,
                at,
                payload,
            },
            Err(error) => JobEntry {
                jid: String::new(),
                job: String::new(),
                version: 0,
                queue: String::new(),
                attempt: 0,
                error: Some(format!("unreadable payload: {error}")),
                failed_at: None,
                at,
                payload,
            },
        }
    }
}

/// Which jobs of a set an operation takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every job of the set.
    All,
    /// Every job of this name (as written in the payload: the current name or an alias).
    Job(String),
    /// These jobs.
    Ids(Vec<JobId>),
}

impl Selection {
    fn takes(&self, entry: &JobEntry) -> bool {
        match self {
            Selection::All => true,
            Selection::Job(name) => entry.job == *name,
            Selection::Ids(ids) => ids.iter().any(|id| id.as_str() == entry.jid),
        }
    }
}

/// Up to `limit` jobs of a set from `offset`, oldest (or soonest) first.
pub async fn entries<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    offset: usize,
    limit: usize,
) -> Result<Vec<JobEntry>, BackendError> {
    Ok(backend.list(set, offset, limit).await?.into_iter().map(JobEntry::read).collect())
}

/// The last `limit` jobs of a set, newest (or latest due) first: the dead
/// that died last, the retries due last.
pub async fn newest<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    limit: usize,
) -> Result<Vec<JobEntry>, BackendError> {
    let count = backend.count(set).await?;
    let mut entries = entries(backend, set, count.saturating_sub(limit), limit).await?;
    entries.reverse();
    Ok(entries)
}

/// Moves the selected jobs of the scheduled, retry or dead set to the end of
/// their queue, to run now. Returns how many moved. See [`Backend::requeue`].
pub async fn requeue<B: Backend + ?Sized>(backend: &B, set: &JobSet, which: &Selection) -> Result<usize, BackendError> {
    walk(backend, set, which, Action::Requeue).await
}

/// Deletes the selected jobs of a queue or of the scheduled, retry or dead set.
/// Returns how many were deleted. See [`Backend::remove`].
pub async fn remove<B: Backend + ?Sized>(backend: &B, set: &JobSet, which: &Selection) -> Result<usize, BackendError> {
    walk(backend, set, which, Action::Remove).await
}

#[derive(Clone, Copy)]
enum Action {
    Requeue,
    Remove,
}

/// Pages through `set` once, acting on the selected jobs of each page.
async fn walk<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    which: &Selection,
    action: Action,
) -> Result<usize, BackendError> {
    let refused = match action {
        Action::Requeue => matches!(set, JobSet::Queue(_) | JobSet::InFlight),
        Action::Remove => *set == JobSet::InFlight,
    };
    if refused {
        let operation = match action {
            Action::Requeue => "requeue",
            Action::Remove => "remove",
        };
        return Err(set.refuse(operation));
    }
    if matches!(which, Selection::Ids(ids) if ids.is_empty()) {
        return Ok(0);
    }
    // Jobs that arrive during the walk may shift the pages; looking at no more
    // entries than the set held at the start (plus a page) keeps the walk finite.
    let budget = backend.count(set).await?.saturating_add(PAGE);
    let (mut offset, mut seen, mut done, mut found) = (0, 0, 0, 0);
    while seen < budget {
        let page = backend.list(set, offset, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let read = page.len();
        seen += read;
        let chosen: Vec<String> =
            page.into_iter().map(JobEntry::read).filter(|e| which.takes(e)).map(|e| e.payload).collect();
        // The chosen leave the set; the others stay where they are, before the next page.
        offset += read - chosen.len();
        found += chosen.len();
        if !chosen.is_empty() {
            done += match action {
                Action::Requeue => backend.requeue(set, &chosen).await?,
                Action::Remove => backend.remove(set, &chosen).await?,
            };
        }
        if let Selection::Ids(ids) = which
            && found >= ids.len()
        {
            break;
        }
    }
    Ok(done)
}
