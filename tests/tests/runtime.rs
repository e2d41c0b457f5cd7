//! The worker at run time: the injected context, `run_until` with scheduled
//! jobs, the global concurrency cap, dead-set retention and uniqueness within
//! one batch.

use std::sync::Arc;
use std::time::Duration;

use jobs_core::{
    Backend, Client, DeadLimits, Envelope, JobContext, JobError, JobSet, RawJob, Worker, WorkerError, WorkerReport,
    job, now_millis,
};
use jobs_tests::{Gate, Ledger, RedisServer, TestBackend};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

jobs_tests::conformance!(
    context_is_injected_with_the_jid_and_the_attempt,
    run_until_runs_a_scheduled_job_once_it_is_due,
    global_concurrency_cap_holds,
    enqueue_many_refuses_a_duplicate_within_the_batch,
    drain_runs_the_jobs_its_jobs_enqueue,
    drain_runs_scheduled_jobs_once_they_are_due,
);

/// A hang guard only: every wait below ends on a signal long before this.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[job(queue = "context", version = 2, retries = 3)]
async fn inspect_context(ledger: String, fail_first: bool, ctx: &JobContext) -> Result<(), JobError> {
    let entry = format!("{} {} {} {} {}", ctx.jid(), ctx.attempt(), ctx.name(), ctx.queue(), ctx.payload_version());
    Ledger::named(&ledger).record(entry);
    if fail_first && ctx.attempt() == 1 {
        return Err(JobError::new("the first attempt fails"));
    }
    Ok(())
}

#[job(queue = "scheduled")]
async fn record_run_time(ledger: String) {
    Ledger::named(&ledger).record(now_millis().to_string());
}

#[job(queue = "gated")]
async fn gated(ledger: String, gate: String, n: u64) {
    let ledger = Ledger::named(&ledger);
    ledger.record(format!("start {n}"));
    Gate::named(&gate).wait().await;
    ledger.record(format!("done {n}"));
}

#[job(queue = "unique", unique_for = "1h")]
async fn refresh_account(account_id: u64) {
    let _ = account_id;
}

#[job(retries = 0)]
async fn doomed(n: u64) -> Result<(), JobError> {
    Err(JobError::fatal(format!("doomed {n}")))
}

/// A worker running under `run_until` in a task of its own.
struct Background {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<WorkerReport, WorkerError>>,
}

impl Background {
    fn start(worker: &Worker) -> Background {
        let (stop, stopped) = oneshot::channel();
        let worker = worker.clone();
        Background { stop, task: tokio::spawn(async move { worker.run_until(stopped).await }) }
    }

    /// Shuts the worker down and returns what it did.
    async fn stop(self) -> WorkerReport {
        let _ = self.stop.send(());
        tokio::time::timeout(HANG_GUARD, self.task).await.expect("the worker stops").unwrap().unwrap()
    }
}

async fn wait_for(ledger: &Ledger, count: usize) {
    if tokio::time::timeout(HANG_GUARD, ledger.wait_for(count)).await.is_err() {
        panic!("waited {HANG_GUARD:?} for {count} entries; the ledger holds {:?}", ledger.entries());
    }
}

async fn context_is_injected_with_the_jid_and_the_attempt(t: &TestBackend) {
    let client = t.client();
    let name = t.name("context");
    let ledger = Ledger::named(&name);
    let worker = t.worker().build().unwrap();

    let jid = InspectContext::perform_later(&client, name.clone(), true).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().retried, 1);
    assert_eq!(ledger.entries(), [format!("{jid} 1 inspect_context context 2")]);
    assert_eq!(t.backend().promote_due(Some(u64::MAX)).await.unwrap(), 1);
    assert_eq!(worker.drain().await.unwrap().succeeded, 1);
    assert_eq!(ledger.entries()[1], format!("{jid} 2 inspect_context context 2"), "the retry is attempt 2");

    // A payload written at version 1 says so, although the job is at version 2 now.
    let raw = RawJob {
        job: "inspect_context".into(),
        version: 1,
        queue: "context".into(),
        args: serde_json::json!({ "ledger": name, "fail_first": false }),
    };
    let old = client.enqueue_raw(raw).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 1);
    assert_eq!(ledger.entries()[2], format!("{old} 1 inspect_context context 1"));
}

async fn run_until_runs_a_scheduled_job_once_it_is_due(t: &TestBackend) {
    let client = t.client();
    let name = t.name("scheduled");
    RecordRunTime::perform_in(&client, Duration::from_millis(300), name.clone()).await.unwrap();
    let scheduled = t.backend().list(&JobSet::Scheduled, 0, 10).await.unwrap();
    assert_eq!(scheduled.len(), 1, "the job waits in the scheduled set, not in its queue");
    let due = scheduled[0].at;

    let worker = Background::start(&t.worker().build().unwrap());
    let ledger = Ledger::named(&name);
    wait_for(&ledger, 1).await;
    let report = worker.stop().await;

    assert_eq!(report.succeeded, 1);
    let entries = ledger.entries();
    assert_eq!(entries.len(), 1, "it ran once: {entries:?}");
    let ran_at: u64 = entries[0].parse().unwrap();
    assert!(ran_at >= due, "it ran at {ran_at}, before it was due at {due}");
    assert_eq!(t.backend().count(&JobSet::Scheduled).await.unwrap(), 0);
}

/// `drain` runs a scheduled job that has come due, on both backends alike
/// (the embedded one promotes due jobs at each fetch; on Redis, `drain` runs
/// no maintenance, so it promotes them itself), and leaves one not yet due.
async fn drain_runs_scheduled_jobs_once_they_are_due(t: &TestBackend) {
    let name = t.name("drain_due");
    RecordRunTime::perform_in(&t.client(), Duration::from_millis(50), name.clone()).await.unwrap();
    let due = t.backend().list(&JobSet::Scheduled, 0, 1).await.unwrap()[0].at;
    let worker = t.worker().build().unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 0, "not due yet: it stays scheduled");
    // The job comes due with the clock: wait for the clock, not for a signal.
    while jobs_core::now_millis() <= due {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(worker.drain().await.unwrap().succeeded, 1, "due: the drain runs it");
    assert_eq!(t.backend().count(&JobSet::Scheduled).await.unwrap(), 0);
    assert_eq!(Ledger::named(&name).entries().len(), 1);
}

async fn global_concurrency_cap_holds(t: &TestBackend) {
    let client = t.client();
    let (name, gate) = (t.name("cap"), t.name("cap_gate"));
    for n in 0..8 {
        Gated::perform_later(&client, name.clone(), gate.clone(), n).await.unwrap();
    }
    let worker = Background::start(&t.worker().concurrency(3).build().unwrap());
    let ledger = Ledger::named(&name);
    wait_for(&ledger, 3).await;
    // Three are held at the gate: a fourth would have to be fetched past the cap.
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 3);
    assert_eq!(t.backend().count(&JobSet::Queue("gated".into())).await.unwrap(), 5);
    Gate::named(&gate).open();
    wait_for(&ledger, 16).await;
    let report = worker.stop().await;
    assert_eq!(report.succeeded, 8);

    let entries = ledger.entries();
    let (mut running, mut peak) = (0_i32, 0);
    for entry in &entries {
        running += if entry.starts_with("start") { 1 } else { -1 };
        peak = peak.max(running);
    }
    assert_eq!(peak, 3, "{entries:#?}");
    let mut done: Vec<&str> = entries.iter().filter_map(|e| e.strip_prefix("done ")).collect();
    done.sort_unstable();
    assert_eq!(done, ["0", "1", "2", "3", "4", "5", "6", "7"], "each job ran once");
}

/// The client each `relay` job enqueues its successor with, by ledger name.
fn relay_client(ledger: &str, client: Option<Client>) -> Option<Client> {
    static ALL: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Client>>> =
        std::sync::OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(client) = client {
        all.insert(ledger.to_owned(), client);
    }
    all.get(ledger).cloned()
}

#[job(queue = "relay")]
async fn relay(ledger: String, left: u32) -> Result<(), JobError> {
    Ledger::named(&ledger).record(format!("{left}"));
    if left > 0 {
        let client = relay_client(&ledger, None).ok_or_else(|| JobError::fatal("no client for this ledger"))?;
        Relay::perform_later(&client, ledger, left - 1).await?;
    }
    Ok(())
}

async fn drain_runs_the_jobs_its_jobs_enqueue(t: &TestBackend) {
    let name = t.name("relay");
    let client = relay_client(&name, Some(t.client())).unwrap();
    // Each job enqueues the next as its last step, while the drain's fetch for it may be
    // out already: the drain must look again rather than stop at that empty fetch.
    Relay::perform_later(&client, name.clone(), 20).await.unwrap();
    let report = t.worker().concurrency(4).build().unwrap().drain().await.unwrap();
    assert_eq!(report.succeeded, 21);
    let ran = Ledger::named(&name).entries();
    let expected: Vec<String> = (0..=20).rev().map(|n| n.to_string()).collect();
    assert_eq!(ran, expected);
}

async fn enqueue_many_refuses_a_duplicate_within_the_batch(t: &TestBackend) {
    let client = t.client();
    let batch = [1, 2, 1, 3].map(|account_id| RefreshAccount { account_id });
    let ids = client.enqueue_many(batch).await.unwrap();
    assert_eq!(ids.len(), 3, "the second `account_id: 1` is refused");

    let queued = t.backend().list(&JobSet::Queue("unique".into()), 0, 10).await.unwrap();
    let envelopes: Vec<Envelope> = queued.iter().map(|job| Envelope::from_json(&job.payload).unwrap()).collect();
    let jids: Vec<_> = envelopes.iter().map(|envelope| envelope.jid.clone()).collect();
    assert_eq!(jids, ids, "the returned ids are the stored jobs, in batch order");
    let accounts: Vec<u64> = envelopes.iter().map(|envelope| envelope.args["account_id"].as_u64().unwrap()).collect();
    assert_eq!(accounts, [1, 2, 3]);
}

// `TestBackend` has no knob for dead-set limits, so retention is checked
// on each backend built with small limits.
const SMALL_DEAD_SET: DeadLimits = DeadLimits { max_jobs: 3, max_age: Duration::from_secs(3600) };

#[tokio::test]
async fn memory_dead_set_keeps_only_the_newest_jobs() {
    dead_set_keeps_only_the_newest_jobs(Arc::new(jobs_core::MemoryBackend::with_dead_limits(SMALL_DEAD_SET))).await;
}

#[tokio::test]
async fn redis_dead_set_keeps_only_the_newest_jobs() {
    let server = RedisServer::start();
    let backend = jobs_redis::RedisBackend::builder(server.url()).dead_limits(SMALL_DEAD_SET).connect().await.unwrap();
    dead_set_keeps_only_the_newest_jobs(Arc::new(backend)).await;
}

async fn dead_set_keeps_only_the_newest_jobs(backend: Arc<dyn Backend>) {
    let client = Client::from_arc(Arc::clone(&backend));
    let worker = Worker::builder_shared(Arc::clone(&backend)).build().unwrap();
    for n in 0..5 {
        Doomed::perform_later(&client, n).await.unwrap();
        assert_eq!(worker.drain().await.unwrap().dead, 1);
        // Deaths in distinct milliseconds, so that "newest" does not depend on how ties sort.
        let died = now_millis();
        while now_millis() <= died {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let dead = backend.list(&JobSet::Dead, 0, 10).await.unwrap();
    let kept: Vec<u64> =
        dead.iter().map(|job| Envelope::from_json(&job.payload).unwrap().args["n"].as_u64().unwrap()).collect();
    assert_eq!(kept, [2, 3, 4], "the three newest, oldest first");
    assert_eq!(backend.count(&JobSet::Dead).await.unwrap(), 3);
}

const SHORT_LIVED_DEAD: DeadLimits = DeadLimits { max_jobs: 100, max_age: Duration::from_millis(100) };

#[tokio::test]
async fn memory_dead_jobs_older_than_the_age_limit_are_dropped() {
    dead_jobs_older_than_the_age_limit_are_dropped(Arc::new(jobs_core::MemoryBackend::with_dead_limits(
        SHORT_LIVED_DEAD,
    )))
    .await;
}

#[tokio::test]
async fn redis_dead_jobs_older_than_the_age_limit_are_dropped() {
    let server = RedisServer::start();
    let backend =
        jobs_redis::RedisBackend::builder(server.url()).dead_limits(SHORT_LIVED_DEAD).connect().await.unwrap();
    dead_jobs_older_than_the_age_limit_are_dropped(Arc::new(backend)).await;
}

/// A job dies; once it is older than the age limit, the next death drops it.
async fn dead_jobs_older_than_the_age_limit_are_dropped(backend: Arc<dyn Backend>) {
    let client = Client::from_arc(Arc::clone(&backend));
    let worker = Worker::builder_shared(Arc::clone(&backend)).build().unwrap();
    Doomed::perform_later(&client, 1).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().dead, 1);
    // The limit is a matter of time: wait for the clock, not for a signal.
    let died = now_millis();
    while now_millis() <= died + SHORT_LIVED_DEAD.max_age.as_millis() as u64 + 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Doomed::perform_later(&client, 2).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().dead, 1);
    let dead = backend.list(&JobSet::Dead, 0, 10).await.unwrap();
    let kept: Vec<u64> =
        dead.iter().map(|job| Envelope::from_json(&job.payload).unwrap().args["n"].as_u64().unwrap()).collect();
    assert_eq!(kept, [2], "the job dead longer than the limit is gone");
}

/// Out of the box the dead set is bounded, by count and by age (DESIGN:
/// "Bounded by default"; the Redis defaults of outcomes and events are pinned
/// in `jobs-redis`).
#[test]
fn the_dead_set_is_bounded_by_default() {
    let dead = DeadLimits::default();
    assert_eq!((dead.max_jobs, dead.max_age), (10_000, Duration::from_secs(180 * 86_400)));
}

/// When plain fetches succeed but every blocking wait is refused (Redis at
/// `maxclients` refuses the connection a wait opens), the fetch backoff
/// still grows: it used to start over at every successful fetch, so the
/// worker retried, and warned, ten times a second for as long as it lasted.
/// Maintenance that fails at every tick warns once, not every second.
/// (Tokio's clock is paused: the minute takes no real time.)
#[tokio::test(start_paused = true)]
async fn an_outage_backs_off_and_is_logged_without_flooding() {
    use std::sync::atomic::Ordering::Relaxed;
    let (logs, _guard) = jobs_tests::Logs::capture();
    let spy = Arc::new(jobs_tests::Spy::new(Arc::new(jobs_core::MemoryBackend::new())));
    spy.refuse_waits.store(true, Relaxed);
    spy.refuse_promotes.store(true, Relaxed);
    let worker = jobs_core::Worker::builder_shared(spy.clone()).queue("default", 1).build().unwrap();
    worker
        .run_until(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            spy.refuse_promotes.store(false, Relaxed);
            tokio::time::sleep(Duration::from_secs(3)).await;
        })
        .await
        .unwrap();
    let refused = spy.waits_refused.load(Relaxed);
    // 0.1 + 0.2 + … + 3.2 s, then every 5 s: about 18 in 63 s.
    assert!((5..=30).contains(&refused), "{refused} waits in a minute");
    let text = logs.text();
    assert_eq!(text.matches("maintenance failed").count(), 1, "{text}");
    assert_eq!(text.matches("maintenance works again").count(), 1, "{text}");
}
