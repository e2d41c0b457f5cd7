//! What the web app learns after enqueueing: a job's recorded outcome
//! ([`JobHandle::status`], [`JobHandle::wait`]), lifecycle [`Event`]s
//! ([`Client::events`]), and cancellation ([`JobHandle::cancel`]).
//!
//! Outcomes are recorded only for jobs that keep them (`keep_result`, on by
//! default for jobs that return a value, off for `()` jobs) and expire after
//! that time, so Redis does not fill up. Events are written only by workers
//! and clients that turn them on, into a capped stream.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, EventRecord};
use crate::client::Client;
use crate::envelope::now_millis;
use crate::error::BackendError;
use crate::job::{Job, JobId};

/// A job's recorded state, as stored under its id (JSON, `state` tagged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// A run failed; another attempt is scheduled.
    Retrying {
        /// The error of the failed run.
        error: String,
        /// The failed run's number.
        attempt: u32,
        /// When the next attempt is due (ms).
        retry_at: u64,
    },
    /// The job succeeded with this value (`null` for `()`).
    Succeeded {
        /// The job's return value, as JSON.
        value: serde_json::Value,
        /// The successful run's number.
        attempt: u32,
        /// When it finished (ms).
        finished_at: u64,
    },
    /// Out of attempts, or failed in a way retrying cannot fix: in the dead set.
    Dead {
        /// The last error.
        error: String,
        /// The last run's number.
        attempt: u32,
        /// When it died (ms).
        finished_at: u64,
    },
    /// Cancelled before it ran, or stopped by its cancellation while running.
    Cancelled {
        /// When it was settled as cancelled (ms).
        finished_at: u64,
    },
}

impl Outcome {
    /// Whether nothing more will happen to the job.
    pub fn is_final(&self) -> bool {
        matches!(self, Outcome::Succeeded { .. } | Outcome::Dead { .. } | Outcome::Cancelled { .. })
    }

    /// The stored record: the outcome with the name of the job it belongs to
    /// (`"job"`), so that a handle of another job type can tell.
    pub(crate) fn to_json(&self, job: &str) -> String {
        // Plain data: serialization cannot fail.
        let mut record = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut record {
            fields.insert("job".to_owned(), job.into());
        }
        record.to_string()
    }
}

/// An outcome to store, as a worker hands it to [`Backend::record`].
#[derive(Clone, Debug)]
pub struct OutcomeRecord {
    /// The job's id.
    pub jid: JobId,
    /// The [`Outcome`] as JSON.
    pub outcome: String,
    /// Whether it is final: waiters are woken.
    pub is_final: bool,
    /// How long to keep it.
    pub ttl: Duration,
}

/// A job's state as [`JobHandle::status`] reports it, with a typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum JobStatus<T> {
    /// Nothing recorded: waiting in a queue or the scheduled set, or running
    /// its first attempt, or the job keeps no result, or its record expired.
    Pending,
    /// A run failed; another attempt is scheduled.
    Retrying {
        /// The error of the failed run.
        error: String,
        /// The failed run's number.
        attempt: u32,
    },
    /// Finished with this value.
    Succeeded(T),
    /// In the dead set.
    Dead {
        /// The last error.
        error: String,
    },
    /// Cancelled.
    Cancelled,
}

/// Why [`JobHandle::wait`] returned no value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No final outcome within the timeout (the job may still run later).
    #[error("job {jid}: no outcome within {timeout:?}")]
    Timeout {
        /// The job.
        jid: JobId,
        /// How long the wait was.
        timeout: Duration,
    },
    /// The job ended in the dead set.
    #[error("job {jid} failed: {error}")]
    Dead {
        /// The job.
        jid: JobId,
        /// The last error.
        error: String,
    },
    /// The job was cancelled.
    #[error("job {jid} was cancelled")]
    Cancelled {
        /// The job.
        jid: JobId,
    },
    /// The id belongs to another job than the handle's type: its value would
    /// be read as the wrong type, or, worse, as the right type by chance.
    #[error("job {jid} is a `{found}` job, not `{expected}`: get its handle with the job type that enqueued it")]
    OtherJob {
        /// The job.
        jid: JobId,
        /// The name of the handle's job type.
        expected: &'static str,
        /// The name recorded with the outcome.
        found: String,
    },
    /// The job keeps no outcome (`keep_result` is off, as it is by default
    /// for a job that returns `()`): there is nothing to wait for.
    #[error(
        "job {jid}: `{job}` keeps no outcome, so there is nothing to wait for; write `keep_result = \"1h\"` (or any duration) in its #[job] to wait on it"
    )]
    NotKept {
        /// The job.
        jid: JobId,
        /// The job's name.
        job: &'static str,
    },
    /// The stored value is not the type this handle expects.
    #[error("job {jid}: its stored result does not decode as the expected type: {detail}")]
    Decode {
        /// The job.
        jid: JobId,
        /// What serde said.
        detail: String,
    },
    /// The backend could not be read.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A handle on an enqueued job: its status, its result, its cancellation.
/// `T` is the job's return type; get one with [`Client::handle`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use jobs_core::{job, Client, JobError, JobStatus, MemoryBackend, Worker};
///
/// #[job(queue = "images")]
/// async fn count_pixels(width: u64, height: u64) -> Result<u64, JobError> {
///     Ok(width * height)
/// }
///
/// let backend = MemoryBackend::new();
/// let client = Client::new(backend.clone());
/// let jid = CountPixels::perform_later(&client, 640, 480).await?;
/// let handle = client.handle::<CountPixels>(jid);
/// assert_eq!(handle.status().await?, JobStatus::Pending);
///
/// Worker::builder(backend).queue("images", 1).build()?.drain().await?;
/// assert_eq!(handle.wait(Duration::from_secs(5)).await?, 307_200);
/// assert_eq!(handle.status().await?, JobStatus::Succeeded(307_200));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct JobHandle<T> {
    client: Client,
    jid: JobId,
    /// The job type, when the handle is typed by one.
    job: Option<HandleJob>,
    _value: PhantomData<fn() -> T>,
}

/// What a typed handle knows of its job type.
#[derive(Clone, Copy, Debug)]
struct HandleJob {
    name: &'static str,
    aliases: &'static [&'static str],
    /// Whether the job keeps its outcome (`keep_result`).
    keeps: bool,
}

impl<T> Clone for JobHandle<T> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), jid: self.jid.clone(), job: self.job, _value: PhantomData }
    }
}

impl<T> std::fmt::Debug for JobHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").field("jid", &self.jid).finish()
    }
}

impl<T: DeserializeOwned> JobHandle<T> {
    fn new(client: Client, jid: JobId, job: Option<HandleJob>) -> Self {
        Self { client, jid, job, _value: PhantomData }
    }

    /// The job's id.
    pub fn jid(&self) -> &JobId {
        &self.jid
    }

    fn backend(&self) -> &dyn Backend {
        self.client.backend().as_ref()
    }

    /// The recorded state (one read; [`JobStatus::Pending`] when nothing is recorded).
    pub async fn status(&self) -> Result<JobStatus<T>, WaitError> {
        let Some(stored) = self.backend().outcome(&self.jid).await? else { return Ok(JobStatus::Pending) };
        Ok(match self.decode(&stored)? {
            Outcome::Retrying { error, attempt, .. } => JobStatus::Retrying { error, attempt },
            Outcome::Succeeded { value, .. } => JobStatus::Succeeded(self.value(value)?),
            Outcome::Dead { error, .. } => JobStatus::Dead { error },
            Outcome::Cancelled { .. } => JobStatus::Cancelled,
        })
    }

    /// Waits until the job succeeds, dies or is cancelled, up to `timeout`,
    /// and returns its value. The backend wakes the wait when the outcome is
    /// recorded (a blocking read on Redis); it does not poll. On a handle of
    /// a job type that keeps no outcome it returns [`WaitError::NotKept`] at
    /// once rather than waiting out `timeout` for a record that never comes.
    pub async fn wait(&self, timeout: Duration) -> Result<T, WaitError> {
        // A job that keeps no outcome would only ever time out: said at once (after one
        // look, for a record written by a build whose job kept it).
        if let Some(job) = self.job.filter(|job| !job.keeps)
            && self.backend().outcome(&self.jid).await?.is_none()
        {
            return Err(WaitError::NotKept { jid: self.jid.clone(), job: job.name });
        }
        let stored = self.backend().wait_outcome(&self.jid, timeout).await?;
        let Some(stored) = stored else { return Err(WaitError::Timeout { jid: self.jid.clone(), timeout }) };
        match self.decode(&stored)? {
            Outcome::Succeeded { value, .. } => self.value(value),
            Outcome::Dead { error, .. } => Err(WaitError::Dead { jid: self.jid.clone(), error }),
            Outcome::Cancelled { .. } => Err(WaitError::Cancelled { jid: self.jid.clone() }),
            other => Err(WaitError::Decode {
                jid: self.jid.clone(),
                detail: format!("the backend returned a state that is not final: {other:?}"),
            }),
        }
    }

    /// Asks for the job to be cancelled: a job not yet started does not run
    /// (it is settled as cancelled when a worker fetches it); a running job
    /// sees [`JobContext::is_cancelled`](crate::JobContext::is_cancelled)
    /// turn true at its worker's next heartbeat and should stop. The request
    /// holds for a day ([`CANCEL_TTL`]; at most [`CANCELS_KEPT`] are kept).
    pub async fn cancel(&self) -> Result<(), BackendError> {
        self.client.cancel(&self.jid).await
    }

    fn decode(&self, stored: &str) -> Result<Outcome, WaitError> {
        let unreadable = |error: serde_json::Error| WaitError::Decode {
            jid: self.jid.clone(),
            detail: format!("unreadable outcome record: {error}"),
        };
        let record: serde_json::Value = serde_json::from_str(stored).map_err(unreadable)?;
        // Records written before the name was kept carry none: nothing to check.
        if let (Some(job), Some(found)) = (self.job, record.get("job").and_then(|job| job.as_str()))
            && found != job.name
            && !job.aliases.contains(&found)
        {
            return Err(WaitError::OtherJob { jid: self.jid.clone(), expected: job.name, found: found.to_owned() });
        }
        serde_json::from_value(record).map_err(unreadable)
    }

    fn value(&self, value: serde_json::Value) -> Result<T, WaitError> {
        serde_json::from_value(value)
            .map_err(|error| WaitError::Decode { jid: self.jid.clone(), detail: error.to_string() })
    }
}

impl Client {
    /// A handle on the job `jid` of type `J`, typed by its return value.
    ///
    /// Once the job's outcome is recorded, the handle checks that it belongs
    /// to `J` (by name or alias): the id of another job gives
    /// [`WaitError::OtherJob`] instead of that job's value read as `J`'s.
    pub fn handle<J: Job>(&self, jid: JobId) -> JobHandle<J::Output> {
        let keeps = J::OPTIONS.keep_result.is_some();
        JobHandle::new(self.clone(), jid, Some(HandleJob { name: J::NAME, aliases: J::ALIASES, keeps }))
    }

    /// A handle on any job, its value as JSON (a job enqueued with `enqueue_raw`).
    pub fn handle_json(&self, jid: JobId) -> JobHandle<serde_json::Value> {
        JobHandle::new(self.clone(), jid, None)
    }

    /// Asks for the job `jid` to be cancelled (see [`JobHandle::cancel`]).
    pub async fn cancel(&self, jid: &JobId) -> Result<(), BackendError> {
        self.backend().cancel(jid, crate::envelope::millis_after(now_millis(), CANCEL_TTL)).await
    }

    /// The lifecycle events of every job from now on, as workers and clients
    /// with events turned on write them (see [`Event`]). The start is fixed
    /// when this returns: an event written after it is never missed.
    pub async fn events(&self) -> Result<Events, BackendError> {
        let end = self.backend().read_events(None, 0, Duration::ZERO).await?;
        Ok(Events { backend: self.clone(), after: Some(end.cursor), buffer: Default::default() })
    }

    /// The events after `id` (an [`Event::id`] seen before), to resume after a reconnect.
    pub fn events_after(&self, id: impl Into<String>) -> Events {
        Events { backend: self.clone(), after: Some(id.into()), buffer: Default::default() }
    }
}

/// How long a cancellation request holds.
pub const CANCEL_TTL: Duration = Duration::from_secs(24 * 3600);

/// The most cancellation requests a backend keeps: beyond it, those closest
/// to expiring go first, so a flood of requests (for ids that name no job)
/// cannot grow the set without bound.
pub const CANCELS_KEPT: usize = 100_000;

/// What happened to a job, as [`Client::events`] delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event's position in the stream (to resume with [`Client::events_after`]).
    #[serde(skip)]
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The job's id.
    pub jid: JobId,
    /// The job's name.
    pub job: String,
    /// The payload's version.
    pub version: u32,
    /// Its queue.
    pub queue: String,
    /// The run's number (0 for `enqueued`).
    pub attempt: u32,
    /// How long the run took, for `succeeded` and `failed` (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The error, for `failed`, `retrying` and `dead`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it happened (ms since the Unix epoch).
    pub at: u64,
}

/// The kinds of [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Pushed by a client.
    Enqueued,
    /// A worker started a run.
    Started,
    /// A run succeeded.
    Succeeded,
    /// A run failed (followed by `retrying` or `dead`).
    Failed,
    /// Another attempt is scheduled.
    Retrying,
    /// Moved to the dead set.
    Dead,
    /// Settled as cancelled.
    Cancelled,
}

impl Event {
    pub(crate) fn record(&self) -> EventRecord {
        EventRecord { json: serde_json::to_string(self).unwrap_or_default() }
    }
}

/// A reader of lifecycle events; each [`next`](Events::next) waits for one.
///
/// Delivery: events are appended to a capped stream (Redis `XADD … MAXLEN ~`,
/// 10,000 by default), not published: a reader that disconnects resumes
/// where it stopped with [`Client::events_after`], as long as it is no
/// further behind than the cap. Every reader sees every event (no consumer
/// group); an event is written after the fact it reports, so a crash between
/// the two loses the event, never the job.
pub struct Events {
    backend: Client,
    after: Option<String>,
    buffer: std::collections::VecDeque<Event>,
}

impl Events {
    /// The next event, waiting as long as it takes. An event that does not
    /// decode (written by a newer version) is skipped.
    pub async fn next(&mut self) -> Result<Event, BackendError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            let after = self.after.clone();
            let read = self.backend.backend().read_events(after.as_deref(), 100, Duration::from_secs(5)).await?;
            // From now on, read after what this read saw (or the end it found).
            self.after = Some(read.cursor);
            for (id, json) in read.events {
                if let Ok(mut event) = serde_json::from_str::<Event>(&json) {
                    event.id = id;
                    self.buffer.push_back(event);
                }
            }
        }
    }
}
