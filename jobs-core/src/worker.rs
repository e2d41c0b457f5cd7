//! [`Worker`]: fetches jobs from the queues it serves and runs them, with
//! weighted or strict priorities, a global and per-queue concurrency cap,
//! lease heartbeats, rescue of dead workers' jobs and graceful shutdown.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::backend::{Backend, FetchRequest, Fetched, Lease, QueueTake, WorkerId};
use crate::error::{BackendError, WorkerError};
use crate::execute::Executor;
pub use crate::execute::WorkerReport;
use crate::job::JobId;
use crate::lock;
use crate::registry::Registry;
use crate::retry::RetryPolicy;

/// Runs jobs. Build one with [`Worker::builder`].
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{job, Client, JobError, MemoryBackend, Worker};
///
/// #[job(queue = "critical")]
/// async fn send_sms(user_id: u64) -> Result<(), JobError> {
///     Ok(())
/// }
///
/// let backend = MemoryBackend::new();
/// let client = Client::new(backend.clone());
/// SendSms::perform_later(&client, 1).await.unwrap();
/// let worker = Worker::builder(backend).queue("critical", 10).concurrency(5).build().unwrap();
/// let report = worker.drain().await.unwrap();
/// assert_eq!(report.succeeded, 1);
/// # });
/// ```
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    executor: Executor,
    queues: Vec<QueueSpec>,
    queue_names: Vec<String>,
    strict: bool,
    concurrency: usize,
    fetch_batch: usize,
    fetch_ahead: usize,
    lease: Duration,
    maintenance_every: Duration,
    grace: Duration,
    /// Running (or held) jobs per queue, parallel to `queues`; counted for capped queues only.
    busy: Vec<AtomicUsize>,
    slot_freed: Notify,
    /// Set by [`Worker::end_grace`]: the grace period of this run's shutdown is over.
    grace_ended: AtomicBool,
    /// Told when `grace_ended` is set.
    grace_ending: Notify,
}

#[derive(Clone, Debug)]
struct QueueSpec {
    name: String,
    weight: u32,
    cap: Option<usize>,
}

/// Settings for a [`Worker`].
pub struct WorkerBuilder {
    backend: Arc<dyn Backend>,
    queues: Vec<(String, u32)>,
    caps: HashMap<String, usize>,
    strict: bool,
    concurrency: usize,
    fetch_batch: Option<usize>,
    fetch_ahead: usize,
    retry: RetryPolicy,
    grace: Duration,
    lease: Duration,
    maintenance_every: Duration,
    defer_delay: Duration,
    events: bool,
    registry: Option<Registry>,
}

impl Worker {
    /// Starts configuring a worker over `backend`.
    pub fn builder(backend: impl Backend) -> WorkerBuilder {
        Self::builder_shared(Arc::new(backend))
    }

    /// Starts configuring a worker over a shared backend.
    pub fn builder_shared(backend: Arc<dyn Backend>) -> WorkerBuilder {
        WorkerBuilder {
            backend,
            queues: Vec::new(),
            caps: HashMap::new(),
            strict: false,
            concurrency: 10,
            fetch_batch: None,
            fetch_ahead: 0,
            retry: RetryPolicy::default(),
            grace: Duration::from_secs(25),
            lease: Duration::from_secs(15),
            maintenance_every: Duration::from_secs(1),
            defer_delay: Duration::from_secs(10),
            events: false,
            registry: None,
        }
    }

    /// This worker process's identity (in every lease token it takes).
    pub fn id(&self) -> &WorkerId {
        &self.inner.executor.worker
    }

    /// The queues served, with their weights, in the configured order.
    pub fn queues(&self) -> Vec<(String, u32)> {
        self.inner.queues.iter().map(|q| (q.name.clone(), q.weight)).collect()
    }

    /// Counters since the worker was built.
    pub fn report(&self) -> WorkerReport {
        self.inner.executor.stats.snapshot()
    }

    /// Ends the grace period of the shutdown under way in
    /// [`run_until`](Worker::run_until) or [`drain_until`](Worker::drain_until)
    /// now, as if it had run out: the jobs still running are stopped and put
    /// back at the head of their queues, whole (a later run starts them over),
    /// and the run returns. Called before the shutdown began (even before the
    /// run started), it makes that run's grace period zero; the run after it
    /// starts with its own (a worker runs one run at a time: a clone that
    /// runs beside it shares the flag, and the first run to end clears it). The worker
    /// CLI calls it on a second SIGTERM or SIGINT (Ctrl-C pressed twice).
    ///
    /// ```no_run
    /// # async fn run(worker: jobs_core::Worker) -> Result<(), jobs_core::WorkerError> {
    /// use jobs_core::shutdown_signal;
    /// let run = worker.run_until(shutdown_signal());
    /// tokio::pin!(run);
    /// // The first signal starts the shutdown; a second one ends its grace period.
    /// let report = tokio::select! {
    ///     report = &mut run => report?,
    ///     () = async { shutdown_signal().await; shutdown_signal().await } => {
    ///         worker.end_grace();
    ///         run.await?
    ///     }
    /// };
    /// println!("{report}");
    /// # Ok(()) }
    /// ```
    pub fn end_grace(&self) {
        self.inner.grace_ended.store(true, Ordering::Release);
        self.inner.grace_ending.notify_waiters();
    }

    /// Runs every job that is ready now, and those they enqueue, until none
    /// is ready. Scheduled and retry jobs that are due count as ready (they
    /// are promoted at the start and whenever the queues run dry); those not
    /// yet due stay where they are. Jobs whose lease expired (their worker
    /// was killed) are rescued at the start, as an attempt each: they go
    /// through the retry policy, so a later run picks them up.
    /// Running jobs' leases are extended and cancellations delivered as under
    /// [`run_until`](Worker::run_until). Meant for tests and scripts; do not
    /// call it while `run_until` runs.
    pub async fn drain(&self) -> Result<WorkerReport, WorkerError> {
        self.drain_until(std::future::pending::<()>()).await
    }

    /// [`drain`](Worker::drain)s until nothing is ready or `shutdown`
    /// completes, whichever comes first; on `shutdown` it stops as
    /// [`run_until`](Worker::run_until) does: no new jobs, the running ones
    /// given the grace period, what is still running then put back.
    ///
    /// ```no_run
    /// # async fn run(worker: jobs_core::Worker) -> Result<(), jobs_core::WorkerError> {
    /// // A cron job's run: what is ready, but SIGTERM ends it gracefully.
    /// worker.drain_until(jobs_core::shutdown_signal()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn drain_until<F: IntoFuture>(&self, shutdown: F) -> Result<WorkerReport, WorkerError> {
        let inner = &self.inner;
        let start = self.report();
        let _grace = GraceEndsWithTheRun(inner);
        let acks = AckWriter::start(inner);
        // Leases of running jobs are extended as under `run_until`: a job that outlives
        // its lease must not be rescued and run twice while the drain still runs it.
        let mut running = Running::default();
        let _cancel_jobs = CancelJobsOnDrop(Arc::clone(&running.tasks));
        let upkeep = Upkeep::start(inner, &running.tasks);
        let shutdown = shutdown.into_future();
        tokio::pin!(shutdown);
        let drained = self.drain_loop(&mut running, &mut shutdown).await;
        if matches!(drained, Ok(Drained::Stopped)) {
            tracing::info!(worker = %self.id(), running = running.tasks.count(), grace = ?inner.grace, "drain stopped: no new jobs are fetched");
            running.tasks.end_by(inner.grace_over(tokio::time::Instant::now() + inner.grace)).await;
        }
        // The drain heartbeated: it is not a live worker any more.
        inner.wind_up(upkeep, acks, &running.tasks).await;
        drained?;
        Ok(self.report().since(start))
    }

    /// Fetches and starts jobs until none is ready (and none runs), or
    /// `shutdown` completes; it looks at `shutdown` between steps, so that no
    /// fetch is cut off halfway (its jobs would stay leased to nobody).
    async fn drain_loop<F: Future>(
        &self,
        running: &mut Running,
        shutdown: &mut std::pin::Pin<&mut F>,
    ) -> Result<Drained, WorkerError> {
        let inner = &self.inner;
        // Scheduled and retry jobs already due are ready too (as `run_until`'s maintenance
        // would make them): at the start, and again whenever the queues run dry. Jobs of
        // a killed worker come back at the start.
        inner.backend().promote_due(None).await?;
        inner.rescue_expired().await?;
        loop {
            let stopped = tokio::select! {
                biased;
                _ = shutdown.as_mut() => true,
                () = std::future::ready(()) => false,
            };
            if stopped {
                return Ok(Drained::Stopped);
            }
            let active = running.tasks.count();
            let free = inner.concurrency.saturating_sub(active);
            let (takes, mut reserved) = inner.plan(free);
            if takes.is_empty() {
                // No room (every slot busy, or every queue at its cap): wait for a job to end.
                if active == 0 {
                    break;
                }
                if running.until_a_job_ends(shutdown).await {
                    return Ok(Drained::Stopped);
                }
                continue;
            }
            let sent = std::time::Instant::now();
            let fetched = match inner.backend().fetch(inner.request(&takes, free)).await {
                Ok(fetched) => {
                    inner.executor.confirm(fetched.iter().map(|job| &job.lease), sent, false);
                    fetched
                }
                Err(error) => {
                    // Let running jobs settle before reporting, so none is left leased; a
                    // shutdown meanwhile ends them as it ends any drain (grace, then put back).
                    let stopped = tokio::select! {
                        () = running.tasks.all_ended() => false,
                        _ = shutdown.as_mut() => true,
                    };
                    if stopped {
                        tracing::warn!(%error, "drain stopped after a failed fetch");
                        return Ok(Drained::Stopped);
                    }
                    return Err(error.into());
                }
            };
            if fetched.is_empty() {
                // Drained when nothing ran while the fetch looked and nothing came due; a job
                // running then may enqueue more (or free a unique lock): look again once one ends.
                if active == 0 {
                    if inner.backend().promote_due(None).await? > 0 {
                        continue;
                    }
                    break;
                }
                if running.until_a_job_ends(shutdown).await {
                    return Ok(Drained::Stopped);
                }
                continue;
            }
            for job in fetched {
                let slot = reserved.slot(&job.lease.queue);
                running.spawn(inner, job, Holds { slot, permit: None });
            }
        }
        Ok(Drained::Done)
    }

    /// Runs jobs until `shutdown` completes, then shuts down gracefully: stops
    /// fetching, lets running jobs finish within the grace period (counted
    /// from the moment `shutdown` completes), and puts back what is still
    /// running. An idle worker ends its wait for jobs at once
    /// ([`Backend::end_waits`]): the wait may carry a fetch, and what it
    /// leased is put back rather than left to its lease. Transient backend
    /// errors are logged and ridden out with backoff; they never end the loop.
    ///
    /// Stop it through `shutdown`, not by dropping the future: a dropped
    /// `run_until` cancels its jobs without putting them back, and they
    /// return only when their leases expire, as failed attempts.
    ///
    /// ```no_run
    /// # async fn run(worker: jobs_core::Worker) -> Result<(), jobs_core::WorkerError> {
    /// // SIGTERM or SIGINT, as a deployment sends them:
    /// worker.run_until(jobs_core::shutdown_signal()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_until<F: IntoFuture>(&self, shutdown: F) -> Result<WorkerReport, WorkerError> {
        let inner = &self.inner;
        let start = self.report();
        let _grace = GraceEndsWithTheRun(inner);
        tracing::info!(
            worker = %self.id(),
            queues = ?self.queues(),
            strict = inner.strict,
            concurrency = inner.concurrency,
            "worker started"
        );
        // Permits bound what is leased (running or held); `Running` bounds what runs.
        let permits = Arc::new(Semaphore::new(inner.concurrency + inner.fetch_ahead));
        // Fetches start their jobs themselves, with no hop through this loop.
        let running = Arc::new(Mutex::new(Running::default()));
        if inner.fetch_ahead > 0 {
            lock(&running).resume = Some(Arc::downgrade(&running));
        }
        let tasks = Arc::clone(&lock(&running).tasks);
        let _cancel_jobs = CancelJobsOnDrop(Arc::clone(&tasks));
        // Dropped before the jobs are cancelled: a fetch that lands after a drop starts nothing.
        let _close = CloseOnDrop(Arc::clone(&running));
        let (stop_tx, stop_rx) = watch::channel(false);
        let spawn_fetcher =
            || tokio::spawn(fetch_loop(Arc::clone(inner), Arc::clone(&permits), Arc::clone(&running), stop_rx.clone()));
        let mut fetcher = spawn_fetcher();
        // Heartbeats and maintenance run on their own, so nothing here can delay them.
        let upkeep = Upkeep::start(inner, &tasks);
        let own = OwnLeases { tasks: Arc::clone(&tasks), extended: Arc::clone(&upkeep.heartbeat.last) };
        let maintenance = tokio::spawn(maintenance_loop(Arc::clone(inner), own, stop_rx.clone()));
        let acks = AckWriter::start(inner);
        let shutdown = shutdown.into_future();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                ended = &mut fetcher => {
                    tracing::error!(?ended, "the fetch loop ended unexpectedly; restarting it");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    fetcher = spawn_fetcher();
                }
            }
        }
        // The grace period counts from the shutdown signal: it runs while the fetcher stops.
        // Boxed, to be dropped with its timer once the jobs ended (with the clock paused, as in
        // tests, a timer left behind is where an idle runtime jumps to).
        let mut grace_over = Box::pin(inner.grace_over(tokio::time::Instant::now() + inner.grace));
        tracing::info!(
            worker = %self.id(),
            running = tasks.count(),
            grace = ?inner.grace,
            "shutting down: no new jobs are fetched; running jobs have the grace period to finish, then go back to their queues"
        );
        let _ = stop_tx.send(true);
        maintenance.abort();
        // From here on a fetch that lands sets its jobs aside instead of starting them.
        lock(&running).closed = true;
        let fetching_stopped = async {
            if tokio::time::timeout(FETCH_WAIT * 2 + Duration::from_secs(5), &mut fetcher).await.is_err() {
                tracing::warn!(
                    "the fetch loop did not stop in time (a blocked runtime delays it too); jobs a fetch of its was taking, if any, return when their leases expire"
                );
                fetcher.abort();
            }
            // The jobs held ahead and those set aside go back now, not after the grace period,
            // and in one call: each call puts its jobs at the head of their queues, so two
            // would swap them.
            let back = {
                let mut running = lock(&running);
                let mut back = running.take_held(inner);
                back.append(&mut running.late);
                back
            };
            inner.put_back(back).await;
        };
        tokio::pin!(fetching_stopped);
        let over = tokio::select! {
            biased;
            () = &mut fetching_stopped => false,
            () = &mut grace_over => {
                tasks.abort_all();
                fetching_stopped.await;
                true
            }
        };
        if over {
            // No job started since: the fetcher has stopped.
            tasks.abort_all();
            tasks.all_ended().await;
        } else {
            tasks.end_by(&mut grace_over).await;
        }
        drop(grace_over);
        inner.wind_up(upkeep, acks, &tasks).await;
        tracing::info!(worker = %self.id(), "worker stopped");
        Ok(self.report().since(start))
    }
}

impl WorkerBuilder {
    /// Serves `queue` with `weight` (higher is served more often; with
    /// [`strict`](Self::strict), queues are served in the order added).
    pub fn queue(mut self, queue: impl Into<String>, weight: u32) -> Self {
        self.queues.push((queue.into(), weight));
        self
    }

    /// Serves queues in strict order: a queue is served only when every queue
    /// before it is empty. Name the queues with [`queue`](Self::queue), most
    /// important first: with none named and jobs on several queues, `build`
    /// refuses (the registry's queues come in name order, `bulk` before
    /// `critical`).
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Runs at most `jobs` at once (default 10).
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs;
        self
    }

    /// Runs at most `jobs` of `queue` at once, within the global concurrency
    /// (jobs held by [`fetch_ahead`](Self::fetch_ahead) count too).
    pub fn queue_limit(mut self, queue: impl Into<String>, jobs: usize) -> Self {
        self.caps.insert(queue.into(), jobs);
        self
    }

    /// Takes up to `jobs` per fetch round trip (default: the concurrency, at most 64).
    pub fn fetch_batch(mut self, jobs: usize) -> Self {
        self.fetch_batch = Some(jobs);
        self
    }

    /// Leases up to `jobs` more than the concurrency, held by this worker
    /// until a slot frees up (default 0: a worker leases only what it can
    /// start). For workers of short jobs (milliseconds): a freed slot starts
    /// a job at once instead of after a fetch round trip.
    ///
    /// What it costs: a held job waits behind running ones while another
    /// worker may be idle, and a `critical` job fetched later waits behind
    /// the held ones, so keep it off for slow jobs and mixed priorities. A
    /// worker killed with `SIGKILL` loses its held jobs as it loses its
    /// running ones: they return when their lease expires, each charged a
    /// failed attempt.
    ///
    /// Held jobs' leases are extended like running ones; a held job whose
    /// lease another worker took over is dropped, not run; a cancellation
    /// requested while a job is held is seen at the heartbeats, as a running
    /// job's is, and the job is then settled as cancelled without running.
    /// A shutdown puts held jobs back as soon as the fetcher has stopped
    /// (its idle wait ended at once), not after the grace period, in
    /// the order they were fetched; [`drain`](Worker::drain) leases no more
    /// than it can start.
    ///
    /// ```
    /// # use jobs_core::{MemoryBackend, Worker, job, JobError};
    /// # #[job] async fn ping() -> Result<(), JobError> { Ok(()) }
    /// let worker = Worker::builder(MemoryBackend::new()).concurrency(50).fetch_ahead(64).build().unwrap();
    /// ```
    pub fn fetch_ahead(mut self, jobs: usize) -> Self {
        self.fetch_ahead = jobs;
        self
    }

    /// The retry policy for jobs that set no `retries` of their own, and the backoff for all.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long running jobs may take to finish after shutdown begins (default
    /// 25 s), counted from the shutdown signal: the fetcher's stop does not extend it.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a lease lasts without a heartbeat (default 15 s; extended every third of it).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often scheduled jobs are promoted and expired leases rescued (default 1 s).
    pub fn maintenance_interval(mut self, every: Duration) -> Self {
        self.maintenance_every = every;
        self
    }

    /// Writes lifecycle events (started, succeeded, failed, retrying, dead,
    /// cancelled) for [`Client::events`](crate::Client::events) readers. Off
    /// by default: each event is a write, and a worker that nobody listens
    /// to should not pay for them.
    pub fn events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// How long a payload newer than this worker waits before it is offered again (default 10 s).
    pub fn defer_delay(mut self, delay: Duration) -> Self {
        self.defer_delay = delay;
        self
    }

    /// Runs these jobs instead of every job linked into the binary.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Checks the settings and the registry, and builds the worker.
    ///
    /// With no [`queue`](Self::queue) given, it serves every queue a registered
    /// job names, with weight 1. It warns about registered jobs whose queue it
    /// does not serve.
    pub fn build(self) -> Result<Worker, WorkerError> {
        let registry = match self.registry {
            Some(registry) => registry,
            None => Registry::linked()?,
        };
        if registry.is_empty() {
            return Err(WorkerError::NoJobsRegistered);
        }
        if self.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        if self.concurrency.checked_add(self.fetch_ahead).is_none_or(|leased| leased > Semaphore::MAX_PERMITS) {
            let max = Semaphore::MAX_PERMITS;
            return Err(WorkerError::Config(format!("concurrency plus fetch_ahead must be at most {max}")));
        }
        if self.lease < Duration::from_millis(30) {
            return Err(WorkerError::Config("the lease must last at least 30 ms".into()));
        }
        if self.maintenance_every.is_zero() {
            return Err(WorkerError::Config("the maintenance interval must be longer than zero".into()));
        }
        let mut queues = self.queues;
        if queues.is_empty() {
            queues = registry.queues().into_iter().map(|q| (q.to_owned(), 1)).collect();
            // The registry's queues come in name order: `bulk` would go before `critical`.
            if self.strict && queues.len() > 1 {
                let names: Vec<&str> = queues.iter().map(|(name, _)| name.as_str()).collect();
                return Err(WorkerError::Config(format!(
                    "strict serves queues in the order given, and none was given: name them most important first with `queue` (`-q` on the command line), from {}",
                    names.join(", ")
                )));
            }
        }
        let mut specs: Vec<QueueSpec> = Vec::with_capacity(queues.len());
        for (name, weight) in queues {
            if let Some(problem) = crate::client::queue_name_problem(&name) {
                return Err(WorkerError::Config(format!("queue {name:?}: {problem}")));
            }
            if weight == 0 {
                return Err(WorkerError::Config(format!("queue `{name}` has weight 0; weights start at 1")));
            }
            if specs.iter().any(|q| q.name == name) {
                return Err(WorkerError::Config(format!("queue `{name}` is listed twice")));
            }
            let cap = self.caps.get(&name).copied();
            if cap == Some(0) {
                return Err(WorkerError::Config(format!("queue `{name}` has a limit of 0 jobs")));
            }
            if let Some(cap) = cap.filter(|cap| *cap >= self.concurrency) {
                tracing::warn!(
                    "queue_limit of `{name}` ({cap}) is not below the concurrency ({}): it limits nothing",
                    self.concurrency
                );
            }
            if !registry.jobs().iter().any(|job| job.queue == name) {
                tracing::warn!(
                    "queue `{name}` is served, but no job registered in this binary uses it: only jobs enqueued there by name (`enqueue --queue`, `enqueue_raw`) come to it; a typo?"
                );
            }
            specs.push(QueueSpec { name, weight, cap });
        }
        if let Some(name) = self.caps.keys().find(|name| !specs.iter().any(|q| &q.name == *name)) {
            return Err(WorkerError::Config(format!("queue_limit names `{name}`, which this worker does not serve")));
        }
        // One line for them all: a worker given a part of the queues is a normal deployment.
        let unserved: Vec<String> = registry
            .jobs()
            .iter()
            .filter(|job| !specs.iter().any(|q| q.name == job.queue))
            .map(|job| format!("{} ({})", job.name, job.queue))
            .collect();
        if !unserved.is_empty() {
            tracing::warn!(
                "{} registered job(s) on queues this worker does not serve, which another worker must serve: {}",
                unserved.len(),
                unserved.join(", ")
            );
        }
        let lease = self.lease.min(FOR_EVER);
        let mut executor =
            Executor::new(self.backend, registry, self.retry, self.defer_delay, WorkerId::generate(), lease);
        executor.events = self.events;
        let fetch_batch = self.fetch_batch.unwrap_or(self.concurrency.min(64)).max(1);
        Ok(Worker {
            inner: Arc::new(Inner {
                executor,
                queue_names: specs.iter().map(|q| q.name.clone()).collect(),
                strict: self.strict,
                concurrency: self.concurrency,
                fetch_batch,
                fetch_ahead: self.fetch_ahead,
                // "For ever" settings (`Duration::MAX`) must not overflow the clock.
                lease: self.lease.min(FOR_EVER),
                maintenance_every: self.maintenance_every.min(FOR_EVER),
                grace: self.grace.min(FOR_EVER),
                busy: specs.iter().map(|_| AtomicUsize::new(0)).collect(),
                queues: specs,
                slot_freed: Notify::new(),
                grace_ended: AtomicBool::new(false),
                grace_ending: Notify::new(),
            }),
        })
    }
}

/// How long an idle worker blocks waiting for a push before it looks again.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// How long a busy fetcher waits for more free slots before it fetches.
const FETCH_LINGER: Duration = Duration::from_micros(200);

/// The task that writes acknowledgements in batches while jobs run.
struct AckWriter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    inner: Arc<Inner>,
}

impl AckWriter {
    fn start(inner: &Arc<Inner>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let worker = Arc::clone(inner);
        let task = tokio::spawn(async move { worker.executor.ack_loop(stopped).await });
        Self { stop, task, inner: Arc::clone(inner) }
    }

    /// Writes what is left and waits until every acknowledgement is written.
    async fn finish(mut self) {
        let _ = self.stop.send(true);
        if (&mut self.task).await.is_err() {
            self.inner.executor.flush_acks().await;
        }
    }
}

impl Drop for AckWriter {
    /// A caller that drops `drain` or `run_until` midway still gets its acks written.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Stops a background task when dropped (however the caller ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What looks after a batch of running jobs: the heartbeat that extends
/// their leases and the loop that delivers their cancellations.
struct Upkeep {
    heartbeat: Heartbeat,
    cancels: AbortOnDrop,
}

impl Upkeep {
    fn start(inner: &Arc<Inner>, tasks: &Arc<Tasks>) -> Self {
        let heartbeat = Heartbeat::start(inner, tasks);
        // Counted from now, not from the task's first poll: jobs that block the runtime
        // from the start delay that poll too, and the block would go unseen.
        let started = tokio::time::Instant::now();
        let cancels = AbortOnDrop(tokio::spawn(cancel_loop(Arc::clone(inner), heartbeat.apart(), started)));
        Self { heartbeat, cancels }
    }

    /// Writes the last acknowledgements while the heartbeat still extends the
    /// finished jobs' leases, then stops.
    async fn finish(self, acks: AckWriter) {
        drop(self.cancels);
        acks.finish().await;
        self.heartbeat.stop().await;
    }
}

/// Cancels the jobs still running when dropped: a caller that drops `drain`
/// or `run_until` midway leaves no job running unwatched (each keeps its
/// lease, which is no longer extended). Once every job has ended, it does nothing.
struct CancelJobsOnDrop(Arc<Tasks>);

/// Clears an [`end_grace`](Worker::end_grace) when the run ends (or is
/// dropped), so the next run has its grace period; one made before the run
/// began applies to that run.
struct GraceEndsWithTheRun<'a>(&'a Inner);

impl Drop for GraceEndsWithTheRun<'_> {
    fn drop(&mut self) {
        self.0.grace_ended.store(false, Ordering::Release);
    }
}

impl Drop for CancelJobsOnDrop {
    fn drop(&mut self) {
        self.0.abort_all();
    }
}

/// Closes a `run_until`'s jobs to new starts when dropped: its fetcher
/// winds down on its own (the stop sender is gone), and what a fetch still
/// in flight brings is set aside, left to its lease.
struct CloseOnDrop(Arc<Mutex<Running>>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        lock(&self.0).closed = true;
    }
}

/// Room reserved in capped queues for one fetch ([`Inner::plan`]): each job
/// the fetch brings takes its slot from it; what is left is given back when
/// dropped (and wakes a fetch waiting for room).
struct Reserved {
    inner: Arc<Inner>,
    /// Reserved slots by queue index; empty when no capped queue is planned.
    counts: Vec<usize>,
}

impl Reserved {
    /// The slot of a job fetched from `queue`.
    fn slot(&mut self, queue: &str) -> QueueSlot {
        match self.inner.capped_index(queue) {
            Some(index) if self.counts.get(index).is_some_and(|n| *n > 0) => {
                self.counts[index] -= 1;
                QueueSlot { capped: Some((Arc::clone(&self.inner), index)) }
            }
            // More than was planned for that queue (a backend's fault): counted as it comes.
            _ => self.inner.take_slot(queue),
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut freed = false;
        for (index, count) in self.counts.iter().enumerate().filter(|(_, count)| **count > 0) {
            self.inner.busy[index].fetch_sub(*count, Ordering::Relaxed);
            freed = true;
        }
        if freed {
            self.inner.slot_freed.notify_waiters();
        }
    }
}

/// A job's place in its queue's count, for queues with a cap
/// ([`WorkerBuilder::queue_limit`]); released on drop, which wakes a fetch
/// waiting for that queue to have room. Jobs of other queues hold none.
struct QueueSlot {
    /// The worker and the queue's index in `Inner::queues`, when that queue has a cap.
    capped: Option<(Arc<Inner>, usize)>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        if let Some((inner, index)) = self.capped.take() {
            inner.busy[index].fetch_sub(1, Ordering::Relaxed);
            inner.slot_freed.notify_waiters();
        }
    }
}

impl Inner {
    fn backend(&self) -> &dyn Backend {
        self.executor.backend.as_ref()
    }

    /// The index of `queue` in `queues` when it has a cap.
    fn capped_index(&self, queue: &str) -> Option<usize> {
        self.queues.iter().position(|q| q.name == queue && q.cap.is_some())
    }

    fn take_slot(self: &Arc<Self>, queue: &str) -> QueueSlot {
        let capped = self.capped_index(queue).map(|index| {
            self.busy[index].fetch_add(1, Ordering::Relaxed);
            (Arc::clone(self), index)
        });
        QueueSlot { capped }
    }

    fn request<'a>(&'a self, takes: &'a [QueueTake], max: usize) -> FetchRequest<'a> {
        FetchRequest { queues: takes, max, worker: &self.executor.worker, lease: self.lease }
    }

    /// The queues to try for `free` slots, in priority order, each with its
    /// room, which is reserved in capped queues until the fetch is handed
    /// over: two fetches in flight never both fill one queue's room.
    fn plan(self: &Arc<Self>, free: usize) -> (Vec<QueueTake>, Reserved) {
        let takes = self.room(free);
        let mut reserved = Reserved { inner: Arc::clone(self), counts: Vec::new() };
        for take in &takes {
            if let Some(index) = self.capped_index(&take.queue) {
                if reserved.counts.is_empty() {
                    reserved.counts = vec![0; self.queues.len()];
                }
                self.busy[index].fetch_add(take.max, Ordering::Relaxed);
                reserved.counts[index] += take.max;
            }
        }
        (takes, reserved)
    }

    /// The queues to try for `free` slots, in priority order, each with its room.
    fn room(&self, free: usize) -> Vec<QueueTake> {
        let mut order: Vec<(usize, &QueueSpec)> = self.queues.iter().enumerate().collect();
        if !self.strict && order.len() > 1 {
            // Weighted random order (Efraimidis–Spirakis): u^(1/w), largest first.
            let mut keyed: Vec<(f64, (usize, &QueueSpec))> =
                order.into_iter().map(|q| (fastrand::f64().powf(1.0 / f64::from(q.1.weight)), q)).collect();
            keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
            order = keyed.into_iter().map(|(_, q)| q).collect();
        }
        order
            .into_iter()
            .filter_map(|(index, q)| {
                let busy = self.busy[index].load(Ordering::Relaxed);
                let room = q.cap.map_or(free, |cap| cap.saturating_sub(busy).min(free));
                (room > 0).then(|| QueueTake { queue: q.name.clone(), max: room })
            })
            .collect()
    }

    /// Records this worker's heartbeat and extends `leases`; returns, per
    /// lease, false when another worker has taken it over (true when the
    /// extension failed: the next heartbeat tries again), and the backend's
    /// error, if any.
    async fn heartbeat(&self, backend: &dyn Backend, leases: &[Lease]) -> (Vec<bool>, Option<BackendError>) {
        let recorded = backend.heartbeat(&self.executor.worker, self.lease).await;
        let mut kept = vec![true; leases.len()];
        if leases.is_empty() {
            return (kept, recorded.err());
        }
        let sent = std::time::Instant::now();
        match backend.extend(leases, self.lease).await {
            Ok(held) => {
                let extended = leases.iter().zip(&held).filter(|(_, held)| **held).map(|(lease, _)| lease);
                self.executor.confirm(extended, sent, true);
                for (held, kept) in held.into_iter().zip(&mut kept) {
                    *kept = held;
                }
                (kept, recorded.err())
            }
            Err(error) => (kept, Some(error)),
        }
    }

    /// Rescues the jobs of leases that expired (their worker stopped
    /// heartbeating), each as a failed attempt, a hundred at a time.
    async fn rescue_expired(&self) -> Result<(), crate::error::BackendError> {
        loop {
            let rescued = self.backend().rescue(&self.executor.worker, self.lease, 100).await?;
            let more = rescued.len() >= 100;
            for job in rescued {
                tracing::warn!(queue = %job.lease.queue, "rescuing a job whose worker stopped heartbeating");
                self.executor.rescued(job).await;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// The end of a `run_until` or a drain, once its jobs have ended: the last
    /// acknowledgements, the jobs aborted at the end of the grace period put
    /// back, and the worker recorded as gone.
    async fn wind_up(&self, upkeep: Upkeep, acks: AckWriter, tasks: &Tasks) {
        upkeep.finish(acks).await;
        let unfinished = tasks.take_leases();
        if !unfinished.is_empty() {
            tracing::warn!(count = unfinished.len(), "grace period over: putting unfinished jobs back on their queues");
        }
        self.put_back(unfinished).await;
        if let Err(error) = self.backend().retire(&self.executor.worker).await {
            tracing::warn!(%error, "could not record that this worker stopped");
        }
    }

    /// Completes at `deadline` or when [`Worker::end_grace`] is called, whichever comes first.
    async fn grace_over(&self, deadline: tokio::time::Instant) {
        let ending = self.grace_ending.notified();
        tokio::pin!(ending);
        // Listening before the flag is read: a call in between is not missed.
        ending.as_mut().enable();
        if self.grace_ended.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = ending => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }

    /// Promotes due jobs and, when `rescue`, rescues expired leases: what
    /// each gave, apart (a promotion that fails does not stop rescues). When
    /// the heartbeat is overdue (an outage), this worker's own leases are
    /// extended before a rescue: after an outage longer than a lease, its
    /// rescue would take its own running jobs, and those done but not yet
    /// acknowledged, and run them again.
    async fn maintain(&self, own: &OwnLeases, rescue: bool) -> (Result<(), BackendError>, Result<(), BackendError>) {
        let promoted = self.backend().promote_due(None).await.map(drop);
        if !rescue {
            return (promoted, Ok(()));
        }
        let rescued = match self.extend_overdue(own).await {
            Ok(()) => self.rescue_expired().await,
            Err(error) => Err(error),
        };
        (promoted, rescued)
    }

    /// Extends this worker's leases (running, held, done but not yet
    /// acknowledged) when the heartbeat has not for a period and a half.
    async fn extend_overdue(&self, own: &OwnLeases) -> Result<(), BackendError> {
        let every = u64::try_from((self.lease / 3).as_millis()).unwrap_or(u64::MAX);
        let since = crate::envelope::now_millis().saturating_sub(own.extended.load(Ordering::Acquire));
        if since < every.saturating_add(every / 2) {
            return Ok(());
        }
        let mut leases: Vec<Lease> =
            lock(&own.tasks.leases).by_holder.values().map(|(lease, _)| lease.clone()).collect();
        leases.extend(self.executor.unacknowledged());
        if leases.is_empty() {
            return Ok(());
        }
        self.backend().extend(&leases, self.lease).await.map(drop)
    }

    /// Returns jobs to the head of their queues in the order they were fetched.
    async fn put_back(&self, mut leases: Vec<Lease>) {
        if leases.is_empty() {
            return;
        }
        leases.sort_by(|a, b| fetch_order(&a.id).cmp(&fetch_order(&b.id)));
        match self.backend().put_back(&leases).await {
            Ok(stale) => {
                let returned = leases.len().saturating_sub(stale) as u64;
                self.executor.stats.put_back.fetch_add(returned, std::sync::atomic::Ordering::Relaxed);
            }
            Err(error) => {
                tracing::error!(%error, count = leases.len(), "could not put jobs back; they return when their lease expires");
            }
        }
    }
}

/// Whose lease an entry of [`Leases::by_holder`] is; the numbers come from
/// [`Running::next_key`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    /// A job running on a task of its own.
    Task(u64),
    /// A job leased ahead and held until a slot frees up (`fetch_ahead`).
    Held(u64),
}

/// The leases this worker holds, shared with the heartbeat, which extends them all.
#[derive(Default)]
struct Leases {
    /// Each lease, with the task running its job (none while held).
    by_holder: HashMap<Holder, (Lease, Option<AbortHandle>)>,
    /// Held jobs whose lease a heartbeat found taken over by another worker:
    /// dropped when their turn comes, not run.
    lost: HashSet<u64>,
}

/// What the job tasks share with the loop that starts them. Each task takes
/// its own lease out and counts itself off when it ends, so the loop is not
/// woken for every job that ends (only when it waits for one: held jobs, a
/// drain, a shutdown).
#[derive(Default)]
struct Tasks {
    leases: Mutex<Leases>,
    /// Job tasks started and not yet ended.
    running: AtomicUsize,
    /// Told each time a job task ends.
    ended: Notify,
}

impl Tasks {
    fn count(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Resolves once every job task has ended.
    async fn all_ended(&self) {
        while self.count() > 0 {
            // A task that ends between the count and the wait leaves a permit: no wake-up is lost.
            self.ended.notified().await;
        }
    }

    /// Lets the jobs run until `grace_over` completes, then aborts those left.
    async fn end_by(&self, grace_over: impl Future<Output = ()>) {
        tokio::select! {
            biased;
            () = self.all_ended() => {}
            () = grace_over => {
                self.abort_all();
                self.all_ended().await;
            }
        }
    }

    /// Takes the leases left (after the tasks ended: those of aborted jobs).
    fn take_leases(&self) -> Vec<Lease> {
        lock(&self.leases).by_holder.drain().map(|(_, (lease, _))| lease).collect()
    }

    /// Aborts every running job task (the grace period is over); their leases
    /// stay, for shutdown to put the jobs back.
    fn abort_all(&self) {
        // Aborted outside the lock, which each task's end takes.
        let tasks: Vec<AbortHandle> =
            lock(&self.leases).by_holder.values().filter_map(|(_, task)| task.clone()).collect();
        for task in tasks {
            task.abort();
        }
    }
}

/// Ends a job task's bookkeeping when the task ends, however it ends. A job
/// that was settled, or whose task panicked outside the job body, leaves the
/// leases (the panicked one's lease expires); an aborted one keeps its lease,
/// so that shutdown puts the job back.
struct TaskEnd {
    tasks: Arc<Tasks>,
    key: u64,
    settled: bool,
    /// Where the freed slot starts the next held job (`fetch_ahead`), with no
    /// hop through the worker's loop.
    resume: Option<(Weak<Mutex<Running>>, Arc<Inner>)>,
}

impl Drop for TaskEnd {
    fn drop(&mut self) {
        let panicked = std::thread::panicking();
        // Neither when aborted, nor when dropped unstarted (a runtime shutting down
        // drops a task as it is spawned, under the locks taken below).
        let ran = self.settled || panicked;
        if ran {
            lock(&self.tasks.leases).by_holder.remove(&Holder::Task(self.key));
        }
        if panicked && !self.settled {
            tracing::error!("job task failed outside the job body; its job returns when its lease expires");
        }
        self.tasks.running.fetch_sub(1, Ordering::AcqRel);
        self.tasks.ended.notify_one();
        if let (true, Some((running, inner))) = (ran, &self.resume)
            && let Some(running) = running.upgrade()
        {
            lock(&running).start_held(inner);
        }
    }
}

/// A job leased ahead of a free slot: its key in [`Leases`], its id while
/// the executor watches it for cancellation, and what it holds.
struct HeldJob {
    key: u64,
    job: Fetched,
    jid: Option<JobId>,
    holds: Holds,
}

/// What a job holds while it runs or waits to: its place in its queue's
/// count and, under `run_until`, its permit. Given up in that order as its
/// task ends (see `spawn_job`).
struct Holds {
    slot: QueueSlot,
    permit: Option<OwnedSemaphorePermit>,
}

/// Jobs running under `run_until` or `drain` and jobs held for a slot, with
/// the lease each holds.
#[derive(Default)]
struct Running {
    tasks: Arc<Tasks>,
    held: VecDeque<HeldJob>,
    next_key: u64,
    /// Shutdown has begun: what a fetch brings back now is set aside in
    /// `late`, to go back to its queue with the held jobs.
    closed: bool,
    late: Vec<Lease>,
    /// Where a job's task, as it ends, starts the next held job (under
    /// `run_until` with `fetch_ahead`).
    resume: Option<Weak<Mutex<Running>>>,
}

/// How a drain's loop ended.
enum Drained {
    /// Nothing ready, nothing running.
    Done,
    /// Its shutdown future completed: jobs may still run.
    Stopped,
}

impl Running {
    /// Waits until one of the jobs ends (false) or `shutdown` completes (true).
    async fn until_a_job_ends<F: Future>(&self, shutdown: &mut std::pin::Pin<&mut F>) -> bool {
        tokio::select! {
            () = self.tasks.ended.notified() => false,
            _ = shutdown.as_mut() => true,
        }
    }

    /// Starts `job` when the worker runs fewer jobs than its concurrency,
    /// and holds it for the next free slot otherwise (`fetch_ahead`).
    fn start_or_hold(&mut self, inner: &Arc<Inner>, job: Fetched, holds: Holds) {
        if self.held.is_empty() && self.tasks.count() < inner.concurrency {
            return self.spawn(inner, job, holds);
        }
        let key = self.next_key();
        lock(&self.tasks.leases).by_holder.insert(Holder::Held(key), (job.lease.clone(), None));
        // A cancellation requested while it waits is seen at the heartbeats, as a running job's is.
        let jid = inner.executor.watch_held(&job.payload);
        self.held.push_back(HeldJob { key, job, jid, holds });
        self.start_held(inner);
    }

    /// Starts held jobs, oldest first, while slots are free; drops those
    /// whose lease was lost (another worker runs them). Once shutdown began,
    /// none starts: they wait to be put back.
    fn start_held(&mut self, inner: &Arc<Inner>) {
        while !self.closed && self.tasks.count() < inner.concurrency {
            let Some(HeldJob { key, mut job, jid, holds }) = self.held.pop_front() else { break };
            if let Some(jid) = &jid {
                job.cancelled |= inner.executor.unwatch_held(jid);
            }
            let mut leases = lock(&self.tasks.leases);
            leases.by_holder.remove(&Holder::Held(key));
            if leases.lost.remove(&key) {
                tracing::warn!(lease = %job.lease.token, "a job held for a free slot lost its lease to another worker; not running it here");
                continue;
            }
            // Under the same lock, so the heartbeat never sees the lease missing.
            spawn_job(self, &mut leases, key, inner, job, holds);
        }
    }

    /// Takes the held jobs' leases (at shutdown, to put them back).
    fn take_held(&mut self, inner: &Inner) -> Vec<Lease> {
        let mut leases = lock(&self.tasks.leases);
        leases.lost.clear();
        let taken = self.held.drain(..).map(|HeldJob { key, job, jid, .. }| {
            leases.by_holder.remove(&Holder::Held(key));
            if let Some(jid) = &jid {
                inner.executor.unwatch_held(jid);
            }
            job.lease
        });
        taken.collect()
    }

    /// Runs `job` on a task of its own; what it `holds` is released when it ends.
    fn spawn(&mut self, inner: &Arc<Inner>, job: Fetched, holds: Holds) {
        let key = self.next_key();
        spawn_job(self, &mut lock(&self.tasks.leases), key, inner, job, holds);
    }

    fn next_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }
}

/// [`Running::spawn`], with the leases already locked.
fn spawn_job(running: &Running, leases: &mut Leases, key: u64, inner: &Arc<Inner>, job: Fetched, holds: Holds) {
    let lease = job.lease.clone();
    let worker = Arc::clone(inner);
    let resume = running.resume.clone().map(|running| (running, Arc::clone(inner)));
    running.tasks.running.fetch_add(1, Ordering::AcqRel);
    let mut end = TaskEnd { tasks: Arc::clone(&running.tasks), key, settled: false, resume };
    let task = tokio::spawn(async move {
        // Boxed, so the task stays small enough for the allocator's fast path.
        Box::pin(worker.executor.run(job)).await;
        end.settled = true;
        // The queue's slot before the count-off: whoever the count-off wakes (a drain that
        // decides whether it is done) sees the queue's room. The count-off before the
        // permit: a job fetched for that permit finds a free slot to start in.
        drop(holds.slot);
        drop(end);
        drop(holds.permit);
    });
    // The task takes its lease out under the lock held here: never before it is in.
    leases.by_holder.insert(Holder::Task(key), (lease, Some(task.abort_handle())));
}

/// A worker's heartbeat: it extends the leases of running and held jobs,
/// and of finished ones until their acknowledgement is written.
///
/// It runs on a thread of its own, through the backend's
/// [`detached`](Backend::detached) handle, when the backend has one: job
/// bodies that block every thread of the worker's runtime then cannot let a
/// lease lapse (and another worker run the job again). A backup on the
/// worker's runtime, through the worker's own connection, extends them
/// whenever the thread's have failed for a period and a half (its
/// connection refused, say, when Redis is at `maxclients`). A backend with
/// no detached handle heartbeats on the worker's runtime only.
struct Heartbeat {
    /// When the heartbeat proper last extended the leases.
    last: LastExtended,
    /// Ends the thread's loop.
    stop: Option<oneshot::Sender<()>>,
    /// Answered when the thread's loop has ended.
    stopped: Option<oneshot::Receiver<()>>,
    /// The loop on the worker's runtime: the heartbeat, or the thread's backup.
    task: Option<tokio::task::JoinHandle<()>>,
}

/// When the heartbeat proper last extended the leases (ms since the epoch); the backup reads it.
type LastExtended = Arc<std::sync::atomic::AtomicU64>;

impl Heartbeat {
    fn start(inner: &Arc<Inner>, tasks: &Arc<Tasks>) -> Self {
        // Counted from the start: the backup waits a period and a half for the thread's first.
        let last = LastExtended::new(std::sync::atomic::AtomicU64::new(crate::envelope::now_millis()));
        let (stop, stopped, backup) = match Self::thread(inner, tasks, &last) {
            Ok((stop, stopped)) => (Some(stop), Some(stopped), true),
            Err(why) => {
                if let Some(why) = why {
                    tracing::warn!(
                        "cannot run the heartbeat on a thread of its own ({why}): it runs on the worker's runtime, where a job body that blocks its thread delays it"
                    );
                }
                (None, None, false)
            }
        };
        let backend = Arc::clone(&inner.executor.backend);
        let task =
            tokio::spawn(heartbeat_loop(Arc::clone(inner), Arc::clone(tasks), backend, Arc::clone(&last), backup));
        Self { last, stop, stopped, task: Some(task) }
    }

    /// The heartbeat on a thread and a runtime of its own; `Err(None)` when
    /// the backend has no detached handle, `Err(Some(why))` when the thread
    /// or its runtime could not be made.
    #[allow(clippy::type_complexity)]
    fn thread(
        inner: &Arc<Inner>,
        tasks: &Arc<Tasks>,
        last: &LastExtended,
    ) -> Result<(oneshot::Sender<()>, oneshot::Receiver<()>), Option<String>> {
        let backend = inner.backend().detached().ok_or(None)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Some(error.to_string()))?;
        let mut runtime = OwnRuntime(Some(runtime));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (done, stopped) = oneshot::channel::<()>();
        let (inner, tasks, last) = (Arc::clone(inner), Arc::clone(tasks), Arc::clone(last));
        // The caller's subscriber, when it set one for its thread only (as tests do).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        std::thread::Builder::new()
            .name("jobs-heartbeat".to_owned())
            .spawn(move || {
                if let Some(runtime) = runtime.0.take() {
                    tracing::dispatcher::with_default(&dispatch, || {
                        runtime.block_on(async {
                            tokio::select! {
                                _ = stop_rx => {}
                                () = heartbeat_loop(inner, tasks, backend, last, false) => {}
                            }
                        });
                    });
                    // The runtime, and the connections it drives, go before the answer.
                    drop(runtime);
                }
                let _ = done.send(());
            })
            .map_err(|error| Some(error.to_string()))?;
        Ok((stop, stopped))
    }

    /// Whether it runs apart from the worker's runtime.
    fn apart(&self) -> bool {
        self.stop.is_some()
    }

    /// Stops the heartbeat and waits until it has ended: no heartbeat is
    /// recorded after this returns.
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for Heartbeat {
    /// A caller that drops `drain` or `run_until` midway stops the heartbeat
    /// too: the leases of the jobs it left expire.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A runtime that a drop on an async thread cannot turn into a panic: the
/// heartbeat thread's, dropped by the worker's thread when that thread
/// could not be started.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Extends, every third of the lease and through `backend`, the leases of
/// running and held jobs and of finished ones not yet acknowledged, until
/// stopped, and marks held jobs whose lease was lost. The heartbeat proper
/// records in `last` when it succeeds; as a `backup`, the loop acts only
/// while the heartbeat proper has not succeeded for a period and a half.
/// Failures are logged once per outage, and the recovery once.
async fn heartbeat_loop(
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
    backend: Arc<dyn Backend>,
    last: LastExtended,
    backup: bool,
) {
    let every = inner.lease / 3;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let overdue = u64::try_from((every + every / 2).as_millis()).unwrap_or(u64::MAX);
    let (mut covering, mut failing) = (false, false);
    loop {
        tick.tick().await;
        if backup {
            let late = crate::envelope::now_millis().saturating_sub(last.load(Ordering::Acquire)) >= overdue;
            match (late, covering) {
                (true, false) => tracing::warn!(
                    "the heartbeat's own connection is failing: extending leases through the worker's connection meanwhile"
                ),
                (false, true) => tracing::info!("the heartbeat's own connection works again"),
                _ => {}
            }
            covering = late;
            if !late {
                continue;
            }
        }
        let (holders, mut snapshot): (Vec<Holder>, Vec<Lease>) =
            lock(&tasks.leases).by_holder.iter().map(|(holder, (lease, _))| (*holder, lease.clone())).unzip();
        snapshot.extend(inner.executor.unacknowledged());
        let (kept, error) = inner.heartbeat(backend.as_ref(), &snapshot).await;
        match error {
            None if failing => {
                failing = false;
                tracing::info!(backup, "the heartbeat extends leases again");
            }
            None => {}
            Some(error) if !failing => {
                failing = true;
                tracing::warn!(%error, backup, "heartbeat failed; leases expire unless a later one succeeds");
            }
            Some(error) => tracing::debug!(%error, backup, "heartbeat failed again"),
        }
        if !failing && !backup {
            last.store(crate::envelope::now_millis(), Ordering::Release);
        }
        let mut leases = lock(&tasks.leases);
        for ((holder, lease), kept) in holders.into_iter().zip(&snapshot).zip(kept) {
            // A job settled while the heartbeat was on its way is not lost: it is done.
            if kept || !leases.by_holder.contains_key(&holder) {
                continue;
            }
            // A running job's run learns it when its result is refused as stale (and says so);
            // a job settled while this heartbeat was on its way looks the same here.
            match holder {
                Holder::Held(key) => {
                    tracing::warn!(lease = %lease.token, "lease lost: another worker took the job over");
                    leases.lost.insert(key);
                }
                Holder::Task(_) => tracing::debug!(lease = %lease.token, "a running job's lease was not extended"),
            }
        }
    }
}

/// Delivers cancellation requests to running and held jobs every third of
/// the lease, on the worker's runtime, until aborted; and reports that
/// runtime blocked when a tick comes half a period late.
async fn cancel_loop(inner: Arc<Inner>, heartbeat_apart: bool, started: tokio::time::Instant) {
    let every = inner.lease / 3;
    let mut tick = tokio::time::interval_at(started + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lateness = Lateness { every, last: started };
    loop {
        tick.tick().await;
        // The time it is, not the tick's due time, which a blocked runtime makes no later.
        if let Some(late) = lateness.tick(tokio::time::Instant::now()) {
            let cost = if heartbeat_apart {
                "jobs started late and cancellations came late"
            } else {
                "heartbeats came late, and a lease that lapsed meanwhile lets another worker run its job again"
            };
            tracing::warn!(
                late = ?late,
                "this worker's runtime was blocked: {cost}. Most likely a job body is blocking its thread (std::thread::sleep, blocking I/O, heavy CPU work): run such work in tokio::task::spawn_blocking. (A process paused as a whole, by SIGSTOP or a suspended machine, looks the same)"
            );
        }
        inner.executor.check_cancellations().await;
    }
}

/// The ticks of a loop that should come every `every`, counted from when
/// the loop was started (not first run: a runtime blocked from the start
/// delays that too).
struct Lateness {
    every: Duration,
    last: tokio::time::Instant,
}

impl Lateness {
    /// A tick at `now`: how late it came, when the runtime was blocked.
    fn tick(&mut self, now: tokio::time::Instant) -> Option<Duration> {
        let late = blocked_for(self.every, now.saturating_duration_since(self.last));
        self.last = now;
        late
    }
}

/// How much later than `every` a tick came, when that is late enough to
/// mean the runtime was blocked (half a period or more): `None` otherwise.
fn blocked_for(every: Duration, between: Duration) -> Option<Duration> {
    let late = between.saturating_sub(every);
    (late >= every / 2).then_some(late)
}

/// A worker's own leases, as its maintenance sees them: the jobs that hold
/// them, and when its heartbeat last extended them.
struct OwnLeases {
    tasks: Arc<Tasks>,
    extended: LastExtended,
}

/// Promotes due jobs and rescues expired leases on an interval, until stopped.
///
/// Rescues wait one lease after an outage of the backend long enough for
/// leases to lapse: then every live worker's leases may have expired, and a
/// rescue the moment the backend answers would take the jobs of workers
/// whose heartbeat has not come round yet, and run them twice. A lease later
/// every live worker has extended its leases; the jobs of a worker that
/// died are rescued then. (A worker started just as Redis comes back saw no
/// outage and does not wait: see DECISIONS.)
async fn maintenance_loop(inner: Arc<Inner>, own: OwnLeases, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.maintenance_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An error is logged when it starts and when it ends, not at every tick.
    let mut failing = false;
    // Since when the backend has been unreachable (transient errors), if it is.
    let mut outage: Option<tokio::time::Instant> = None;
    let mut rescue_from = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                let rescue = outage.is_none() && now >= rescue_from;
                let (promoted, rescued) = inner.maintain(&own, rescue).await;
                let unreachable = [&promoted, &rescued].iter().any(|r| r.as_ref().is_err_and(BackendError::is_transient));
                match (unreachable, outage) {
                    (true, None) => outage = Some(now),
                    (false, Some(since)) => {
                        outage = None;
                        // Long enough for a live lease to lapse (extended every third of it).
                        if now.saturating_duration_since(since) >= inner.lease / 2 {
                            rescue_from = now + inner.lease;
                            tracing::info!(rescues_from_in = ?inner.lease, "the backend answers again; expired leases are rescued once live workers have had a lease to extend theirs");
                        }
                    }
                    _ => {}
                }
                let error = match (promoted, rescued) {
                    (Err(error), _) => Some(format!("could not promote scheduled jobs: {error}")),
                    (_, Err(error)) => Some(format!("could not look for expired leases: {error}")),
                    _ => None,
                };
                match error {
                    Some(error) if !failing => {
                        failing = true;
                        tracing::warn!(%error, "maintenance failed; trying again every tick (logged again once it works)");
                    }
                    Some(error) => tracing::debug!(%error, "maintenance still failing"),
                    None if std::mem::take(&mut failing) => tracing::info!("maintenance works again"),
                    None => {}
                }
            }
        }
    }
}

/// The first wait after a failed fetch; it doubles up to 5 s while failures last.
const FETCH_BACKOFF: Duration = Duration::from_millis(100);

/// Lets a worker's wait end now that it stops: asks the backend to end its
/// waits, and again every 50 ms (the wait may not have reached the server
/// the first time), until this one has.
async fn end_wait<F: Future>(inner: &Inner, mut waiting: std::pin::Pin<&mut F>) -> F::Output {
    loop {
        // Side by side: a backend slow to answer (unreachable) delays nothing.
        let ask = async {
            inner.backend().end_waits().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::select! {
            biased;
            ended = waiting.as_mut() => return ended,
            () = ask => {}
        }
    }
}

/// Longer than any wait anyone means (about 30 years): durations from settings
/// are capped to it before they are added to the clock.
const FOR_EVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// How long the backend must have answered since its last failure before the
/// fetch backoff starts over from [`FETCH_BACKOFF`].
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// The fetch loop's wait after a failure: it doubles up to 5 s while failures
/// last, and starts over only once the backend has answered for
/// [`BACKOFF_RESET_AFTER`]: when plain fetches succeed but blocking waits fail
/// (Redis refusing new connections at `maxclients`), starting over at every
/// success made a warning ten times a second.
struct Backoff {
    next: Duration,
    last_failure: tokio::time::Instant,
    /// A failure was logged and its end not yet.
    failing: bool,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: FETCH_BACKOFF, last_failure: tokio::time::Instant::now(), failing: false }
    }

    /// A failure: how long to wait before trying again.
    fn failed(&mut self) -> Duration {
        (self.last_failure, self.failing) = (tokio::time::Instant::now(), true);
        let wait = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        wait
    }

    /// The backend answered.
    fn answered(&mut self) {
        if std::mem::take(&mut self.failing) {
            tracing::info!("the backend answers again; fetching resumed");
        }
        if self.last_failure.elapsed() >= BACKOFF_RESET_AFTER {
            self.next = FETCH_BACKOFF;
        }
    }
}

/// How many fetches may be in flight at once: the next round trip starts
/// while the previous one's jobs are handed over, so a busy worker never
/// waits for a round trip with slots free.
const FETCH_DEPTH: usize = 2;

/// What the fetches in flight tell the loop that starts them.
#[derive(Default)]
struct FetchSignals {
    /// The last fetch filled every slot it asked for: more jobs are likely waiting.
    last_was_full: std::sync::atomic::AtomicBool,
    /// A fetch found nothing: wait for a push before fetching again.
    idle: std::sync::atomic::AtomicBool,
    /// A fetch failed: back off before the next one.
    failed: Mutex<Option<crate::error::BackendError>>,
    /// A fetch succeeded: the backoff starts over.
    succeeded: std::sync::atomic::AtomicBool,
}

/// Fetches jobs while there are free slots, until told to stop.
async fn fetch_loop(
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    running: Arc<Mutex<Running>>,
    mut stop: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let signals = Arc::new(FetchSignals::default());
    let depth = Arc::new(Semaphore::new(FETCH_DEPTH));
    let mut fetches = JoinSet::new();
    let mut backoff = Backoff::new();
    loop {
        while fetches.try_join_next().is_some() {}
        if *stop.borrow() {
            break;
        }
        if signals.succeeded.swap(false, Relaxed) {
            backoff.answered();
        }
        let failure = lock(&signals.failed).take();
        if let Some(error) = failure {
            while fetches.join_next().await.is_some() {}
            let wait = backoff.failed();
            tracing::warn!(%error, retry_in = ?wait, "fetch failed; backing off");
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let slot_freed = inner.slot_freed.notified();
        tokio::pin!(slot_freed);
        slot_freed.as_mut().enable();
        if signals.idle.load(Relaxed) {
            // Let fetches in flight land first: one of them may have found jobs.
            while fetches.join_next().await.is_some() {}
            if !signals.idle.swap(false, Relaxed) {
                continue;
            }
            // Armed anew: the room those fetches reserved and gave back is no freed slot.
            slot_freed.set(inner.slot_freed.notified());
            slot_freed.as_mut().enable();
            // A queue held back by its cap may get room while we wait: look again then.
            let capped = inner.room(inner.concurrency).len() < inner.queues.len();
            // The free slots are held while waiting, so that the wait can also fetch.
            let mut held = Vec::new();
            take_free(&permits, &mut held, inner.fetch_batch);
            let fetching = !capped && !inner.room(held.len()).is_empty();
            // A random wait (0.5-1.5 s): workers idle on one queue drift out of
            // lockstep, so the one whose tick promotes a payload it deferred as
            // too new does not always win it back from the newer worker.
            let wait = FETCH_WAIT.mul_f64(0.5 + fastrand::f64());
            let waited = if !fetching {
                // A capped worker wakes on every finished job to look again: a plain wait,
                // which leases nothing, is the one to drop that often. (Nothing is reserved
                // for it: a reservation given back would wake this very wait.)
                drop(held);
                // A queue at its cap is looked at again when a slot frees, not on its
                // wake-up: jobs waiting there would end each wait at once (a busy loop).
                let open: Vec<String> = if capped {
                    inner.room(inner.concurrency).into_iter().map(|take| take.queue).collect()
                } else {
                    inner.queue_names.clone()
                };
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    () = &mut slot_freed, if capped => Ok(()),
                    () = tokio::time::sleep(wait), if open.is_empty() => Ok(()),
                    waited = inner.backend().wait_for_jobs(&open, wait), if !open.is_empty() => {
                        // The backend answered (a fetch's answer is recorded by `hand_over`).
                        signals.succeeded.store(waited.is_ok(), Relaxed);
                        waited
                    }
                }
            } else {
                let (takes, reserved) = inner.plan(held.len());
                let sent = std::time::Instant::now();
                let waiting =
                    inner.backend().wait_and_fetch(&inner.queue_names, wait, inner.request(&takes, held.len()));
                tokio::pin!(waiting);
                let ended = tokio::select! {
                    biased;
                    fetched = &mut waiting => Some(fetched),
                    _ = stop.changed() => None,
                };
                // Told to stop mid-wait, the worker ends the wait (`end_wait`) and lets it
                // finish: a job it leased in that moment is handed over, or put back once
                // the hand-over finds the worker gone, instead of waiting out its lease.
                let stopping = ended.is_none();
                let fetched = match ended {
                    Some(fetched) => fetched,
                    None => end_wait(&inner, waiting.as_mut()).await,
                };
                hand_over(&inner, fetched, sent, held, reserved, &running, &signals).await;
                if stopping {
                    break;
                }
                Ok(())
            };
            if let Err(error) = waited {
                let wait = backoff.failed();
                tracing::warn!(%error, retry_in = ?wait, "waiting for jobs failed; backing off");
                tokio::time::sleep(wait).await;
            }
            continue;
        }
        let (in_flight, first) = tokio::select! {
            biased;
            _ = stop.changed() => break,
            acquired = async {
                let in_flight = Arc::clone(&depth).acquire_owned().await;
                let first = Arc::clone(&permits).acquire_owned().await;
                (in_flight, first)
            } => acquired,
        };
        let (Ok(in_flight), Ok(first)) = (in_flight, first) else { break };
        if *stop.borrow() {
            break;
        }
        let mut held = vec![first];
        take_free(&permits, &mut held, inner.fetch_batch);
        // Under load (the last fetch came back full), slots free up one by one:
        // wait a moment for more, so one round trip fetches many jobs, not one.
        if signals.last_was_full.load(Relaxed) && held.len() < inner.fetch_batch / 2 {
            let linger = tokio::time::sleep(FETCH_LINGER);
            tokio::pin!(linger);
            while held.len() < inner.fetch_batch / 2 {
                tokio::select! {
                    biased;
                    permit = Arc::clone(&permits).acquire_owned() => match permit {
                        Ok(permit) => held.push(permit),
                        Err(_) => break,
                    },
                    () = &mut linger => break,
                }
            }
        }
        let (takes, reserved) = inner.plan(held.len());
        if takes.is_empty() {
            // Every served queue is at its cap: wait for one of its jobs to end.
            drop((held, reserved));
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                () = &mut slot_freed => continue,
            }
        }
        let (inner, running, signals) = (Arc::clone(&inner), Arc::clone(&running), Arc::clone(&signals));
        fetches.spawn(async move {
            fetch_once(&inner, &takes, held, reserved, &running, &signals).await;
            drop(in_flight);
        });
    }
    // Fetches in flight finish: what they take is handed over or, after shutdown, put back.
    while fetches.join_next().await.is_some() {}
}

/// Adds permits that are free right now to `held`, up to `max` in all.
fn take_free(permits: &Arc<Semaphore>, held: &mut Vec<OwnedSemaphorePermit>, max: usize) {
    while held.len() < max {
        match Arc::clone(permits).try_acquire_owned() {
            Ok(permit) => held.push(permit),
            Err(_) => break,
        }
    }
}

/// One fetch round trip: hands each job over with its slot, records what it saw.
async fn fetch_once(
    inner: &Arc<Inner>,
    takes: &[QueueTake],
    held: Vec<OwnedSemaphorePermit>,
    reserved: Reserved,
    running: &Mutex<Running>,
    signals: &FetchSignals,
) {
    let sent = std::time::Instant::now();
    let fetched = inner.backend().fetch(inner.request(takes, held.len())).await;
    hand_over(inner, fetched, sent, held, reserved, running, signals).await;
}

/// Hands each fetched job over with a slot and a permit, and records what the fetch saw.
async fn hand_over(
    inner: &Arc<Inner>,
    fetched: Result<Vec<Fetched>, crate::error::BackendError>,
    sent: std::time::Instant,
    mut held: Vec<OwnedSemaphorePermit>,
    mut reserved: Reserved,
    running: &Mutex<Running>,
    signals: &FetchSignals,
) {
    use std::sync::atomic::Ordering::Relaxed;
    match fetched {
        Ok(fetched) => {
            inner.executor.confirm(fetched.iter().map(|job| &job.lease), sent, false);
            signals.succeeded.store(true, Relaxed);
            signals.last_was_full.store(fetched.len() == held.len(), Relaxed);
            if fetched.is_empty() {
                signals.idle.store(true, Relaxed);
            }
            // Started (or held) under the lock that shutdown closes: a job fetched as the
            // worker stops is set aside for shutdown to put back, not started.
            let mut extra = Vec::new();
            {
                let mut running = lock(running);
                for job in fetched {
                    match held.pop() {
                        Some(_) if running.closed => running.late.push(job.lease),
                        Some(permit) => {
                            let slot = reserved.slot(&job.lease.queue);
                            running.start_or_hold(inner, job, Holds { slot, permit: Some(permit) });
                        }
                        // More than asked for (a backend's fault): back to the queue.
                        None => extra.push(job.lease),
                    }
                }
            }
            inner.put_back(extra).await;
        }
        Err(error) => {
            signals.last_was_full.store(false, Relaxed);
            *lock(&signals.failed) = Some(error);
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), the signals a deployment sends
/// to stop a worker; pass it to [`Worker::run_until`].
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Where a lease id sorts in fetch order: backends number in-flight entries
/// `N` (one per fetched job) or `N.j` (job j of fetch N); anything else sorts last.
fn fetch_order(id: &str) -> (u64, u64, &str) {
    let (fetch, job) = id.split_once('.').unwrap_or((id, "0"));
    match (fetch.parse(), job.parse()) {
        (Ok(fetch), Ok(job)) => (fetch, job, id),
        _ => (u64::MAX, u64::MAX, id),
    }
}

#[cfg(test)]
mod fetch_order_tests {
    use std::time::Duration;

    use super::{blocked_for, fetch_order};

    /// A heartbeat half a period late or more means the runtime was blocked
    /// (a job that blocks its thread): the worker says so.
    #[test]
    fn a_heartbeat_half_a_period_late_reports_a_blocked_runtime() {
        let every = Duration::from_secs(5);
        assert_eq!(blocked_for(every, Duration::from_millis(5_010)), None, "on time");
        assert_eq!(blocked_for(every, Duration::from_secs(7)), None, "a little late");
        assert_eq!(blocked_for(every, Duration::from_secs(20)), Some(Duration::from_secs(15)));
    }

    /// Jobs that block the runtime from the moment the worker starts delay
    /// the loop's first run too: counted from its start, the first tick
    /// already reports them (it used to count from its first run, and
    /// said nothing).
    #[test]
    fn a_runtime_blocked_from_the_start_is_reported_at_the_first_tick() {
        let every = Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        let mut lateness = super::Lateness { every, last: started };
        assert_eq!(lateness.tick(started + Duration::from_secs(12)), Some(Duration::from_secs(7)));
        assert_eq!(lateness.tick(started + Duration::from_secs(17)), None, "then on time again");
    }

    #[test]
    fn leases_sort_in_the_order_they_were_fetched() {
        let mut ids = vec!["10.1", "9.2", "x", "9.10", "9.1", "8"];
        ids.sort_by_key(|id| fetch_order(id));
        assert_eq!(ids, ["8", "9.1", "9.2", "9.10", "10.1", "x"]);
    }
}

#[cfg(test)]
mod hand_over_tests {
    use super::*;
    use crate::backend::JobSet;
    use crate::job::{Args, BoxFuture, Job, JobContext};
    use crate::registry::JobRegistration;
    use crate::{ArgError, Client, JobError, MemoryBackend, RawJob};

    /// A job written by hand (this crate cannot use `#[job]`): it does nothing.
    pub(super) struct Noop;

    impl Job for Noop {
        const NAME: &'static str = "noop";
        const PARAMS: &'static [crate::ParamSpec] = &[];
        type Output = ();

        fn to_args(&self) -> Result<Args, ArgError> {
            Ok(Args::new())
        }
        fn from_args(_: Args) -> Result<Self, ArgError> {
            Ok(Noop)
        }
        fn perform(self, _: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
            Box::pin(async { Ok(()) })
        }
    }

    static NOOP: JobRegistration = JobRegistration::of::<Noop>("noop");

    #[tokio::test]
    async fn a_fetch_that_lands_after_shutdown_began_sets_its_jobs_aside_for_shutdown() {
        let backend = MemoryBackend::new();
        let client = Client::new(backend.clone());
        for n in 0..2 {
            let raw =
                RawJob { job: "noop".into(), version: 1, queue: "default".into(), args: serde_json::json!({ "n": n }) };
            client.enqueue_raw(raw).await.unwrap();
        }
        let registry = Registry::from_jobs(vec![&NOOP]).unwrap();
        let worker = Worker::builder(backend.clone()).registry(registry).concurrency(2).build().unwrap();
        let inner = &worker.inner;
        let permits = Arc::new(Semaphore::new(2));
        let mut held = Vec::new();
        take_free(&permits, &mut held, 2);
        let (takes, reserved) = inner.plan(2);
        // The fetch went out before shutdown; its reply comes back after.
        let fetched = inner.backend().fetch(inner.request(&takes, 2)).await;
        assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 2);
        let running = Mutex::new(Running { closed: true, ..Running::default() });
        hand_over(inner, fetched, std::time::Instant::now(), held, reserved, &running, &FetchSignals::default()).await;

        let late = std::mem::take(&mut lock(&running).late);
        assert_eq!(lock(&running).tasks.count(), 0, "no job started");
        assert_eq!(permits.available_permits(), 2, "their slots are free");
        // Set aside for shutdown, which puts them back with the held jobs in one call.
        assert_eq!(late.len(), 2);
        inner.put_back(late).await;
        assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
        assert_eq!(backend.count(&JobSet::Queue("default".into())).await.unwrap(), 2, "both went back");
    }
}

#[cfg(test)]
mod grace_tests {
    use super::*;
    use crate::backend::JobSet;
    use crate::job::{Args, BoxFuture, Job, JobContext};
    use crate::registry::JobRegistration;
    use crate::{ArgError, Client, JobError, MemoryBackend, RawJob};

    static NOOP: JobRegistration = JobRegistration::of::<super::hand_over_tests::Noop>("noop");

    /// `end_grace` ends a grace period that is under way, and one that begins
    /// after it was called (the two orders a second Ctrl-C can land in).
    #[tokio::test]
    async fn end_grace_ends_a_grace_period_under_way_or_yet_to_begin() {
        let registry = Registry::from_jobs(vec![&NOOP]).unwrap();
        let worker = Worker::builder(MemoryBackend::new()).registry(registry).build().unwrap();
        let in_an_hour = tokio::time::Instant::now() + Duration::from_secs(3600);
        let under_way = worker.inner.grace_over(in_an_hour);
        tokio::pin!(under_way);
        let waiting = tokio::select! {
            biased;
            () = &mut under_way => false,
            () = std::future::ready(()) => true,
        };
        assert!(waiting, "the grace period is under way");
        worker.end_grace();
        // Bounds for a broken build: without `end_grace` these wait an hour.
        let bound = Duration::from_secs(60);
        tokio::time::timeout(bound, under_way).await.expect("the grace period under way did not end");
        tokio::time::timeout(bound, worker.inner.grace_over(in_an_hour))
            .await
            .expect("a grace period beginning after end_grace did not end at once");
    }

    static STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

    /// A job that tells [`STARTED`] it began, then never ends.
    struct Forever;

    impl Job for Forever {
        const NAME: &'static str = "forever";
        const PARAMS: &'static [crate::ParamSpec] = &[];
        type Output = ();

        fn to_args(&self) -> Result<Args, ArgError> {
            Ok(Args::new())
        }
        fn from_args(_: Args) -> Result<Self, ArgError> {
            Ok(Forever)
        }
        fn perform(self, _: JobContext) -> BoxFuture<'static, Result<(), JobError>> {
            STARTED.notify_one();
            Box::pin(std::future::pending())
        }
    }

    static FOREVER: JobRegistration = JobRegistration::of::<Forever>("forever");

    /// An `end_grace` made before the run began (a second Ctrl-C that lands
    /// before the worker got going) ends that run's grace period, and only
    /// that run's.
    #[tokio::test]
    async fn end_grace_before_the_run_began_holds_for_that_run_only() {
        let backend = MemoryBackend::new();
        let raw = RawJob { job: "forever".into(), version: 1, queue: "default".into(), args: serde_json::json!({}) };
        Client::new(backend.clone()).enqueue_raw(raw).await.unwrap();
        let registry = Registry::from_jobs(vec![&FOREVER]).unwrap();
        let worker = Worker::builder(backend.clone())
            .registry(registry)
            .grace_period(Duration::from_secs(3600))
            .build()
            .unwrap();
        worker.end_grace();
        // Bound for a broken build: with the call lost, the drain waits out an hour of grace.
        let drained = tokio::time::timeout(Duration::from_secs(60), worker.drain_until(STARTED.notified())).await;
        let report = drained.expect("the end_grace made before the drain was lost").unwrap();
        assert_eq!(report.put_back, 1, "{report}");
        assert_eq!(backend.count(&JobSet::Queue("default".into())).await.unwrap(), 1, "the job went back");

        // The same for `run_until`.
        worker.end_grace();
        let ran = tokio::time::timeout(Duration::from_secs(60), worker.run_until(STARTED.notified())).await;
        let report = ran.expect("the end_grace made before run_until was lost").unwrap();
        assert_eq!(report.put_back, 1, "{report}");
        assert_eq!(backend.count(&JobSet::Queue("default".into())).await.unwrap(), 1, "the job went back");

        let next = worker.inner.grace_over(tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::pin!(next);
        let waiting = tokio::select! {
            biased;
            () = &mut next => false,
            () = std::future::ready(()) => true,
        };
        assert!(waiting, "the next run's grace period was cut short too");
    }
}
