//! Running one fetched job and settling it: decode, migrate, run with a
//! timeout and a panic guard, then complete, retry, defer or dead-letter.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::arg::Timestamp;
use crate::backend::{Backend, EventRecord, Fetched, Lease, WorkerId};
use crate::envelope::{Envelope, Malformed, decode, now_millis};
use crate::error::{BackendError, JobError};
use crate::job::{BoxFuture, CancelSignal, JobContext, JobId};
use crate::lock;
use crate::migrate::{Upgrade, upgrade};
use crate::outcome::{Event, EventKind, Outcome, OutcomeRecord};
use crate::registry::{JobRegistration, Registry};
use crate::retry::RetryPolicy;

/// Counters of what a worker did; [`WorkerReport`] is a snapshot of them.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub succeeded: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    pub deferred: AtomicU64,
    pub rescued: AtomicU64,
    pub put_back: AtomicU64,
    pub stale: AtomicU64,
    pub cancelled: AtomicU64,
}

/// What a worker did over a `drain` or a `run_until`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs that ran to success.
    pub succeeded: u64,
    /// Failed runs scheduled for another attempt.
    pub retried: u64,
    /// Jobs moved to the dead set.
    pub dead: u64,
    /// Payloads newer than this worker, put back for a newer one.
    pub deferred: u64,
    /// Jobs taken over from workers whose lease expired.
    pub rescued: u64,
    /// Unfinished jobs returned to their queue at shutdown.
    pub put_back: u64,
    /// Writes refused because the lease had passed to another worker.
    pub stale: u64,
    /// Jobs settled as cancelled (before they ran, or stopped by their cancellation).
    pub cancelled: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> WorkerReport {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WorkerReport {
            succeeded: get(&self.succeeded),
            retried: get(&self.retried),
            dead: get(&self.dead),
            deferred: get(&self.deferred),
            rescued: get(&self.rescued),
            put_back: get(&self.put_back),
            stale: get(&self.stale),
            cancelled: get(&self.cancelled),
        }
    }
}

/// `3 succeeded, 1 retried, 0 dead, 0 deferred for a newer worker`, then
/// those of `cancelled`, `rescued`, `put back` and `stale` that are not 0.
///
/// ```
/// let report = jobs_core::WorkerReport { succeeded: 3, cancelled: 1, ..Default::default() };
/// assert_eq!(report.to_string(), "3 succeeded, 0 retried, 0 dead, 0 deferred for a newer worker, 1 cancelled");
/// ```
impl std::fmt::Display for WorkerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { succeeded, retried, dead, deferred, rescued, put_back, stale, cancelled } = self;
        write!(f, "{succeeded} succeeded, {retried} retried, {dead} dead, {deferred} deferred for a newer worker")?;
        let extras = [
            (cancelled, "cancelled"),
            (rescued, "rescued from a stopped worker"),
            (put_back, "put back"),
            (stale, "stale writes refused"),
        ];
        for (count, what) in extras.into_iter().filter(|(count, _)| **count > 0) {
            write!(f, ", {count} {what}")?;
        }
        Ok(())
    }
}

impl WorkerReport {
    pub(crate) fn since(self, start: WorkerReport) -> WorkerReport {
        WorkerReport {
            succeeded: self.succeeded - start.succeeded,
            retried: self.retried - start.retried,
            dead: self.dead - start.dead,
            deferred: self.deferred - start.deferred,
            rescued: self.rescued - start.rescued,
            put_back: self.put_back - start.put_back,
            stale: self.stale - start.stale,
            cancelled: self.cancelled - start.cancelled,
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Runs fetched jobs for one worker.
pub(crate) struct Executor {
    pub backend: Arc<dyn Backend>,
    pub registry: Registry,
    pub retry: RetryPolicy,
    pub defer_delay: Duration,
    pub worker: WorkerId,
    pub stats: Stats,
    /// Whether lifecycle events are written.
    pub events: bool,
    warned_newer: Mutex<HashSet<(String, u32)>>,
    acks: Acks,
    /// The cancellation signals of the jobs running now, by id.
    running: Mutex<HashMap<JobId, CancelSignal>>,
    /// Those of the jobs a worker holds for a free slot (`fetch_ahead`).
    held: Mutex<HashMap<JobId, CancelSignal>>,
    /// How long a lease lasts from a write that confirmed it.
    lease: Duration,
    /// By lease token, when a fetch or a heartbeat last confirmed the lease
    /// held (the write's send time: the lease then lasts at least `lease`
    /// from it). An acknowledgement whose first write failed midway and
    /// whose retry finds the lease gone within that time was written by
    /// that first write: no one else could have taken the lease yet.
    /// With each, how many of its jobs are not yet acknowledged (a lease may
    /// cover a whole fetch): the entry goes with the last.
    confirmed: Mutex<HashMap<Arc<str>, (std::time::Instant, usize)>>,
}

/// Acknowledgements of finished jobs, written in batches: a job's slot is
/// free as soon as its body returns, and many acks share one round trip.
/// Outcomes and events of those jobs go in the same batch, written first.
#[derive(Default)]
struct Acks {
    pending: Mutex<Pending>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    /// Each finished job's lease, with the outcome and events to write once
    /// the acknowledgement shows the lease still held the job.
    done: Vec<(Lease, Option<OutcomeRecord>, Vec<EventRecord>)>,
    /// The leases of batches being written (and retried), for the heartbeat.
    writing: Vec<Arc<Vec<Lease>>>,
}

/// The most acknowledgements one write carries.
const ACK_BATCH: usize = 1000;

/// A write that carried at least this many acknowledgements means jobs end
/// faster than a round trip: the next write waits [`ACK_LINGER`] for more.
const ACK_BUSY: usize = 16;

/// How long a busy ack writer lets acknowledgements gather before it writes.
/// Slots do not wait for it (a job's slot is free when its body returns);
/// only the outcome, its events and the job's leaving the in-flight set do.
const ACK_LINGER: Duration = Duration::from_millis(1);

/// How long the ack writer waits before it tries again to write what the
/// backend would not take (after [`settle`]'s own tries, about 2.5 s).
const ACK_RETRY: Duration = Duration::from_secs(1);

/// How a run ended, short of success.
struct Failure {
    message: String,
    retryable: bool,
}

impl Executor {
    pub fn new(
        backend: Arc<dyn Backend>,
        registry: Registry,
        retry: RetryPolicy,
        defer_delay: Duration,
        worker: WorkerId,
        lease: Duration,
    ) -> Self {
        Self {
            backend,
            registry,
            retry,
            defer_delay,
            worker,
            stats: Stats::default(),
            events: false,
            warned_newer: Mutex::default(),
            acks: Acks::default(),
            running: Mutex::default(),
            held: Mutex::default(),
            lease,
            confirmed: Mutex::default(),
        }
    }

    /// Notes that a write sent at `sent` found `leases` held (a fetch that
    /// leased them, or a heartbeat that extended them: `prune`, which also
    /// forgets confirmations a lease old, that prove nothing any more). An
    /// acknowledgement counts its job off, so the map holds about the live
    /// leases.
    pub fn confirm<'a>(&self, leases: impl IntoIterator<Item = &'a Lease>, sent: std::time::Instant, prune: bool) {
        let mut listed: HashMap<&Arc<str>, usize> = HashMap::new();
        for lease in leases {
            *listed.entry(&lease.token).or_default() += 1;
        }
        let mut confirmed = lock(&self.confirmed);
        if prune {
            confirmed.retain(|_, (at, _)| at.elapsed() < self.lease);
        }
        for (token, jobs) in listed {
            let entry = confirmed.entry(Arc::clone(token)).or_insert((sent, 0));
            entry.0 = entry.0.max(sent);
            // A fetch lists each of its jobs once; a heartbeat lists those still unacknowledged.
            entry.1 = if prune { entry.1.max(jobs) } else { entry.1 + jobs };
        }
    }

    /// Whether `lease` still holds for certain: confirmed less than a lease
    /// ago (less a second for clocks), so no rescue can have taken it.
    fn surely_held(&self, lease: &Lease) -> bool {
        let margin = Duration::from_secs(1).min(self.lease / 4);
        lock(&self.confirmed)
            .get(&lease.token)
            .is_some_and(|(sent, _)| sent.elapsed().saturating_add(margin) < self.lease)
    }

    /// Runs one fetched job and settles it.
    pub async fn run(&self, fetched: Fetched) {
        let cancelled = fetched.cancelled;
        let Some((envelope, lease)) = self.open(fetched).await else { return };
        let job = self.registry.get(&envelope.job);
        if cancelled {
            return Box::pin(self.settle_cancelled(lease, &envelope, job, None)).await;
        }
        let Some(job) = job else {
            let message = format!(
                "unknown job `{}`: no job of that name or alias is registered in this worker (a newer deploy may know it)",
                envelope.job
            );
            return Box::pin(self.fail(&lease, envelope, None, Failure { message, retryable: true }, None)).await;
        };
        let signal = CancelSignal::default();
        let body = match prepare(job, &envelope, signal.clone()) {
            Ok(Some(body)) => body,
            Ok(None) => return Box::pin(self.defer(&lease, envelope, job)).await,
            Err(message) => {
                let failure = Failure { message, retryable: false };
                return Box::pin(self.fail(&lease, envelope, Some(job), failure, None)).await;
            }
        };
        let attempt = envelope.attempt.saturating_add(1);
        let keep = job.options.keep_result;
        if self.events {
            // Written before the run, so that a reader sees `started` before what follows.
            let events = self.event_records(&envelope, EventKind::Started, attempt, None, None);
            Box::pin(self.publish(&[], &events)).await;
        }
        lock(&self.running).insert(envelope.jid.clone(), signal.clone());
        let started = Instant::now();
        let result = run_guarded(job, body).await;
        lock(&self.running).remove(&envelope.jid);
        let took = Some(started.elapsed().as_millis() as u64);
        match result {
            Ok(value) => {
                let outcome = Outcome::Succeeded { value, attempt, finished_at: now_millis() };
                let outcomes = keep.map(|ttl| record(&envelope, &outcome, ttl));
                let events = self.event_records(&envelope, EventKind::Succeeded, attempt, took, None);
                self.complete(lease, outcomes, events).await
            }
            Err(_) if signal.is_tripped() => Box::pin(self.settle_cancelled(lease, &envelope, Some(job), took)).await,
            Err(failure) => Box::pin(self.fail(&lease, envelope, Some(job), failure, took)).await,
        }
    }

    /// Watches a job held for a free slot for cancellation, as the running
    /// ones are; returns the id to [`unwatch_held`](Self::unwatch_held) it
    /// by (none when the payload names none: it is buried when it runs).
    pub fn watch_held(&self, payload: &str) -> Option<JobId> {
        let jid = crate::envelope::jid_of(payload)?;
        lock(&self.held).insert(jid.clone(), CancelSignal::default());
        Some(jid)
    }

    /// Stops watching a held job; true when its cancellation was requested meanwhile.
    pub fn unwatch_held(&self, jid: &JobId) -> bool {
        lock(&self.held).remove(jid).is_some_and(|signal| signal.is_tripped())
    }

    /// Asks the backend which running and held jobs were cancelled and
    /// tells them (called at every heartbeat).
    pub async fn check_cancellations(&self) {
        let mut running: Vec<(JobId, CancelSignal)> =
            lock(&self.running).iter().map(|(jid, signal)| (jid.clone(), signal.clone())).collect();
        running.extend(lock(&self.held).iter().map(|(jid, signal)| (jid.clone(), signal.clone())));
        if running.is_empty() {
            return;
        }
        let jids: Vec<JobId> = running.iter().map(|(jid, _)| jid.clone()).collect();
        match self.backend.cancel_requested(&jids).await {
            Ok(flags) => {
                for ((jid, signal), requested) in running.iter().zip(flags) {
                    if requested && !signal.is_tripped() {
                        tracing::info!(%jid, "cancellation requested; telling the running job");
                        signal.trip();
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "could not check for cancelled jobs; checking again at the next heartbeat")
            }
        }
    }

    /// Settles a job as cancelled: removed, not retried, not dead.
    async fn settle_cancelled(
        &self,
        lease: Lease,
        envelope: &Envelope,
        job: Option<&JobRegistration>,
        took: Option<u64>,
    ) {
        // A job stopped while running reports that run; one that never started, the runs before.
        let attempt = if took.is_some() { envelope.attempt.saturating_add(1) } else { envelope.attempt };
        match settle(|| self.backend.complete(std::slice::from_ref(&lease))).await {
            Some(held) if held.first() == Some(&true) => {
                bump(&self.stats.cancelled);
                tracing::info!(job = %envelope.job, jid = %envelope.jid, "job cancelled");
                let outcome = Outcome::Cancelled { finished_at: now_millis() };
                let outcomes: Vec<OutcomeRecord> = job
                    .and_then(|job| job.options.keep_result)
                    .map(|ttl| record(envelope, &outcome, ttl))
                    .into_iter()
                    .collect();
                let events = self.event_records(envelope, EventKind::Cancelled, attempt, took, None);
                self.publish(&outcomes, &events).await;
                self.release_unique(envelope, job).await;
            }
            Some(_) => self.stale(&lease, &envelope.job),
            None => {}
        }
    }

    /// Frees the uniqueness lock a cancelled job took (its `unique_for`), so
    /// that an identical job can be enqueued at once: cancelling is how one
    /// says the queued job is not wanted.
    async fn release_unique(&self, envelope: &Envelope, job: Option<&JobRegistration>) {
        let Some(job) = job.filter(|job| job.options.unique_for.is_some()) else { return };
        let serde_json::Value::Object(args) = &envelope.args else { return };
        let key = crate::client::unique_key(job.name, args);
        if let Err(error) = self.backend.release_unique(&key, &envelope.jid).await {
            tracing::warn!(job = job.name, jid = %envelope.jid, %error, "could not free the uniqueness lock of a cancelled job; it lasts its unique_for");
        }
    }

    /// The event of `kind` for this job, if events are on.
    fn event_records(
        &self,
        envelope: &Envelope,
        kind: EventKind,
        attempt: u32,
        duration_ms: Option<u64>,
        error: Option<&str>,
    ) -> Vec<EventRecord> {
        if !self.events {
            return Vec::new();
        }
        let event = Event {
            id: String::new(),
            kind,
            jid: envelope.jid.clone(),
            job: envelope.job.clone(),
            version: envelope.version,
            queue: envelope.queue.clone(),
            attempt,
            duration_ms,
            error: error.map(str::to_owned),
            at: now_millis(),
        };
        vec![event.record()]
    }

    /// Writes outcomes and events now, retrying a few times; they are
    /// reports, so a backend that stays away loses them, never the job.
    async fn publish(&self, outcomes: &[OutcomeRecord], events: &[EventRecord]) {
        if outcomes.is_empty() && events.is_empty() {
            return;
        }
        if settle(|| self.backend.record(outcomes, events)).await.is_none() {
            tracing::error!(
                outcomes = outcomes.len(),
                events = events.len(),
                "could not record job outcomes and events"
            );
        }
    }

    /// Decodes a fetched payload (dead-lettering it when malformed) and fills
    /// in the queue it came from when the payload leaves it out.
    async fn open(&self, fetched: Fetched) -> Option<(Envelope, Lease)> {
        let Fetched { mut payload, lease, unreadable, cancelled } = fetched;
        // The dead entry of an unreadable payload, retried from the dead set: what runs
        // (or is buried again, as it was) is the original it keeps, never the entry itself.
        let mut decoded = decode(&payload);
        // An original with no readable id is buried again under its entry's: `dead retry <jid>`
        // leaves the entry where an admin (or a script) finds it, under the same id.
        let mut entry_jid = None;
        // Stored bytes the backend could not read exactly never run on altered arguments
        // (a cancelled job is settled as cancelled all the same: its id reads).
        if let Some(reason) = unreadable.filter(|_| !cancelled) {
            decoded = Err(unrunnable(&decoded, reason));
        }
        for _ in 0..MAX_BURIED_DEPTH {
            if matches!(&decoded, Err(malformed) if malformed.unreadable) {
                break;
            }
            let Some((original, jid, unreadable)) = buried_original(&payload, &decoded) else { break };
            if entry_jid.is_none() {
                entry_jid = jid;
            }
            decoded = decode(&original);
            payload = original;
            if let Some(reason) = unreadable {
                // Buried because its bytes were not UTF-8: buried again as it was.
                decoded = Err(unrunnable(&decoded, reason));
            }
        }
        match decoded {
            Ok(mut envelope) => {
                if envelope.queue.is_empty() {
                    envelope.queue.push_str(&lease.queue);
                }
                Some((envelope, lease))
            }
            Err(mut malformed) => {
                if malformed.jid.is_none() {
                    malformed.jid = entry_jid;
                }
                Box::pin(self.bury_malformed(&lease, &payload, malformed)).await;
                None
            }
        }
    }

    /// Settles a job whose previous worker's lease expired: that run counts as a failed attempt.
    pub async fn rescued(&self, fetched: Fetched) {
        bump(&self.stats.rescued);
        let cancelled = fetched.cancelled;
        let Some((envelope, lease)) = self.open(fetched).await else { return };
        let job = self.registry.get(&envelope.job);
        if cancelled {
            return self.settle_cancelled(lease, &envelope, job, None).await;
        }
        let message = "lease expired: the worker running it stopped heartbeating (killed, or cut off from Redis longer than the lease)".to_owned();
        self.fail(&lease, envelope, job, Failure { message, retryable: true }, None).await;
    }

    async fn complete(&self, lease: Lease, outcome: Option<OutcomeRecord>, events: Vec<EventRecord>) {
        {
            let mut pending = lock(&self.acks.pending);
            pending.done.push((lease, outcome, events));
        }
        self.acks.ready.notify_one();
    }

    /// The leases of finished jobs whose acknowledgement is not written yet:
    /// the heartbeat keeps them until it is, so that a runtime blocked before
    /// the ack writer runs does not let them lapse (and the jobs run again).
    pub fn unacknowledged(&self) -> Vec<Lease> {
        let pending = lock(&self.acks.pending);
        let writing = pending.writing.iter().flat_map(|batch| batch.iter());
        pending.done.iter().map(|(lease, _, _)| lease).chain(writing).cloned().collect()
    }

    /// Writes pending acknowledgements, one round trip per batch, until none
    /// is left; returns how many the first write carried.
    /// A batch the backend would not take is dropped (with an error): its
    /// jobs run again once their leases expire.
    pub async fn flush_acks(&self) -> usize {
        self.flush(false).await.0
    }

    /// Writes pending acknowledgements as [`flush_acks`](Self::flush_acks)
    /// does; with `keep`, a batch the backend would not take goes back to the
    /// head of the buffer and the flush stops there. Returns how many the
    /// first write carried, and whether a write failed.
    async fn flush(&self, keep: bool) -> (usize, bool) {
        let mut first = None;
        loop {
            let (batch, reports): (Vec<Lease>, Vec<_>) = {
                let mut pending = lock(&self.acks.pending);
                let take = pending.done.len().min(ACK_BATCH);
                pending.done.drain(..take).map(|(lease, outcome, events)| (lease, (outcome, events))).unzip()
            };
            if batch.is_empty() {
                return (first.unwrap_or(0), false);
            }
            first.get_or_insert(batch.len());
            // Seen by the heartbeat while it is written, and retried: the leases stay extended.
            let batch = Arc::new(batch);
            lock(&self.acks.pending).writing.push(Arc::clone(&batch));
            let failed_once = std::sync::atomic::AtomicBool::new(false);
            let written = settle(|| {
                let write = self.backend.complete(&batch);
                let failed_once = &failed_once;
                Box::pin(async move {
                    let written = write.await;
                    if written.is_err() {
                        failed_once.store(true, Ordering::Relaxed);
                    }
                    written
                })
            })
            .await;
            lock(&self.acks.pending).writing.retain(|writing| !Arc::ptr_eq(writing, &batch));
            let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| shared.as_ref().clone());
            match written {
                Some(mut held) => {
                    // A write that failed midway (a timeout) may have been applied: its retry
                    // then finds the lease gone. Within a lease of the last confirmation no
                    // one else can have taken it, so the first write did: the job succeeded.
                    if failed_once.load(Ordering::Relaxed) {
                        for (held, lease) in held.iter_mut().zip(&batch) {
                            *held = *held || self.surely_held(lease);
                        }
                    }
                    {
                        let mut confirmed = lock(&self.confirmed);
                        for (lease, _) in batch.iter().zip(&held).filter(|(_, held)| **held) {
                            if let Some((_, jobs)) = confirmed.get_mut(&lease.token) {
                                *jobs = jobs.saturating_sub(1);
                                if *jobs == 0 {
                                    confirmed.remove(&lease.token);
                                }
                            }
                        }
                    }
                    // Outcomes only for the jobs this worker still held: a stale
                    // worker must not report a success over the live run's.
                    let (mut outcomes, mut events) = (Vec::new(), Vec::new());
                    for ((outcome, job_events), held) in reports.into_iter().zip(&held) {
                        if *held {
                            outcomes.extend(outcome);
                            events.extend(job_events);
                        }
                    }
                    let stale = held.iter().filter(|held| !**held).count();
                    self.stats.succeeded.fetch_add((held.len() - stale) as u64, Ordering::Relaxed);
                    if stale > 0 {
                        self.stats.stale.fetch_add(stale as u64, Ordering::Relaxed);
                        tracing::warn!(
                            stale,
                            "leases were taken over (by another worker, or this one's rescue), or lost with the backend's data; those results were refused"
                        );
                    }
                    self.publish(&outcomes, &events).await;
                }
                None if keep => {
                    tracing::warn!(count = batch.len(), retry_in = ?ACK_RETRY, "could not acknowledge finished jobs yet");
                    let mut pending = lock(&self.acks.pending);
                    let kept =
                        batch.into_iter().zip(reports).map(|(lease, (outcome, events))| (lease, outcome, events));
                    pending.done.splice(0..0, kept);
                    return (first.unwrap_or(0), true);
                }
                None => tracing::error!(
                    count = batch.len(),
                    "could not acknowledge finished jobs; they run again when their leases expire"
                ),
            }
        }
    }

    /// Flushes acknowledgements as they come; after `stop`, flushes what is
    /// left and returns. A flush in progress is never cancelled, so no batch
    /// taken from the buffer is lost. Under load (the last write carried
    /// [`ACK_BUSY`] or more) it lets [`ACK_LINGER`] pass before each write, so
    /// that one round trip carries many acknowledgements; `stop` cuts the wait
    /// short. While the backend is away it keeps what it could not write and
    /// tries again every [`ACK_RETRY`] (the heartbeat keeps extending those
    /// jobs' leases): an outage shorter than a lease reruns no finished job,
    /// and a late acknowledgement is fenced like any other.
    pub async fn ack_loop(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (mut busy, mut failing) = (false, false);
        loop {
            let wait = async {
                if failing {
                    tokio::time::sleep(ACK_RETRY).await;
                    return;
                }
                self.acks.ready.notified().await;
                if busy {
                    tokio::time::sleep(ACK_LINGER).await;
                }
            };
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = wait => {}
            }
            let first;
            (first, failing) = self.flush(true).await;
            busy = first >= ACK_BUSY;
        }
        self.flush_acks().await;
    }

    async fn fail(
        &self,
        lease: &Lease,
        mut envelope: Envelope,
        job: Option<&JobRegistration>,
        failure: Failure,
        took: Option<u64>,
    ) {
        let keep = job.and_then(|job| job.options.keep_result);
        let now = now_millis();
        let retries = job.and_then(|job| job.options.retries).unwrap_or(self.retry.retries);
        let attempt = envelope.attempt.saturating_add(1);
        envelope.attempt = attempt;
        envelope.error = Some(failure.message.clone());
        envelope.failed_at = Some(now);
        let payload = envelope.to_json();
        let name = envelope.job.as_str();
        if failure.retryable && attempt <= retries {
            let delay = self.retry.delay(attempt - 1);
            let run_at = crate::envelope::millis_after(now, delay);
            match settle(|| self.backend.retry(lease, payload.clone(), run_at)).await {
                Some(true) => {
                    bump(&self.stats.retried);
                    tracing::warn!(job = name, jid = %envelope.jid, attempt, retry_in = ?delay, error = %failure.message, "job failed; will retry");
                    let outcome = Outcome::Retrying { error: failure.message.clone(), attempt, retry_at: run_at };
                    self.report_failure(&envelope, keep, outcome, EventKind::Retrying, took, &failure.message).await;
                }
                Some(false) => self.stale(lease, name),
                None => {}
            }
        } else {
            match settle(|| self.backend.kill(lease, payload.clone())).await {
                Some(true) => {
                    bump(&self.stats.dead);
                    tracing::error!(job = name, jid = %envelope.jid, attempt, error = %failure.message, "job moved to the dead set");
                    let outcome = Outcome::Dead { error: failure.message.clone(), attempt, finished_at: now };
                    self.report_failure(&envelope, keep, outcome, EventKind::Dead, took, &failure.message).await;
                }
                Some(false) => self.stale(lease, name),
                None => {}
            }
        }
    }

    /// Records a failed run: its outcome (when kept), a `failed` event and
    /// the event of what comes next (`retrying` or `dead`).
    async fn report_failure(
        &self,
        envelope: &Envelope,
        keep: Option<Duration>,
        outcome: Outcome,
        next: EventKind,
        took: Option<u64>,
        error: &str,
    ) {
        let attempt = envelope.attempt;
        let outcomes: Vec<_> = keep.map(|ttl| record(envelope, &outcome, ttl)).into_iter().collect();
        let mut events = self.event_records(envelope, EventKind::Failed, attempt, took, Some(error));
        events.extend(self.event_records(envelope, next, attempt, None, Some(error)));
        self.publish(&outcomes, &events).await;
    }

    async fn defer(&self, lease: &Lease, mut envelope: Envelope, job: &JobRegistration) {
        let first = self
            .warned_newer
            .lock()
            .map(|mut seen| seen.insert((job.name.to_owned(), envelope.version)))
            .unwrap_or(true);
        if first {
            tracing::warn!(
                job = job.name,
                payload_version = envelope.version,
                known_version = job.version,
                "payload is newer than this worker's code; putting it back for a newer worker"
            );
        }
        envelope.deferred = envelope.deferred.saturating_add(1);
        let run_at = crate::envelope::millis_after(now_millis(), self.defer_delay);
        let payload = envelope.to_json();
        match settle(|| self.backend.defer(lease, payload.clone(), run_at)).await {
            Some(true) => bump(&self.stats.deferred),
            Some(false) => self.stale(lease, job.name),
            None => {}
        }
    }

    async fn bury_malformed(&self, lease: &Lease, payload: &str, malformed: Malformed) {
        let message = malformed.message();
        // A valid envelope, so dead-set tooling can read every entry; the original bytes ride along.
        let mut extra = serde_json::Map::new();
        extra.insert("payload".to_owned(), serde_json::Value::String(payload.to_owned()));
        if malformed.unreadable {
            // The text kept is not the original bytes: a retry buries it again.
            extra.insert(UNREADABLE_FIELD.to_owned(), serde_json::Value::String(malformed.reason.clone()));
        }
        let record = Envelope {
            jid: malformed.jid.map_or_else(JobId::new, JobId::from),
            job: malformed.job.unwrap_or_default(),
            // The payload's own when it reads, so that `versions` counts the entry there.
            version: malformed.version.unwrap_or(1),
            queue: lease.queue.to_string(),
            args: serde_json::Value::Object(serde_json::Map::new()),
            attempt: 1,
            enqueued_at: 0,
            error: Some(message.clone()),
            failed_at: Some(now_millis()),
            deferred: 0,
            extra,
        };
        match settle(|| self.backend.kill(lease, record.to_json())).await {
            Some(true) => {
                bump(&self.stats.dead);
                tracing::error!(queue = %lease.queue, error = %message, "malformed payload moved to the dead set");
            }
            Some(false) => self.stale(lease, "?"),
            None => {}
        }
    }

    fn stale(&self, lease: &Lease, job: &str) {
        bump(&self.stats.stale);
        tracing::warn!(
            job,
            lease = %lease.token,
            "lease was taken over (by another worker, or this one's rescue), or lost with the backend's data; this run's result was refused"
        );
    }
}

/// How many dead entries of unreadable payloads, one inside the other, a
/// worker opens to reach the original (entries retried before workers opened
/// them were buried again whole).
const MAX_BURIED_DEPTH: usize = 8;

/// The original bytes that the dead entry of an unreadable payload keeps in
/// its `payload` field, beside its `error` (see `bury_malformed`), when
/// `payload` is such an entry, with the entry's id. A payload that reads as
/// an envelope is looked into only when it carries an error and fields
/// beyond the envelope's own, so the common case costs nothing.
/// Also the reason the original was unreadable, when the entry says so.
fn buried_original(
    payload: &str,
    decoded: &Result<Envelope, Malformed>,
) -> Option<(String, Option<String>, Option<String>)> {
    if matches!(decoded, Ok(envelope) if envelope.extra.is_empty() || envelope.error.is_none()) {
        return None;
    }
    let serde_json::Value::Object(entry) = serde_json::from_str(payload).ok()? else { return None };
    entry.get("error")?.as_str()?;
    let original = entry.get("payload")?.as_str()?.to_owned();
    let jid = entry.get("jid").and_then(serde_json::Value::as_str).filter(|jid| !jid.is_empty()).map(str::to_owned);
    let unreadable = entry.get(UNREADABLE_FIELD).and_then(serde_json::Value::as_str).map(str::to_owned);
    Some((original, jid, unreadable))
}

/// The field of a dead entry whose original was not UTF-8: the reason.
const UNREADABLE_FIELD: &str = "unreadable";

/// `decoded` (what could be read of it) as a payload that must not run: `reason`.
fn unrunnable(decoded: &Result<Envelope, Malformed>, reason: String) -> Malformed {
    let (jid, job, version) = match decoded {
        Ok(envelope) => (Some(envelope.jid.to_string()), Some(envelope.job.clone()), Some(envelope.version)),
        Err(malformed) => (malformed.jid.clone(), malformed.job.clone(), malformed.version),
    };
    Malformed { jid, job, version, reason, unreadable: true }
}

/// Migrates and decodes the arguments and starts the body: `Ok(None)` when the
/// payload is newer than this worker. User code runs here too (defaults,
/// `migrate`, a custom `Deserialize`), so a panic is caught and reported.
fn prepare(
    job: &JobRegistration,
    envelope: &Envelope,
    cancel: CancelSignal,
) -> Result<Option<BoxFuture<'static, Result<serde_json::Value, JobError>>>, String> {
    let ctx = JobContext {
        jid: envelope.jid.clone(),
        name: job.name,
        version: envelope.version,
        queue: envelope.queue.clone(),
        attempt: envelope.attempt.saturating_add(1),
        enqueued_at: timestamp(envelope.enqueued_at),
        cancel,
    };
    let args = envelope.args.clone();
    let version = envelope.version;
    let prepared = std::panic::catch_unwind(AssertUnwindSafe(move || match upgrade(job, version, args)? {
        Upgrade::TooNew => Ok(None),
        Upgrade::Ready(args) => (job.run)(args, ctx).map(Some),
    }));
    match prepared {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(panic) => Err(format!(
            "job `{}`: panicked while preparing its arguments (a default, `migrate` or a custom Deserialize): {}",
            job.name,
            panic_message(panic.as_ref())
        )),
    }
}

/// Runs a job body with its timeout, turning a panic into a failure.
async fn run_guarded(
    job: &JobRegistration,
    body: BoxFuture<'static, Result<serde_json::Value, JobError>>,
) -> Result<serde_json::Value, Failure> {
    let guarded = catch_panic(body);
    let outcome = match job.options.timeout {
        // Boxed: the timer would make every job's task larger, timeout or not.
        Some(limit) => match Box::pin(tokio::time::timeout(limit, guarded)).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(Failure { message: format!("job timed out after {limit:?}"), retryable: true }),
        },
        None => guarded.await,
    };
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Failure { message: error.to_string(), retryable: error.is_retryable() }),
        Err(panic) => Err(Failure { message: format!("job panicked: {panic}"), retryable: true }),
    }
}

pub(crate) fn catch_panic<T>(mut body: BoxFuture<'static, T>) -> impl Future<Output = Result<T, String>> + Send {
    std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
        Ok(poll) => poll.map(Ok),
        Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
    })
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

/// Tries a settling write a few times with backoff; `None` when the backend
/// stayed unreachable (the lease then expires and another worker rescues the job).
async fn settle<'a, T, F>(mut write: F) -> Option<T>
where
    F: FnMut() -> BoxFuture<'a, Result<T, BackendError>>,
{
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=6 {
        match write().await {
            Ok(value) => return Some(value),
            Err(error) => {
                // Once per write, not per try: an outage would repeat it for every job.
                if attempt == 1 {
                    tracing::warn!(error = %error, "could not settle a job (acknowledge, retry or dead-letter it); trying again");
                } else {
                    tracing::debug!(attempt, error = %error, "could not settle a job yet; trying again");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    None
}

fn record(envelope: &Envelope, outcome: &Outcome, ttl: Duration) -> OutcomeRecord {
    let outcome_json = outcome.to_json(&envelope.job);
    OutcomeRecord { jid: envelope.jid.clone(), outcome: outcome_json, is_final: outcome.is_final(), ttl }
}

fn timestamp(millis: u64) -> Timestamp {
    Timestamp::from_unix((millis / 1000) as i64, (millis % 1000) as u32 * 1_000_000).unwrap_or_else(Timestamp::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{EventBatch, FetchRequest, JobSet, PushJob, PushOutcome, QueueTake, StoredJob};
    use crate::client::{Client, RawJob};
    use crate::memory::MemoryBackend;

    /// The embedded backend, recording how many leases each `complete` call carried.
    #[derive(Default)]
    struct CountsAcks {
        inner: MemoryBackend,
        writes: Mutex<Vec<usize>>,
        /// How many `complete` calls fail from now on, as if Redis were away.
        refusals: AtomicU64,
    }

    #[rustfmt::skip]
    impl Backend for CountsAcks {
        fn complete<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            if self.refusals.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                return Box::pin(async { Err(BackendError::transient("Redis unreachable: connection refused")) });
            }
            self.writes.lock().unwrap().push(leases.len());
            self.inner.complete(leases)
        }
        fn push(&self, jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>> { self.inner.push(jobs) }
        fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> { self.inner.fetch(request) }
        fn wait_for_jobs<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<(), BackendError>> { self.inner.wait_for_jobs(queues, timeout) }
        fn retry<'a>(&'a self, lease: &'a Lease, payload: String, run_at: u64) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.retry(lease, payload, run_at) }
        fn defer<'a>(&'a self, lease: &'a Lease, payload: String, run_at: u64) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.defer(lease, payload, run_at) }
        fn kill<'a>(&'a self, lease: &'a Lease, payload: String) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.kill(lease, payload) }
        fn put_back<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>> { self.inner.put_back(leases) }
        fn extend<'a>(&'a self, leases: &'a [Lease], lease: Duration) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> { self.inner.extend(leases, lease) }
        fn rescue<'a>(&'a self, worker: &'a WorkerId, lease: Duration, max: usize) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> { self.inner.rescue(worker, lease, max) }
        fn promote_due(&self, until: Option<u64>) -> BoxFuture<'_, Result<usize, BackendError>> { self.inner.promote_due(until) }
        fn list<'a>(&'a self, set: &'a JobSet, offset: usize, limit: usize) -> BoxFuture<'a, Result<Vec<StoredJob>, BackendError>> { self.inner.list(set, offset, limit) }
        fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>> { self.inner.count(set) }
        fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> { self.inner.queues() }
        fn record<'a>(&'a self, outcomes: &'a [OutcomeRecord], events: &'a [EventRecord]) -> BoxFuture<'a, Result<(), BackendError>> { self.inner.record(outcomes, events) }
        fn outcome<'a>(&'a self, jid: &'a JobId) -> BoxFuture<'a, Result<Option<String>, BackendError>> { self.inner.outcome(jid) }
        fn wait_outcome<'a>(&'a self, jid: &'a JobId, timeout: Duration) -> BoxFuture<'a, Result<Option<String>, BackendError>> { self.inner.wait_outcome(jid, timeout) }
        fn cancel<'a>(&'a self, jid: &'a JobId, until: u64) -> BoxFuture<'a, Result<(), BackendError>> { self.inner.cancel(jid, until) }
        fn cancel_requested<'a>(&'a self, jids: &'a [JobId]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> { self.inner.cancel_requested(jids) }
        fn read_events<'a>(&'a self, after: Option<&'a str>, max: usize, block: Duration) -> BoxFuture<'a, Result<EventBatch, BackendError>> { self.inner.read_events(after, max, block) }
    }

    /// An executor over a `CountsAcks` backend, and the leases of `n` queued jobs it fetched.
    async fn leased(n: usize) -> (Arc<Executor>, Arc<CountsAcks>, Vec<Lease>) {
        let backend = Arc::new(CountsAcks::default());
        let client = Client::new(backend.inner.clone());
        for i in 0..n {
            let raw =
                RawJob { job: "noop".into(), version: 1, queue: "default".into(), args: serde_json::json!({ "n": i }) };
            client.enqueue_raw(raw).await.unwrap();
        }
        let worker = WorkerId::generate();
        let takes = [QueueTake { queue: "default".into(), max: n }];
        let request = FetchRequest { queues: &takes, max: n, worker: &worker, lease: Duration::from_secs(30) };
        let leases: Vec<Lease> = backend.fetch(request).await.unwrap().into_iter().map(|job| job.lease).collect();
        assert_eq!(leases.len(), n);
        let registry = Registry::from_jobs(Vec::new()).unwrap();
        let dyn_backend: Arc<dyn Backend> = backend.clone();
        let executor = Executor::new(
            dyn_backend,
            registry,
            RetryPolicy::default(),
            Duration::from_secs(10),
            worker,
            Duration::from_secs(15),
        );
        (Arc::new(executor), backend, leases)
    }

    /// Lets every task that can run, run (time is paused, so no timer fires meanwhile).
    async fn settle_tasks() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_ack_writer_gathers_acknowledgements_into_one_write() {
        let (executor, backend, mut leases) = leased(ACK_BUSY + 6).await;
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let writer = Arc::clone(&executor);
        let task = tokio::spawn(async move { writer.ack_loop(stopped).await });
        for lease in leases.drain(..ACK_BUSY) {
            executor.complete(lease, None, Vec::new()).await;
        }
        settle_tasks().await;
        assert_eq!(*backend.writes.lock().unwrap(), [ACK_BUSY], "a quiet writer writes at once");
        // Jobs now end one by one, each with a wake-up of the writer: under load, they share one write.
        for lease in leases.drain(..) {
            executor.complete(lease, None, Vec::new()).await;
            settle_tasks().await;
        }
        assert_eq!(*backend.writes.lock().unwrap(), [ACK_BUSY], "nothing is written before the linger ends");
        tokio::time::sleep(ACK_LINGER * 2).await;
        assert_eq!(*backend.writes.lock().unwrap(), [ACK_BUSY, 6]);
        assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
        assert_eq!(executor.stats.snapshot().succeeded, ACK_BUSY as u64 + 6);
        task.abort();
    }

    /// Redis away for longer than one write's tries (about 2.5 s): the ack
    /// writer keeps the acknowledgements and writes them once it is back,
    /// instead of dropping them and letting the jobs run again.
    #[tokio::test(start_paused = true)]
    async fn acknowledgements_wait_out_an_outage_instead_of_being_dropped() {
        let (executor, backend, leases) = leased(2).await;
        backend.refusals.store(20, Ordering::Relaxed);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writer = Arc::clone(&executor);
        let task = tokio::spawn(async move { writer.ack_loop(stopped).await });
        for lease in leases {
            executor.complete(lease, None, Vec::new()).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(backend.refusals.load(Ordering::Relaxed), 0, "the outage is over");
        assert_eq!(*backend.writes.lock().unwrap(), [2], "written once Redis came back");
        assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
        assert_eq!(executor.stats.snapshot().succeeded, 2);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_a_lingering_ack_writer_writes_what_it_holds() {
        let (executor, backend, mut leases) = leased(ACK_BUSY + 1).await;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writer = Arc::clone(&executor);
        let task = tokio::spawn(async move { writer.ack_loop(stopped).await });
        for lease in leases.drain(..ACK_BUSY) {
            executor.complete(lease, None, Vec::new()).await;
        }
        settle_tasks().await;
        executor.complete(leases.remove(0), None, Vec::new()).await;
        settle_tasks().await;
        assert_eq!(*backend.writes.lock().unwrap(), [ACK_BUSY], "the writer lingers");
        let stopped_at = tokio::time::Instant::now();
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(tokio::time::Instant::now(), stopped_at, "the stop cuts the linger short");
        assert_eq!(*backend.writes.lock().unwrap(), [ACK_BUSY, 1]);
        assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0, "no acknowledgement is left behind");
    }
}
