//! Enqueueing: the generated helpers, the wire format, scheduling, the
//! debug round-trip check, limits, uniqueness and raw jobs.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use jobs_core::{
    EnqueueError, Envelope, JobError, JobId, JobSet, PushJob, RawJob, Timestamp, UniqueLock, job, now_millis,
};
use jobs_tests::{Ledger, TestBackend};

jobs_tests::conformance!(
    perform_later_writes_the_documented_envelope,
    perform_in_and_perform_at_schedule_for_later,
    timestamps_and_maps_survive_the_trip,
    payload_over_the_limit_is_refused_with_the_job_named,
    unique_for_refuses_an_identical_job_but_not_a_different_one,
    a_cancelled_job_frees_its_uniqueness_lock,
    enqueue_many_pushes_a_batch,
    a_listing_without_a_limit_returns_every_job_from_its_offset,
    a_uniqueness_lock_of_any_length_is_taken,
    malformed_raw_jobs_are_refused_at_enqueue,
    non_finite_floats_are_refused_in_every_build,
    a_registered_job_enqueued_from_json_is_read_filled_and_unique,
);

#[job(queue = "mail", version = 3)]
async fn welcome(ledger: String, user_id: u64, tags: Vec<String>, note: Option<String>) -> Result<(), JobError> {
    Ledger::named(&ledger).record(format!("{user_id} {tags:?} {note:?}"));
    Ok(())
}

#[job]
async fn measure(ratio: f64) -> Result<(), JobError> {
    let _ = ratio;
    Ok(())
}

#[job]
async fn plot(points: Vec<f64>, scale: Option<f32>) {
    let _ = (points, scale);
}

/// A plain-data type that opts in; JSON turns its NaN into `null`.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Reading {
    value: f64,
}
impl jobs_core::JobArg for Reading {}

#[job]
async fn record_reading(reading: Reading) {
    let _ = reading;
}

#[job]
async fn remind(ledger: String, at: Timestamp, counts: HashMap<String, u32>, sorted: BTreeMap<String, bool>) {
    Ledger::named(&ledger).record(format!("{} {} {}", at, counts.len(), sorted.len()));
}

#[job(unique_for = "1h")]
async fn rebuild_index(account_id: u64) {
    let _ = account_id;
}

#[job(retries = 0)]
async fn refuses(reason: String) -> Result<(), JobError> {
    Err(JobError::fatal(reason))
}

async fn perform_later_writes_the_documented_envelope(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("envelope");
    let before = now_millis();
    let jid = Welcome::perform_later(&client, ledger.clone(), 42, vec!["new".into()], None).await.unwrap();
    let queued = t.backend().list(&JobSet::Queue("mail".into()), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    let json: serde_json::Value = serde_json::from_str(&queued[0].payload).unwrap();
    assert_eq!(json["jid"], jid.as_str());
    assert_eq!(json["job"], "welcome");
    assert_eq!(json["version"], 3);
    assert_eq!(json["args"], serde_json::json!({"ledger": ledger, "user_id": 42, "tags": ["new"], "note": null}));
    assert!(json["enqueued_at"].as_u64().unwrap() >= before);
    // Compact: the queue's key names the queue, and attempt 0 is the default.
    let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["args", "enqueued_at", "jid", "job", "version"]);
    let envelope = Envelope::from_json(&queued[0].payload).unwrap();
    assert_eq!((envelope.queue.as_str(), envelope.attempt), ("", 0));
    // A job due later carries its queue, to find its way back when due.
    Welcome::perform_in(&client, std::time::Duration::from_secs(60), ledger, 1, vec![], None).await.unwrap();
    let scheduled = t.backend().list(&JobSet::Scheduled, 0, 10).await.unwrap();
    assert_eq!(Envelope::from_json(&scheduled[0].payload).unwrap().queue, "mail");
}

async fn perform_in_and_perform_at_schedule_for_later(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("later");
    let before = now_millis();
    Welcome::perform_in(&client, Duration::from_secs(3600), ledger.clone(), 1, vec![], None).await.unwrap();
    let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
    Welcome::perform_at(&client, tomorrow, ledger.clone(), 2, vec![], None).await.unwrap();
    let past = SystemTime::now() - Duration::from_secs(60);
    Welcome::perform_at(&client, past, ledger.clone(), 3, vec![], Some("due".into())).await.unwrap();
    // A delay that overflows is refused, not stored to wait for ever.
    let never = Welcome::perform_in(&client, Duration::MAX, ledger.clone(), 4, vec![], None).await.unwrap_err();
    assert!(matches!(&never, EnqueueError::TooLate { job, .. } if job == "welcome"), "{never}");
    assert!(never.to_string().contains("past the year 9999, so it would never run"), "{never}");

    let scheduled = t.backend().list(&JobSet::Scheduled, 0, 10).await.unwrap();
    assert_eq!(scheduled.len(), 2);
    assert!(scheduled[0].at >= before + 3_600_000 && scheduled[0].at < before + 3_700_000);
    assert_eq!(scheduled[1].at, jobs_core::millis(tomorrow));

    let worker = t.worker().build().unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 1, "only the job due in the past runs");
    assert_eq!(Ledger::named(&ledger).entries(), ["3 [] Some(\"due\")"]);
    t.backend().promote_due(Some(u64::MAX)).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 2);
}

#[job]
async fn panics_inline(n: u64) {
    panic!("no way to handle {n}");
}

/// A panic in a job run inline comes back as the error a worker records,
/// not as a panic through the caller.
#[tokio::test]
async fn perform_now_returns_a_panic_as_the_jobs_error() {
    let error = PanicsInline::perform_now(7).await.unwrap_err();
    assert_eq!(error.to_string(), "job panicked: no way to handle 7");
    assert!(error.is_retryable(), "as a worker would retry it");
}

// `perform_now` runs the job inline and touches no backend, so there is
// nothing backend-specific to check: it stays a plain test.
#[tokio::test]
async fn perform_now_runs_inline_through_the_same_serialization() {
    Welcome::perform_now("inline".into(), 5, vec!["a".into(), "b".into()], Some("x".into())).await.unwrap();
    assert_eq!(Ledger::named("inline").entries(), ["5 [\"a\", \"b\"] Some(\"x\")"]);
    let error = Refuses::perform_now("no card".into()).await.unwrap_err();
    assert_eq!(error.to_string(), "no card");
}

#[job(timeout = "200ms")]
async fn hangs() {
    std::future::pending::<()>().await;
}

/// `perform_now` keeps the job's `timeout`, as a worker does. (Tokio's clock
/// is paused: the timer fires without the test waiting.)
#[tokio::test(start_paused = true)]
async fn perform_now_keeps_the_jobs_timeout() {
    let ran = tokio::time::timeout(Duration::from_secs(5), Hangs::perform_now()).await;
    let error = ran.expect("perform_now ignored the job's timeout").unwrap_err();
    assert_eq!(error.to_string(), "job timed out after 200ms");
}

async fn timestamps_and_maps_survive_the_trip(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("maps");
    let at = Timestamp::from_unix(1_732_300_000, 123_456_789).unwrap();
    let counts = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
    let sorted = BTreeMap::from([("x".to_owned(), true)]);
    Remind::perform_later(&client, ledger.clone(), at, counts, sorted).await.unwrap();
    assert_eq!(t.worker().build().unwrap().drain().await.unwrap().succeeded, 1);
    assert_eq!(Ledger::named(&ledger).entries(), ["2024-11-22T18:26:40.123456789Z 2 1"]);
}

/// The round-trip check exists in debug builds only.
#[cfg(debug_assertions)]
mod lossy {
    use jobs_core::{EnqueueError, JobSet};
    use jobs_tests::TestBackend;

    use super::{Reading, RecordReading};

    jobs_tests::conformance!(lossy_argument_is_refused_in_debug_builds);

    async fn lossy_argument_is_refused_in_debug_builds(t: &TestBackend) {
        let client = t.client();
        let error = RecordReading::perform_later(&client, Reading { value: f64::NAN }).await.unwrap_err();
        assert!(
            matches!(&error, EnqueueError::Lossy { job, field, .. } if job == "record_reading" && field == "reading"),
            "{error}"
        );
        assert!(error.to_string().contains("pass a simple value that JSON keeps exactly"), "{error}");
        assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 0, "nothing was enqueued");
        RecordReading::perform_later(&client, Reading { value: 0.1 }).await.unwrap();
    }
}

/// JSON has no NaN nor infinity (it would write `null`, and the job would
/// fail when it runs): a float argument that is not finite, alone or inside
/// a `Vec` or an `Option`, is refused at enqueue, in release builds too.
async fn non_finite_floats_are_refused_in_every_build(t: &TestBackend) {
    let client = t.client();
    for error in [
        Measure::perform_later(&client, f64::NAN).await.unwrap_err(),
        Plot::perform_later(&client, vec![1.0, f64::INFINITY], None).await.unwrap_err(),
        Plot::perform_later(&client, vec![], Some(f32::NEG_INFINITY)).await.unwrap_err(),
    ] {
        assert!(matches!(&error, EnqueueError::Arg(jobs_core::ArgError::Invalid { .. })), "{error:?}");
        assert!(error.to_string().contains("is not a number JSON can carry; pass a finite value"), "{error}");
    }
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 0, "nothing was enqueued");
    Plot::perform_later(&client, vec![0.5, -2.0], Some(1.5)).await.unwrap();
}

/// `enqueue_registered` (the CLI's `enqueue`) reads JSON arguments as a
/// worker would, refuses what would fail, and enqueues the rest as
/// `perform_later` does: defaults filled, the `unique_for` lock held.
async fn a_registered_job_enqueued_from_json_is_read_filled_and_unique(t: &TestBackend) {
    let client = t.client();
    let registry = jobs_core::Registry::linked().unwrap();
    let (welcome, unique) = (registry.get("welcome").unwrap(), registry.get("rebuild_index").unwrap());
    let error = client.enqueue_registered(welcome, 3, "mail", serde_json::json!({"ledger": "x"})).await.unwrap_err();
    assert!(error.to_string().contains("missing argument `user_id`"), "{error}");
    let error =
        client.enqueue_registered(unique, 1, "default", serde_json::json!({"account_id": "seven"})).await.unwrap_err();
    assert!(error.to_string().contains("account_id"), "{error}");
    let args = serde_json::json!({"ledger": "x", "user_id": 7, "tags": []});
    let error = client.enqueue_registered(welcome, 0, "mail", args.clone()).await.unwrap_err();
    assert!(error.to_string().contains("versions start at 1"), "{error}");
    let error = client.enqueue_registered(welcome, 3, "", args.clone()).await.unwrap_err();
    assert!(error.to_string().contains("the queue name is empty"), "{error}");
    assert_eq!(t.backend().count(&JobSet::Queue("mail".into())).await.unwrap(), 0, "nothing was enqueued");

    client.enqueue_registered(welcome, 3, "mail", args).await.unwrap();
    let queued = t.backend().list(&JobSet::Queue("mail".into()), 0, 10).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&queued[0].payload).unwrap();
    assert_eq!(json["args"], serde_json::json!({"ledger": "x", "user_id": 7, "tags": [], "note": null}));

    RebuildIndex::perform_later(&client, 7).await.unwrap();
    let again = client.enqueue_registered(unique, 1, "default", serde_json::json!({"account_id": 7})).await;
    assert!(matches!(again, Err(EnqueueError::Duplicate { .. })), "{again:?}");
}

async fn payload_over_the_limit_is_refused_with_the_job_named(t: &TestBackend) {
    let client = t.client().max_payload(256);
    let error = Welcome::perform_later(&client, "x".repeat(300), 1, vec![], None).await.unwrap_err();
    assert!(matches!(&error, EnqueueError::TooLarge { job, limit: 256, .. } if job == "welcome"), "{error}");
    assert_eq!(t.backend().count(&JobSet::Queue("mail".into())).await.unwrap(), 0);
}

async fn unique_for_refuses_an_identical_job_but_not_a_different_one(t: &TestBackend) {
    let client = t.client();
    RebuildIndex::perform_later(&client, 1).await.unwrap();
    let error = RebuildIndex::perform_later(&client, 1).await.unwrap_err();
    assert!(
        matches!(&error, EnqueueError::Duplicate { job, unique_for } if job == "rebuild_index" && unique_for.as_secs() == 3600)
    );
    RebuildIndex::perform_later(&client, 2).await.unwrap();
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 2);
}

/// Cancelling a job frees its uniqueness lock (one says it is not wanted);
/// running it does not (the lock is a window from the enqueue); and a lock
/// is freed only for the job that holds it.
async fn a_cancelled_job_frees_its_uniqueness_lock(t: &TestBackend) {
    let client = t.client();
    let jid = RebuildIndex::perform_later(&client, 3).await.unwrap();
    client.cancel(&jid).await.unwrap();
    let report = t.worker().queue("default", 1).build().unwrap().drain().await.unwrap();
    assert_eq!(report.cancelled, 1, "{report}");
    let again = RebuildIndex::perform_later(&client, 3).await.unwrap();

    let key = r#"rebuild_index:{"account_id":3}"#;
    assert!(!t.backend().release_unique(key, &JobId::from("someone-else")).await.unwrap());
    assert!(RebuildIndex::perform_later(&client, 3).await.is_err(), "the lock of the job enqueued again holds");
    let report = t.worker().queue("default", 1).build().unwrap().drain().await.unwrap();
    assert_eq!(report.succeeded, 1, "{report}");
    assert!(RebuildIndex::perform_later(&client, 3).await.is_err(), "a run does not free it");
    assert!(!t.backend().release_unique(key, &jid).await.unwrap(), "the cancelled job holds it no more");
    assert!(t.backend().release_unique(key, &again).await.unwrap());
    RebuildIndex::perform_later(&client, 3).await.unwrap();
}

async fn enqueue_many_pushes_a_batch(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("many");
    let jobs = (0..3).map(|n| Welcome { ledger: ledger.clone(), user_id: n, tags: vec![], note: None });
    let ids = client.enqueue_many(jobs).await.unwrap();
    assert_eq!(ids.len(), 3);
    let queued = t.backend().list(&JobSet::Queue("mail".into()), 0, 10).await.unwrap();
    let queued_ids: Vec<String> =
        queued.iter().map(|s| Envelope::from_json(&s.payload).unwrap().jid.to_string()).collect();
    assert_eq!(queued_ids, ids.iter().map(ToString::to_string).collect::<Vec<_>>());
}

async fn a_listing_without_a_limit_returns_every_job_from_its_offset(t: &TestBackend) {
    let client = t.client();
    let jobs = (0..3).map(|n| Welcome { ledger: "unlisted".into(), user_id: n, tags: vec![], note: None });
    client.enqueue_many(jobs.clone()).await.unwrap();
    for job in jobs {
        client.enqueue_in(Duration::from_secs(3600), job).await.unwrap();
    }
    for set in [JobSet::Queue("mail".into()), JobSet::Scheduled] {
        assert_eq!(t.backend().list(&set, 0, usize::MAX).await.unwrap().len(), 3, "{set:?}");
        assert_eq!(t.backend().list(&set, 1, usize::MAX).await.unwrap().len(), 2, "{set:?}");
        assert!(t.backend().list(&set, usize::MAX, usize::MAX).await.unwrap().is_empty(), "{set:?}");
    }
}

/// A lock under a millisecond or of `Duration::MAX` (a hand-written
/// `JobOptions`) is still a lock: Redis refuses `SET … PX 0` and times past
/// the end of its clock, so the backend rounds them.
async fn a_uniqueness_lock_of_any_length_is_taken(t: &TestBackend) {
    for (n, ttl) in [Duration::ZERO, Duration::from_micros(500), Duration::MAX].into_iter().enumerate() {
        let payload = Envelope::new("probe", 1, "locks", serde_json::Map::new()).to_json();
        let unique = Some(UniqueLock { key: format!("lock-{n}"), ttl });
        let job = PushJob { jid: JobId::new(), queue: "locks".into(), payload, run_at: None, unique };
        let pushed = t.backend().push(vec![job]).await;
        assert!(pushed.is_ok(), "a lock of {ttl:?}: {pushed:?}");
    }
    let again = PushJob {
        jid: JobId::new(),
        queue: "locks".into(),
        payload: Envelope::new("probe", 1, "locks", serde_json::Map::new()).to_json(),
        run_at: None,
        unique: Some(UniqueLock { key: "lock-2".into(), ttl: Duration::from_secs(1) }),
    };
    assert_eq!(t.backend().push(vec![again]).await.unwrap().duplicates, [0], "the long lock holds");
    assert_eq!(t.backend().count(&JobSet::Queue("locks".into())).await.unwrap(), 3);
}

async fn malformed_raw_jobs_are_refused_at_enqueue(t: &TestBackend) {
    let client = t.client();
    let cases = [
        (
            RawJob { job: String::new(), version: 1, queue: "q".into(), args: serde_json::json!({}) },
            "the job name is empty",
        ),
        (RawJob { job: "j".into(), version: 0, queue: "q".into(), args: serde_json::json!({}) }, "versions start at 1"),
        (
            RawJob { job: "j".into(), version: 1, queue: String::new(), args: serde_json::json!({}) },
            "the queue name is empty",
        ),
        (
            RawJob { job: "j".into(), version: 1, queue: "a\nb".into(), args: serde_json::json!({}) },
            "the queue name holds a control character",
        ),
        (
            RawJob { job: "j".into(), version: 1, queue: "q".into(), args: serde_json::json!([1]) },
            "`args` must be a JSON object",
        ),
    ];
    for (raw, expected) in cases {
        let error = client.enqueue_raw(raw).await.unwrap_err();
        assert!(matches!(error, EnqueueError::InvalidRaw { .. }) && error.to_string().contains(expected), "{error}");
    }
    // A newline in a queue name would split the backend's in-flight record of the job.
    let error = t.worker().queue("a\nb", 1).build().map(drop).unwrap_err();
    assert!(error.to_string().contains("control character"), "{error}");
}

#[job]
async fn takes_a_renamed_argument(#[job(alias = "uid")] user_id: u64) {
    let _ = user_id;
}

/// Enqueued by name (the CLI's `enqueue`), arguments at the current version
/// must each name a parameter (or one of its old names), and a value may not
/// come under both: a key that would be dropped is refused instead.
#[tokio::test]
async fn enqueue_registered_refuses_keys_it_would_drop() {
    let t = TestBackend::memory();
    let registry = jobs_core::Registry::linked().unwrap();
    let job = registry.get("takes_a_renamed_argument").unwrap();
    let client = t.client();
    let enqueue = |args: serde_json::Value| client.enqueue_registered(job, 1, "default", args);
    let typo = enqueue(serde_json::json!({ "user": 7 })).await.unwrap_err().to_string();
    // Both what is wrong and what is then missing, in one report.
    assert_eq!(
        typo,
        "job `takes_a_renamed_argument`: 2 arguments are wrong: argument `user`: names no parameter: version 1 takes `user_id`, `uid`; missing argument `user_id`"
    );
    let both = enqueue(serde_json::json!({ "user_id": 7, "uid": 8 })).await.unwrap_err().to_string();
    assert!(both.ends_with("argument `uid`: is an old name of `user_id`, also given: pass one"), "{both}");
    enqueue(serde_json::json!({ "uid": 7 })).await.expect("an old name alone is fine");
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 1);
}

#[job(version = 2)]
async fn takes_three(
    user_id: u64,
    email: String,
    #[job(since = 2, default = 3)] tries: u32,
    #[job(since = 2, default = false)] urgent: bool,
) {
    let _ = (user_id, email, tries, urgent);
}

/// Every wrong argument is named at once, not the first of them: a decode
/// names each field that failed, an upgrade each parameter it needed, and
/// enqueueing by name adds the keys that name no parameter.
#[tokio::test]
async fn argument_errors_name_every_wrong_argument() {
    let registry = jobs_core::Registry::linked().unwrap();
    let job = registry.get("takes_three").unwrap();
    let read = |version, args| job.read_args(version, args).unwrap_err();
    let error = read(2, serde_json::json!({ "user_id": "seven", "tries": 1, "urgent": true }));
    let jobs_core::ArgError::Several { errors, .. } = &error else { panic!("{error:?}") };
    assert_eq!(errors.len(), 2, "{error}");
    assert_eq!(
        error.to_string(),
        "job `takes_three`: 2 arguments are wrong: argument `user_id`: invalid type: string \"seven\", expected u64 (found a string); missing argument `email`"
    );
    // A v2 payload must carry what exists since v2: both are named.
    let error = read(2, serde_json::json!({ "user_id": 7, "email": "a@b" })).to_string();
    assert!(
        error.starts_with(
            "job `takes_three`: 2 arguments are wrong: missing argument `tries`: the payload is at version 2"
        ),
        "{error}"
    );
    assert!(error.contains("; missing argument `urgent`: the payload is at version 2"), "{error}");
    // One wrong argument reads as before.
    let one = read(2, serde_json::json!({ "user_id": 7, "tries": 1, "urgent": true }));
    assert!(matches!(one, jobs_core::ArgError::Missing { .. }), "{one:?}");

    let t = TestBackend::memory();
    let client = t.client();
    let error = client
        .enqueue_registered(
            job,
            2,
            "default",
            serde_json::json!({ "user": 7, "emial": "a@b", "tries": "x", "urgent": true }),
        )
        .await
        .unwrap_err()
        .to_string();
    for part in [
        "5 arguments are wrong",
        "argument `emial`: names no parameter",
        "argument `user`: names no parameter",
        "missing argument `user_id`",
        "missing argument `email`",
        "argument `tries`: invalid type: string \"x\", expected u32",
    ] {
        assert!(error.contains(part), "{part} not in {error}");
    }
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 0, "nothing was enqueued");
}
