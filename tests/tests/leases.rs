//! Leases: fencing, rescue as an attempt, heartbeats.
//! Lease expiry is a matter of time, so these tests wait for conditions with a bound.

use std::time::Duration;

use jobs_core::{Envelope, FetchRequest, JobSet, QueueTake, RetryPolicy, WorkerId, job};
use jobs_tests::{Ledger, TestBackend};

jobs_tests::conformance!(
    stale_worker_cannot_complete_a_job_another_worker_took_over,
    rescued_job_is_an_attempt_and_goes_through_retry,
    heartbeat_keeps_a_long_job_leased_while_its_worker_lives,
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

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let rescued = loop {
        let found = backend.rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap();
        if !found.is_empty() {
            break found;
        }
        assert!(tokio::time::Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
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
    let client = t.client();
    let name = t.name("rescued");
    let jid = Quick::perform_later(&client, name.clone()).await.unwrap();
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
    assert_eq!((report.rescued, report.retried, report.dead), (1, 1, 0));
    let retry = t.backend().list(&JobSet::Retry, 0, 1).await.unwrap();
    let envelope = Envelope::from_json(&retry[0].payload).unwrap();
    assert_eq!((envelope.jid, envelope.attempt), (jid, 1));
    assert!(envelope.error.unwrap().starts_with("lease expired"));
    assert!(Ledger::named(&name).entries().is_empty(), "it waits for its backoff like any failure");
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
