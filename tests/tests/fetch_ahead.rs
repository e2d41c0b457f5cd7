//! `fetch_ahead`: a worker may lease more jobs than it runs. The concurrency
//! still caps what runs, held jobs keep their leases until they run, a held
//! job cancelled or taken over meanwhile does not run, and a shutdown puts
//! held jobs back at once.

use std::time::Duration;

use jobs_core::{Envelope, JobContext, JobError, JobSet, Worker, WorkerError, WorkerId, WorkerReport, job};
use jobs_tests::{Gate, Ledger, TestBackend};

jobs_tests::conformance!(
    fetch_ahead_leases_more_than_it_runs_and_runs_no_more_than_the_concurrency,
    held_jobs_keep_their_leases_until_they_run,
    a_job_cancelled_while_held_never_runs,
    shutdown_puts_held_jobs_back_at_once,
);

/// A hang guard only: every wait below ends on a signal or a condition long before this.
const HANG_GUARD: Duration = Duration::from_secs(30);

#[job(queue = "ahead")]
async fn at_gate(ledger: String, gate: String, n: u64) {
    let ledger = Ledger::named(&ledger);
    ledger.record(format!("start {n}"));
    Gate::named(&gate).wait().await;
    ledger.record(format!("done {n}"));
}

/// Runs until its cancellation is delivered.
#[job(queue = "ahead")]
async fn until_cancelled(ledger: String, n: u64, ctx: &JobContext) -> Result<(), JobError> {
    let ledger = Ledger::named(&ledger);
    ledger.record(format!("start {n}"));
    ctx.cancelled().await;
    ledger.record(format!("done {n}"));
    Err(JobError::new("cancelled"))
}

async fn wait_for(ledger: &Ledger, count: usize) {
    if tokio::time::timeout(HANG_GUARD, ledger.wait_for(count)).await.is_err() {
        panic!("waited {HANG_GUARD:?} for {count} entries; the ledger holds {:?}", ledger.entries());
    }
}

/// Waits until `set` holds `count` jobs (fetches and put-backs give no signal to await).
async fn until_count(t: &TestBackend, set: JobSet, count: usize) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let now = t.backend().count(&set).await.unwrap();
        if now == count {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the {set} holds {now} jobs, not {count}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker at concurrency 1 with `fetch_ahead(1)`, started on the two jobs
/// queued for `ledger`: one of them has started and the other is held.
async fn one_runs_one_held(t: &TestBackend, ledger: &str, lease: Duration) -> OneHeld {
    let worker = t
        .worker()
        .queue("ahead", 1)
        .concurrency(1)
        .fetch_ahead(1)
        .lease(lease)
        .maintenance_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let id = worker.id().to_string();
    let stop = Stop::start(worker);
    let ledger = Ledger::named(ledger);
    wait_for(&ledger, 1).await;
    until_count(t, JobSet::InFlight, 2).await;
    OneHeld { ledger, stop, id }
}

struct OneHeld {
    ledger: Ledger,
    stop: Stop,
    /// The worker's id.
    id: String,
}

/// A worker running on a task of its own until stopped.
struct Stop {
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<Result<WorkerReport, WorkerError>>,
}

impl Stop {
    fn start(worker: Worker) -> Stop {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        Stop { stop, running: tokio::spawn(async move { worker.run_until(stopped).await }) }
    }

    /// Stops the worker and returns its report.
    async fn await_report(self) -> WorkerReport {
        let _ = self.stop.send(());
        tokio::time::timeout(HANG_GUARD, self.running).await.expect("the worker stops").unwrap().unwrap()
    }
}

fn peak(entries: &[String]) -> i32 {
    let (mut running, mut peak) = (0, 0);
    for entry in entries {
        running += if entry.starts_with("start") { 1 } else { -1 };
        peak = peak.max(running);
    }
    peak
}

async fn fetch_ahead_leases_more_than_it_runs_and_runs_no_more_than_the_concurrency(t: &TestBackend) {
    let client = t.client();
    let (name, gate) = (t.name("ahead-cap"), t.name("ahead-cap-gate"));
    for n in 0..8 {
        AtGate::perform_later(&client, name.clone(), gate.clone(), n).await.unwrap();
    }
    let stop = Stop::start(t.worker().queue("ahead", 1).concurrency(3).fetch_ahead(2).build().unwrap());
    let ledger = Ledger::named(&name);
    wait_for(&ledger, 3).await;
    // Three run (held at the gate) and two more are leased ahead; none of those starts.
    until_count(t, JobSet::InFlight, 5).await;
    assert_eq!(t.backend().count(&JobSet::Queue("ahead".into())).await.unwrap(), 3);
    assert_eq!(ledger.entries().len(), 3, "a held job started past the concurrency: {:?}", ledger.entries());

    Gate::named(&gate).open();
    wait_for(&ledger, 16).await;
    let report = stop.await_report().await;
    assert_eq!((report.succeeded, report.put_back), (8, 0));
    let entries = ledger.entries();
    assert_eq!(peak(&entries), 3, "{entries:#?}");
    let mut done: Vec<&str> = entries.iter().filter_map(|e| e.strip_prefix("done ")).collect();
    done.sort_unstable();
    assert_eq!(done, ["0", "1", "2", "3", "4", "5", "6", "7"], "each job ran once");
}

// A job held for a slot longer than its lease must not be rescued by another
// worker (and run twice): its lease is extended like a running job's.
async fn held_jobs_keep_their_leases_until_they_run(t: &TestBackend) {
    let client = t.client();
    let (name, gate) = (t.name("ahead-lease"), t.name("ahead-lease-gate"));
    AtGate::perform_later(&client, name.clone(), gate.clone(), 0).await.unwrap();
    AtGate::perform_later(&client, name.clone(), gate.clone(), 1).await.unwrap();
    let lease = Duration::from_millis(600);
    let OneHeld { ledger, stop, .. } = one_runs_one_held(t, &name, lease).await;
    // One job runs at its gate and the other is held, for several leases: another
    // worker looking for expired leases the whole time finds none.
    let rescuer = WorkerId::generate();
    let watched = tokio::time::Instant::now();
    while watched.elapsed() < lease * 4 {
        let taken = t.backend().rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap();
        assert!(taken.is_empty(), "a lease expired: {:?}", ledger.entries());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Gate::named(&gate).open();
    wait_for(&ledger, 4).await;
    let report = stop.await_report().await;
    assert_eq!((report.succeeded, report.rescued, report.stale), (2, 0, 0), "{report:?}");
    let entries = ledger.entries();
    let first = entries[0].strip_prefix("start ").unwrap().to_owned();
    let second = if first == "0" { "1" } else { "0" };
    assert_eq!(
        entries,
        [format!("start {first}"), format!("done {first}"), format!("start {second}"), format!("done {second}")]
    );
}

// "A job not yet started does not run" holds for a held job too: its
// cancellation is looked up at the heartbeats with the running jobs'.
async fn a_job_cancelled_while_held_never_runs(t: &TestBackend) {
    let client = t.client();
    let name = t.name("ahead-cancel");
    let jids = [
        UntilCancelled::perform_later(&client, name.clone(), 0).await.unwrap(),
        UntilCancelled::perform_later(&client, name.clone(), 1).await.unwrap(),
    ];
    let OneHeld { ledger, stop, .. } = one_runs_one_held(t, &name, Duration::from_millis(300)).await;
    let first: usize = ledger.entries()[0].strip_prefix("start ").unwrap().parse().unwrap();
    // The held job first: the heartbeat that stops the running one has seen both requests.
    client.cancel(&jids[1 - first]).await.unwrap();
    client.cancel(&jids[first]).await.unwrap();
    wait_for(&ledger, 2).await;
    until_count(t, JobSet::InFlight, 0).await;
    let report = stop.await_report().await;
    assert_eq!((report.cancelled, report.succeeded, report.retried), (2, 0, 0), "{report:?}");
    assert_eq!(ledger.entries(), [format!("start {first}"), format!("done {first}")], "the held job never started");
}

// Redis only: a held job's lease is taken over by hand, as happens when its
// worker stalls past the lease; the worker must drop the job, not run it
// beside the worker that now has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_job_whose_lease_was_taken_over_is_dropped() {
    let t = TestBackend::redis().await;
    let server = t.server().unwrap();
    let client = t.client();
    let (name, gate) = ("ahead-lost".to_owned(), "ahead-lost-gate".to_owned());
    AtGate::perform_later(&client, name.clone(), gate.clone(), 0).await.unwrap();
    AtGate::perform_later(&client, name.clone(), gate.clone(), 1).await.unwrap();
    let OneHeld { ledger, stop, id } = one_runs_one_held(&t, &name, Duration::from_millis(300)).await;
    let first = ledger.entries()[0].clone();

    // Expire every lease and take the jobs over (again if a heartbeat extended one in between).
    let rescuer = WorkerId::generate();
    let mut taken = Vec::new();
    while taken.len() < 2 {
        let leases = server.command(&["ZRANGE", "{jobs}:lease-deadlines", "0", "-1"]);
        for token in leases.lines().map(str::trim).filter(|token| token.starts_with(&format!("{id}/"))) {
            server.command(&["ZADD", "{jobs}:lease-deadlines", "0", token]);
        }
        taken.extend(t.backend().rescue(&rescuer, Duration::from_secs(60), 10).await.unwrap());
    }
    // A heartbeat that begins after the takeover finds both leases lost, and the
    // next one begins after it marked them: wait for two heartbeats.
    let heartbeat = || server.command(&["ZSCORE", "{jobs}:workers", &id]);
    for _ in 0..2 {
        let before = heartbeat();
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while heartbeat() == before {
            assert!(tokio::time::Instant::now() < deadline, "the worker stopped heartbeating");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A third job, fetched only once the held one is out of the way, shows whether it ran.
    Gate::named(&gate).open();
    AtGate::perform_later(&client, name.clone(), gate.clone(), 2).await.unwrap();
    wait_for(&ledger, 4).await;
    let report = stop.await_report().await;
    let done = first.replace("start", "done");
    assert_eq!(ledger.entries(), [first, done, "start 2".to_owned(), "done 2".to_owned()], "the held job did not run");
    assert_eq!((report.succeeded, report.stale), (1, 1), "{report:?}");
}

/// `jobs` jobs queued at one gate, and a worker at concurrency 1 with
/// `fetch_ahead(2)` whose grace period outlasts any test.
async fn gated_jobs_and_a_worker_ahead_by_two(t: &TestBackend, name: &str, gate: &str, jobs: u64) -> Worker {
    for n in 0..jobs {
        AtGate::perform_later(&t.client(), name.to_owned(), gate.to_owned(), n).await.unwrap();
    }
    t.worker().queue("ahead", 1).concurrency(1).fetch_ahead(2).grace_period(HANG_GUARD * 2).build().unwrap()
}

async fn shutdown_puts_held_jobs_back_at_once(t: &TestBackend) {
    let (name, gate) = (t.name("ahead-shutdown"), t.name("ahead-shutdown-gate"));
    let worker = gated_jobs_and_a_worker_ahead_by_two(t, &name, &gate, 3).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run_until(stopped).await });
    let ledger = Ledger::named(&name);
    wait_for(&ledger, 1).await;
    until_count(t, JobSet::InFlight, 3).await;

    let _ = stop.send(());
    // While the first job still runs (its gate is shut, its grace period long), the held jobs are back.
    until_count(t, JobSet::Queue("ahead".into()), 2).await;
    let entries = ledger.entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let first: u64 = entries[0].strip_prefix("start ").unwrap().parse().unwrap();
    Gate::named(&gate).open();
    let report = tokio::time::timeout(HANG_GUARD, running).await.expect("the worker stops").unwrap().unwrap();
    assert_eq!((report.succeeded, report.put_back, report.retried), (1, 2, 0));
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
    let queued = t.backend().list(&JobSet::Queue("ahead".into()), 0, 10).await.unwrap();
    let order: Vec<u64> = queued
        .iter()
        .map(|job| {
            let envelope = Envelope::from_json(&job.payload).unwrap();
            assert_eq!(envelope.attempt, 0, "a put-back is not an attempt");
            envelope.args["n"].as_u64().unwrap()
        })
        .collect();
    let held: Vec<u64> = (0..3).filter(|n| *n != first).collect();
    assert_eq!(order, held, "back at the head of the queue, in the order they were fetched");
}

/// Once shutdown began, a slot that frees up starts no held job: the job
/// that ends while the idle fetcher winds down (up to 1.5 s) leaves its held
/// neighbour to be put back, not started as the worker is told to stop.
/// The running job's gate opens in the shutdown future itself, when the
/// worker sees it; on one thread, the worker then closes before that job
/// can end (a test that opened the gate after signalling raced the worker).
async fn no_held_job_starts_once_shutdown_began(t: &TestBackend) {
    let (name, gate) = (t.name("ahead-no-start"), t.name("ahead-no-start-gate"));
    // One slot running, one job held, one permit free: the fetcher idles in its wait.
    let worker = gated_jobs_and_a_worker_ahead_by_two(t, &name, &gate, 2).await;
    let ledger = Ledger::named(&name);
    let shutdown = async {
        wait_for(&ledger, 1).await;
        until_count(t, JobSet::InFlight, 2).await;
        Gate::named(&gate).open();
    };
    let report = tokio::time::timeout(HANG_GUARD, worker.run_until(shutdown)).await.expect("the worker stops").unwrap();
    assert_eq!((report.succeeded, report.put_back), (1, 1));
    assert_eq!(ledger.entries().len(), 2, "only the first job ran: {:?}", ledger.entries());
    assert_eq!(t.backend().count(&JobSet::Queue("ahead".into())).await.unwrap(), 1);
}

/// On one thread (`#[tokio::test]`), so that the shutdown is seen before the job can end.
mod one_thread {
    #[tokio::test]
    async fn memory_no_held_job_starts_once_shutdown_began() {
        super::no_held_job_starts_once_shutdown_began(&jobs_tests::TestBackend::memory()).await;
    }

    #[tokio::test]
    async fn redis_no_held_job_starts_once_shutdown_began() {
        super::no_held_job_starts_once_shutdown_began(&jobs_tests::TestBackend::redis().await).await;
    }
}
