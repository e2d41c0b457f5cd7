//! The registry: every `#[job]` linked into the binary, found through
//! `inventory`, so a worker runs them all with no list to maintain.

use std::collections::HashMap;

use crate::error::{ArgError, JobError, WorkerError};
use crate::job::{Args, BoxFuture, Job, JobContext, JobOptions, MigrateFn, ParamSpec};
use crate::migrate::{Upgrade, upgrade};

/// The decode-and-run entry of a registered job.
pub type RunFn = fn(Args, JobContext) -> Result<BoxFuture<'static, Result<serde_json::Value, JobError>>, ArgError>;

/// One registered job type: its signature and how to run it.
#[derive(Debug)]
pub struct JobRegistration {
    /// The registered name.
    pub name: &'static str,
    /// Older names still accepted.
    pub aliases: &'static [&'static str],
    /// The signature's version.
    pub version: u32,
    /// The queue it is enqueued on.
    pub queue: &'static str,
    /// The function's path, for error messages (`my_app::jobs::send_sms`).
    pub function: &'static str,
    /// The parameters in declaration order.
    pub params: &'static [ParamSpec],
    /// Retries, timeout and uniqueness.
    pub options: JobOptions,
    /// The upgrade function for older payloads.
    pub migrate: Option<MigrateFn>,
    /// Decodes up-to-date arguments and starts the job.
    pub run: RunFn,
    /// Decodes up-to-date arguments and encodes them again, as `perform_later` writes them.
    pub reencode: fn(Args) -> Result<Args, ArgError>,
}

impl JobRegistration {
    /// The registration of `J`, as `#[job]` submits it.
    pub const fn of<J: Job>(function: &'static str) -> Self {
        Self {
            name: J::NAME,
            aliases: J::ALIASES,
            version: J::VERSION,
            queue: J::QUEUE,
            function,
            params: J::PARAMS,
            options: J::OPTIONS,
            migrate: J::MIGRATE,
            run: run_job::<J>,
            reencode: reencode_job::<J>,
        }
    }

    /// Reads arguments as a worker of this binary would, without running
    /// anything: brought up from `version` (defaults, `migrate`), decoded,
    /// and returned as this binary's `perform_later` writes them at the
    /// registered version. `None` for arguments of a newer version than this
    /// binary's: it cannot read them.
    ///
    /// ```
    /// # use jobs_core::{job, JobRegistration};
    /// #[job]
    /// async fn text_user(user_id: u64, #[job(default = 1)] times: u32) {}
    ///
    /// let job = JobRegistration::of::<TextUser>("text_user");
    /// let args = job.read_args(1, serde_json::json!({"user_id": 42})).unwrap().unwrap();
    /// assert_eq!(serde_json::Value::Object(args), serde_json::json!({"user_id": 42, "times": 1}));
    /// let wrong = job.read_args(1, serde_json::json!({"user_id": "x"})).unwrap_err();
    /// assert!(wrong.to_string().contains("user_id"), "{wrong}");
    /// ```
    pub fn read_args(&self, version: u32, args: serde_json::Value) -> Result<Option<Args>, ArgError> {
        match upgrade(self, version, args)? {
            Upgrade::Ready(args) => (self.reencode)(args).map(Some),
            Upgrade::TooNew => Ok(None),
        }
    }
}

fn reencode_job<J: Job>(args: Args) -> Result<Args, ArgError> {
    J::from_args(args)?.to_args()
}

fn run_job<J: Job>(
    args: Args,
    ctx: JobContext,
) -> Result<BoxFuture<'static, Result<serde_json::Value, JobError>>, ArgError> {
    let body = J::from_args(args)?.perform(ctx);
    Ok(Box::pin(async move {
        let value = body.await?;
        serde_json::to_value(value).map_err(|error| {
            JobError::fatal(format!("job `{}`: its result cannot be encoded as JSON: {error}", J::NAME))
        })
    }))
}

inventory::collect!(JobRegistration);

/// The jobs a worker knows, by name and alias.
#[derive(Debug, Clone)]
pub struct Registry {
    jobs: Vec<&'static JobRegistration>,
    by_name: HashMap<&'static str, &'static JobRegistration>,
}

impl Registry {
    /// Every job linked into this binary. Fails when two jobs claim one name.
    pub fn linked() -> Result<Self, WorkerError> {
        Self::from_jobs(inventory::iter::<JobRegistration>.into_iter().collect())
    }

    /// A registry of the given jobs (tests, or a worker that runs a subset).
    pub fn from_jobs(mut jobs: Vec<&'static JobRegistration>) -> Result<Self, WorkerError> {
        jobs.sort_by_key(|job| job.name);
        let mut by_name: HashMap<&'static str, &'static JobRegistration> = HashMap::new();
        for job in &jobs {
            for name in std::iter::once(&job.name).chain(job.aliases) {
                if let Some(first) = by_name.insert(name, job) {
                    let (first, second) = order(first.function, job.function);
                    return Err(WorkerError::DuplicateJob { name: (*name).to_owned(), first, second });
                }
            }
        }
        Ok(Self { jobs, by_name })
    }

    /// Looks a job up by its name or one of its aliases.
    pub fn get(&self, name: &str) -> Option<&'static JobRegistration> {
        self.by_name.get(name).copied()
    }

    /// Every job, sorted by name.
    pub fn jobs(&self) -> &[&'static JobRegistration] {
        &self.jobs
    }

    /// Whether no job is registered.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The queues named by registered jobs, sorted and without repeats.
    pub fn queues(&self) -> Vec<&'static str> {
        let mut queues: Vec<_> = self.jobs.iter().map(|job| job.queue).collect();
        queues.sort_unstable();
        queues.dedup();
        queues
    }
}

fn order(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}
