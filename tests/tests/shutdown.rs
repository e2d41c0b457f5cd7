//! Graceful shutdown: running jobs finish within the grace period; what is
//! still running after it goes back to its queue, not to the retry set.

use std::time::Duration;

use jobs_core::{Envelope, JobSet, job};
use jobs_tests::{Gate, Ledger, TestBackend};

jobs_tests::conformance!(
    graceful_shutdown_waits_for_running_jobs,
    jobs_still_running_after_the_grace_period_go_back_to_their_queue,
    no_job_is_fetched_after_shutdown_begins,
    a_dropped_run_until_cancels_its_jobs,
    a_drain_stopped_by_its_signal_lets_jobs_finish_and_puts_back_the_rest,
    a_drain_rescues_the_jobs_of_a_killed_worker_as_an_attempt,
    settings_of_for_ever_run_jobs_without_overflowing_the_clock,
    end_grace_ends_a_shutdown_s_grace_period_at_once,
);

#[job]
async fn takes_a_while(ledger: String) {
    Ledger::named(&ledger).record("started");
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ledger::named(&ledger).record("finished");
}

#[job]
async fn never_ends(ledger: String) {
    Ledger::named(&ledger).record("started");
    std::future::pending::<()>().await;
}

#[job]
async fn a_little_longer_than_the_grace(ledger: String) {
    Ledger::named(&ledger).record("started");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Ledger::named(&ledger).record("finished");
}

/// The grace period counts from the shutdown signal. A free slot keeps the
/// fetcher in its idle wait (0.5-1.5 s), which the shutdown lets end: were
/// the grace counted from there, this job, 0.2 s longer than the grace,
/// would always finish. (Tokio's clock is paused: it moves only when every
/// task waits, so the test takes no real time and its outcome is fixed.)
#[tokio::test(start_paused = true)]
async fn the_grace_period_counts_from_the_shutdown_signal() {
    let t = TestBackend::memory();
    let name = t.name("grace_from_signal");
    ALittleLongerThanTheGrace::perform_later(&t.client(), name.clone()).await.unwrap();
    let worker = t.worker().concurrency(2).grace_period(Duration::from_secs(1)).build().unwrap();
    let ledger = Ledger::named(&name);
    let report = worker.run_until(ledger.wait_for(1)).await.unwrap();
    assert_eq!(ledger.entries(), ["started"], "the job was stopped at the end of the grace period");
    assert_eq!((report.succeeded, report.put_back), (0, 1));
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 1);
}

async fn graceful_shutdown_waits_for_running_jobs(t: &TestBackend) {
    let client = t.client();
    let name = t.name("graceful");
    TakesAWhile::perform_later(&client, name.clone()).await.unwrap();
    let worker = t.worker().grace_period(Duration::from_secs(30)).build().unwrap();
    let ledger = Ledger::named(&name);
    // Shutdown is asked for as soon as the job has started.
    let report = worker.run_until(ledger.wait_for(1)).await.unwrap();
    assert_eq!(ledger.entries(), ["started", "finished"]);
    assert_eq!((report.succeeded, report.put_back), (1, 0));
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
}

async fn jobs_still_running_after_the_grace_period_go_back_to_their_queue(t: &TestBackend) {
    let client = t.client();
    let name = t.name("grace_over");
    let jid = NeverEnds::perform_later(&client, name.clone()).await.unwrap();
    let worker = t.worker().grace_period(Duration::from_millis(100)).build().unwrap();
    let report = worker.run_until(Ledger::named(&name).wait_for(1)).await.unwrap();
    assert_eq!((report.succeeded, report.put_back, report.retried), (0, 1, 0));
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
    let queued = t.backend().list(&JobSet::Queue("default".into()), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    let envelope = Envelope::from_json(&queued[0].payload).unwrap();
    assert_eq!((envelope.jid, envelope.attempt), (jid, 0), "a shutdown is not a failed attempt");
}

async fn no_job_is_fetched_after_shutdown_begins(t: &TestBackend) {
    let client = t.client();
    for _ in 0..5 {
        TakesAWhile::perform_later(&client, t.name("one_at_a_time")).await.unwrap();
    }
    let worker = t.worker().concurrency(3).build().unwrap();
    // Shutdown begins with three jobs running; as they finish, slots free up
    // while two jobs still wait: none of them may be fetched (and put back).
    let report = worker.run_until(Ledger::named(&t.name("one_at_a_time")).wait_for(3)).await.unwrap();
    assert_eq!((report.succeeded, report.put_back), (3, 0));
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 2);
}

#[job]
async fn waits_at_its_gate(ledger: String) {
    /// Records how the job's future ended: dropped, finished or not.
    struct Dropped(String);
    impl Drop for Dropped {
        fn drop(&mut self) {
            Ledger::named(&self.0).record("dropped");
        }
    }
    let _dropped = Dropped(ledger.clone());
    Ledger::named(&ledger).record("started");
    Gate::named(&ledger).wait().await;
    Ledger::named(&ledger).record("finished");
}

/// Dropping `run_until` instead of signalling shutdown cancels the jobs it
/// runs, as its documentation says: none goes on running unwatched, with
/// its lease no longer extended (another worker would run it again).
async fn a_dropped_run_until_cancels_its_jobs(t: &TestBackend) {
    let name = t.name("dropped_run_until");
    WaitsAtItsGate::perform_later(&t.client(), name.clone()).await.unwrap();
    let worker = t.worker().build().unwrap();
    let ledger = Ledger::named(&name);
    tokio::select! {
        ended = worker.run_until(std::future::pending::<()>()) => panic!("run_until ended: {ended:?}"),
        () = ledger.wait_for(1) => {}
    }
    // `run_until` is dropped: the job, still at its gate, is cancelled.
    tokio::time::timeout(Duration::from_secs(10), ledger.wait_for(2)).await.expect("the job was never cancelled");
    assert_eq!(ledger.entries(), ["started", "dropped"]);
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 1, "leased until its lease expires");
}

/// A `run_until` dropped while idle starts nothing afterwards: its fetcher,
/// still in its wait, sets aside what it fetches (left to its lease) instead
/// of starting it with no heartbeat. (Tokio's clock is paused: the sleeps
/// below let every task that could run, run.)
#[tokio::test(start_paused = true)]
async fn a_dropped_run_until_starts_nothing_after() {
    let t = TestBackend::memory();
    let name = t.name("dropped_idle");
    let worker = t.worker().build().unwrap();
    tokio::select! {
        ended = worker.run_until(std::future::pending::<()>()) => panic!("run_until ended: {ended:?}"),
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    WaitsAtItsGate::perform_later(&t.client(), name.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(Ledger::named(&name).entries().is_empty(), "a job started after run_until was dropped");
}

/// `drain_until` (the CLI's `work --drain`, which SIGTERM ends) stops as
/// `run_until` does: nothing new is fetched, a job that finishes within the
/// grace period counts, one that does not goes back to its queue unharmed.
async fn a_drain_stopped_by_its_signal_lets_jobs_finish_and_puts_back_the_rest(t: &TestBackend) {
    let client = t.client();
    let (quick, stuck) = (t.name("drain_stop_quick"), t.name("drain_stop_stuck"));
    TakesAWhile::perform_later(&client, quick.clone()).await.unwrap();
    let jid = NeverEnds::perform_later(&client, stuck.clone()).await.unwrap();
    for _ in 0..3 {
        TakesAWhile::perform_later(&client, t.name("drain_stop_waiting")).await.unwrap();
    }
    let worker = t.worker().concurrency(2).grace_period(Duration::from_secs(2)).build().unwrap();
    let both_started = async {
        Ledger::named(&quick).wait_for(1).await;
        Ledger::named(&stuck).wait_for(1).await;
    };
    let report = worker.drain_until(both_started).await.unwrap();
    assert_eq!(Ledger::named(&quick).entries(), ["started", "finished"], "the grace period let it finish");
    assert_eq!((report.succeeded, report.put_back, report.retried), (1, 1, 0), "{report}");
    assert!(Ledger::named(&t.name("drain_stop_waiting")).entries().is_empty(), "nothing new was fetched");
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
    let queued = t.backend().list(&JobSet::Queue("default".into()), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 4, "the stuck job is back with the three that never started");
    let first = Envelope::from_json(&queued[0].payload).unwrap();
    assert_eq!((first.jid, first.attempt), (jid, 0), "back at the head, not a failed attempt");
}

/// `Worker::end_grace` (the CLI's second Ctrl-C) ends an hour-long grace period
/// at once, for `run_until` and `drain_until` alike: the job that would have
/// run on is put back whole, and the finished one still counts.
async fn end_grace_ends_a_shutdown_s_grace_period_at_once(t: &TestBackend) {
    let client = t.client();
    let (quick, stuck) = (t.name("end_grace_quick"), t.name("end_grace_stuck"));
    let jid = NeverEnds::perform_later(&client, stuck.clone()).await.unwrap();
    let worker = t.worker().concurrency(2).grace_period(Duration::from_secs(3600)).build().unwrap();
    let ledger = Ledger::named(&stuck);
    for drain in [false, true] {
        let started = || ledger.wait_for(if drain { 2 } else { 1 });
        let hurry = async {
            started().await;
            // Let the worker begin its shutdown first, most of the time: either order must work.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            worker.end_grace();
        };
        let run = async { if drain { worker.drain_until(started()).await } else { worker.run_until(started()).await } };
        // A bound for a broken build, not a synchronization: the run ends at once or never.
        let (report, ()) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, hurry) })
            .await
            .expect("end_grace did not end the grace period");
        let report = report.unwrap();
        assert_eq!((report.succeeded, report.put_back, report.retried), (0, 1, 0), "drain {drain}: {report}");
        assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
        let queued = t.backend().list(&JobSet::Queue("default".into()), 0, 10).await.unwrap();
        assert_eq!(queued.len(), 1, "drain {drain}");
        let envelope = Envelope::from_json(&queued[0].payload).unwrap();
        assert_eq!((&envelope.jid, envelope.attempt), (&jid, 0), "drain {drain}: back whole, not a failed attempt");
    }
    // The next run has its own grace period: a quick job finishes in it.
    let all = jobs_core::admin::Selection::All;
    assert_eq!(jobs_core::admin::remove(t.backend(), &JobSet::Queue("default".into()), &all).await.unwrap(), 1);
    TakesAWhile::perform_later(&client, quick.clone()).await.unwrap();
    let report = worker.run_until(Ledger::named(&quick).wait_for(1)).await.unwrap();
    assert_eq!(Ledger::named(&quick).entries(), ["started", "finished"], "end_grace lasted beyond its run");
    assert_eq!((report.succeeded, report.put_back), (1, 0));
}

/// A job leased by a worker that was killed (its lease ran out) is rescued
/// by a drain, as a failed attempt that goes through the retry policy.
async fn a_drain_rescues_the_jobs_of_a_killed_worker_as_an_attempt(t: &TestBackend) {
    let jid = TakesAWhile::perform_later(&t.client(), t.name("drain_rescue")).await.unwrap();
    let takes = [jobs_core::QueueTake { queue: "default".into(), max: 1 }];
    let killed = jobs_core::WorkerId::generate();
    let request = jobs_core::FetchRequest { queues: &takes, max: 1, worker: &killed, lease: Duration::from_millis(1) };
    assert_eq!(t.backend().fetch(request).await.unwrap().len(), 1, "the killed worker held the job");
    // Wait (bounded) until the 1 ms lease has run out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while t
        .backend()
        .list(&JobSet::InFlight, 0, 1)
        .await
        .unwrap()
        .first()
        .is_some_and(|job| job.at > jobs_core::now_millis())
    {
        assert!(tokio::time::Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let worker = t.worker().build().unwrap();
    let report = worker.drain().await.unwrap();
    assert_eq!((report.rescued, report.retried), (1, 1), "{report}");
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
    let retry = t.backend().list(&JobSet::Retry, 0, 10).await.unwrap();
    let envelope = Envelope::from_json(&retry[0].payload).unwrap();
    assert_eq!((envelope.jid, envelope.attempt), (jid, 1));
    assert!(envelope.error.unwrap_or_default().contains("lease expired"));
}

/// `Duration::MAX` for the lease, the grace period, the maintenance interval
/// and the retry delays ("for ever"): jobs run and shutdown works; a lease of
/// for ever is not read as expired (Redis's deadline used to overflow to a
/// negative number, so any worker rescued the job at once).
async fn settings_of_for_ever_run_jobs_without_overflowing_the_clock(t: &TestBackend) {
    let name = t.name("for_ever");
    TakesAWhile::perform_later(&t.client(), name.clone()).await.unwrap();
    let policy = jobs_core::RetryPolicy { retries: 1, base: Duration::MAX, max_delay: Duration::MAX };
    let worker = t
        .worker()
        .lease(Duration::MAX)
        .grace_period(Duration::MAX)
        .maintenance_interval(Duration::MAX)
        .retry_policy(policy)
        .build()
        .unwrap();
    let ledger = Ledger::named(&name);
    let report = worker.run_until(ledger.wait_for(1)).await.unwrap();
    assert_eq!((report.succeeded, report.put_back), (1, 0), "{report}");

    TakesAWhile::perform_later(&t.client(), name.clone()).await.unwrap();
    let takes = [jobs_core::QueueTake { queue: "default".into(), max: 1 }];
    let holder = jobs_core::WorkerId::generate();
    let request = jobs_core::FetchRequest { queues: &takes, max: 1, worker: &holder, lease: Duration::MAX };
    assert_eq!(t.backend().fetch(request).await.unwrap().len(), 1);
    let rescuer = jobs_core::WorkerId::generate();
    assert!(t.backend().rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap().is_empty(), "not expired");
}

/// An idle worker told to stop ends its wait for jobs at once instead of
/// waiting it out (0.5–1.5 s): a deploy's restart, a test's `run_until`,
/// finish sooner. (Tokio's clock is paused: the wait's time is virtual, so
/// the check holds whatever the machine's speed.)
#[tokio::test(start_paused = true)]
async fn an_idle_worker_stops_without_waiting_out_its_wait() {
    let t = TestBackend::memory();
    let worker = t.worker().build().unwrap();
    let asked = std::sync::Mutex::new(None);
    worker
        .run_until(async {
            // Idle by then: the worker's wait for jobs has begun.
            tokio::time::sleep(Duration::from_millis(100)).await;
            *asked.lock().unwrap() = Some(tokio::time::Instant::now());
        })
        .await
        .unwrap();
    let took = asked.lock().unwrap().expect("shutdown asked").elapsed();
    assert!(took < Duration::from_millis(100), "stopped {took:?} after it was asked");
}

/// On Redis the wait is a `BLPOP` on a connection of its own: the worker
/// ends it with `CLIENT UNBLOCK` (and a job pushed meanwhile is not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_on_redis_unblocks_its_wait_to_stop() {
    let t = TestBackend::redis().await;
    let worker = t.worker().build().unwrap();
    let server = t.server().unwrap();
    let blocked = || server.command(&["INFO", "clients"]).contains("blocked_clients:1");
    worker
        .run_until(async {
            while !blocked() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    let stats = server.command(&["INFO", "commandstats"]);
    assert!(stats.contains("cmdstat_client|unblock:calls="), "{stats}");
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
}

/// A drain whose fetch fails waits for its running jobs before it reports
/// the error; its shutdown still ends that wait as it ends any drain (grace,
/// then put back), where it used to wait for the jobs whatever the signal
/// (`work --drain` then ignored SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_fetch_failed_still_stops_on_its_signal() {
    use std::sync::atomic::Ordering::Relaxed;
    let spy = std::sync::Arc::new(jobs_tests::Spy::new(std::sync::Arc::new(jobs_core::MemoryBackend::new())));
    let client = jobs_core::Client::from_arc(spy.clone());
    let (stuck, quick) = ("fetch_failed_stuck".to_owned(), "fetch_failed_quick".to_owned());
    NeverEnds::perform_later(&client, stuck.clone()).await.unwrap();
    TakesAWhile::perform_later(&client, quick.clone()).await.unwrap();
    let worker = jobs_core::Worker::builder_shared(spy.clone())
        .concurrency(2)
        .grace_period(Duration::from_millis(100))
        .build()
        .unwrap();
    let stop = async {
        Ledger::named(&stuck).wait_for(1).await;
        Ledger::named(&quick).wait_for(1).await;
        // Redis goes away: the fetch after the quick job ends fails.
        spy.refuse_fetches.store(true, Relaxed);
        Ledger::named(&quick).wait_for(2).await;
        // The drain's next fetch fails: wait until it has, then signal.
        while spy.fetches.load(Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // The bound only ends a test that would hang: the drain stops in about 0.1 s.
    let report = tokio::time::timeout(Duration::from_secs(60), worker.drain_until(stop))
        .await
        .expect("the drain stopped on its signal")
        .unwrap();
    assert_eq!((report.succeeded, report.put_back), (1, 1), "{report}");
    spy.refuse_fetches.store(false, Relaxed);
    let queued = jobs_core::Backend::count(&*spy, &JobSet::Queue("default".into())).await.unwrap();
    assert_eq!(queued, 1, "the stuck job is back");
}

#[job(queue = "capped")]
async fn naps_capped(ledger: String) {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ledger::named(&ledger).record("napped");
}

/// A capped worker drops its plain wait whenever a slot frees up; each
/// dropped wait takes its connection's id off the list `end_waits`
/// unblocks (it used to stay: one `CLIENT UNBLOCK` per dropped wait at
/// shutdown, and a list that only grew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waits_leave_nothing_for_end_waits_to_unblock() {
    let t = TestBackend::redis().await;
    let ledger = t.name("capped_waits");
    for _ in 0..20 {
        NapsCapped::perform_later(&t.client(), ledger.clone()).await.unwrap();
    }
    let worker =
        t.worker().queue("capped", 1).queue("other", 1).queue_limit("capped", 1).concurrency(4).build().unwrap();
    let server = t.server().unwrap();
    let blocked = || server.command(&["INFO", "clients"]).contains("blocked_clients:1");
    worker
        .run_until(async {
            Ledger::named(&ledger).wait_for(20).await;
            while !blocked() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
    let stats = server.command(&["INFO", "commandstats"]);
    let unblocks = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_client|unblock:calls="))
        .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(unblocks <= 2, "{unblocks} CLIENT UNBLOCK calls to stop one idle worker");
}
