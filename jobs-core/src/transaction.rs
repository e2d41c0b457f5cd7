//! Enqueueing that waits for a database commit: [`after_commit`] for a scope,
//! [`Staged`] for code that owns its transaction object.
//!
//! A job enqueued inside a transaction can run before the commit, or after a
//! rollback, on rows that never existed. Inside `after_commit`, every
//! `perform_*` made through the scope's handle is staged and pushed, all in
//! one atomic backend step, only when the scope returns `Ok`. An enqueue
//! through a plain [`Client`] from the same task fails with
//! [`EnqueueError::InsideTransaction`] instead of leaking out. See
//! `docs/TRANSACTIONS.md`.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::{Backend, PushJob};
use crate::client::{Client, push_now};
use crate::error::EnqueueError;
use crate::job::JobId;

tokio::task_local! {
    /// The innermost `after_commit` scope of the running task.
    static SCOPE: Arc<Stage>;
}

/// Whether the running task is inside an `after_commit` scope.
pub(crate) fn inside_scope() -> bool {
    SCOPE.try_with(|_| ()).is_ok()
}

/// Jobs held back until a commit.
pub(crate) struct Stage {
    jobs: Mutex<StageState>,
    /// The `after_commit` scope this one is nested in, if any.
    parent: Option<Arc<Stage>>,
}

#[derive(Default)]
struct StageState {
    jobs: Vec<StagedJob>,
    /// Flushed or discarded: later enqueues through its handle are refused.
    closed: bool,
}

struct StagedJob {
    name: String,
    backend: Arc<dyn Backend>,
    push: PushJob,
}

impl Stage {
    fn new(parent: Option<Arc<Stage>>) -> Arc<Self> {
        Arc::new(Self { jobs: Mutex::new(StageState::default()), parent })
    }

    /// Where an enqueue through this stage's handle goes: the innermost
    /// `after_commit` scope of the running task when it is nested in this
    /// one (a savepoint: what is enqueued while it runs is dropped with it,
    /// through whichever enclosing handle), this stage otherwise.
    pub(crate) fn innermost(self: &Arc<Self>) -> Arc<Stage> {
        let nested = SCOPE.try_with(|scope| {
            let mut ancestor = scope.parent.as_ref();
            while let Some(stage) = ancestor {
                if Arc::ptr_eq(stage, self) {
                    return Some(Arc::clone(scope));
                }
                ancestor = stage.parent.as_ref();
            }
            None
        });
        nested.ok().flatten().unwrap_or_else(|| Arc::clone(self))
    }

    fn state(&self) -> MutexGuard<'_, StageState> {
        crate::lock(&self.jobs)
    }

    /// Holds `batch` back; called by a staging client instead of pushing.
    pub(crate) fn stage(
        &self,
        name: &str,
        backend: &Arc<dyn Backend>,
        batch: Vec<PushJob>,
    ) -> Result<Vec<JobId>, EnqueueError> {
        let mut state = self.state();
        if state.closed {
            return Err(EnqueueError::ScopeEnded { job: name.to_owned() });
        }
        let ids = batch.iter().map(|push| push.jid.clone()).collect();
        state.jobs.extend(batch.into_iter().map(|push| StagedJob {
            name: name.to_owned(),
            backend: Arc::clone(backend),
            push,
        }));
        Ok(ids)
    }

    /// Takes every staged job out and closes the stage.
    fn close(&self) -> Vec<StagedJob> {
        let mut state = self.state();
        state.closed = true;
        std::mem::take(&mut state.jobs)
    }

    fn len(&self) -> usize {
        self.state().jobs.len()
    }
}

/// Jobs staged for after a commit, for code that owns its transaction
/// object: enqueue through it (it derefs to a [`Client`]), commit, then
/// [`flush`](Staged::flush). Dropped without a flush, its jobs are discarded
/// (with a debug log), as a rollback should.
///
/// Unlike [`after_commit`], it does not make the plain client refuse
/// enqueues: nothing marks the task as inside a transaction.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{job, Backend, Client, JobSet, MemoryBackend, Staged};
///
/// #[job(queue = "mail")]
/// async fn send_receipt(user_id: u64) {}
///
/// let backend = MemoryBackend::new();
/// let client = Client::new(backend.clone());
///
/// let staged = Staged::new(&client);
/// SendReceipt::perform_later(&staged, 7).await?;
/// assert_eq!(backend.count(&JobSet::Queue("mail".into())).await?, 0); // not yet
/// // tx.commit().await?;
/// staged.flush().await?;
/// assert_eq!(backend.count(&JobSet::Queue("mail".into())).await?, 1);
///
/// let rolled_back = Staged::new(&client);
/// SendReceipt::perform_later(&rolled_back, 8).await?;
/// drop(rolled_back); // no commit: the job is discarded
/// assert_eq!(backend.count(&JobSet::Queue("mail".into())).await?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Staged {
    client: Client,
    stage: Arc<Stage>,
    /// Handed back by a failed flush: dropping it loses jobs the caller meant to enqueue.
    failed: bool,
    /// The stage of an `after_commit` scope: dropped with jobs, the scope was
    /// cancelled midway, maybe after its transaction committed.
    scope: bool,
}

impl Staged {
    /// An empty stage in front of `client`'s backend.
    pub fn new(client: &Client) -> Self {
        Self::nested_in(client, None)
    }

    fn nested_in(client: &Client, parent: Option<Arc<Stage>>) -> Self {
        let stage = Stage::new(parent);
        Self { client: client.staging(Arc::clone(&stage)), stage, failed: false, scope: false }
    }

    /// The handle to enqueue through; `&staged` works too, by deref.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many jobs are staged.
    pub fn len(&self) -> usize {
        self.stage.len()
    }

    /// Whether no job is staged.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The staged jobs as they would be pushed: id, queue, encoded payload,
    /// time. A caller whose flush failed can record them (an outbox table, a
    /// file) and push them later with [`Backend::push`](crate::Backend::push).
    pub fn jobs(&self) -> Vec<PushJob> {
        self.stage.state().jobs.iter().map(|job| job.push.clone()).collect()
    }

    /// Pushes every staged job in one atomic backend step per backend (one
    /// script call on Redis): all or none. Returns the ids enqueued (jobs
    /// refused by `unique_for` are left out). On failure, the error carries
    /// the staged jobs back, so the caller can retry: nothing is dropped.
    ///
    /// Inside an [`after_commit`](crate::after_commit) scope it pushes
    /// nothing: the jobs join the scope, to be pushed when it commits (or
    /// dropped when it rolls back), and their ids are returned.
    pub async fn flush(self) -> Result<Vec<JobId>, FlushError> {
        let jobs = self.stage.close();
        let mut unfinished = UnfinishedPush(jobs.iter().map(|job| job.name.clone()).collect());
        // Inside an `after_commit` scope, the jobs wait for that scope's commit too.
        if let Ok(outer) = SCOPE.try_with(Arc::clone) {
            let ids = jobs.iter().map(|job| job.push.jid.clone()).collect();
            unfinished.0.clear();
            return match hand_over(&outer, jobs) {
                Ok(()) => Ok(ids),
                Err((source, back)) => Err(FlushError { source, staged: self.refilled(back) }),
            };
        }
        let mut enqueued = Vec::with_capacity(jobs.len());
        let mut rest = jobs;
        while !rest.is_empty() {
            // One push per backend, in staging order (nearly always one backend).
            let backend = Arc::clone(&rest[0].backend);
            let (mine, others): (Vec<StagedJob>, Vec<StagedJob>) =
                rest.into_iter().partition(|job| Arc::ptr_eq(&job.backend, &backend));
            let name = mine[0].name.clone();
            let batch: Vec<PushJob> = mine.iter().map(|job| job.push.clone()).collect();
            match push_now(backend.as_ref(), self.client.writes_events(), batch).await {
                Ok(ids) => {
                    enqueued.extend(ids);
                    unfinished.0 = others.iter().map(|job| job.name.clone()).collect();
                }
                Err(source) => {
                    unfinished.0.clear();
                    let mut back = mine;
                    back.extend(others);
                    return Err(FlushError {
                        source: EnqueueError::Backend { job: name, source },
                        staged: self.refilled(back),
                    });
                }
            }
            rest = others;
        }
        unfinished.0.clear();
        Ok(enqueued)
    }

    /// A new stage in front of the same backend, holding `jobs`.
    fn refilled(&self, jobs: Vec<StagedJob>) -> Staged {
        let mut staged = Staged::new(&self.client);
        staged.stage.state().jobs = jobs;
        staged.failed = true;
        staged
    }

    /// Drops every staged job now; returns how many there were.
    pub fn discard(self) -> usize {
        let count = self.stage.close().len();
        if count > 0 {
            tracing::debug!(count, "discarding staged jobs: the transaction did not commit");
        }
        count
    }
}

impl Deref for Staged {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let dropped = self.stage.close();
        if !dropped.is_empty() {
            let names: Vec<&str> = dropped.iter().map(|job| job.name.as_str()).collect();
            if self.failed {
                let ids: Vec<&str> = dropped.iter().map(|job| job.push.jid.as_str()).collect();
                // The transaction committed, the push failed, and the `FlushError` holding
                // these jobs was dropped: they are lost, and that must not pass unseen.
                tracing::error!(
                    count = dropped.len(),
                    jobs = ?names,
                    jids = ?ids,
                    "jobs of a committed transaction were never enqueued: their push failed and the FlushError holding them was dropped (keep it and retry `failed.staged.flush()`, or record `failed.staged.jobs()`)"
                );
            } else if self.scope {
                // The closure's future was dropped midway: most often a web framework
                // cancelling a request whose client went away. Its transaction may have
                // committed (a database finishes a COMMIT it received).
                tracing::warn!(
                    count = dropped.len(),
                    jobs = ?names,
                    "an after_commit scope was dropped before it finished (a cancelled request?): its staged jobs are discarded, and if its transaction committed all the same they are lost; run such a transaction on a task of its own (tokio::spawn), which a client that goes away cannot cancel"
                );
            } else {
                tracing::debug!(count = dropped.len(), jobs = ?names, "discarding staged jobs: dropped without a flush");
            }
        }
    }
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staged").field("jobs", &self.len()).finish()
    }
}

/// A flush that failed, with the jobs handed back. Nothing was enqueued when
/// the push was refused; when its reply was lost (a timeout, a connection
/// dropped after the command went out) they may be queued already, and a retry can
/// enqueue them twice (at-least-once, as any enqueue; `unique_for` refuses
/// the copy while its window lasts).
///
/// ```no_run
/// # async fn run(staged: jobs_core::Staged) -> Result<(), jobs_core::EnqueueError> {
/// match staged.flush().await {
///     Ok(ids) => println!("enqueued {}", ids.len()),
///     Err(failed) => {
///         eprintln!("{failed}; retrying once");
///         failed.staged.flush().await.map_err(|again| again.source)?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{} not enqueued: {source}", count_jobs(staged.len(), "staged job was", "staged jobs were"))]
pub struct FlushError {
    /// Why the push failed.
    pub source: EnqueueError,
    /// The jobs, still staged: flush them again, or discard them.
    pub staged: Staged,
}

/// Runs `scope` with a handle that stages every enqueue made through it, and
/// pushes them all in one atomic step when `scope` returns `Ok`; on `Err`, or
/// if `scope` panics, none is pushed. The scope's value and error pass
/// through; a failed push becomes the scope's error type through
/// `From<FlushError>` (the error holds the jobs, to retry).
///
/// While `scope` runs, an enqueue through a plain [`Client`] from the same
/// task fails with [`EnqueueError::InsideTransaction`]: a nested service that
/// grabbed the client cannot leak a job about rows that may roll back. Tasks
/// spawned from the scope are not guarded (enqueue through the handle there).
/// A nested `after_commit` stages into the outer one, like a savepoint: its
/// jobs are pushed with the outer scope's, or dropped with them. What is
/// enqueued while it runs belongs to it, even through an enclosing scope's
/// handle (a service that kept the outer handle): it is dropped if the
/// nested scope fails.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{after_commit, job, Backend, Client, JobSet, MemoryBackend};
///
/// #[job(queue = "mail")]
/// async fn send_confirmation_email(user_id: u64) {}
///
/// let backend = MemoryBackend::new();
/// let client = Client::new(backend.clone());
/// let mail = JobSet::Queue("mail".into());
///
/// // Committed: the job is enqueued after the scope returns Ok.
/// let user_id = after_commit(&client, |jobs| async move {
///     // let mut tx = pool.begin().await?; … update the row …
///     SendConfirmationEmail::perform_later(&jobs, 7).await?;
///     // tx.commit().await?;
///     Ok::<_, Box<dyn std::error::Error>>(7)
/// })
/// .await?;
/// assert_eq!((user_id, backend.count(&mail).await?), (7, 1));
///
/// // Rolled back: nothing is enqueued, and the plain client is refused inside.
/// let failed = after_commit(&client, |jobs| {
///     let client = client.clone();
///     async move {
///         SendConfirmationEmail::perform_later(&jobs, 8).await?;
///         let leak = SendConfirmationEmail::perform_later(&client, 9).await;
///         assert!(matches!(leak, Err(jobs_core::EnqueueError::InsideTransaction { .. })));
///         Err::<(), Box<dyn std::error::Error>>("the e-mail address is taken".into())
///     }
/// })
/// .await;
/// assert!(failed.is_err());
/// assert_eq!(backend.count(&mail).await?, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn after_commit<F, Fut, T, E>(client: &Client, scope: F) -> Result<T, E>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<FlushError>,
{
    let mut staged = Staged::nested_in(client, SCOPE.try_with(Arc::clone).ok());
    staged.scope = true;
    let result = SCOPE.scope(Arc::clone(&staged.stage), scope(staged.client.clone())).await;
    let value = match result {
        Ok(value) => value,
        Err(error) => {
            staged.discard();
            return Err(error);
        }
    };
    // `flush` hands the jobs to an enclosing scope, if any, like a savepoint.
    staged.flush().await?;
    Ok(value)
}

/// The names of staged jobs a flush is pushing: a flush dropped before its
/// push came back (its future cancelled) says so, as the jobs may be lost.
struct UnfinishedPush(Vec<String>);

impl Drop for UnfinishedPush {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            tracing::warn!(
                count = self.0.len(),
                jobs = ?self.0,
                "a flush of staged jobs was dropped before its push came back (a cancelled request?): the jobs may not have been enqueued; run the flush, or the after_commit scope, on a task of its own (tokio::spawn)"
            );
        }
    }
}

/// Moves `jobs` into an enclosing scope's stage; gives them back when that
/// scope already ended (it was moved to another task).
fn hand_over(outer: &Stage, jobs: Vec<StagedJob>) -> Result<(), (EnqueueError, Vec<StagedJob>)> {
    let mut state = outer.state();
    if state.closed {
        let job = jobs.first().map(|job| job.name.clone()).unwrap_or_default();
        return Err((EnqueueError::ScopeEnded { job }, jobs));
    }
    state.jobs.extend(jobs);
    Ok(())
}

/// `1 staged job was`, `2 staged jobs were`.
fn count_jobs(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}
