//! Failures end in a retry or the dead set with a clear reason, and the worker goes on.

use std::time::Duration;

use jobs_core::{Envelope, JobError, JobSet, PushJob, RawJob, RetryPolicy, Worker, job, now_millis};
use jobs_tests::{Ledger, TestBackend};

jobs_tests::conformance!(
    failing_job_is_retried_with_growing_delays_then_dead,
    fatal_error_goes_straight_to_the_dead_set,
    errors_that_are_only_a_message_fail_the_job_with_their_text,
    panicking_job_does_not_kill_the_worker,
    timeout_fires_and_counts_as_a_failure,
    malformed_json_is_dead_lettered_and_the_worker_goes_on,
    unknown_job_is_retried_with_its_reason_then_dead_never_dropped,
    wrong_argument_type_is_dead_with_job_and_field_named,
    missing_required_argument_is_dead_with_field_named,
    args_that_are_not_an_object_are_dead_with_a_clear_reason,
    panicking_default_is_dead_with_its_reason_not_stuck_in_flight,
    absurd_attempt_count_ends_in_the_dead_set,
    malformed_envelope_field_is_named_with_the_job,
    retrying_an_unreadable_dead_job_retries_its_original_bytes,
);

#[job(retries = 3)]
async fn always_fails(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::new("smtp said no"))
}

#[job(retries = 5)]
async fn fails_fatally(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::fatal("user was deleted"))
}

#[job(retries = 0)]
async fn panics(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    panic!("kaboom in the job body");
}

#[job(timeout = "50ms", retries = 0)]
async fn never_finishes() -> Result<(), JobError> {
    std::future::pending::<()>().await;
    Ok(())
}

fn exploding_default() -> u32 {
    panic!("no default today")
}

#[job]
async fn panicky_default(ledger: String, #[job(default = exploding_default())] n: u32) {
    Ledger::named(&ledger).record(format!("ran {n}"));
}

#[job]
async fn succeeds(ledger: String, n: u64) -> Result<(), JobError> {
    Ledger::named(&ledger).record(format!("ok {n}"));
    Ok(())
}

fn worker(t: &TestBackend, retries: u32) -> Worker {
    let policy = RetryPolicy { retries, base: Duration::from_secs(1), max_delay: Duration::from_secs(3600) };
    t.worker().retry_policy(policy).concurrency(4).build().unwrap()
}

async fn only(t: &TestBackend, set: JobSet) -> (Envelope, u64) {
    let stored = t.backend().list(&set, 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1, "{set:?} holds {stored:?}");
    (Envelope::from_json(&stored[0].payload).unwrap(), stored[0].at)
}

async fn failing_job_is_retried_with_growing_delays_then_dead(t: &TestBackend) {
    let client = t.client();
    AlwaysFails::perform_later(&client, t.name("retried_then_dead")).await.unwrap();
    let worker = worker(t, 20);

    let mut delays = Vec::new();
    for attempt in 1..=3 {
        let before = now_millis();
        let report = worker.drain().await.unwrap();
        assert_eq!((report.retried, report.dead), (1, 0), "attempt {attempt}");
        let (envelope, due) = only(t, JobSet::Retry).await;
        assert_eq!(envelope.attempt, attempt);
        assert_eq!(envelope.error.as_deref(), Some("smtp said no"));
        delays.push(due - before);
        assert_eq!(t.backend().promote_due(Some(u64::MAX)).await.unwrap(), 1);
    }
    let report = worker.drain().await.unwrap();
    assert_eq!((report.retried, report.dead), (0, 1));
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(envelope.attempt, 4);
    assert_eq!(envelope.error.as_deref(), Some("smtp said no"));
    assert_eq!(Ledger::named(&t.name("retried_then_dead")).entries().len(), 4, "one run and three retries");
    // 1 s, 2 s, 4 s nominal, each with at most a quarter of jitter: strictly growing.
    assert!(delays[0] >= 1000 && delays[0] <= 1300, "{delays:?}");
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
    assert!(delays[2] >= 4000, "{delays:?}");
}

async fn fatal_error_goes_straight_to_the_dead_set(t: &TestBackend) {
    let client = t.client();
    FailsFatally::perform_later(&client, t.name("fatal")).await.unwrap();
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!((report.retried, report.dead), (0, 1));
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(envelope.error.as_deref(), Some("user was deleted"));
    assert_eq!(Ledger::named(&t.name("fatal")).entries().len(), 1);
}

#[job(retries = 0)]
async fn fails_with_a_string(n: u32) -> Result<u32, String> {
    if n == 0 { Ok(7) } else { Err(format!("no mail for user {n}")) }
}

#[job(retries = 0)]
async fn fails_with_a_str() -> Result<(), &'static str> {
    Err("no sms today")
}

#[job(retries = 0)]
async fn fails_with_a_box() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let n: u32 = "x".parse()?;
    let _ = n;
    Ok(())
}

#[job(retries = 0)]
async fn fails_with_a_local_box() -> Result<(), Box<dyn std::error::Error>> {
    Err("no image".into())
}

fn charge(card: &str) -> Result<(), JobError> {
    Err(JobError::fatal(format!("card {card} declined")))
}

#[job(retries = 3)]
async fn declines_with_a_box() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    charge("4242")?;
    Ok(())
}

#[job(retries = 3)]
async fn declines_with_a_local_box() -> Result<(), Box<dyn std::error::Error>> {
    charge("0005")?;
    Ok(())
}

/// As `anyhow` writes its errors: `{:#}` shows the chain of contexts.
mod anyhow {
    pub struct Error(pub &'static str, pub &'static str);

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if f.alternate() { write!(f, "{}: {}", self.0, self.1) } else { f.write_str(self.0) }
        }
    }

    pub type Result<T> = std::result::Result<T, Error>;
}

#[job(retries = 0)]
async fn fails_with_anyhow() -> anyhow::Result<()> {
    Err(anyhow::Error("calling the hook", "connection refused"))
}

/// Errors that are only a message, which no `From` can turn into `JobError`
/// (`String`, `&str`, a boxed `dyn Error`, `anyhow`'s), fail the job with
/// their text, as any error does.
async fn errors_that_are_only_a_message_fail_the_job_with_their_text(t: &TestBackend) {
    assert_eq!(FailsWithAString::perform_now(0).await.unwrap(), 7);
    assert_eq!(FailsWithAString::perform_now(3).await.unwrap_err().message(), "no mail for user 3");
    let client = t.client();
    FailsWithAString::perform_later(&client, 4).await.unwrap();
    FailsWithAStr::perform_later(&client).await.unwrap();
    FailsWithABox::perform_later(&client).await.unwrap();
    FailsWithALocalBox::perform_later(&client).await.unwrap();
    FailsWithAnyhow::perform_later(&client).await.unwrap();
    // A `JobError` sent through `?` into a boxed error stays what it was: fatal here.
    DeclinesWithABox::perform_later(&client).await.unwrap();
    DeclinesWithALocalBox::perform_later(&client).await.unwrap();
    let error = DeclinesWithABox::perform_now().await.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    assert!(FailsWithABox::perform_now().await.unwrap_err().source().is_some(), "the boxed error is the source");
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!((report.retried, report.dead), (0, 7));
    let dead = t.backend().list(&JobSet::Dead, 0, 10).await.unwrap();
    let mut errors: Vec<String> =
        dead.iter().map(|stored| Envelope::from_json(&stored.payload).unwrap().error.unwrap()).collect();
    errors.sort();
    assert_eq!(
        errors,
        [
            "calling the hook: connection refused",
            "card 0005 declined",
            "card 4242 declined",
            "invalid digit found in string",
            "no image",
            "no mail for user 4",
            "no sms today"
        ]
    );
}

async fn panicking_job_does_not_kill_the_worker(t: &TestBackend) {
    let client = t.client();
    Panics::perform_later(&client, t.name("panics")).await.unwrap();
    for n in 0..3 {
        Succeeds::perform_later(&client, t.name("after_panic"), n).await.unwrap();
    }
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!((report.succeeded, report.dead), (3, 1));
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(envelope.error.as_deref(), Some("job panicked: kaboom in the job body"));
    assert_eq!(Ledger::named(&t.name("after_panic")).entries().len(), 3);
}

async fn timeout_fires_and_counts_as_a_failure(t: &TestBackend) {
    let client = t.client();
    NeverFinishes::perform_later(&client).await.unwrap();
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!(report.dead, 1);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(envelope.error.as_deref(), Some("job timed out after 50ms"));
}

async fn malformed_json_is_dead_lettered_and_the_worker_goes_on(t: &TestBackend) {
    let client = t.client();
    let garbage = PushJob {
        jid: "garbage".into(),
        queue: "default".into(),
        payload: "{\"jid\": \"x\", \"job\": ".into(),
        run_at: None,
        unique: None,
    };
    t.backend().push(vec![garbage]).await.unwrap();
    Succeeds::perform_later(&client, t.name("after_garbage"), 1).await.unwrap();
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!((report.succeeded, report.dead), (1, 1));
    let dead = t.backend().list(&JobSet::Dead, 0, 10).await.unwrap();
    let record: serde_json::Value = serde_json::from_str(&dead[0].payload).unwrap();
    Envelope::from_json(&dead[0].payload).expect("a dead entry is a valid envelope");
    assert!(
        record["error"].as_str().unwrap().starts_with("malformed payload: not JSON: EOF while parsing"),
        "{record}"
    );
    assert_eq!(record["payload"], "{\"jid\": \"x\", \"job\": ", "the original bytes are kept");

    // Retried from the dead set, it is buried again under the same id: `dead retry <jid>`
    // leaves it where the admin finds it.
    let moved = jobs_core::admin::requeue(t.backend(), &JobSet::Dead, &jobs_core::admin::Selection::All).await;
    assert_eq!(moved.unwrap(), 1);
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (again, _) = only(t, JobSet::Dead).await;
    assert_eq!(again.jid.as_str(), record["jid"].as_str().unwrap(), "buried again under its entry's id");
}

async fn unknown_job_is_retried_with_its_reason_then_dead_never_dropped(t: &TestBackend) {
    let client = t.client();
    let raw = RawJob { job: "no_such_job".into(), version: 1, queue: "default".into(), args: serde_json::json!({}) };
    client.enqueue_raw(raw).await.unwrap();
    let worker = worker(t, 1);
    assert_eq!(worker.drain().await.unwrap().retried, 1);
    let (envelope, _) = only(t, JobSet::Retry).await;
    let reason = envelope.error.unwrap();
    assert!(reason.starts_with("unknown job `no_such_job`: no job of that name or alias is registered"), "{reason}");
    t.backend().promote_due(Some(u64::MAX)).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().dead, 1);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(envelope.job, "no_such_job");
}

async fn wrong_argument_type_is_dead_with_job_and_field_named(t: &TestBackend) {
    let client = t.client();
    let raw = RawJob {
        job: "succeeds".into(),
        version: 1,
        queue: "default".into(),
        args: serde_json::json!({ "ledger": t.name("wrong_type"), "n": "seven" }),
    };
    client.enqueue_raw(raw).await.unwrap();
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!((report.retried, report.dead), (0, 1), "retrying cannot fix a wrong type");
    let (envelope, _) = only(t, JobSet::Dead).await;
    let reason = envelope.error.unwrap();
    assert!(
        reason.starts_with("job `succeeds`: argument `n`: invalid type: string \"seven\", expected u64"),
        "{reason}"
    );
    assert!(Ledger::named(&t.name("wrong_type")).entries().is_empty());
}

async fn missing_required_argument_is_dead_with_field_named(t: &TestBackend) {
    let client = t.client();
    let raw = RawJob {
        job: "succeeds".into(),
        version: 1,
        queue: "default".into(),
        args: serde_json::json!({ "ledger": t.name("missing") }),
    };
    client.enqueue_raw(raw).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(envelope.error.as_deref(), Some("job `succeeds`: missing argument `n`"));
}

async fn args_that_are_not_an_object_are_dead_with_a_clear_reason(t: &TestBackend) {
    let payload = r#"{"jid":"j1","job":"succeeds","version":1,"queue":"default","args":[1,2]}"#;
    let push =
        PushJob { jid: "j1".into(), queue: "default".into(), payload: payload.into(), run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(
        envelope.error.as_deref(),
        Some("job `succeeds`: `args` must be a JSON object keyed by parameter name, found an array")
    );
    assert_eq!(envelope.args, serde_json::json!([1, 2]), "the original arguments are kept for inspection");
}

async fn panicking_default_is_dead_with_its_reason_not_stuck_in_flight(t: &TestBackend) {
    let client = t.client();
    let args = serde_json::json!({ "ledger": t.name("panicky_default") });
    let raw = RawJob { job: "panicky_default".into(), version: 1, queue: "default".into(), args };
    client.enqueue_raw(raw).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    assert_eq!(t.backend().count(&JobSet::InFlight).await.unwrap(), 0);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!(
        envelope.error.as_deref(),
        Some(
            "job `panicky_default`: panicked while preparing its arguments (a default, `migrate` or a custom Deserialize): no default today"
        )
    );
}

async fn absurd_attempt_count_ends_in_the_dead_set(t: &TestBackend) {
    let payload = format!(
        r#"{{"jid":"max","job":"always_fails","args":{{"ledger":"{}"}},"attempt":4294967295}}"#,
        t.name("absurd_attempt")
    );
    let push = PushJob { jid: "max".into(), queue: "default".into(), payload, run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!((envelope.jid.as_str(), envelope.attempt), ("max", u32::MAX));
}

async fn malformed_envelope_field_is_named_with_the_job(t: &TestBackend) {
    let payload = r#"{"jid":"v0","job":"succeeds","version":"2","args":{}}"#;
    let push =
        PushJob { jid: "v0".into(), queue: "default".into(), payload: payload.into(), run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    // The dead entry is itself a valid envelope, with the original bytes kept.
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!((envelope.jid.as_str(), envelope.job.as_str()), ("v0", "succeeds"));
    assert_eq!(
        envelope.error.as_deref(),
        Some(
            "job `succeeds`: malformed payload: field `version` must be an integer from 1 to 4294967295, found the string \"2\""
        )
    );
    assert_eq!(envelope.extra["payload"], payload);
    assert_eq!(envelope.version, 1, "a version that does not read counts as the first");

    // A version that reads is kept: `versions` counts the entry where its payload was.
    t.backend().remove(&JobSet::Dead, &[stored_payload(t, JobSet::Dead).await]).await.unwrap();
    let payload = r#"{"jid":"v2","job":"succeeds","version":2,"attempt":-1,"args":{}}"#;
    let push =
        PushJob { jid: "v2".into(), queue: "default".into(), payload: payload.into(), run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (envelope, _) = only(t, JobSet::Dead).await;
    assert_eq!((envelope.jid.as_str(), envelope.version), ("v2", 2));
    assert!(envelope.error.as_deref().is_some_and(|e| e.contains("field `attempt`")), "{:?}", envelope.error);
}

async fn stored_payload(t: &TestBackend, set: JobSet) -> String {
    t.backend().list(&set, 0, 1).await.unwrap().remove(0).payload
}

/// The dead entry of an unreadable payload is a valid envelope (with empty
/// args) that keeps the original bytes. Retried from the dead set, the
/// original is what a worker opens: it is buried again as it was, not the
/// entry inside a new entry (nor run with the entry's empty args); and an
/// original that reads now (say, a newer worker) runs with its own args.
async fn retrying_an_unreadable_dead_job_retries_its_original_bytes(t: &TestBackend) {
    let original = r#"{"jid":"v0","job":"succeeds","version":"2","args":{"ledger":"x","n":1}}"#;
    let push =
        PushJob { jid: "v0".into(), queue: "default".into(), payload: original.into(), run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (first, _) = only(t, JobSet::Dead).await;
    let moved = jobs_core::admin::requeue(t.backend(), &JobSet::Dead, &jobs_core::admin::Selection::All).await;
    assert_eq!(moved.unwrap(), 1);
    assert_eq!(worker(t, 20).drain().await.unwrap().dead, 1);
    let (again, _) = only(t, JobSet::Dead).await;
    assert_eq!(again.error, first.error, "the same reason as the first time");
    assert_eq!(again.extra["payload"], original, "the original bytes, not the first entry");

    // An entry whose original reads: the original runs, with its own arguments.
    let ledger = t.name("buried_then_readable");
    let readable =
        serde_json::json!({"jid": "v1", "job": "succeeds", "version": 1, "args": {"ledger": ledger, "n": 7}});
    let entry = serde_json::json!({
        "jid": "v1", "job": "succeeds", "version": 1, "queue": "default", "args": {}, "attempt": 1,
        "enqueued_at": 0, "error": "malformed payload: …", "failed_at": 1, "payload": readable.to_string(),
    });
    let push =
        PushJob { jid: "v1".into(), queue: "default".into(), payload: entry.to_string(), run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    let report = worker(t, 20).drain().await.unwrap();
    assert_eq!((report.succeeded, report.dead), (1, 0));
    assert_eq!(Ledger::named(&ledger).entries(), ["ok 7"]);
}
