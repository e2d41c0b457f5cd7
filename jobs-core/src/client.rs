//! [`Client`]: enqueues jobs, typed (through `#[job]`'s helpers) or raw.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::{Backend, EventRecord, PushJob, UniqueLock};
use crate::envelope::{Envelope, millis, now_millis};
use crate::error::{ArgError, EnqueueError};
use crate::job::{Args, Job, JobId};
use crate::outcome::{Event, EventKind};
use crate::registry::JobRegistration;
use crate::transaction::{Stage, inside_scope};

/// The default limit on an encoded payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A job given as its JSON parts, for producers that do not link the job's
/// code (scripts, other services, tests of old payloads).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{Client, MemoryBackend, RawJob};
///
/// let client = Client::new(MemoryBackend::new());
/// let raw = RawJob {
///     job: "send_confirmation_sms".into(),
///     version: 1,
///     queue: "critical".into(),
///     args: serde_json::json!({ "user_id": 42 }),
/// };
/// client.enqueue_raw(raw).await.unwrap();
/// # });
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RawJob {
    /// The job's registered name (or an alias).
    pub job: String,
    /// The signature version the arguments follow.
    pub version: u32,
    /// The queue to put it on.
    pub queue: String,
    /// Arguments keyed by parameter name.
    pub args: serde_json::Value,
}

/// Enqueues jobs into a backend. Cheap to clone; clones share the backend.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{job, Client, JobError, MemoryBackend};
///
/// #[job(queue = "mail")]
/// async fn send_welcome(user_id: u64) -> Result<(), JobError> {
///     Ok(())
/// }
///
/// let client = Client::new(MemoryBackend::new());
/// let jid = SendWelcome::perform_later(&client, 7).await.unwrap();
/// assert_eq!(jid.as_str().len(), 24);
/// # });
/// ```
#[derive(Clone)]
pub struct Client {
    backend: Arc<dyn Backend>,
    max_payload: usize,
    /// Set on the handle of an `after_commit` scope or a `Staged`: enqueues are held back.
    stage: Option<Arc<Stage>>,
    /// Whether pushes write `enqueued` events.
    events: bool,
}

impl Client {
    /// A client over `backend`, with the default payload limit.
    pub fn new(backend: impl Backend) -> Self {
        Self::from_arc(Arc::new(backend))
    }

    /// A client over a shared backend.
    pub fn from_arc(backend: Arc<dyn Backend>) -> Self {
        Self { backend, max_payload: DEFAULT_MAX_PAYLOAD, stage: None, events: false }
    }

    /// A handle that stages into `stage` instead of pushing.
    pub(crate) fn staging(&self, stage: Arc<Stage>) -> Self {
        Self { stage: Some(stage), ..self.clone() }
    }

    /// Whether enqueues through this handle wait for a commit
    /// ([`after_commit`](crate::after_commit) or [`Staged`](crate::Staged)).
    pub fn is_staging(&self) -> bool {
        self.stage.is_some()
    }

    /// Refuses payloads larger than `bytes` (default [`DEFAULT_MAX_PAYLOAD`]).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Writes an `enqueued` event for every job this client pushes (see
    /// [`Client::events`]). Off by default.
    pub fn with_events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Whether this client writes `enqueued` events.
    pub fn writes_events(&self) -> bool {
        self.events
    }

    /// The backend this client pushes to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Enqueues a job to run as soon as a worker is free.
    pub async fn enqueue<J: Job>(&self, job: J) -> Result<JobId, EnqueueError> {
        self.push_one::<J>(self.prepare(&job, None)?).await
    }

    /// Enqueues a job to run after `delay`.
    pub async fn enqueue_in<J: Job>(&self, delay: Duration, job: J) -> Result<JobId, EnqueueError> {
        let at = crate::envelope::millis_after(now_millis(), delay);
        self.push_one::<J>(self.prepare(&job, Some(at))?).await
    }

    /// Enqueues a job to run at `at` (at once if `at` has passed).
    pub async fn enqueue_at<J: Job>(&self, at: SystemTime, job: J) -> Result<JobId, EnqueueError> {
        self.push_one::<J>(self.prepare(&job, Some(millis(at)))?).await
    }

    /// Enqueues many jobs of one type in one backend step: all or none.
    /// Jobs refused by `unique_for` are left out of the returned ids.
    pub async fn enqueue_many<J: Job>(&self, jobs: impl IntoIterator<Item = J>) -> Result<Vec<JobId>, EnqueueError> {
        let batch = jobs.into_iter().map(|job| self.prepare(&job, None)).collect::<Result<Vec<_>, _>>()?;
        self.push_batch(J::NAME, batch).await
    }

    /// Enqueues a job linked into this binary from JSON arguments written for
    /// `version` (a shell, a script, another language's request): read as a
    /// worker of this binary reads them (an argument that would fail there is
    /// refused here, with its field named), then enqueued on `queue` as
    /// `perform_later` enqueues it: at the registered version, defaults
    /// filled, under its `unique_for` lock. At the registered version, a key
    /// that names no parameter (a typo) is refused rather than dropped.
    /// Arguments of a newer version than this binary's cannot be read here
    /// and go as they are.
    pub async fn enqueue_registered(
        &self,
        job: &JobRegistration,
        version: u32,
        queue: &str,
        args: serde_json::Value,
    ) -> Result<JobId, EnqueueError> {
        check_raw(job.name, version, queue)?;
        // Older versions may carry keys that `migrate` or an alias consumes; the current one may not.
        let unknown = match (version == job.version, &args) {
            (true, serde_json::Value::Object(given)) => unknown_keys(job, given),
            _ => Vec::new(),
        };
        // Both kinds of error in one report, so one fix-up covers them.
        let read = match (ArgError::all(job.name, unknown), job.read_args(version, args.clone())) {
            (None, read) => read?,
            (Some(unknown), Ok(_)) => return Err(unknown.into()),
            (Some(unknown), Err(error)) => return Err(unknown.and(job.name, error).into()),
        };
        let Some(args) = read else {
            return self.enqueue_raw(RawJob { job: job.name.to_owned(), version, queue: queue.to_owned(), args }).await;
        };
        let unique = unique_lock(job.name, &args, job.options.unique_for);
        let push = self.envelope(job.name, job.version, queue, args, None, unique)?;
        let mut ids = self.push_batch(job.name, vec![push]).await?;
        let unique_for = job.options.unique_for.unwrap_or_default();
        ids.pop().ok_or(EnqueueError::Duplicate { job: job.name.to_owned(), unique_for })
    }

    /// Enqueues a job from its JSON parts. The job need not be linked into this binary.
    pub async fn enqueue_raw(&self, raw: RawJob) -> Result<JobId, EnqueueError> {
        check_raw(&raw.job, raw.version, &raw.queue)?;
        let invalid = |detail: &str| EnqueueError::InvalidRaw { job: raw.job.clone(), detail: detail.to_owned() };
        let serde_json::Value::Object(args) = raw.args else {
            return Err(invalid("`args` must be a JSON object keyed by parameter name"));
        };
        let push = self.envelope(&raw.job, raw.version, &raw.queue, args, None, None)?;
        let name = raw.job;
        let mut ids = self.push_batch(&name, vec![push]).await?;
        ids.pop().ok_or(EnqueueError::Duplicate { job: name, unique_for: Duration::ZERO })
    }

    fn prepare<J: Job>(&self, job: &J, run_at: Option<u64>) -> Result<PushJob, EnqueueError> {
        let args = job.to_args()?;
        #[cfg(debug_assertions)]
        check_round_trip::<J>(&args)?;
        let unique = unique_lock(J::NAME, &args, J::OPTIONS.unique_for);
        self.envelope(J::NAME, J::VERSION, J::QUEUE, args, run_at, unique)
    }

    fn envelope(
        &self,
        job: &str,
        version: u32,
        queue: &str,
        args: Args,
        run_at: Option<u64>,
        unique: Option<UniqueLock>,
    ) -> Result<PushJob, EnqueueError> {
        // The end of the year 9999 (UTC): later is a delay that overflowed, not a plan.
        const LATEST_MS: u64 = 253_402_300_799_999;
        if let Some(at_ms) = run_at.filter(|at| *at > LATEST_MS) {
            return Err(EnqueueError::TooLate { job: job.to_owned(), at_ms });
        }
        let mut envelope = Envelope::new(job, version, queue, args);
        // A job due now goes straight into its queue's list, whose key names the
        // queue; only a scheduled one carries it, to find its way back when due.
        let now = now_millis();
        let run_at = run_at.filter(|at| *at > now);
        let queue = if run_at.is_some() { envelope.queue.clone() } else { std::mem::take(&mut envelope.queue) };
        let payload = envelope.to_json();
        if payload.len() > self.max_payload {
            return Err(EnqueueError::TooLarge { job: job.to_owned(), size: payload.len(), limit: self.max_payload });
        }
        Ok(PushJob { jid: envelope.jid, queue, payload, run_at, unique })
    }

    async fn push_one<J: Job>(&self, push: PushJob) -> Result<JobId, EnqueueError> {
        let mut ids = self.push_batch(J::NAME, vec![push]).await?;
        ids.pop().ok_or(EnqueueError::Duplicate {
            job: J::NAME.to_owned(),
            unique_for: J::OPTIONS.unique_for.unwrap_or_default(),
        })
    }

    async fn push_batch(&self, job: &str, batch: Vec<PushJob>) -> Result<Vec<JobId>, EnqueueError> {
        match &self.stage {
            Some(stage) => return stage.innermost().stage(job, &self.backend, batch),
            None if inside_scope() => return Err(EnqueueError::InsideTransaction { job: job.to_owned() }),
            None => {}
        }
        push_now(self.backend.as_ref(), self.events, batch)
            .await
            .map_err(|source| EnqueueError::Backend { job: job.to_owned(), source })
    }
}

/// The keys of current-version arguments that a worker would drop, each an error: one
/// that names no parameter (a typo), or an old name given beside the
/// parameter's own.
fn unknown_keys(job: &JobRegistration, given: &Args) -> Vec<ArgError> {
    let invalid =
        |field: &str, detail: String| ArgError::Invalid { job: job.name.to_owned(), field: field.to_owned(), detail };
    let mut errors = Vec::new();
    for key in given.keys() {
        match job.params.iter().find(|p| p.name == key || p.aliases.contains(&key.as_str())) {
            None => {
                let names: Vec<String> = job
                    .params
                    .iter()
                    .flat_map(|p| std::iter::once(p.name).chain(p.aliases.iter().copied()))
                    .map(|name| format!("`{name}`"))
                    .collect();
                let takes = if names.is_empty() { "no arguments".to_owned() } else { names.join(", ") };
                errors.push(invalid(key, format!("names no parameter: version {} takes {takes}", job.version)));
            }
            Some(param) if param.name != key && given.contains_key(param.name) => {
                errors.push(invalid(key, format!("is an old name of `{}`, also given: pass one", param.name)));
            }
            Some(_) => {}
        }
    }
    errors
}

/// Refuses the parts of a job written by hand that no worker could serve.
fn check_raw(job: &str, version: u32, queue: &str) -> Result<(), EnqueueError> {
    let detail = if job.is_empty() {
        "the job name is empty"
    } else if version == 0 {
        "versions start at 1"
    } else if let Some(problem) = queue_name_problem(queue) {
        problem
    } else {
        return Ok(());
    };
    Err(EnqueueError::InvalidRaw { job: job.to_owned(), detail: detail.to_owned() })
}

/// What makes `queue` unusable as a queue name: empty, or holding a control
/// character (a newline would split the backend's in-flight records).
pub(crate) fn queue_name_problem(queue: &str) -> Option<&'static str> {
    if queue.is_empty() {
        Some("the queue name is empty")
    } else if queue.contains(char::is_control) {
        Some("the queue name holds a control character (a newline, a tab, …); use letters, digits and punctuation")
    } else {
        None
    }
}

/// The uniqueness lock of a job with `unique_for`: its name and arguments.
fn unique_lock(job: &str, args: &Args, unique_for: Option<Duration>) -> Option<UniqueLock> {
    unique_for.map(|ttl| UniqueLock { key: unique_key(job, args), ttl })
}

/// The key of a uniqueness lock: the job's name and its arguments as JSON.
pub(crate) fn unique_key(job: &str, args: &Args) -> String {
    format!("{job}:{}", serde_json::Value::Object(args.clone()))
}

/// Pushes a batch (all or none) and, when `events` is on, writes the
/// `enqueued` events of the jobs it stored, in the same step where the backend
/// can ([`Backend::push_with_events`]). Returns the ids stored: jobs
/// refused by `unique_for` are left out.
pub(crate) async fn push_now(
    backend: &dyn Backend,
    events: bool,
    batch: Vec<PushJob>,
) -> Result<Vec<JobId>, crate::error::BackendError> {
    let ids: Vec<JobId> = batch.iter().map(|push| push.jid.clone()).collect();
    let outcome = if events {
        let events = enqueued_events(&batch);
        backend.push_with_events(batch, events).await?
    } else {
        backend.push(batch).await?
    };
    let pushed = |i: &usize| !outcome.duplicates.contains(i);
    Ok(ids.into_iter().enumerate().filter(|(i, _)| pushed(i)).map(|(_, id)| id).collect())
}

/// The `enqueued` event of each job of a batch, read back from its payload
/// (one entry per job, in order, so that indices match the push's).
fn enqueued_events(batch: &[PushJob]) -> Vec<Option<EventRecord>> {
    batch
        .iter()
        .map(|push| {
            let envelope = Envelope::from_json(&push.payload).ok()?;
            let event = Event {
                id: String::new(),
                kind: EventKind::Enqueued,
                jid: envelope.jid,
                job: envelope.job,
                version: envelope.version,
                queue: if envelope.queue.is_empty() { push.queue.clone() } else { envelope.queue },
                attempt: 0,
                duration_ms: None,
                error: None,
                at: envelope.enqueued_at,
            };
            Some(event.record())
        })
        .collect()
}

/// Debug builds: the arguments must decode and re-encode to the same JSON.
#[cfg(debug_assertions)]
fn check_round_trip<J: Job>(args: &Args) -> Result<(), EnqueueError> {
    let lossy =
        |field: &str, detail: String| EnqueueError::Lossy { job: J::NAME.to_owned(), field: field.to_owned(), detail };
    let text = serde_json::Value::Object(args.clone()).to_string();
    let parsed: Args = serde_json::from_str(&text).map_err(|error| lossy("?", error.to_string()))?;
    let decoded = J::from_args(parsed).map_err(|error| {
        // A round trip that loses several values names the first.
        let first = match &error {
            ArgError::Several { errors, .. } => errors.first().unwrap_or(&error),
            one => one,
        };
        match first {
            ArgError::Invalid { field, detail, .. } => lossy(field, detail.clone()),
            ArgError::Missing { field, .. } => lossy(field, "the value is lost".to_owned()),
            other => lossy("?", other.to_string()),
        }
    })?;
    let again = decoded.to_args()?;
    for (field, before) in args {
        let after = again.get(field).unwrap_or(&serde_json::Value::Null);
        if before != after {
            return Err(lossy(field, format!("{before} came back as {after}")));
        }
    }
    Ok(())
}
