//! The job model: the [`Job`] trait that `#[job]` implements, the identity
//! ([`JobId`]) and the per-run context ([`JobContext`]) a job may ask for.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::arg::Timestamp;
use crate::error::{ArgError, JobError};

/// A job's arguments: a JSON object keyed by parameter name.
pub type Args = serde_json::Map<String, serde_json::Value>;

/// A boxed, sendable future, as the registry stores job bodies.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A `migrate` function: upgrades the arguments of a payload written at
/// version `from` (defaults are already filled) to the current signature.
///
/// ```
/// use jobs_core::{Args, JobError};
///
/// // version 2 split `name` into `first` and `last`
/// fn split_name(from: u32, args: &mut Args) -> Result<(), JobError> {
///     if from < 2 {
///         let name = args.remove("name").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
///         let (first, last) = name.split_once(' ').unwrap_or((name.as_str(), ""));
///         args.insert("first".into(), first.into());
///         args.insert("last".into(), last.into());
///     }
///     Ok(())
/// }
/// ```
pub type MigrateFn = fn(from: u32, args: &mut Args) -> Result<(), JobError>;

/// A registered job type. `#[job]` implements it; write it by hand only for
/// jobs that cannot be a function.
pub trait Job: Sized + Send + 'static {
    /// The registered name carried in payloads (default: the function's name).
    const NAME: &'static str;
    /// Older names still accepted from payloads.
    const ALIASES: &'static [&'static str] = &[];
    /// The signature's version (1 and up).
    const VERSION: u32 = 1;
    /// The queue it is enqueued on.
    const QUEUE: &'static str = "default";
    /// The parameters, in declaration order.
    const PARAMS: &'static [ParamSpec];
    /// Retries, timeout and uniqueness.
    const OPTIONS: JobOptions = JobOptions::DEFAULT;
    /// The function that upgrades older payloads, if any.
    const MIGRATE: Option<MigrateFn> = None;
    /// What the job returns on success (`()` for most jobs); stored for
    /// [`JobHandle`](crate::JobHandle) when the job keeps its result.
    type Output: Serialize + serde::de::DeserializeOwned + Send + 'static;

    /// Encodes the arguments as a JSON object.
    fn to_args(&self) -> Result<Args, ArgError>;
    /// Decodes arguments that the migration step already brought up to date.
    fn from_args(args: Args) -> Result<Self, ArgError>;
    /// Runs the job body.
    fn perform(self, ctx: JobContext) -> BoxFuture<'static, Result<Self::Output, JobError>>;
}

/// Job-level options (`retries`, `timeout`, `unique_for`, `keep_result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobOptions {
    /// How many times a failed job is retried; `None` takes the worker's policy.
    pub retries: Option<u32>,
    /// How long one run may take before it fails as timed out.
    pub timeout: Option<Duration>,
    /// Refuse an identical job (same name and arguments) for this long.
    pub unique_for: Option<Duration>,
    /// How long its outcome (value, error, state) is kept for
    /// [`JobHandle`](crate::JobHandle); `None` records nothing.
    pub keep_result: Option<Duration>,
}

/// How long a job that returns a value keeps it unless `keep_result` says otherwise: a day.
pub const DEFAULT_KEEP_RESULT: Duration = Duration::from_secs(24 * 3600);

impl JobOptions {
    /// No retries override, no timeout, no uniqueness, no result kept.
    pub const DEFAULT: Self = Self { retries: None, timeout: None, unique_for: None, keep_result: None };
}

impl Default for JobOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One parameter of a job's signature, as the migration step and `schema` see it.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    /// The parameter's name, the key in `args`.
    pub name: &'static str,
    /// The Rust type as written.
    pub ty: &'static str,
    /// The version that added it (1 when not given).
    pub since: u32,
    /// Whether `since` was written out; then a payload at that version or
    /// newer must carry the parameter, and the default fills only older ones.
    pub explicit_since: bool,
    /// Old names still accepted from payloads.
    pub aliases: &'static [&'static str],
    /// Produces the default as JSON, if the parameter has one.
    pub default: Option<fn() -> Result<serde_json::Value, String>>,
}

/// A job's unique id, `jid` in the payload.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    /// A new random id: 24 hex digits (96 bits).
    pub fn new() -> Self {
        Self(format!("{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// Any text is an id (ids from other producers need not be hex), so parsing never fails.
///
/// ```
/// let jid: jobs_core::JobId = "3f9c2a7d41e0b6c58a9e12f4".parse().unwrap();
/// assert_eq!(jid.as_str(), "3f9c2a7d41e0b6c58a9e12f4");
/// ```
impl std::str::FromStr for JobId {
    type Err = std::convert::Infallible;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(id))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl crate::arg::JobArg for JobId {}

/// What a running job knows about itself. Ask for it with a `&JobContext`
/// parameter; it is injected, not serialized.
///
/// ```
/// use jobs_core::{job, JobContext, JobError};
///
/// #[job]
/// async fn import_feed(feed_id: u64, ctx: &JobContext) -> Result<(), JobError> {
///     tracing::info!(jid = %ctx.jid(), attempt = ctx.attempt(), feed_id, "importing");
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) jid: JobId,
    pub(crate) name: &'static str,
    pub(crate) version: u32,
    pub(crate) queue: String,
    pub(crate) attempt: u32,
    pub(crate) enqueued_at: Timestamp,
    pub(crate) cancel: CancelSignal,
}

/// A cancellation flag shared by a running job and its worker.
#[derive(Clone, Debug, Default)]
pub(crate) struct CancelSignal {
    inner: std::sync::Arc<CancelInner>,
}

#[derive(Debug, Default)]
struct CancelInner {
    requested: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelSignal {
    pub(crate) fn trip(&self) {
        self.inner.requested.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    pub(crate) fn is_tripped(&self) -> bool {
        self.inner.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn tripped(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_tripped() {
                return;
            }
            notified.await;
        }
    }
}

impl JobContext {
    /// The job's id.
    pub fn jid(&self) -> &JobId {
        &self.jid
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The version the payload was written at (older payloads were migrated).
    pub fn payload_version(&self) -> u32 {
        self.version
    }

    /// The queue it was fetched from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This run's number: 1 for the first run, 2 for the first retry.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When it was first enqueued.
    pub fn enqueued_at(&self) -> Timestamp {
        self.enqueued_at
    }

    /// Whether someone asked to cancel this job ([`JobHandle::cancel`](crate::JobHandle::cancel)).
    /// The worker notices at its next heartbeat (a third of the lease, 5 s by
    /// default). A job that stops on it and returns an error is settled as
    /// cancelled, neither retried nor dead; one that returns `Ok` succeeded.
    ///
    /// ```
    /// use jobs_core::{job, JobContext, JobError};
    ///
    /// #[job]
    /// async fn import_rows(file_id: u64, ctx: &JobContext) -> Result<u64, JobError> {
    ///     let mut imported = 0;
    ///     for _chunk in 0..100 {
    ///         if ctx.is_cancelled() {
    ///             return Err(JobError::fatal("cancelled"));
    ///         }
    ///         imported += 1; // import one chunk of `file_id`
    ///     }
    ///     Ok(imported)
    /// }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_tripped()
    }

    /// Resolves once cancellation is requested: `select!` it against the work.
    pub async fn cancelled(&self) {
        self.cancel.tripped().await;
    }
}
