//! Shared helpers for the integration tests of `jobs`.
//!
//! The tests live in `tests/tests/`, one file per capability, each test named
//! for the behaviour it pins. UI (compile-error) cases live in `tests/ui`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jobs_core::{Backend, Client, MemoryBackend, Worker, WorkerBuilder};
use jobs_redis::RedisBackend;
use tokio::sync::Notify;

pub mod jobs;

/// The README's examples, compiled and run as doctests so they cannot drift.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use jobs_redis::testing::RedisServer;

/// A backend under test: the embedded one, or Redis on a private server.
/// The conformance suite runs every behaviour on both.
pub struct TestBackend {
    kind: &'static str,
    backend: Arc<dyn Backend>,
    server: Option<RedisServer>,
}

impl TestBackend {
    /// A fresh `MemoryBackend`.
    pub fn memory() -> TestBackend {
        TestBackend { kind: "memory", backend: Arc::new(MemoryBackend::new()), server: None }
    }

    /// A `RedisBackend` on a private `redis-server` of its own.
    pub async fn redis() -> TestBackend {
        let server = RedisServer::start();
        let backend = RedisBackend::connect(&server.url()).await.expect("connect to the test redis-server");
        TestBackend { kind: "redis", backend: Arc::new(backend), server: Some(server) }
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// A name unique to this backend's run of a test (for ledgers and gates).
    pub fn name(&self, name: &str) -> String {
        format!("{}:{name}", self.kind)
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The backend, shared.
    pub fn shared(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.backend)
    }

    /// A client on it.
    pub fn client(&self) -> Client {
        Client::from_arc(self.shared())
    }

    /// A worker builder on it.
    pub fn worker(&self) -> WorkerBuilder {
        Worker::builder_shared(self.shared())
    }

    /// The private server, for Redis runs.
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }

    /// The private server, to kill or restart it.
    pub fn server_mut(&mut self) -> Option<&mut RedisServer> {
        self.server.as_mut()
    }
}

/// Runs each listed `async fn name(t: &TestBackend)` once on `MemoryBackend`
/// and once on `RedisBackend`, as `memory::name` and `redis::name`.
#[macro_export]
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&$crate::TestBackend::memory()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(&$crate::TestBackend::redis().await).await;
                }
            )*
        }
    };
}

/// An ordered record of what jobs did, shared between a test and its jobs.
///
/// Job arguments must be simple values, so a test passes its ledger's name
/// and the job looks the ledger up with [`Ledger::named`].
#[derive(Clone, Default, Debug)]
pub struct Ledger {
    inner: Arc<LedgerInner>,
}

#[derive(Default, Debug)]
struct LedgerInner {
    entries: Mutex<Vec<String>>,
    changed: Notify,
}

impl Ledger {
    /// The ledger called `name`, created on first use.
    pub fn named(name: &str) -> Ledger {
        static ALL: OnceLock<Mutex<HashMap<String, Ledger>>> = OnceLock::new();
        let mut all = ALL.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_owned()).or_default().clone()
    }

    /// Appends an entry and wakes whoever waits on this ledger.
    pub fn record(&self, entry: impl Into<String>) {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner()).push(entry.into());
        self.inner.changed.notify_waiters();
    }

    /// Everything recorded so far, in order.
    pub fn entries(&self) -> Vec<String> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at least `count` entries are recorded.
    pub async fn wait_for(&self, count: usize) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.entries().len() >= count {
                return;
            }
            changed.await;
        }
    }
}

/// A gate a job waits at until the test opens it.
#[derive(Clone, Default, Debug)]
pub struct Gate {
    inner: Arc<(Mutex<bool>, Notify)>,
}

impl Gate {
    /// The gate called `name`, created (closed) on first use.
    pub fn named(name: &str) -> Gate {
        static ALL: OnceLock<Mutex<HashMap<String, Gate>>> = OnceLock::new();
        let mut all = ALL.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
        all.entry(name.to_owned()).or_default().clone()
    }

    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.inner.1.notify_waiters();
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        loop {
            let opened = self.inner.1.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if *self.inner.0.lock().unwrap_or_else(|p| p.into_inner()) {
                return;
            }
            opened.await;
        }
    }
}

/// Records an event, lets `age` pass, records two more: only the two are
/// left (the first, older than `age`, was trimmed by the later record).
pub async fn events_are_kept_for_their_age_limit(backend: &dyn Backend, age: std::time::Duration) {
    use jobs_core::EventRecord;
    let event = |n: u32| EventRecord { json: format!(r#"{{"n":{n}}}"#) };
    backend.record(&[], &[event(1)]).await.expect("record");
    // The limit is a matter of time: wait for the clock, not for a signal.
    let recorded = std::time::Instant::now();
    while recorded.elapsed() <= age + std::time::Duration::from_millis(5) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    backend.record(&[], &[event(2), event(3)]).await.expect("record");
    let kept = backend.read_events(Some("0"), 100, std::time::Duration::ZERO).await.expect("read");
    let jsons: Vec<&str> = kept.events.iter().map(|(_, json)| json.as_str()).collect();
    assert_eq!(jsons, [r#"{"n":2}"#, r#"{"n":3}"#], "the event older than the limit is gone");
}

/// A backend in front of another that counts fetches and can refuse the
/// next acknowledgements, as an unreachable Redis would; everything else
/// passes through.
pub struct Spy {
    inner: Arc<dyn Backend>,
    /// Fetch round trips so far.
    pub fetches: std::sync::atomic::AtomicU64,
    /// Acknowledgements (`complete`) still to refuse.
    pub refuse_acks: std::sync::atomic::AtomicU64,
    /// Acknowledgements still to write and then fail all the same, as a
    /// reply lost on its way back (a timeout while Redis stalled) would.
    pub lose_ack_replies: std::sync::atomic::AtomicU64,
    /// Refuse every blocking wait (as Redis at `maxclients` refuses the
    /// connection a wait opens), while plain fetches go through.
    pub refuse_waits: std::sync::atomic::AtomicBool,
    /// Waits refused so far.
    pub waits_refused: std::sync::atomic::AtomicU64,
    /// Refuse every promotion of due jobs (a worker's maintenance).
    pub refuse_promotes: std::sync::atomic::AtomicBool,
    /// Refuse every fetch (counted all the same).
    pub refuse_fetches: std::sync::atomic::AtomicBool,
}

impl Spy {
    /// A spy in front of `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Spy {
        Spy {
            inner,
            fetches: Default::default(),
            refuse_acks: Default::default(),
            lose_ack_replies: Default::default(),
            refuse_waits: Default::default(),
            waits_refused: Default::default(),
            refuse_promotes: Default::default(),
            refuse_fetches: Default::default(),
        }
    }
}

#[rustfmt::skip]
mod spy {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use jobs_core::{
        Backend, BackendError, BoxFuture, EventBatch, EventRecord, FetchRequest, Fetched, JobId, JobSet, Lease,
        OutcomeRecord, PushJob, PushOutcome, StoredJob, WorkerId,
    };

    impl Backend for super::Spy {
        fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
            self.fetches.fetch_add(1, Relaxed);
            if self.refuse_fetches.load(Relaxed) {
                return Box::pin(async { Err(BackendError::transient("Redis unreachable: connection refused")) });
            }
            self.inner.fetch(request)
        }
        fn complete<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            if self.refuse_acks.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
                return Box::pin(async { Err(BackendError::transient("Redis unreachable: connection refused")) });
            }
            if self.lose_ack_replies.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
                return Box::pin(async move {
                    self.inner.complete(leases).await?;
                    Err(BackendError::transient("Redis did not answer in time"))
                });
            }
            self.inner.complete(leases)
        }
        fn push(&self, jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>> { self.inner.push(jobs) }
        fn wait_for_jobs<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
            if self.refuse_waits.load(Relaxed) {
                self.waits_refused.fetch_add(1, Relaxed);
                return Box::pin(async { Err(BackendError::transient("cannot connect to Redis: max number of clients reached")) });
            }
            self.inner.wait_for_jobs(queues, timeout)
        }
        fn retry<'a>(&'a self, lease: &'a Lease, payload: String, run_at: u64) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.retry(lease, payload, run_at) }
        fn defer<'a>(&'a self, lease: &'a Lease, payload: String, run_at: u64) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.defer(lease, payload, run_at) }
        fn kill<'a>(&'a self, lease: &'a Lease, payload: String) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.kill(lease, payload) }
        fn put_back<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>> { self.inner.put_back(leases) }
        fn extend<'a>(&'a self, leases: &'a [Lease], lease: Duration) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> { self.inner.extend(leases, lease) }
        fn rescue<'a>(&'a self, worker: &'a WorkerId, lease: Duration, max: usize) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> { self.inner.rescue(worker, lease, max) }
        fn promote_due(&self, until: Option<u64>) -> BoxFuture<'_, Result<usize, BackendError>> {
            if self.refuse_promotes.load(Relaxed) {
                return Box::pin(async { Err(BackendError::transient("Redis unreachable: connection refused")) });
            }
            self.inner.promote_due(until)
        }
        fn list<'a>(&'a self, set: &'a JobSet, offset: usize, limit: usize) -> BoxFuture<'a, Result<Vec<StoredJob>, BackendError>> { self.inner.list(set, offset, limit) }
        fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>> { self.inner.count(set) }
        fn release_unique<'a>(&'a self, key: &'a str, jid: &'a JobId) -> BoxFuture<'a, Result<bool, BackendError>> { self.inner.release_unique(key, jid) }
        fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> { self.inner.queues() }
        fn record<'a>(&'a self, outcomes: &'a [OutcomeRecord], events: &'a [EventRecord]) -> BoxFuture<'a, Result<(), BackendError>> { self.inner.record(outcomes, events) }
        fn outcome<'a>(&'a self, jid: &'a JobId) -> BoxFuture<'a, Result<Option<String>, BackendError>> { self.inner.outcome(jid) }
        fn wait_outcome<'a>(&'a self, jid: &'a JobId, timeout: Duration) -> BoxFuture<'a, Result<Option<String>, BackendError>> { self.inner.wait_outcome(jid, timeout) }
        fn cancel<'a>(&'a self, jid: &'a JobId, until: u64) -> BoxFuture<'a, Result<(), BackendError>> { self.inner.cancel(jid, until) }
        fn cancel_requested<'a>(&'a self, jids: &'a [JobId]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> { self.inner.cancel_requested(jids) }
        fn read_events<'a>(&'a self, after: Option<&'a str>, max: usize, block: Duration) -> BoxFuture<'a, Result<EventBatch, BackendError>> { self.inner.read_events(after, max, block) }
        fn heartbeat<'a>(&'a self, worker: &'a WorkerId, ttl: Duration) -> BoxFuture<'a, Result<(), BackendError>> { self.inner.heartbeat(worker, ttl) }
        fn detached(&self) -> Option<std::sync::Arc<dyn Backend>> { self.inner.detached() }
        fn end_waits(&self) -> BoxFuture<'_, ()> { self.inner.end_waits() }
    }
}

/// A log sink for one test: what the subscriber [`Logs::capture`] sets for
/// this thread writes (a worker's heartbeat thread inherits it), as text.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Captures this thread's logs, without colours, until the guard drops.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
