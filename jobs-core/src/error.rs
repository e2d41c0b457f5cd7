//! Error types, one enum per boundary: enqueueing ([`EnqueueError`]), running a
//! job ([`JobError`]), decoding arguments ([`ArgError`]), the worker
//! ([`WorkerError`]) and the storage behind both ([`BackendError`]).

use std::fmt;
use std::time::Duration;

/// Why a job failed. A job body returns it; the worker retries or dead-letters.
///
/// Any `std::error::Error` converts into it, so `?` works inside a job:
///
/// ```
/// use jobs_core::JobError;
///
/// fn parse(input: &str) -> Result<u64, JobError> {
///     Ok(input.parse::<u64>()?)
/// }
/// assert!(parse("x").is_err());
/// assert_eq!(JobError::fatal("gone").to_string(), "gone");
/// ```
pub struct JobError {
    message: String,
    retryable: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl JobError {
    /// A failure that is retried according to the job's retry policy.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true, source: None }
    }

    /// A failure that retrying cannot fix: the job goes straight to the dead set.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false, source: None }
    }

    /// Whether the retry policy applies (`false` for [`JobError::fatal`]).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The message stored with the job in the retry or dead set.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying error, when the failure came from one through `?`.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl JobError {
    /// A retryable failure from a boxed error, kept as the source.
    pub(crate) fn from_boxed(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self { message: error.to_string(), retryable: true, source: Some(error) }
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        Self { message: error.to_string(), retryable: true, source: Some(Box::new(error)) }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A [`JobError`] as a `std::error::Error`. `JobError` is not one itself, so
/// that every error converts into it with `?`; this one carries it where a
/// `Box<dyn Error>` is wanted, so `?` on a `perform_now` works in a `main`
/// or a test that returns `Result<(), Box<dyn std::error::Error>>`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// #[jobs_core::job]
/// async fn charge(order_id: u64) -> Result<(), jobs_core::JobError> {
///     Err(jobs_core::JobError::fatal(format!("order {order_id}: card declined")))
/// }
///
/// async fn run() -> Result<(), Box<dyn std::error::Error>> {
///     Charge::perform_now(7).await?;
///     Ok(())
/// }
/// assert_eq!(run().await.unwrap_err().to_string(), "order 7: card declined");
/// # });
/// ```
#[derive(Debug)]
pub struct FailedJob(pub JobError);

impl fmt::Display for FailedJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for FailedJob {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl From<JobError> for Box<dyn std::error::Error + Send + Sync + 'static> {
    fn from(error: JobError) -> Self {
        Box::new(FailedJob(error))
    }
}

impl From<JobError> for Box<dyn std::error::Error + 'static> {
    fn from(error: JobError) -> Self {
        Box::new(FailedJob(error))
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError").field("message", &self.message).field("retryable", &self.retryable).finish()
    }
}

/// A job's arguments could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgError {
    /// A required argument is absent from the payload.
    #[error("job `{job}`: missing argument `{field}`{hint}")]
    Missing {
        /// The job's registered name.
        job: String,
        /// The parameter name.
        field: String,
        /// Why no default applied, starting with `: ` (may be empty).
        hint: String,
    },
    /// An argument has the wrong JSON type or shape.
    #[error("job `{job}`: argument `{field}`: {detail}")]
    Invalid {
        /// The job's registered name.
        job: String,
        /// The parameter name.
        field: String,
        /// What serde said.
        detail: String,
    },
    /// The `args` of the payload is not a JSON object.
    #[error("job `{job}`: `args` must be a JSON object keyed by parameter name, found {found}")]
    NotAnObject {
        /// The job's registered name.
        job: String,
        /// The JSON type found instead.
        found: String,
    },
    /// The job's `migrate` function refused the payload.
    #[error("job `{job}`: migration from version {from} failed: {detail}")]
    Migration {
        /// The job's registered name.
        job: String,
        /// The payload's version.
        from: u32,
        /// The migration's error.
        detail: String,
    },
    /// More than one argument is wrong: each of them (keys that name no
    /// parameter first, when enqueued by name, then in parameter order), so
    /// one fix-up covers them all. Never nested, never fewer than two.
    #[error("job `{job}`: {} arguments are wrong: {}", errors.len(), details(job, errors))]
    Several {
        /// The job's registered name.
        job: String,
        /// One error per argument.
        errors: Vec<ArgError>,
    },
}

impl ArgError {
    /// One error out of the ones found: the error itself when there is one,
    /// [`ArgError::Several`] (flattened) when there are more; `None` when
    /// there are none.
    pub(crate) fn all(job: &str, errors: impl IntoIterator<Item = ArgError>) -> Option<ArgError> {
        let mut flat: Vec<ArgError> = errors.into_iter().flat_map(ArgError::each).collect();
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(ArgError::Several { job: job.to_owned(), errors: flat }),
        }
    }

    /// Both errors in one.
    pub(crate) fn and(self, job: &str, other: ArgError) -> ArgError {
        ArgError::Several { job: job.to_owned(), errors: self.each().chain(other.each()).collect() }
    }

    fn each(self) -> impl Iterator<Item = ArgError> {
        match self {
            ArgError::Several { errors, .. } => errors,
            one => vec![one],
        }
        .into_iter()
    }
}

/// Each error without the `job `name`: ` each of them starts with.
fn details(job: &str, errors: &[ArgError]) -> String {
    let prefix = format!("job `{job}`: ");
    let each: Vec<String> = errors
        .iter()
        .map(|error| {
            let text = error.to_string();
            text.strip_prefix(&prefix).map(str::to_owned).unwrap_or(text)
        })
        .collect();
    each.join("; ")
}

/// Enqueueing a job failed; nothing was enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// An argument could not be encoded as JSON.
    #[error(transparent)]
    Arg(#[from] ArgError),
    /// An argument does not survive a JSON round trip (checked in debug builds).
    #[error(
        "job `{job}`: argument `{field}` changes in a JSON round trip ({detail}); pass a simple value that JSON keeps exactly"
    )]
    Lossy {
        /// The job's name.
        job: String,
        /// The parameter name.
        field: String,
        /// Before and after.
        detail: String,
    },
    /// The encoded payload is larger than the client's limit.
    #[error(
        "job `{job}`: payload is {size} bytes, over the limit of {limit} bytes; pass ids and load data inside the job"
    )]
    TooLarge {
        /// The job's name.
        job: String,
        /// The payload size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A job written by hand ([`Client::enqueue_raw`](crate::Client::enqueue_raw),
    /// [`Client::enqueue_registered`](crate::Client::enqueue_registered)) is malformed:
    /// an empty name or queue, version 0, args not an object.
    #[error("raw job `{job}`: {detail}")]
    InvalidRaw {
        /// The job's name as given.
        job: String,
        /// What is wrong.
        detail: String,
    },
    /// The job is scheduled past the year 9999 (`perform_in(Duration::MAX)`,
    /// say): it would wait for ever.
    #[error(
        "job `{job}`: scheduled {at_ms} ms after 1970, past the year 9999, so it would never run; schedule it sooner"
    )]
    TooLate {
        /// The job's name.
        job: String,
        /// When it was to run, in ms since the Unix epoch.
        at_ms: u64,
    },
    /// An identical job (same name and arguments) is already enqueued within `unique_for`.
    #[error("job `{job}`: an identical job was enqueued less than {unique_for:?} ago (unique_for)")]
    Duplicate {
        /// The job's name.
        job: String,
        /// The job's `unique_for` window.
        unique_for: Duration,
    },
    /// The plain client was used inside an `after_commit` scope.
    #[error(
        "job `{job}`: enqueued through the plain client inside a transaction scope; enqueue through the scope's handle so the job is pushed only after commit"
    )]
    InsideTransaction {
        /// The job's name.
        job: String,
    },
    /// A transaction handle was used after its scope was flushed or discarded.
    #[error(
        "job `{job}`: enqueued through a transaction handle whose scope already ended (flushed or discarded); enqueue through the client, or a new scope"
    )]
    ScopeEnded {
        /// The job's name.
        job: String,
    },
    /// The backend refused or could not be reached.
    #[error("job `{job}`: {source}")]
    Backend {
        /// The job's name (the first one, for a batch).
        job: String,
        /// What the backend said.
        source: BackendError,
    },
}

/// The worker could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// No job is registered in this binary.
    #[error(
        "no job is registered in this binary: link the crate that holds your #[job] functions, e.g. `use my_app_jobs as _;` in main.rs (rustc drops crates a binary never names)"
    )]
    NoJobsRegistered,
    /// Two registered jobs claim the same name or alias.
    #[error("job name `{name}` is registered twice: by `{first}` and by `{second}`; rename one or drop the alias")]
    DuplicateJob {
        /// The clashing name or alias.
        name: String,
        /// The first function.
        first: String,
        /// The second function.
        second: String,
    },
    /// The builder's settings are inconsistent.
    #[error("worker configuration: {0}")]
    Config(String),
    /// The backend failed in a way the worker cannot ride out.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The storage behind client and worker failed.
#[derive(Debug, thiserror::Error)]
#[error("backend error: {message}")]
pub struct BackendError {
    message: String,
    transient: bool,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A failure that may go away by itself (timeout, connection lost).
    pub fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: true, source: None }
    }

    /// A failure that retrying will not fix (bad configuration, refused command).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), transient: false, source: None }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether backing off and trying again may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// What went wrong, without the `backend error:` of its display.
    pub fn message(&self) -> &str {
        &self.message
    }
}
