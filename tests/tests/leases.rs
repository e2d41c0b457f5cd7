//! Leases: fencing, rescue as an attempt, heartbeats.
//! Lease expiry is a matter of time, so these tests wait for conditions with a bound.

use std::time::Duration;

use jobs_core::{Envelope, FetchRequest, JobSet, QueueTake, RawJob, RetryPolicy, WorkerId, job};
use jobs_tests::{Ledger, TestBackend};
use serde_json::json;

jobs_tests::conformance!(
    stale_worker_cannot_complete_a_job_another_worker_took_over,
    rescued_job_is_an_attempt_and_goes_through_retry,
    a_rescued_job_unknown_here_is_kept_for_retry,
    heartbeat_keeps_a_long_job_leased_while_its_worker_lives,
    drain_keeps_a_long_job_leased_too,
    a_rescue_takes_every_unsettled_job_of_a_fetch_and_fences_them_all,
    a_second_ack_of_a_job_whose_fetch_is_still_held_is_stale,
);

#[job]
async fn outlives_its_lease(ledger: String) {
    Ledger::named(&ledger).record("started");
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ledger::named(&ledger).record("finished");
}

#[job]
async fn quick(ledger: String) {
    Ledger::named(&ledger).record("ran");
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drains with `worker` while another worker looks for expired leases on
/// `backend` all along; fails with `expired` if it ever finds one.
async fn drain_watched(
    worker: &jobs_core::Worker,
    backend: &dyn jobs_core::Backend,
    expired: &str,
) -> jobs_core::WorkerReport {
    let rescuer = WorkerId::generate();
    let watch = async {
        loop {
            let taken = backend.rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap();
            assert!(taken.is_empty(), "{expired}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        report = worker.drain() => report.unwrap(),
        () = watch => unreachable!(),
    }
}

/// Rescues as `rescuer` as soon as a lease has expired (bounded wait).
async fn rescue_when_expired(backend: &dyn jobs_core::Backend, rescuer: &WorkerId) -> Vec<jobs_core::Fetched> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = backend.rescue(rescuer, Duration::from_secs(30), 10).await.unwrap();
        if !found.is_empty() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn default_queue() -> Vec<QueueTake> {
    vec![QueueTake { queue: "default".into(), max: 1 }]
}

async fn stale_worker_cannot_complete_a_job_another_worker_took_over(t: &TestBackend) {
    let (backend, client) = (t.backend(), t.client());
    Quick::perform_later(&client, t.name("fencing")).await.unwrap();
    let (paused, rescuer) = (WorkerId::generate(), WorkerId::generate());
    let takes = default_queue();
    let request = FetchRequest { queues: &takes, max: 1, worker: &paused, lease: Duration::from_millis(50) };
    let first = backend.fetch(request).await.unwrap();
    assert_eq!(first.len(), 1);

    let rescued = rescue_when_expired(backend, &rescuer).await;
    assert!(rescued[0].lease.token.starts_with(rescuer.as_str()));

    assert_eq!(backend.complete(&[first[0].lease.clone()]).await.unwrap(), [false], "the stale ack is refused");
    assert!(!backend.kill(&first[0].lease, "{}".into()).await.unwrap(), "so is a stale dead-letter");
    assert_eq!(backend.extend(&[first[0].lease.clone()], Duration::from_secs(1)).await.unwrap(), [false]);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 1, "the rescuer still holds it");
    assert_eq!(backend.count(&JobSet::Dead).await.unwrap(), 0);
    assert_eq!(backend.complete(&[rescued[0].lease.clone()]).await.unwrap(), [true]);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
}

async fn rescued_job_is_an_attempt_and_goes_through_retry(t: &TestBackend) {
    let name = t.name("rescued");
    let jid = Quick::perform_later(&t.client(), name.clone()).await.unwrap();
    let (report, envelope) = rescued_by_a_live_worker(t).await;
    assert_eq!((report.rescued, report.retried, report.dead), (1, 1, 0));
    assert_eq!((envelope.jid, envelope.attempt), (jid, 1));
    assert!(envelope.error.unwrap().starts_with("lease expired"));
    assert!(Ledger::named(&name).entries().is_empty(), "it waits for its backoff like any failure");
}

/// A job this worker does not register (a newer deploy's, or one renamed
/// away), whose worker died, is rescued as an attempt like any other: it
/// waits in the retry set for a worker that knows it, never dropped.
async fn a_rescued_job_unknown_here_is_kept_for_retry(t: &TestBackend) {
    let raw = RawJob { job: "linked_elsewhere".into(), version: 1, queue: "default".into(), args: json!({"n": 1}) };
    let jid = t.client().enqueue_raw(raw).await.unwrap();
    let (report, envelope) = rescued_by_a_live_worker(t).await;
    assert_eq!((report.rescued, report.retried, report.dead), (1, 1, 0));
    assert_eq!((envelope.jid, envelope.job.as_str(), envelope.attempt), (jid, "linked_elsewhere", 1));
    assert_eq!(envelope.args, json!({"n": 1}), "its arguments are kept as they were");
    assert!(envelope.error.unwrap().starts_with("lease expired"));
}

/// A worker takes the one queued job and dies; a live worker (60 s backoff)
/// rescues it. Returns the live worker's report and the retry set's entry.
async fn rescued_by_a_live_worker(t: &TestBackend) -> (jobs_core::WorkerReport, Envelope) {
    let ghost = WorkerId::generate();
    let takes = default_queue();
    let request = FetchRequest { queues: &takes, max: 1, worker: &ghost, lease: Duration::from_millis(50) };
    assert_eq!(t.backend().fetch(request).await.unwrap().len(), 1, "a worker takes the job, then dies");

    let policy = RetryPolicy { retries: 3, base: Duration::from_secs(60), max_delay: Duration::from_secs(60) };
    let worker = t.worker().retry_policy(policy).maintenance_interval(Duration::from_millis(10)).build().unwrap();
    let run = tokio::spawn({
        let worker = worker.clone();
        let backend = t.shared();
        async move {
            worker
                .run_until(async move {
                    eventually("the job to be rescued", || {
                        let backend = backend.clone();
                        async move { backend.count(&JobSet::Retry).await.unwrap() == 1 }
                    })
                    .await;
                })
                .await
        }
    });
    let report = run.await.unwrap().unwrap();
    let retry = t.backend().list(&JobSet::Retry, 0, 1).await.unwrap();
    (report, Envelope::from_json(&retry[0].payload).unwrap())
}

async fn heartbeat_keeps_a_long_job_leased_while_its_worker_lives(t: &TestBackend) {
    let client = t.client();
    let name = t.name("heartbeat");
    OutlivesItsLease::perform_later(&client, name.clone()).await.unwrap();
    let worker =
        t.worker().lease(Duration::from_millis(90)).maintenance_interval(Duration::from_millis(10)).build().unwrap();
    let ledger = Ledger::named(&name);
    let report = worker.run_until(ledger.wait_for(2)).await.unwrap();
    assert_eq!(ledger.entries(), ["started", "finished"], "ran once, never rescued mid-run");
    assert_eq!((report.succeeded, report.rescued, report.stale), (1, 0, 0));
}

// `drain` (tests, scripts, `work --drain`) heartbeats as `run_until` does: another
// worker looking for expired leases all along never takes the running job.
async fn drain_keeps_a_long_job_leased_too(t: &TestBackend) {
    let name = t.name("drain-heartbeat");
    OutlivesItsLease::perform_later(&t.client(), name.clone()).await.unwrap();
    // The job runs 500 ms; the lease is 300 ms, extended every 100 ms.
    let worker = t.worker().lease(Duration::from_millis(300)).build().unwrap();
    let report = drain_watched(&worker, t.backend(), "a running job's lease expired during the drain").await;
    assert_eq!((report.succeeded, report.stale), (1, 0));
    assert_eq!(Ledger::named(&name).entries(), ["started", "finished"]);
}

// An acknowledgement of a job already acknowledged, or put back, is stale even while
// other jobs of the same fetch keep its lease (Redis once answered "held" then).
async fn a_second_ack_of_a_job_whose_fetch_is_still_held_is_stale(t: &TestBackend) {
    let (backend, client) = (t.backend(), t.client());
    for _ in 0..4 {
        Quick::perform_later(&client, t.name("second-ack")).await.unwrap();
    }
    let worker = WorkerId::generate();
    let takes = vec![QueueTake { queue: "default".into(), max: 4 }];
    let request = FetchRequest { queues: &takes, max: 4, worker: &worker, lease: Duration::from_secs(30) };
    let held = backend.fetch(request).await.unwrap();
    let leases: Vec<_> = held.iter().map(|job| job.lease.clone()).collect();
    assert_eq!(backend.complete(&leases[..1]).await.unwrap(), [true]);
    assert_eq!(backend.complete(&leases[..1]).await.unwrap(), [false], "acknowledged already");
    assert_eq!(backend.put_back(&leases[1..2]).await.unwrap(), 0);
    assert_eq!(backend.complete(&leases[1..2]).await.unwrap(), [false], "put back already");
    assert_eq!(backend.count(&JobSet::Queue("default".into())).await.unwrap(), 1, "the put-back job waits");
    assert_eq!(backend.complete(&leases[2..]).await.unwrap(), [true, true], "the rest of the fetch still holds");
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
}

// One fetch of several jobs (one lease on Redis): the jobs its holder settled stay
// settled, a rescue takes every other one, and each later write of the holder is
// refused, whether it completes, retries, kills, puts back or extends.
async fn a_rescue_takes_every_unsettled_job_of_a_fetch_and_fences_them_all(t: &TestBackend) {
    let (backend, client) = (t.backend(), t.client());
    for _ in 0..6 {
        Quick::perform_later(&client, t.name("batch-fencing")).await.unwrap();
    }
    let (paused, rescuer) = (WorkerId::generate(), WorkerId::generate());
    let takes = vec![QueueTake { queue: "default".into(), max: 6 }];
    let request = FetchRequest { queues: &takes, max: 6, worker: &paused, lease: Duration::from_millis(50) };
    let held = backend.fetch(request).await.unwrap();
    assert_eq!(held.len(), 6);
    let leases: Vec<_> = held.iter().map(|job| job.lease.clone()).collect();
    assert_eq!(backend.complete(&leases[..2]).await.unwrap(), [true, true]);
    assert!(backend.retry(&leases[2], held[2].payload.clone(), 0).await.unwrap());

    let rescued = rescue_when_expired(backend, &rescuer).await;
    let mut payloads: Vec<_> = rescued.iter().map(|job| job.payload.clone()).collect();
    payloads.sort();
    let mut unsettled: Vec<_> = held[3..].iter().map(|job| job.payload.clone()).collect();
    unsettled.sort();
    assert_eq!(payloads, unsettled, "the three unsettled jobs, and only they, were taken over");

    assert_eq!(backend.complete(&leases[3..4]).await.unwrap(), [false], "a stale ack");
    assert!(!backend.retry(&leases[4], held[4].payload.clone(), 0).await.unwrap(), "a stale retry");
    assert!(!backend.kill(&leases[5], held[5].payload.clone()).await.unwrap(), "a stale dead-letter");
    assert_eq!(backend.put_back(&leases[3..]).await.unwrap(), 3, "stale put-backs");
    assert_eq!(backend.extend(&leases, Duration::from_secs(1)).await.unwrap(), [false; 6]);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 3, "the rescuer holds them");
    assert_eq!(backend.count(&JobSet::Retry).await.unwrap(), 1, "the holder's own retry stands");
    assert_eq!(backend.count(&JobSet::Dead).await.unwrap(), 0);
    let queued = backend.count(&JobSet::Queue("default".into())).await.unwrap();
    assert_eq!(queued, 0, "nothing was put back");

    let rescued: Vec<_> = rescued.iter().map(|job| job.lease.clone()).collect();
    assert_eq!(backend.complete(&rescued).await.unwrap(), [true; 3]);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
}

#[job]
async fn blocks_its_thread(ledger: String) {
    Ledger::named(&ledger).record("started");
    // The mistake under test: a blocking call in a job body, on the worker's only thread.
    std::thread::sleep(Duration::from_millis(1_000));
    Ledger::named(&ledger).record("finished");
}

/// A worker that looks for expired leases all along, on a thread, a runtime
/// and (on Redis) a connection of its own: the test's runtime will be blocked.
struct Rescuer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Rescuer {
    async fn start(t: &TestBackend) -> Rescuer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let watching = Arc::new(AtomicBool::new(false));
        let (shared, url) = (t.shared(), t.server().map(|server| server.url()));
        let thread = std::thread::spawn({
            let (stop, watching) = (Arc::clone(&stop), Arc::clone(&watching));
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let backend: Arc<dyn jobs_core::Backend> = match url {
                        Some(url) => Arc::new(jobs_redis::RedisBackend::connect(&url).await.unwrap()),
                        None => shared,
                    };
                    let rescuer = WorkerId::generate();
                    let mut taken = 0;
                    while !stop.load(Ordering::Acquire) {
                        taken += backend.rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap().len();
                        watching.store(true, Ordering::Release);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    taken
                })
            }
        });
        eventually("the rescuer looks", || std::future::ready(watching.load(Ordering::Acquire))).await;
        Rescuer { stop, thread }
    }

    /// Stops looking; returns how many jobs it took over.
    fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().unwrap()
    }
}

/// A job body that blocks every thread of the worker's runtime (here its
/// only one, for 1 s) cannot starve the heartbeat, which runs on a thread
/// of its own: the 300 ms lease holds, and a worker looking for expired
/// leases all along never takes the job over to run it again.
async fn a_job_blocking_the_runtime_keeps_its_lease(t: &TestBackend) {
    let name = t.name("blocking-body");
    BlocksItsThread::perform_later(&t.client(), name.clone()).await.unwrap();
    let worker = t.worker().lease(Duration::from_millis(300)).build().unwrap();
    let rescuer = Rescuer::start(t).await;
    let report = worker.drain().await.unwrap();
    assert_eq!(rescuer.stop(), 0, "the lease lapsed while the job blocked the worker's runtime");
    assert_eq!(Ledger::named(&name).entries(), ["started", "finished"]);
    assert_eq!((report.succeeded, report.stale), (1, 0));
}

#[job]
async fn finishes_and_opens_the_gate(ledger: String) {
    Ledger::named(&ledger).record("finished");
    jobs_tests::Gate::named(&ledger).open();
}

#[job]
async fn blocks_once_the_gate_opens(ledger: String) {
    jobs_tests::Gate::named(&ledger).wait().await;
    // Woken before the ack writer: its thread is blocked before the first job's ack is written.
    std::thread::sleep(Duration::from_millis(1_000));
    Ledger::named(&ledger).record("blocked");
}

/// A job that finished keeps its lease until its acknowledgement is written:
/// another job blocking the runtime before the ack writer runs does not let
/// the finished job be rescued and run again. (One job per fetch, so the two
/// do not share a lease token.)
async fn a_finished_job_keeps_its_lease_until_acknowledged(t: &TestBackend) {
    let name = t.name("finished-unacked");
    BlocksOnceTheGateOpens::perform_later(&t.client(), name.clone()).await.unwrap();
    FinishesAndOpensTheGate::perform_later(&t.client(), name.clone()).await.unwrap();
    let worker = t.worker().concurrency(2).fetch_batch(1).lease(Duration::from_millis(300)).build().unwrap();
    let rescuer = Rescuer::start(t).await;
    let ledger = Ledger::named(&name);
    let report = worker.run_until(ledger.wait_for(2)).await.unwrap();
    assert_eq!(rescuer.stop(), 0, "a finished job's lease lapsed before its ack was written");
    assert_eq!(ledger.entries(), ["finished", "blocked"]);
    assert_eq!((report.succeeded, report.stale), (2, 0));
}

/// On the worker's one thread: `#[tokio::test]` runs a current-thread runtime.
mod blocking {
    #[tokio::test]
    async fn memory_a_job_blocking_the_runtime_keeps_its_lease() {
        super::a_job_blocking_the_runtime_keeps_its_lease(&jobs_tests::TestBackend::memory()).await;
    }

    #[tokio::test]
    async fn redis_a_job_blocking_the_runtime_keeps_its_lease() {
        super::a_job_blocking_the_runtime_keeps_its_lease(&jobs_tests::TestBackend::redis().await).await;
    }

    #[tokio::test]
    async fn memory_a_finished_job_keeps_its_lease_until_acknowledged() {
        super::a_finished_job_keeps_its_lease_until_acknowledged(&jobs_tests::TestBackend::memory()).await;
    }

    #[tokio::test]
    async fn redis_a_finished_job_keeps_its_lease_until_acknowledged() {
        super::a_finished_job_keeps_its_lease_until_acknowledged(&jobs_tests::TestBackend::redis().await).await;
    }
}

#[job]
async fn outlives_a_longer_lease(ledger: String) {
    Ledger::named(&ledger).record("started");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    Ledger::named(&ledger).record("finished");
}

/// When the heartbeat cannot open a connection of its own (Redis at its
/// `maxclients`, a provider's connection cap), a backup on the worker's
/// runtime extends the leases through the worker's connection: a job that
/// outlives its lease is not taken over by a worker looking for expired ones.
/// Each of the two loops says so once for the outage, not at every beat.
/// (One thread: the log capture below is this thread's, and the heartbeat
/// thread inherits it.)
#[tokio::test]
async fn leases_hold_when_the_heartbeat_cannot_open_its_own_connection() {
    let (logs, _guard) = jobs_tests::Logs::capture();
    let t = TestBackend::redis().await;
    let server = t.server().unwrap();
    let name = t.name("maxclients");
    OutlivesALongerLease::perform_later(&t.client(), name.clone()).await.unwrap();
    let worker = t.worker().lease(Duration::from_millis(600)).build().unwrap();
    // The worker's connection is open (the watcher below shares it); no other may open now.
    let info = server.command(&["INFO", "clients"]);
    let clients: u64 = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("connected_clients:"))
        .and_then(|n| n.parse().ok())
        .expect("connected_clients");
    // That count includes this command's own connection, closed when it returns.
    server.command(&["CONFIG", "SET", "maxclients", &(clients - 1).to_string()]);
    let report = drain_watched(&worker, t.backend(), "a running job's lease expired").await;
    assert_eq!(Ledger::named(&name).entries(), ["started", "finished"]);
    assert_eq!((report.succeeded, report.stale), (1, 0));
    let text = logs.text();
    assert_eq!(text.matches("the heartbeat's own connection is failing").count(), 1, "{text}");
    assert_eq!(text.matches("heartbeat failed;").count(), 1, "the heartbeat thread's, once: {text}");
}

/// A finished job's lease stays extended while its acknowledgement is
/// written and retried (here refused five times, about 1.5 s of tries, five
/// times the lease): a worker looking for expired leases never takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_keeps_its_lease_while_its_ack_is_retried() {
    use std::sync::Arc;
    let memory: Arc<dyn jobs_core::Backend> = Arc::new(jobs_core::MemoryBackend::new());
    let spy = Arc::new(jobs_tests::Spy::new(Arc::clone(&memory)));
    spy.refuse_acks.store(5, std::sync::atomic::Ordering::Relaxed);
    let name = "memory:ack-retried".to_owned();
    Quick::perform_later(&jobs_core::Client::from_arc(Arc::clone(&memory)), name.clone()).await.unwrap();
    let worker = jobs_core::Worker::builder_shared(spy).lease(Duration::from_millis(300)).build().unwrap();
    let report =
        drain_watched(&worker, memory.as_ref(), "a finished job's lease expired while its ack was retried").await;
    assert_eq!((report.succeeded, report.stale), (1, 0));
    assert_eq!(Ledger::named(&name).entries(), ["ran"]);
}

#[jobs_core::job(queue = "default")]
async fn doubles(n: u64) -> Result<u64, jobs_core::JobError> {
    Ok(n * 2)
}

/// An acknowledgement that Redis applied but whose reply was lost (a
/// timeout while Redis stalled): its retry finds the lease gone. Within a
/// lease of its last confirmation no one else can have taken it, so the
/// job succeeded: it counts as such and its value is recorded (it used to
/// count as a stale write, and a `wait` on it never returned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_applied_but_unanswered_still_records_the_success() {
    use std::sync::Arc;
    let memory: Arc<dyn jobs_core::Backend> = Arc::new(jobs_core::MemoryBackend::new());
    let spy = Arc::new(jobs_tests::Spy::new(Arc::clone(&memory)));
    spy.lose_ack_replies.store(1, std::sync::atomic::Ordering::Relaxed);
    let client = jobs_core::Client::from_arc(Arc::clone(&memory));
    let jid = Doubles::perform_later(&client, 21).await.unwrap();
    let worker = jobs_core::Worker::builder_shared(spy.clone()).queue("default", 1).build().unwrap();
    let report = worker.drain().await.unwrap();
    assert_eq!(spy.lose_ack_replies.load(std::sync::atomic::Ordering::Relaxed), 0, "the reply was lost");
    assert_eq!((report.succeeded, report.stale), (1, 0), "{report:?}");
    assert_eq!(client.handle::<Doubles>(jid).wait(Duration::from_secs(5)).await.unwrap(), 42);
    assert_eq!(memory.count(&jobs_core::JobSet::InFlight).await.unwrap(), 0);
}
