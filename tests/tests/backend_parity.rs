//! `MemoryBackend` behaves like Redis where a differential probe of the two
//! found them apart: each case runs on both backends with the same answer.

use std::time::Duration;

use jobs_core::admin::Selection;
use jobs_core::{Backend, FetchRequest, JobId, JobSet, OutcomeRecord, PushJob, QueueTake, WorkerId};
use jobs_tests::TestBackend;

jobs_tests::conformance!(
    a_scheduled_job_goes_to_the_queue_its_payload_names,
    a_final_outcome_this_version_cannot_read_ends_a_wait,
    a_job_due_at_the_end_of_time_is_promoted_by_a_promotion_until_then,
    a_dead_payload_with_a_repeated_or_odd_queue_is_requeued_as_redis_reads_it,
    a_fetch_with_no_limit_to_speak_of_takes_what_waits,
    a_wait_that_fetches_nothing_leaves_the_wake_up_for_the_next,
);

fn scheduled(jid: &str, queue: &str, payload: &str, run_at: u64) -> PushJob {
    PushJob { jid: JobId::from(jid), queue: queue.into(), payload: payload.into(), run_at: Some(run_at), unique: None }
}

async fn payloads(backend: &dyn Backend, queue: &str) -> Vec<String> {
    let listed = backend.list(&JobSet::Queue(queue.into()), 0, 100).await.unwrap();
    listed.into_iter().map(|job| job.payload).collect()
}

/// The payload is the record (PROTOCOL.md): when due, a job goes to the queue
/// it names, `default` when it names none or cannot be read, whatever queue
/// the push gave. So do retried and deferred jobs.
async fn a_scheduled_job_goes_to_the_queue_its_payload_names(t: &TestBackend) {
    let backend = t.backend();
    let later = jobs_core::now_millis() + 3_600_000;
    let (named, unnamed, unreadable) = (r#"{"jid":"1","queue":"b"}"#, r#"{"jid":"2"}"#, "not json");
    let pushed = backend
        .push(vec![
            scheduled("1", "a", named, later),
            scheduled("2", "a", unnamed, later + 1),
            scheduled("3", "a", unreadable, later + 2),
        ])
        .await
        .unwrap();
    assert!(pushed.duplicates.is_empty());
    assert_eq!(backend.promote_due(Some(later + 10)).await.unwrap(), 3);
    assert_eq!(payloads(backend, "b").await, [named]);
    assert_eq!(payloads(backend, "default").await, [unnamed, unreadable]);
    assert!(payloads(backend, "a").await.is_empty());

    // A job fetched from `b` and retried with a payload that names `c` comes back on `c`.
    let worker = WorkerId::generate();
    let takes = vec![QueueTake { queue: "b".into(), max: 1 }];
    let request = FetchRequest { queues: &takes, max: 1, worker: &worker, lease: Duration::from_secs(30) };
    let fetched = backend.fetch(request).await.unwrap();
    let moved = r#"{"jid":"1","queue":"c"}"#;
    assert!(backend.retry(&fetched[0].lease, moved.into(), 0).await.unwrap());
    assert_eq!(backend.promote_due(None).await.unwrap(), 1);
    assert_eq!(payloads(backend, "c").await, [moved]);
}

/// An outcome written by a newer version, which this one cannot read, ends a
/// wait when its writer called it final (the wait does not run to its timeout).
async fn a_final_outcome_this_version_cannot_read_ends_a_wait(t: &TestBackend) {
    let backend = t.backend();
    let jid = JobId::from("newer-outcome");
    let json = r#"{"state":"archived","at":1}"#;
    let record = OutcomeRecord { jid: jid.clone(), outcome: json.into(), is_final: true, ttl: Duration::from_secs(60) };
    backend.record(&[record], &[]).await.unwrap();
    // A bound for a broken build: the answer comes at once or after the wait's hour.
    let waited = tokio::time::timeout(Duration::from_secs(60), backend.wait_outcome(&jid, Duration::from_secs(3600)))
        .await
        .expect("the wait ran on although the outcome is final");
    assert_eq!(waited.unwrap().as_deref(), Some(json));
}

/// Due at or before `until`, `u64::MAX` included.
async fn a_job_due_at_the_end_of_time_is_promoted_by_a_promotion_until_then(t: &TestBackend) {
    let backend = t.backend();
    let payload = r#"{"jid":"last","queue":"a"}"#;
    backend.push(vec![scheduled("last", "a", payload, u64::MAX)]).await.unwrap();
    assert_eq!(backend.promote_due(Some(u64::MAX - 1_000_000)).await.unwrap(), 0, "not yet due");
    assert_eq!(backend.promote_due(Some(u64::MAX)).await.unwrap(), 1);
    assert_eq!(payloads(backend, "a").await, [payload]);
}

/// A dead payload is read field by field, as the scripts read it: a queue
/// that is no string means `default`, a repeated key means its last value,
/// and in both cases the job's id is still found (its stored outcome goes).
async fn a_dead_payload_with_a_repeated_or_odd_queue_is_requeued_as_redis_reads_it(t: &TestBackend) {
    let backend = t.backend();
    let (odd, repeated) = (r#"{"jid":"d2","queue":7}"#, r#"{"jid":"d3","queue":"b","queue":"c"}"#);
    let now = jobs_core::now_millis();
    backend
        .push(vec![scheduled("d2", "x", odd, now + 3_600_000), scheduled("d3", "x", repeated, now + 3_600_000)])
        .await
        .unwrap();
    assert_eq!(backend.promote_due(Some(now + 3_600_001)).await.unwrap(), 2);
    let worker = WorkerId::generate();
    let takes = vec![QueueTake { queue: "default".into(), max: 1 }, QueueTake { queue: "c".into(), max: 1 }];
    let request = FetchRequest { queues: &takes, max: 2, worker: &worker, lease: Duration::from_secs(30) };
    let fetched = backend.fetch(request).await.unwrap();
    assert_eq!(fetched.len(), 2, "on `default` and on `c`");
    for job in &fetched {
        assert!(backend.kill(&job.lease, job.payload.clone()).await.unwrap());
        let outcome = r#"{"state":"dead","error":"boom","attempts":1,"at":1}"#;
        let jid = JobId::from(if job.payload == odd { "d2" } else { "d3" });
        let record = OutcomeRecord { jid, outcome: outcome.into(), is_final: true, ttl: Duration::from_secs(60) };
        backend.record(&[record], &[]).await.unwrap();
    }
    let moved = jobs_core::admin::requeue(backend, &JobSet::Dead, &Selection::All).await.unwrap();
    assert_eq!(moved, 2);
    assert_eq!(payloads(backend, "default").await, [odd]);
    assert_eq!(payloads(backend, "c").await, [repeated]);
    for jid in ["d2", "d3"] {
        assert_eq!(backend.outcome(&JobId::from(jid)).await.unwrap(), None, "{jid}: its dead outcome went");
    }
}

/// `usize::MAX` as a fetch's limits means "all there is" (Redis once refused it).
async fn a_fetch_with_no_limit_to_speak_of_takes_what_waits(t: &TestBackend) {
    let backend = t.backend();
    let now = jobs_core::now_millis();
    let jobs = (0..3).map(|n| scheduled(&n.to_string(), "a", &format!(r#"{{"jid":"{n}","queue":"a"}}"#), now + 60_000));
    backend.push(jobs.collect()).await.unwrap();
    assert_eq!(backend.promote_due(Some(now + 60_001)).await.unwrap(), 3);
    let worker = WorkerId::generate();
    let takes = vec![QueueTake { queue: "a".into(), max: usize::MAX }];
    let request = FetchRequest { queues: &takes, max: usize::MAX, worker: &worker, lease: Duration::from_secs(30) };
    assert_eq!(backend.fetch(request).await.unwrap().len(), 3);
}

/// A plain wait for jobs (a worker at its queue's cap) leases nothing, so it
/// must not take the wake-up away from a waiter that would fetch: the job
/// queued before each call is not slept through, however many wait.
async fn a_wait_that_fetches_nothing_leaves_the_wake_up_for_the_next(t: &TestBackend) {
    let backend = t.backend();
    let now = jobs_core::now_millis();
    backend.push(vec![scheduled("w", "a", r#"{"jid":"w","queue":"a"}"#, now + 60_000)]).await.unwrap();
    assert_eq!(backend.promote_due(Some(now + 60_001)).await.unwrap(), 1);
    let queues = ["a".to_owned()];
    // Bounds for a broken build: each answer comes at once, or after the wait's hour.
    let bound = Duration::from_secs(60);
    for _ in 0..2 {
        let waited = tokio::time::timeout(bound, backend.wait_for_jobs(&queues, Duration::from_secs(3600))).await;
        waited.expect("a queued job was slept through").unwrap();
    }
    let worker = WorkerId::generate();
    let takes = vec![QueueTake { queue: "a".into(), max: 1 }];
    let request = FetchRequest { queues: &takes, max: 1, worker: &worker, lease: Duration::from_secs(30) };
    let fetched = tokio::time::timeout(bound, backend.wait_and_fetch(&queues, Duration::from_secs(3600), request))
        .await
        .expect("a queued job was slept through");
    assert_eq!(fetched.unwrap().len(), 1);
}
