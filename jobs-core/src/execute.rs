//! Running one fetched job and settling it: decode, migrate, run with a
//! timeout and a panic guard, then complete, retry, defer or dead-letter.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use crate::arg::Timestamp;
use crate::backend::{Backend, Fetched, Lease, WorkerId};
use crate::envelope::{Envelope, Malformed, decode, now_millis};
use crate::error::{BackendError, JobError};
use crate::job::{BoxFuture, JobContext, JobId};
use crate::migrate::{Upgrade, upgrade};
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
        }
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
    warned_newer: Mutex<HashSet<(String, u32)>>,
    acks: Acks,
}

/// Acknowledgements of finished jobs, written in batches: a job's slot is
/// free as soon as its body returns, and many acks share one round trip.
#[derive(Default)]
struct Acks {
    pending: Mutex<Vec<Lease>>,
    ready: tokio::sync::Notify,
}

/// The most acknowledgements one write carries.
const ACK_BATCH: usize = 1000;

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
    ) -> Self {
        Self {
            backend,
            registry,
            retry,
            defer_delay,
            worker,
            stats: Stats::default(),
            warned_newer: Mutex::default(),
            acks: Acks::default(),
        }
    }

    /// Runs one fetched job and settles it.
    pub async fn run(&self, fetched: Fetched) {
        let Some((envelope, lease)) = self.open(fetched).await else { return };
        let Some(job) = self.registry.get(&envelope.job) else {
            let message = format!(
                "unknown job `{}`: no job of that name or alias is registered in this worker (a newer deploy may know it)",
                envelope.job
            );
            return self.fail(&lease, envelope, None, Failure { message, retryable: true }).await;
        };
        let body = match prepare(job, &envelope) {
            Ok(Some(body)) => body,
            Ok(None) => return self.defer(&lease, envelope, job).await,
            Err(message) => return self.fail(&lease, envelope, Some(job), Failure { message, retryable: false }).await,
        };
        match run_guarded(job, body).await {
            Ok(()) => self.complete(lease).await,
            Err(failure) => self.fail(&lease, envelope, Some(job), failure).await,
        }
    }

    /// Decodes a fetched payload (dead-lettering it when malformed) and fills
    /// in the queue it came from when the payload leaves it out.
    async fn open(&self, fetched: Fetched) -> Option<(Envelope, Lease)> {
        let Fetched { payload, lease } = fetched;
        match decode(&payload) {
            Ok(mut envelope) => {
                if envelope.queue.is_empty() {
                    envelope.queue.clone_from(&lease.queue);
                }
                Some((envelope, lease))
            }
            Err(malformed) => {
                self.bury_malformed(&lease, &payload, malformed).await;
                None
            }
        }
    }

    /// Settles a job whose previous worker's lease expired: that run counts as a failed attempt.
    pub async fn rescued(&self, fetched: Fetched) {
        bump(&self.stats.rescued);
        let Some((envelope, lease)) = self.open(fetched).await else { return };
        let job = self.registry.get(&envelope.job);
        let message = "lease expired: the worker running it stopped heartbeating (killed, or lost Redis)".to_owned();
        self.fail(&lease, envelope, job, Failure { message, retryable: true }).await;
    }

    async fn complete(&self, lease: Lease) {
        self.acks.pending.lock().unwrap_or_else(|p| p.into_inner()).push(lease);
        self.acks.ready.notify_one();
    }

    /// Writes pending acknowledgements, one round trip per batch, until none is left.
    pub async fn flush_acks(&self) {
        loop {
            let batch: Vec<Lease> = {
                let mut pending = self.acks.pending.lock().unwrap_or_else(|p| p.into_inner());
                let take = pending.len().min(ACK_BATCH);
                pending.drain(..take).collect()
            };
            if batch.is_empty() {
                return;
            }
            match settle(|| self.backend.complete(&batch)).await {
                Some(stale) => {
                    let done = batch.len().saturating_sub(stale) as u64;
                    self.stats.succeeded.fetch_add(done, Ordering::Relaxed);
                    if stale > 0 {
                        self.stats.stale.fetch_add(stale as u64, Ordering::Relaxed);
                        tracing::warn!(stale, "leases were taken over by another worker; those results were refused");
                    }
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
    /// taken from the buffer is lost.
    pub async fn ack_loop(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = self.acks.ready.notified() => {}
            }
            self.flush_acks().await;
        }
        self.flush_acks().await;
    }

    async fn fail(&self, lease: &Lease, mut envelope: Envelope, job: Option<&JobRegistration>, failure: Failure) {
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
            let run_at = now + delay.as_millis() as u64;
            match settle(|| self.backend.retry(lease, payload.clone(), run_at)).await {
                Some(true) => {
                    bump(&self.stats.retried);
                    tracing::warn!(job = name, jid = %envelope.jid, attempt, retry_in = ?delay, error = %failure.message, "job failed; will retry");
                }
                Some(false) => self.stale(lease, name),
                None => {}
            }
        } else {
            match settle(|| self.backend.kill(lease, payload.clone())).await {
                Some(true) => {
                    bump(&self.stats.dead);
                    tracing::error!(job = name, jid = %envelope.jid, attempt, error = %failure.message, "job moved to the dead set");
                }
                Some(false) => self.stale(lease, name),
                None => {}
            }
        }
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
        let run_at = now_millis() + self.defer_delay.as_millis() as u64;
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
        let record = Envelope {
            jid: malformed.jid.map_or_else(JobId::new, JobId::from),
            job: malformed.job.unwrap_or_default(),
            version: 1,
            queue: lease.queue.clone(),
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
        tracing::warn!(job, lease = %lease.token, "lease was taken over by another worker; this worker's result was refused");
    }
}

/// Migrates and decodes the arguments and starts the body: `Ok(None)` when the
/// payload is newer than this worker. User code runs here too (defaults,
/// `migrate`, a custom `Deserialize`), so a panic is caught and reported.
fn prepare(
    job: &JobRegistration,
    envelope: &Envelope,
) -> Result<Option<BoxFuture<'static, Result<(), JobError>>>, String> {
    let ctx = JobContext {
        jid: envelope.jid.clone(),
        name: job.name.to_owned(),
        version: envelope.version,
        queue: envelope.queue.clone(),
        attempt: envelope.attempt.saturating_add(1),
        enqueued_at: timestamp(envelope.enqueued_at),
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
async fn run_guarded(job: &JobRegistration, body: BoxFuture<'static, Result<(), JobError>>) -> Result<(), Failure> {
    let guarded = catch_panic(body);
    let outcome = match job.options.timeout {
        Some(limit) => match tokio::time::timeout(limit, guarded).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(Failure { message: format!("job timed out after {limit:?}"), retryable: true }),
        },
        None => guarded.await,
    };
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(Failure { message: error.to_string(), retryable: error.is_retryable() }),
        Err(panic) => Err(Failure { message: format!("job panicked: {panic}"), retryable: true }),
    }
}

fn catch_panic<T>(mut body: BoxFuture<'static, T>) -> impl Future<Output = Result<T, String>> + Send {
    std::future::poll_fn(move |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
        Ok(poll) => poll.map(Ok),
        Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
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
                tracing::warn!(attempt, error = %error, "could not record a job's outcome; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    None
}

fn timestamp(millis: u64) -> Timestamp {
    Timestamp::from_unix((millis / 1000) as i64, (millis % 1000) as u32 * 1_000_000).unwrap_or_else(Timestamp::now)
}
