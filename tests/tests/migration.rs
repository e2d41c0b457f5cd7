//! Signature changes stay backward compatible: old payloads are migrated,
//! newer ones are put back for a newer worker.

use jobs_core::{Args, Envelope, JobError, JobSet, PushJob, RawJob, Worker, job};
use jobs_tests::{Ledger, TestBackend};

jobs_tests::conformance!(
    v1_payload_gets_default_locale,
    v2_payload_without_a_parameter_added_in_v2_is_an_error_not_a_default,
    v3_payload_is_left_for_a_newer_worker,
    alias_name_accepted,
    migrate_function_upgrades_v1_payloads,
    removed_parameter_in_an_old_payload_is_ignored,
    unknown_envelope_fields_are_kept_on_retry,
);

/// Version 2 added `locale` with a default.
#[job(version = 2, queue = "critical")]
async fn send_sms(ledger: String, user_id: u64, #[job(since = 2, default = "pt-BR".to_string())] locale: String) {
    Ledger::named(&ledger).record(format!("{user_id}:{locale}"));
}

/// Renamed from `send_notice`; `user_id` was called `uid`.
#[job(name = "notify_user", aliases = ["send_notice"])]
async fn notify_user(ledger: String, #[job(alias = "uid")] user_id: u64) {
    Ledger::named(&ledger).record(format!("notified {user_id}"));
}

fn split_name(from: u32, args: &mut Args) -> Result<(), JobError> {
    if from < 2 {
        let name = args
            .remove("name")
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or_else(|| JobError::fatal("no name"))?;
        let (first, last) = name.split_once(' ').unwrap_or((&name, ""));
        args.insert("first".into(), first.into());
        args.insert("last".into(), last.into());
    }
    Ok(())
}

/// Version 2 split `name` into `first` and `last`, through `migrate`.
#[job(version = 2, migrate = split_name)]
async fn greet(ledger: String, #[job(since = 2)] first: String, #[job(since = 2)] last: String) {
    Ledger::named(&ledger).record(format!("{first}|{last}"));
}

#[job(retries = 2)]
async fn fails_once_traced(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::new("try again"))
}

fn raw(job: &str, version: u32, queue: &str, args: serde_json::Value) -> RawJob {
    RawJob { job: job.into(), version, queue: queue.into(), args }
}

fn worker(t: &TestBackend) -> Worker {
    t.worker().build().unwrap()
}

async fn v1_payload_gets_default_locale(t: &TestBackend) {
    let (client, worker) = (t.client(), worker(t));
    let ledger = t.name("v1_default");
    client
        .enqueue_raw(raw("send_sms", 1, "critical", serde_json::json!({"ledger": ledger, "user_id": 7})))
        .await
        .unwrap();
    SendSms::perform_later(&client, ledger.clone(), 8, "en".into()).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 2);
    let mut ran = Ledger::named(&ledger).entries();
    ran.sort();
    assert_eq!(ran, ["7:pt-BR", "8:en"]);
}

async fn v2_payload_without_a_parameter_added_in_v2_is_an_error_not_a_default(t: &TestBackend) {
    let (client, worker) = (t.client(), worker(t));
    let ledger = t.name("v2_missing");
    client
        .enqueue_raw(raw("send_sms", 2, "critical", serde_json::json!({"ledger": ledger, "user_id": 7})))
        .await
        .unwrap();
    assert_eq!(worker.drain().await.unwrap().dead, 1);
    let dead = t.backend().list(&JobSet::Dead, 0, 1).await.unwrap();
    let reason = Envelope::from_json(&dead[0].payload).unwrap().error.unwrap();
    assert_eq!(
        reason,
        "job `send_sms`: missing argument `locale`: the payload is at version 2 and the parameter exists since version 2, so its default applies only to older payloads"
    );
    assert!(Ledger::named(&ledger).entries().is_empty());
}

async fn v3_payload_is_left_for_a_newer_worker(t: &TestBackend) {
    let (client, worker) = (t.client(), worker(t));
    let ledger = t.name("v3");
    let args = serde_json::json!({"ledger": ledger, "user_id": 7, "locale": "en", "channel": "whatsapp"});
    let jid = client.enqueue_raw(raw("send_sms", 3, "critical", args.clone())).await.unwrap();
    let report = worker.drain().await.unwrap();
    assert_eq!((report.deferred, report.succeeded, report.retried, report.dead), (1, 0, 0, 0));
    assert!(Ledger::named(&ledger).entries().is_empty(), "an old worker must not run a newer payload");
    let scheduled = t.backend().list(&JobSet::Scheduled, 0, 10).await.unwrap();
    assert_eq!(scheduled.len(), 1);
    let envelope = Envelope::from_json(&scheduled[0].payload).unwrap();
    assert_eq!((envelope.jid, envelope.version, envelope.attempt, envelope.deferred), (jid, 3, 0, 1));
    assert_eq!(envelope.args, args, "the payload goes back untouched");
    assert_eq!(t.backend().count(&JobSet::Dead).await.unwrap(), 0);
}

async fn alias_name_accepted(t: &TestBackend) {
    let (client, worker) = (t.client(), worker(t));
    let ledger = t.name("alias");
    client
        .enqueue_raw(raw("send_notice", 1, "default", serde_json::json!({"ledger": ledger, "uid": 5})))
        .await
        .unwrap();
    NotifyUser::perform_later(&client, ledger.clone(), 6).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 2);
    let mut ran = Ledger::named(&ledger).entries();
    ran.sort();
    assert_eq!(ran, ["notified 5", "notified 6"]);
}

async fn migrate_function_upgrades_v1_payloads(t: &TestBackend) {
    let (client, worker) = (t.client(), worker(t));
    let ledger = t.name("migrate");
    client
        .enqueue_raw(raw("greet", 1, "default", serde_json::json!({"ledger": ledger, "name": "Ada Lovelace"})))
        .await
        .unwrap();
    Greet::perform_later(&client, ledger.clone(), "Grace".into(), "Hopper".into()).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 2);
    let mut ran = Ledger::named(&ledger).entries();
    ran.sort();
    assert_eq!(ran, ["Ada|Lovelace", "Grace|Hopper"]);
}

async fn removed_parameter_in_an_old_payload_is_ignored(t: &TestBackend) {
    let (client, worker) = (t.client(), worker(t));
    let ledger = t.name("removed");
    let args = serde_json::json!({"ledger": ledger, "user_id": 1, "locale": "fr", "sender_id": 99});
    client.enqueue_raw(raw("send_sms", 2, "critical", args)).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().succeeded, 1);
    assert_eq!(Ledger::named(&ledger).entries(), ["1:fr"]);
}

async fn unknown_envelope_fields_are_kept_on_retry(t: &TestBackend) {
    let worker = worker(t);
    let args = serde_json::json!({ "ledger": t.name("traced") });
    let payload = format!(
        r#"{{"jid":"t1","job":"fails_once_traced","version":1,"queue":"default","args":{args},"attempt":0,"enqueued_at":1,"trace_id":"abc","tenant":{{"id":3}}}}"#
    );
    let push = PushJob { jid: "t1".into(), queue: "default".into(), payload, run_at: None, unique: None };
    t.backend().push(vec![push]).await.unwrap();
    assert_eq!(worker.drain().await.unwrap().retried, 1);
    let retry = t.backend().list(&JobSet::Retry, 0, 1).await.unwrap();
    let stored: serde_json::Value = serde_json::from_str(&retry[0].payload).unwrap();
    assert_eq!(stored["trace_id"], "abc");
    assert_eq!(stored["tenant"]["id"], 3);
    assert_eq!(stored["attempt"], 1);
}
