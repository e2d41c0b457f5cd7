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
//! "retry now" and Oban's `retry_job` do the same); its stored outcome is
//! forgotten, so a [`JobHandle::wait`](crate::JobHandle::wait) waits for the
//! new run.
//!
//! An operation walks the set in pages, by position, and takes each job at
//! most once, even one that fails again and returns to the set meanwhile.
//! Jobs that enter the set during the walk may or may not be taken, and jobs
//! that leave its front meanwhile (workers taking from a queue, the promoter
//! taking due retries, the dead set trimming its oldest) can make it step over
//! a few: run the operation again. Selecting ids in a queue reads the queue up
//! to where they are, a page per round trip, so on a long queue prefer
//! deleting by name or before the jobs pile up.

use std::collections::HashSet;

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
        let parsed = match StoredJob::not_utf8_bytes(&payload) {
            Some(_) => Err("not valid UTF-8 (JSON must be)".to_owned()),
            None => Envelope::from_json(&payload).map_err(|error| error.to_string()),
        };
        match parsed {
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
    /// Every job of any of these names: a job's name and its aliases, so that
    /// payloads written before a rename are taken too.
    Jobs(Vec<String>),
    /// These jobs.
    Ids(Vec<JobId>),
}

impl Selection {
    /// The names of a registered job (`name` or one of its aliases): its name
    /// and every alias; just `name` when no job of `registry` answers to it.
    ///
    /// ```
    /// use jobs_core::admin::Selection;
    ///
    /// let registry = jobs_core::Registry::from_jobs(Vec::new()).unwrap();
    /// assert_eq!(Selection::job_of(&registry, "nightly"), Selection::Job("nightly".into()));
    /// ```
    pub fn job_of(registry: &crate::Registry, name: &str) -> Selection {
        match registry.get(name) {
            Some(job) if !job.aliases.is_empty() => Selection::Jobs(
                std::iter::once(job.name).chain(job.aliases.iter().copied()).map(str::to_owned).collect(),
            ),
            Some(job) => Selection::Job(job.name.to_owned()),
            None => Selection::Job(name.to_owned()),
        }
    }

    /// Whether the selection takes `entry`.
    pub fn takes(&self, entry: &JobEntry) -> bool {
        match self {
            Selection::All => true,
            Selection::Job(name) => entry.job == *name,
            Selection::Jobs(names) => names.contains(&entry.job),
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

/// The last `limit` jobs named `job` in a set, newest (or latest due) first,
/// read backwards a page at a time until `limit` are found or the set ends.
pub async fn newest_named<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    job: &str,
    limit: usize,
) -> Result<Vec<JobEntry>, BackendError> {
    newest_selected(backend, set, &Selection::Job(job.to_owned()), limit).await
}

/// The last `limit` jobs of a set that `which` takes, newest (or latest due)
/// first, read backwards a page at a time until `limit` are found or the set ends.
pub async fn newest_selected<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    which: &Selection,
    limit: usize,
) -> Result<Vec<JobEntry>, BackendError> {
    let mut end = backend.count(set).await?;
    let mut found = Vec::new();
    while end > 0 && found.len() < limit {
        let start = end.saturating_sub(PAGE);
        let page = entries(backend, set, start, end - start).await?;
        found.extend(page.into_iter().rev().filter(|entry| which.takes(entry)));
        end = start;
    }
    found.truncate(limit);
    Ok(found)
}

/// The first `limit` jobs named `job` in a set, oldest (or soonest due)
/// first, read a page at a time until `limit` are found or the set ends.
pub async fn first_named<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    job: &str,
    limit: usize,
) -> Result<Vec<JobEntry>, BackendError> {
    first_selected(backend, set, &Selection::Job(job.to_owned()), limit).await
}

/// The first `limit` jobs of a set that `which` takes, oldest (or soonest
/// due) first, read a page at a time until `limit` are found or the set ends.
pub async fn first_selected<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    which: &Selection,
    limit: usize,
) -> Result<Vec<JobEntry>, BackendError> {
    let mut found = Vec::new();
    let mut offset = 0;
    while found.len() < limit {
        let page = entries(backend, set, offset, PAGE).await?;
        let read = page.len();
        found.extend(page.into_iter().filter(|entry| which.takes(entry)));
        if read < PAGE {
            break;
        }
        offset += read;
    }
    found.truncate(limit);
    Ok(found)
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

async fn act<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    action: Action,
    payloads: &[String],
) -> Result<usize, BackendError> {
    match action {
        Action::Requeue => backend.requeue(set, payloads).await,
        Action::Remove => backend.remove(set, payloads).await,
    }
}

/// Pages through `set` once, acting on the selected jobs of each page.
async fn walk<B: Backend + ?Sized>(
    backend: &B,
    set: &JobSet,
    which: &Selection,
    action: Action,
) -> Result<usize, BackendError> {
    // The backend decides which sets it refuses, whatever the payloads: asking with
    // none refuses an empty set as a full one, at no cost.
    act(backend, set, action, &[]).await?;
    if matches!(which, Selection::Ids(ids) if ids.is_empty()) {
        return Ok(0);
    }
    // Jobs that arrive during the walk may shift the pages; looking at no more
    // entries than the set held at the start (plus a page) keeps the walk finite.
    let budget = backend.count(set).await?.saturating_add(PAGE);
    // A job moved back that fails again returns to the set (at its end, for the
    // dead) as a new payload under the same id: it is taken once per walk.
    let mut handled: HashSet<String> = HashSet::new();
    let (mut offset, mut seen, mut done, mut found) = (0, 0, 0, 0);
    while seen < budget {
        let page = backend.list(set, offset, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let read = page.len();
        seen += read;
        let mut chosen = Vec::new();
        for entry in page.into_iter().map(JobEntry::read) {
            let id = if entry.jid.is_empty() { &entry.payload } else { &entry.jid };
            if which.takes(&entry) && handled.insert(id.clone()) {
                chosen.push(entry.payload);
            }
        }
        // The chosen leave the set; the others stay where they are, before the next page.
        offset += read - chosen.len();
        found += chosen.len();
        if !chosen.is_empty() {
            done += act(backend, set, action, &chosen).await?;
        }
        if let Selection::Ids(ids) = which
            && found >= ids.len()
        {
            break;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::{
        EventBatch, EventRecord, FetchRequest, Fetched, Lease, PushJob, PushOutcome, QueueTake, WorkerId,
    };
    use crate::job::BoxFuture;
    use crate::outcome::OutcomeRecord;
    use crate::{Client, MemoryBackend, RawJob};

    /// A broker whose every job moved back fails again at once and returns to
    /// the dead set, as a busy worker would make it do while a walk runs.
    struct FailsAgain(MemoryBackend);

    impl FailsAgain {
        async fn run_and_fail(&self, moved: usize) {
            let worker = WorkerId::generate();
            let takes = [QueueTake { queue: "default".into(), max: moved }];
            let request = FetchRequest { queues: &takes, max: moved, worker: &worker, lease: Duration::from_secs(30) };
            for job in self.0.fetch(request).await.unwrap() {
                let mut envelope = Envelope::from_json(&job.payload).unwrap();
                envelope.attempt += 1;
                envelope.queue = job.lease.queue.to_string();
                assert!(self.0.kill(&job.lease, envelope.to_json()).await.unwrap());
            }
        }
    }

    impl Backend for FailsAgain {
        fn requeue<'a>(
            &'a self,
            set: &'a JobSet,
            payloads: &'a [String],
        ) -> BoxFuture<'a, Result<usize, BackendError>> {
            Box::pin(async move {
                let moved = self.0.requeue(set, payloads).await?;
                self.run_and_fail(moved).await;
                Ok(moved)
            })
        }
        fn list<'a>(
            &'a self,
            set: &'a JobSet,
            offset: usize,
            limit: usize,
        ) -> BoxFuture<'a, Result<Vec<StoredJob>, BackendError>> {
            self.0.list(set, offset, limit)
        }
        fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>> {
            self.0.count(set)
        }
        fn push(&self, jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
            self.0.push(jobs)
        }
        fn fetch<'a>(&'a self, _: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn wait_for_jobs<'a>(&'a self, _: &'a [String], _: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn complete<'a>(&'a self, _: &'a [Lease]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn retry<'a>(&'a self, _: &'a Lease, _: String, _: u64) -> BoxFuture<'a, Result<bool, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn defer<'a>(&'a self, _: &'a Lease, _: String, _: u64) -> BoxFuture<'a, Result<bool, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn kill<'a>(&'a self, _: &'a Lease, _: String) -> BoxFuture<'a, Result<bool, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn put_back<'a>(&'a self, _: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn extend<'a>(&'a self, _: &'a [Lease], _: Duration) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn rescue<'a>(
            &'a self,
            _: &'a WorkerId,
            _: Duration,
            _: usize,
        ) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn promote_due(&self, _: Option<u64>) -> BoxFuture<'_, Result<usize, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn record<'a>(
            &'a self,
            _: &'a [OutcomeRecord],
            _: &'a [EventRecord],
        ) -> BoxFuture<'a, Result<(), BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn outcome<'a>(&'a self, _: &'a JobId) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn wait_outcome<'a>(
            &'a self,
            _: &'a JobId,
            _: Duration,
        ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn cancel<'a>(&'a self, _: &'a JobId, _: u64) -> BoxFuture<'a, Result<(), BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn cancel_requested<'a>(&'a self, _: &'a [JobId]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            unimplemented!("not used by a walk")
        }
        fn read_events<'a>(
            &'a self,
            _: Option<&'a str>,
            _: usize,
            _: Duration,
        ) -> BoxFuture<'a, Result<EventBatch, BackendError>> {
            unimplemented!("not used by a walk")
        }
    }

    // Each job moved back fails again and returns to the end of the dead set while
    // the walk goes on: the walk still takes it once, never twice.
    #[tokio::test]
    async fn a_job_that_fails_again_during_a_walk_is_taken_once() {
        let backend = FailsAgain(MemoryBackend::new());
        let client = Client::new(MemoryBackend::clone(&backend.0));
        for n in 0..3 {
            let args = serde_json::json!({ "n": n });
            client
                .enqueue_raw(RawJob { job: "flaky".into(), version: 1, queue: "default".into(), args })
                .await
                .unwrap();
        }
        backend.run_and_fail(3).await;
        assert_eq!(backend.count(&JobSet::Dead).await.unwrap(), 3);

        assert_eq!(requeue(&backend, &JobSet::Dead, &Selection::All).await.unwrap(), 3);
        let dead = entries(&backend, &JobSet::Dead, 0, 10).await.unwrap();
        assert_eq!(dead.iter().map(|e| e.attempt).collect::<Vec<_>>(), [2, 2, 2], "one more run each, no second");
    }
}
