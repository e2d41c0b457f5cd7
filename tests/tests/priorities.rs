//! Queues and priorities: strict order, weights without starvation, per-queue caps.

use std::time::Duration;

use jobs_core::job;
use jobs_tests::{Gate, Ledger, TestBackend};

jobs_tests::conformance!(
    strict_priority_runs_every_critical_job_before_any_bulk_one,
    weighted_queues_favour_the_heavy_one_without_starving_the_light_one,
    per_queue_cap_holds_while_other_queues_keep_running,
    drain_runs_every_job_of_a_capped_queue,
    an_idle_worker_with_a_full_capped_queue_does_not_poll,
    a_worker_at_its_cap_with_jobs_waiting_there_does_not_poll,
);

#[job(queue = "critical")]
async fn urgent(ledger: String, n: u32) {
    Ledger::named(&ledger).record(format!("critical {n}"));
}

#[job(queue = "bulk")]
async fn promo(ledger: String, n: u32) {
    Ledger::named(&ledger).record(format!("bulk {n}"));
}

#[job(queue = "bulk")]
async fn slow_promo(ledger: String, gate: String) {
    Ledger::named(&ledger).record("bulk started");
    Gate::named(&gate).wait().await;
    Ledger::named(&ledger).record("bulk done");
}

async fn strict_priority_runs_every_critical_job_before_any_bulk_one(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("strict");
    for n in 0..20 {
        Promo::perform_later(&client, ledger.clone(), n).await.unwrap();
    }
    for n in 0..5 {
        Urgent::perform_later(&client, ledger.clone(), n).await.unwrap();
    }
    let worker = t.worker().queue("critical", 1).queue("bulk", 1).strict().concurrency(1).build().unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 25);
    let ran = Ledger::named(&ledger).entries();
    assert!(ran[..5].iter().all(|e| e.starts_with("critical")), "{ran:?}");
    assert!(ran[5..].iter().all(|e| e.starts_with("bulk")), "{ran:?}");
}

async fn weighted_queues_favour_the_heavy_one_without_starving_the_light_one(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("weighted");
    for n in 0..300 {
        Promo::perform_later(&client, ledger.clone(), n).await.unwrap();
        Urgent::perform_later(&client, ledger.clone(), n).await.unwrap();
    }
    let worker = t.worker().queue("critical", 10).queue("bulk", 1).concurrency(1).fetch_batch(1).build().unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 600);
    let ran = Ledger::named(&ledger).entries();
    let critical_first_20 = ran[..20].iter().filter(|e| e.starts_with("critical")).count();
    assert!(critical_first_20 >= 10, "weight 10:1 should favour critical: {:?}", &ran[..20]);
    let last_critical = ran.iter().rposition(|e| e.starts_with("critical")).unwrap();
    assert!(ran[..last_critical].iter().any(|e| e.starts_with("bulk")), "bulk starved until critical was empty");
}

async fn per_queue_cap_holds_while_other_queues_keep_running(t: &TestBackend) {
    let client = t.client();
    let (name, gate) = (t.name("capped"), t.name("capped_gate"));
    let ledger = Ledger::named(&name);
    for _ in 0..6 {
        SlowPromo::perform_later(&client, name.clone(), gate.clone()).await.unwrap();
    }
    let worker =
        t.worker().queue("critical", 1).queue("bulk", 1).queue_limit("bulk", 2).concurrency(10).build().unwrap();
    let stop = Gate::named(&t.name("capped_stop"));
    let run = tokio::spawn({
        let worker = worker.clone();
        let stop = stop.clone();
        async move { worker.run_until(stop.wait()).await }
    });
    ledger.wait_for(2).await;
    // The worker has free slots: a critical job still runs while bulk is at its cap.
    Urgent::perform_later(&client, name.clone(), 1).await.unwrap();
    ledger.wait_for(3).await;
    assert_eq!(ledger.entries(), ["bulk started", "bulk started", "critical 1"]);
    Gate::named(&gate).open();
    ledger.wait_for(3 + 10).await;
    stop.open();
    let report = tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap().unwrap();
    assert_eq!(report.succeeded, 7);
    // Replaying the ledger: never more than two bulk jobs between start and done.
    let (mut running, mut peak) = (0i32, 0i32);
    for entry in ledger.entries() {
        match entry.as_str() {
            "bulk started" => running += 1,
            "bulk done" => running -= 1,
            _ => {}
        }
        peak = peak.max(running);
    }
    assert_eq!(peak, 2);
}

/// `drain()` ends only when nothing is left: a job of a capped queue frees
/// its queue's room before it counts itself off, so a drain that sees no job
/// running also sees the queue's room, fetches from it, and does not stop
/// with its jobs still queued. (It did, at random, when the room came back
/// after the count-off: 7 to 35 of these 35 jobs ran.)
async fn drain_runs_every_job_of_a_capped_queue(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("capped_drain");
    let worker =
        t.worker().queue("critical", 1).queue("bulk", 1).queue_limit("bulk", 1).concurrency(10).build().unwrap();
    // Five rounds: the count-off and the room came back in either order by chance.
    for round in 1..=5 {
        for n in 0..30 {
            Promo::perform_later(&client, ledger.clone(), n).await.unwrap();
        }
        for n in 0..5 {
            Urgent::perform_later(&client, ledger.clone(), n).await.unwrap();
        }
        assert_eq!(worker.drain().await.unwrap().succeeded, 35, "round {round}");
        assert_eq!(t.backend().count(&jobs_core::JobSet::Queue("bulk".into())).await.unwrap(), 0);
    }
    assert_eq!(Ledger::named(&ledger).entries().len(), 5 * 35);
}

#[job(queue = "limited")]
async fn keeps_company(name: String) {
    Ledger::named(&name).record("in");
    Gate::named(&name).wait().await;
    Ledger::named(&name).record("out");
}

/// A queue's cap holds while several fetches are in flight at once (one job
/// per fetch here): each reserves its room in the capped queue, so two
/// fetches never both fill the same room. (Tokio's clock is paused: it moves
/// only when every task waits, so the second below lets every fetch and
/// start that could happen, happen.)
#[tokio::test(start_paused = true)]
async fn a_queue_limit_holds_with_several_fetches_in_flight() {
    let t = TestBackend::memory();
    let name = t.name("cap_in_flight");
    for _ in 0..12 {
        KeepsCompany::perform_later(&t.client(), name.clone()).await.unwrap();
    }
    let worker =
        t.worker().queue("limited", 1).concurrency(10).fetch_batch(1).queue_limit("limited", 3).build().unwrap();
    let ledger = Ledger::named(&name);
    let report = worker
        .run_until(async {
            ledger.wait_for(3).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Gate::named(&name).open();
            ledger.wait_for(24).await;
        })
        .await
        .unwrap();
    let (mut running, mut most) = (0, 0);
    for entry in ledger.entries() {
        running = if entry == "in" { running + 1 } else { running - 1 };
        most = most.max(running);
    }
    assert_eq!(most, 3, "at most 3 at once, and the cap was reached");
    assert_eq!(report.succeeded, 12);
}

/// How many times `worker`'s backend fetched during a second of `ledger`'s
/// first job waiting on its gate, before the gate opens and `ledger` reaches
/// `done` entries.
async fn fetches_in_an_idle_second(
    worker: jobs_core::Worker,
    spy: &jobs_tests::Spy,
    name: &str,
    done: usize,
) -> (jobs_core::WorkerReport, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let ledger = Ledger::named(name);
    let idle_fetches = std::sync::atomic::AtomicU64::new(0);
    let report = worker
        .run_until(async {
            ledger.wait_for(1).await;
            let before = spy.fetches.load(Relaxed);
            // "Nothing happens" has no signal: a second of idling, then the count.
            tokio::time::sleep(Duration::from_secs(1)).await;
            idle_fetches.store(spy.fetches.load(Relaxed) - before, Relaxed);
            Gate::named(name).open();
            ledger.wait_for(done).await;
        })
        .await
        .unwrap();
    (report, idle_fetches.load(Relaxed))
}

/// An idle worker whose capped queues are full or empty waits for a push or
/// a freed slot; it does not poll. (It reserved room for a wait that fetches
/// nothing, gave it back, and the give-back woke its own wait: 144,539
/// fetches in 2 s. The idle wait is 0.5-1.5 s, so a second of idling allows
/// a handful.)
async fn an_idle_worker_with_a_full_capped_queue_does_not_poll(t: &TestBackend) {
    let spy = std::sync::Arc::new(jobs_tests::Spy::new(t.shared()));
    let name = t.name("idle_capped");
    KeepsCompany::perform_later(&jobs_core::Client::from_arc(spy.clone()), name.clone()).await.unwrap();
    let worker = jobs_core::Worker::builder_shared(spy.clone())
        .queue("limited", 1)
        .queue("bulk", 1)
        .queue_limit("limited", 1)
        .queue_limit("bulk", 1)
        .concurrency(4)
        .build()
        .unwrap();
    let (report, fetches) = fetches_in_an_idle_second(worker, &spy, &name, 2).await;
    assert_eq!(report.succeeded, 1);
    assert!(fetches <= 10, "an idle worker fetched {fetches} times in a second");
}

/// With jobs waiting in the capped queue, the worker's wait must not end at
/// once on their account: the wake-up token put back for them (Redis), or
/// the queue's length (memory), once ended each wait at once: thousands of
/// round trips a second while the capped job ran.
async fn a_worker_at_its_cap_with_jobs_waiting_there_does_not_poll(t: &TestBackend) {
    let spy = std::sync::Arc::new(jobs_tests::Spy::new(t.shared()));
    let name = t.name("capped_with_more");
    for _ in 0..3 {
        KeepsCompany::perform_later(&t.client(), name.clone()).await.unwrap();
    }
    let worker = jobs_core::Worker::builder_shared(spy.clone())
        .queue("limited", 1)
        .queue("other", 1)
        .queue_limit("limited", 1)
        .concurrency(4)
        .build()
        .unwrap();
    let (report, fetches) = fetches_in_an_idle_second(worker, &spy, &name, 6).await;
    assert_eq!(report.succeeded, 3);
    assert!(fetches <= 10, "a worker at its cap fetched {fetches} times in a second");
}
