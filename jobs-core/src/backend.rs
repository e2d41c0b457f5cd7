//! The storage contract between [`Client`](crate::Client), [`Worker`](crate::Worker)
//! and a broker. [`MemoryBackend`](crate::MemoryBackend) and `jobs_redis::RedisBackend`
//! implement it with the same semantics; one conformance suite checks both.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How far ahead [`deadline_after`] reaches at most: a year, which any
/// timeout a person means fits in, and the runtime's timers can wait for.
pub const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The instant `timeout` from now, for backends that wait: at most
/// [`LONGEST_WAIT`] ahead, so that `Duration::MAX` (a wait "for ever") waits
/// a year instead of overflowing the clock.
///
/// ```
/// use std::time::Duration;
/// let before = tokio::time::Instant::now();
/// let deadline = jobs_core::deadline_after(Duration::MAX); // no overflow
/// assert!(deadline >= before + jobs_core::LONGEST_WAIT);
/// ```
pub fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout.min(LONGEST_WAIT)
}

use crate::error::BackendError;
use crate::job::{BoxFuture, JobId};
use crate::outcome::OutcomeRecord;

/// A job on its way into the backend.
#[derive(Clone, Debug)]
pub struct PushJob {
    /// The job's id.
    pub jid: JobId,
    /// The queue it goes to now. A job scheduled for later goes, when due, to
    /// the queue its payload names (`default` when it names none), as retried
    /// and deferred jobs do: the payload is the record (`docs/PROTOCOL.md`).
    pub queue: String,
    /// The encoded [`Envelope`](crate::Envelope).
    pub payload: String,
    /// Milliseconds since the Unix epoch; `None` runs as soon as possible.
    pub run_at: Option<u64>,
    /// A uniqueness lock taken atomically with the push.
    pub unique: Option<UniqueLock>,
}

/// A lock that refuses identical jobs for a while (`unique_for`).
#[derive(Clone, Debug)]
pub struct UniqueLock {
    /// The job name and canonical arguments.
    pub key: String,
    /// How long the lock holds.
    pub ttl: Duration,
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Indices (into the pushed batch) of jobs refused by their uniqueness lock.
    pub duplicates: Vec<usize>,
}

/// How many jobs a fetch may take from one queue, in the order to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueTake {
    /// The queue's name.
    pub queue: String,
    /// At most this many from it.
    pub max: usize,
}

/// A fetch: take up to `max` jobs, trying `queues` in order.
#[derive(Clone, Debug)]
pub struct FetchRequest<'a> {
    /// The queues in the order to try, each with its own limit.
    pub queues: &'a [QueueTake],
    /// At most this many jobs in all.
    pub max: usize,
    /// The fetching worker, written into each lease token.
    pub worker: &'a WorkerId,
    /// How long the lease lasts unless extended.
    pub lease: Duration,
}

/// A job handed to a worker, with the lease that fences every later write.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The payload as it was stored (it may be malformed: the worker decides).
    pub payload: String,
    /// The lease on it.
    pub lease: Lease,
    /// A cancellation request holds for this job ([`Backend::cancel`]): the
    /// worker settles it as cancelled instead of running it.
    pub cancelled: bool,
    /// Why the backend could not read the stored payload exactly (bytes that
    /// are not UTF-8, shown as U+FFFD in `payload`): the worker dead-letters
    /// the job with this reason instead of running it on altered arguments.
    pub unreadable: Option<String>,
}

/// An event for the event stream, as JSON ([`Event`](crate::Event)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// The event as JSON.
    pub json: String,
}

/// Events read from the stream, with where to read on from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// The position after the last event returned (or the stream's end when
    /// none was): the next read's `after`.
    pub cursor: String,
    /// `(id, json)` per event, oldest first.
    pub events: Vec<(String, String)>,
}

/// A worker's claim on an in-flight job. Every write that settles the job
/// (complete, retry, dead, put back, extend) succeeds only while the token
/// still matches: a worker whose lease was taken over cannot touch the job.
///
/// The queue and the token are shared (`Arc<str>`): the jobs of one fetch
/// carry the same ones, and a worker copies each lease for its heartbeat, so
/// neither costs an allocation per job.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The backend's key for the in-flight entry.
    pub id: String,
    /// The queue it came from.
    pub queue: Arc<str>,
    /// The fencing token: the worker's id and a sequence number, unique per
    /// fetch. Jobs fetched together may share one token (Redis leases a
    /// fetch's jobs together).
    pub token: Arc<str>,
}

/// A worker process's identity, generated at start so replicas never share one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WorkerId(String);

impl WorkerId {
    /// A fresh identity: host name, process id and 32 random bits.
    pub fn generate() -> Self {
        Self(format!("{}:{}:{:08x}", host_name(), std::process::id(), fastrand::u32(..)))
    }

    /// The identity as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The machine's name, as `stats` shows it in worker ids: `HOSTNAME` when
/// set (shells set it without exporting it), else the kernel's, else `host`.
/// Only letters, digits, `.`, `-` and `_` are kept: `:` and `/` separate the
/// parts of ids and lease tokens.
fn host_name() -> String {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let named = std::env::var("HOSTNAME")
        .ok()
        .into_iter()
        .chain(["/proc/sys/kernel/hostname", "/etc/hostname"].iter().filter_map(|path| read(path)));
    named
        .map(|name| {
            name.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')).collect::<String>()
        })
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({})", self.0)
    }
}

/// The sets a job can be in, for inspection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobSet {
    /// Ready to run, in this queue.
    Queue(String),
    /// Enqueued to run later (`perform_in`, `perform_at`, deferred newer versions).
    Scheduled,
    /// Failed and waiting for its next attempt.
    Retry,
    /// Out of attempts, or failed in a way retrying cannot fix.
    Dead,
    /// Fetched by a worker and not yet settled.
    InFlight,
}

impl fmt::Display for JobSet {
    /// How messages name the set: ``queue `mail` ``, `scheduled set`, `retry set`,
    /// `dead set`, `in-flight set`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobSet::Queue(name) => write!(f, "queue `{name}`"),
            JobSet::Scheduled => f.write_str("scheduled set"),
            JobSet::Retry => f.write_str("retry set"),
            JobSet::Dead => f.write_str("dead set"),
            JobSet::InFlight => f.write_str("in-flight set"),
        }
    }
}

impl JobSet {
    /// The error a backend gives when `operation` (`"requeue"`, `"remove"`) does
    /// not apply to this set, saying why.
    pub fn refuse(&self, operation: &str) -> BackendError {
        let why = match self {
            JobSet::InFlight => "they are leased by a running worker; stop one with `JobHandle::cancel`",
            JobSet::Queue(_) => "they are ready to run already",
            _ => "this set does not take it",
        };
        BackendError::permanent(format!("cannot {operation} jobs of the {self}: {why}"))
    }
}

/// One stored job, as listed by [`Backend::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredJob {
    /// The payload as stored; for one that is not UTF-8 (written by hand or by
    /// another program), the stand-in of [`StoredJob::not_utf8`].
    pub payload: String,
    /// When it is due (scheduled, retry), when it died (dead) or when its lease ends
    /// (in flight), in milliseconds since the Unix epoch; 0 for ready jobs.
    pub at: u64,
}

/// Starts the stand-in of a payload that is not UTF-8 (U+FFFF is no character, so
/// no JSON text starts with it).
const NOT_UTF8: &str = "\u{FFFF}not-utf8:";

impl StoredJob {
    /// A stored payload whose bytes are not UTF-8, listed under a stand-in:
    /// `payload` is `\u{FFFF}not-utf8:` and the bytes in hex, which
    /// [`Backend::requeue`] and [`Backend::remove`] map back with
    /// [`StoredJob::bytes_of`], so such a payload can be moved or deleted too.
    ///
    /// ```
    /// use jobs_core::StoredJob;
    ///
    /// let stored = StoredJob::not_utf8(b"\xff{", 7);
    /// assert_eq!(StoredJob::bytes_of(&stored.payload), b"\xff{".to_vec());
    /// assert_eq!(StoredJob::bytes_of("{}"), b"{}".to_vec());
    /// ```
    pub fn not_utf8(bytes: &[u8], at: u64) -> Self {
        use std::fmt::Write;
        let mut payload = String::with_capacity(NOT_UTF8.len() + 2 * bytes.len());
        payload.push_str(NOT_UTF8);
        for byte in bytes {
            let _ = write!(payload, "{byte:02x}");
        }
        StoredJob { payload, at }
    }

    /// A stored payload as a backend that holds bytes lists it: as text
    /// when it is UTF-8, under the [`not_utf8`](StoredJob::not_utf8)
    /// stand-in otherwise, and under a stand-in too when its text starts
    /// as one does (so that no stored text is ever read as another's
    /// stand-in).
    ///
    /// ```
    /// use jobs_core::StoredJob;
    ///
    /// assert_eq!(StoredJob::from_bytes(b"{}".to_vec(), 0).payload, "{}");
    /// let look_alike = "\u{FFFF}not-utf8:7b7d".as_bytes().to_vec();
    /// let listed = StoredJob::from_bytes(look_alike.clone(), 0);
    /// assert_eq!(StoredJob::bytes_of(&listed.payload), look_alike);
    /// ```
    pub fn from_bytes(bytes: Vec<u8>, at: u64) -> Self {
        match String::from_utf8(bytes) {
            Ok(payload) if !payload.starts_with(NOT_UTF8) => StoredJob { payload, at },
            Ok(payload) => Self::not_utf8(payload.as_bytes(), at),
            Err(error) => Self::not_utf8(error.as_bytes(), at),
        }
    }

    /// The bytes a listed payload stands for: those of a
    /// [`not_utf8`](StoredJob::not_utf8) stand-in, or the payload's own.
    pub fn bytes_of(payload: &str) -> Vec<u8> {
        Self::not_utf8_bytes(payload).unwrap_or_else(|| payload.as_bytes().to_vec())
    }

    /// The bytes of a [`not_utf8`](StoredJob::not_utf8) stand-in (lower-case
    /// hex, as it writes them); `None` for any other payload.
    pub fn not_utf8_bytes(payload: &str) -> Option<Vec<u8>> {
        let hex = payload.strip_prefix(NOT_UTF8)?.as_bytes();
        let digit = |d: u8| match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        };
        if hex.len() % 2 != 0 {
            return None;
        }
        hex.chunks(2).map(|pair| Some(digit(pair[0])? * 16 + digit(pair[1])?)).collect()
    }
}

/// Limits that keep the dead set from growing without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadLimits {
    /// At most this many dead jobs; the oldest go first.
    pub max_jobs: usize,
    /// Dead jobs older than this are dropped, when the next job dies (the
    /// set is trimmed as it grows, as Sidekiq trims its dead set).
    pub max_age: Duration,
}

impl Default for DeadLimits {
    /// 10,000 jobs for 180 days, as Sidekiq does.
    fn default() -> Self {
        Self { max_jobs: 10_000, max_age: Duration::from_secs(180 * 24 * 3600) }
    }
}

/// A job broker. Each method is one atomic step of the job's life.
///
/// Implementations must keep these promises, which the conformance suite checks:
/// a pushed batch is all-or-nothing; a fetched job stays leased until it is
/// settled or its lease expires; settling writes check the lease token and
/// report a stale one instead of applying it. `fetch` never blocks; a worker
/// that found nothing calls `wait_for_jobs`, which must be cancel-safe.
pub trait Backend: Send + Sync + 'static {
    /// Stores jobs, all or none; refuses those whose uniqueness lock is held.
    fn push(&self, jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>>;

    /// Stores jobs as [`push`](Backend::push) does and appends the `enqueued`
    /// event of each job it stored (`events[i]` belongs to `jobs[i]`; `None`,
    /// or a missing entry, for none). A backend that does both in one atomic
    /// step keeps a promise the default cannot: no reader sees a job's
    /// `started` before its `enqueued`. The default pushes, then records
    /// the events of the jobs stored; a lost event is logged, not an error.
    fn push_with_events(
        &self,
        jobs: Vec<PushJob>,
        events: Vec<Option<EventRecord>>,
    ) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
        Box::pin(async move {
            let outcome = self.push(jobs).await?;
            let stored: Vec<EventRecord> = events
                .into_iter()
                .enumerate()
                .filter(|(index, _)| !outcome.duplicates.contains(index))
                .filter_map(|(_, event)| event)
                .collect();
            if !stored.is_empty()
                && let Err(error) = self.record(&[], &stored).await
            {
                tracing::warn!(%error, count = stored.len(), "could not write enqueued events");
            }
            Ok(outcome)
        })
    }

    /// Leases up to `request.max` ready jobs at once, without blocking.
    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>>;

    /// Resolves when a job may be ready in one of `queues` (a push; a
    /// scheduled or retry job that became due, on a backend that promotes them
    /// itself: `MemoryBackend` does, `RedisBackend` leaves them to the
    /// workers' maintenance), or after `timeout`. Spurious wake-ups are allowed; a
    /// push that happened before the call must not be slept through. Dropping
    /// the future loses nothing.
    fn wait_for_jobs<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Ends the waits for jobs in progress on this backend now, as if their
    /// timeout came (a wait that carries a fetch still fetches): a worker
    /// that shuts down while idle stops at once instead of at the end of its
    /// wait. Other waiters see a spurious wake-up. The default does nothing:
    /// waits end at their timeout.
    fn end_waits(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Waits as [`wait_for_jobs`](Backend::wait_for_jobs) does, then fetches
    /// as [`fetch`](Backend::fetch) does: an idle worker's wait, which a
    /// backend may answer in one round trip instead of two. Dropping the
    /// future loses nothing: jobs that a dropped call leased go back to the
    /// head of their queues. The default waits, then fetches; a backend whose
    /// `fetch` can be interrupted midway should override it.
    fn wait_and_fetch<'a>(
        &'a self,
        queues: &'a [String],
        timeout: Duration,
        request: FetchRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        Box::pin(async move {
            self.wait_for_jobs(queues, timeout).await?;
            self.fetch(request).await
        })
    }

    /// Removes finished jobs. Returns, per lease, whether it still held its
    /// job (`false`: stale, not applied).
    fn complete<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>>;

    /// Replaces the job with `payload` in the retry set, due at `run_at` (ms).
    /// `false` when the lease was stale.
    fn retry<'a>(&'a self, lease: &'a Lease, payload: String, run_at: u64)
    -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Replaces the job with `payload` in the scheduled set, due at `run_at`,
    /// without it counting as a failure (a payload newer than the worker).
    /// `false` when the lease was stale.
    fn defer<'a>(&'a self, lease: &'a Lease, payload: String, run_at: u64)
    -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Moves the job, as `payload`, to the dead set. `false` when the lease was stale.
    fn kill<'a>(&'a self, lease: &'a Lease, payload: String) -> BoxFuture<'a, Result<bool, BackendError>>;

    /// Returns unfinished jobs to the front of their queue, as they were
    /// (a graceful shutdown). Returns how many leases were stale.
    fn put_back<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>>;

    /// Extends live leases by `lease`; the result says, per lease, whether it is still held.
    fn extend<'a>(&'a self, leases: &'a [Lease], lease: Duration) -> BoxFuture<'a, Result<Vec<bool>, BackendError>>;

    /// Takes over up to about `max` jobs whose lease expired (their worker died),
    /// leasing them to `worker`. The caller treats each as a failed attempt. A
    /// backend that leases a fetch's jobs together takes whole leases, so it
    /// may return more than `max`.
    fn rescue<'a>(
        &'a self,
        worker: &'a WorkerId,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>>;

    /// Moves scheduled and retry jobs due by `until` (ms; `None`: now) to their queues.
    fn promote_due(&self, until: Option<u64>) -> BoxFuture<'_, Result<usize, BackendError>>;

    /// Lists up to `limit` jobs of a set, from `offset`, oldest (or soonest) first.
    fn list<'a>(
        &'a self,
        set: &'a JobSet,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredJob>, BackendError>>;

    /// Moves jobs of the scheduled, retry or dead set, given by their payloads as
    /// [`list`](Backend::list) returned them, to the end of their queue, to run
    /// now (the queue named in the payload; `default` when it names none). A
    /// payload no longer in `set` (it ran, moved or was removed meanwhile) is
    /// skipped, so a job is never queued twice. A job moved out of the dead set
    /// loses its stored outcome (dead), so [`JobHandle::wait`](crate::JobHandle::wait)
    /// waits for the new run. Returns how many moved. A queue or the in-flight
    /// set is refused with a permanent error ([`JobSet::refuse`]), whatever the
    /// payloads, none included (callers ask with none to learn it up front).
    /// Optional: the default refuses every set.
    fn requeue<'a>(&'a self, set: &'a JobSet, payloads: &'a [String]) -> BoxFuture<'a, Result<usize, BackendError>> {
        let _ = payloads;
        Box::pin(std::future::ready(Err(BackendError::permanent(format!(
            "this backend cannot move jobs of the {set} back to their queue"
        )))))
    }

    /// Deletes jobs of a queue, the scheduled, retry or dead set, given by their
    /// payloads as [`list`](Backend::list) returned them; a payload no longer in
    /// `set` is skipped. Returns how many were deleted. The in-flight set is
    /// refused with a permanent error, whatever the payloads (none included): a running job is stopped by
    /// [`cancel`](Backend::cancel), not deleted under its worker. Optional: the
    /// default refuses every set.
    fn remove<'a>(&'a self, set: &'a JobSet, payloads: &'a [String]) -> BoxFuture<'a, Result<usize, BackendError>> {
        let _ = payloads;
        Box::pin(std::future::ready(Err(BackendError::permanent(format!(
            "this backend cannot delete jobs of the {set}"
        )))))
    }

    /// Frees the uniqueness lock `key` (a [`UniqueLock`]'s) if the job `jid`
    /// took it and it still holds: the worker calls it when it settles a job
    /// as cancelled, so that an identical job can be enqueued at once.
    /// Returns whether it freed it. Optional: the default frees nothing, and
    /// the lock then lasts its `unique_for`.
    fn release_unique<'a>(&'a self, key: &'a str, jid: &'a JobId) -> BoxFuture<'a, Result<bool, BackendError>> {
        let _ = (key, jid);
        Box::pin(std::future::ready(Ok(false)))
    }

    /// Counts the jobs of a set.
    fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>>;

    /// The names of the queues that hold or held jobs (a push named them), sorted;
    /// a listed queue may be empty now. Inspection ([`census`](crate::census()), `stats`)
    /// pages through [`JobSet::Queue`] of each.
    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>>;

    /// Records that `worker` is alive for the next `ttl` (liveness for `stats`).
    /// Optional: the default records nothing.
    fn heartbeat<'a>(&'a self, worker: &'a WorkerId, ttl: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = (worker, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Stores outcomes, each under its job id for its ttl (a final one wakes
    /// [`wait_outcome`](Backend::wait_outcome) callers), and appends events to
    /// the capped event stream, in one step.
    fn record<'a>(
        &'a self,
        outcomes: &'a [OutcomeRecord],
        events: &'a [EventRecord],
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// The stored outcome of `jid` (JSON of [`Outcome`](crate::Outcome)), if any.
    fn outcome<'a>(&'a self, jid: &'a JobId) -> BoxFuture<'a, Result<Option<String>, BackendError>>;

    /// Waits up to `timeout` for a final outcome of `jid` and returns it, or
    /// `None` at the timeout; returns at once when one is already stored. It
    /// blocks on the wake-up `record` sends rather than polling (a backend
    /// may poll beyond a cap on blocked waits, as Redis does past
    /// `RedisConfig::max_waits`).
    fn wait_outcome<'a>(
        &'a self,
        jid: &'a JobId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>>;

    /// Records a request to cancel `jid`, holding until `until` (ms).
    fn cancel<'a>(&'a self, jid: &'a JobId, until: u64) -> BoxFuture<'a, Result<(), BackendError>>;

    /// For each job id, whether a cancellation request holds for it.
    fn cancel_requested<'a>(&'a self, jids: &'a [JobId]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>>;

    /// Reads up to `max` events after `after` (an event id, or `None` for the
    /// stream's current end), waiting up to `block` when there is none yet.
    /// With `max` 0 it reads nothing and returns at once: the cursor is then
    /// the position to read on from (how [`Client::events`](crate::Client::events) fixes its start).
    fn read_events<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<EventBatch, BackendError>>;

    /// Records that `worker` stopped. Optional: the default records nothing.
    fn retire<'a>(&'a self, worker: &'a WorkerId) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = worker;
        Box::pin(std::future::ready(Ok(())))
    }

    /// A handle on the same store that depends on no runtime but the one
    /// that uses it (its connections are opened and driven there), or `None`
    /// when there is none. A worker extends its leases through it, on a
    /// thread of its own, so that job bodies blocking every thread of the
    /// worker's runtime cannot let a lease lapse and a running job be run
    /// again by another worker. Optional: with the default (`None`), leases
    /// are extended on the worker's runtime.
    fn detached(&self) -> Option<Arc<dyn Backend>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_id_names_the_machine_it_runs_on() {
        let id = WorkerId::generate();
        let parts: Vec<&str> = id.as_str().split(':').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[1], std::process::id().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        match (std::env::var("HOSTNAME").ok(), kernel) {
            (Some(exported), _) if !exported.is_empty() => assert!(exported.starts_with(parts[0]), "{id}"),
            (_, Some(kernel)) => assert_eq!(parts[0], kernel.trim(), "the kernel's name, not a placeholder"),
            _ => assert!(!parts[0].is_empty()),
        }
        assert!(!parts[0].contains('/'), "{id}");
    }

    /// Two workers of one deployment, even in one process, never share an
    /// identity (nor, then, a heartbeat or a lease token).
    #[test]
    fn every_worker_id_is_its_own() {
        let ids: std::collections::HashSet<WorkerId> = (0..1_000).map(|_| WorkerId::generate()).collect();
        assert_eq!(ids.len(), 1_000);
    }
}
