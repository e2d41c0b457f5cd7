//! Managing waiting jobs: the dead, retry and scheduled sets are listed with
//! their errors and attempts, moved back to their queue, or deleted; and the
//! worker CLI's `dead`, `retry` and `scheduled` commands that do it from a shell.

use std::process::Command;
use std::time::Duration;

use jobs_core::admin::{self, JobEntry, Selection};
use jobs_core::{
    Envelope, JobError, JobId, JobSet, JobStatus, RetryPolicy, StoredJob, WaitError, Worker, job, now_millis,
};
use jobs_tests::{Ledger, TestBackend};

jobs_tests::conformance!(
    a_dead_job_moved_back_gets_one_more_run_then_dies_again_with_its_new_error,
    a_dead_job_moved_back_forgets_its_dead_outcome_until_the_new_run_ends,
    dead_jobs_are_listed_latest_first_with_attempts_and_error,
    selections_take_ids_a_job_name_or_all_and_nothing_else,
    a_selection_by_a_renamed_job_takes_the_payloads_of_its_old_names,
    a_job_is_never_queued_twice_when_two_admins_requeue_it,
    retry_and_scheduled_jobs_run_now_or_are_deleted,
    jobs_are_deleted_from_a_queue_before_they_run,
    queues_and_in_flight_jobs_are_refused_with_the_reason,
    scheduled_jobs_of_a_name_are_listed_soonest_due_first,
);

#[job(retries = 0)]
async fn flaky_mail(ledger: String, attempt_error: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::new(attempt_error))
}

#[job(retries = 0)]
async fn flaky_sms(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::new("gateway down"))
}

#[job(retries = 5)]
async fn flaky_hook(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::new("gateway down"))
}

/// A job with a value: its outcome is kept.
#[job(retries = 0)]
async fn flaky_report(ledger: String) -> Result<u32, JobError> {
    let ledger = Ledger::named(&ledger);
    ledger.record("ran");
    if ledger.entries().len() == 1 { Err(JobError::new("database was down")) } else { Ok(7) }
}

#[job]
async fn reminder(ledger: String) {
    Ledger::named(&ledger).record("reminded");
}

fn worker(t: &TestBackend) -> Worker {
    let policy = RetryPolicy { retries: 0, base: Duration::from_secs(60), max_delay: Duration::from_secs(60) };
    t.worker().retry_policy(policy).concurrency(2).build().unwrap()
}

async fn dead(t: &TestBackend) -> Vec<JobEntry> {
    admin::newest(t.backend(), &JobSet::Dead, 100).await.unwrap()
}

/// Kills one `flaky_mail` with `error` and returns its id.
async fn kill_mail(t: &TestBackend, ledger: &str, error: &str) -> JobId {
    let jid = FlakyMail::perform_later(&t.client(), ledger.to_owned(), error.to_owned()).await.unwrap();
    assert_eq!(worker(t).drain().await.unwrap().dead, 1);
    jid
}

async fn a_dead_job_moved_back_gets_one_more_run_then_dies_again_with_its_new_error(t: &TestBackend) {
    let ledger = t.name("one_more_run");
    let jid = kill_mail(t, &ledger, "smtp said no").await;
    let moved = admin::requeue(t.backend(), &JobSet::Dead, &Selection::Ids(vec![jid.clone()])).await.unwrap();
    assert_eq!(moved, 1);
    assert!(dead(t).await.is_empty(), "the job left the dead set");
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 1);

    let report = worker(t).drain().await.unwrap();
    assert_eq!((report.succeeded, report.retried, report.dead), (0, 0, 1), "one more run, no fresh retries");
    assert_eq!(Ledger::named(&ledger).entries(), ["ran", "ran"]);
    let again = dead(t).await;
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].jid.as_str(), again[0].attempt), (jid.as_str(), 2));
    assert_eq!(again[0].error.as_deref(), Some("smtp said no"));
}

async fn a_dead_job_moved_back_forgets_its_dead_outcome_until_the_new_run_ends(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("forgets");
    let jid = FlakyReport::perform_later(&client, ledger.clone()).await.unwrap();
    assert_eq!(worker(t).drain().await.unwrap().dead, 1);
    let handle = client.handle::<FlakyReport>(jid.clone());
    let status = handle.status().await.unwrap();
    assert!(matches!(&status, JobStatus::Dead { error } if error == "database was down"), "{status:?}");

    assert_eq!(admin::requeue(t.backend(), &JobSet::Dead, &Selection::Ids(vec![jid])).await.unwrap(), 1);
    assert_eq!(handle.status().await.unwrap(), JobStatus::Pending, "queued again, no outcome yet");
    let waited = handle.wait(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(waited, WaitError::Timeout { .. }), "the old outcome is not handed out: {waited:?}");
    let rerun = worker(t);
    let (report, value) = tokio::join!(rerun.drain(), handle.wait(Duration::from_secs(60)));
    assert_eq!(report.unwrap().succeeded, 1);
    assert_eq!(value.unwrap(), 7);
}

async fn dead_jobs_are_listed_latest_first_with_attempts_and_error(t: &TestBackend) {
    let ledger = t.name("listed");
    let first = kill_mail(t, &ledger, "first error").await;
    // Death times are in milliseconds: the second dies once the clock has moved on.
    let first_died = dead(t).await[0].at;
    while now_millis() <= first_died {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = kill_mail(t, &ledger, "second error").await;

    let entries = dead(t).await;
    let ids: Vec<&str> = entries.iter().map(|e| e.jid.as_str()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "latest first");
    let entry = &entries[0];
    assert_eq!((entry.job.as_str(), entry.version, entry.queue.as_str()), ("flaky_mail", 1, "default"));
    assert_eq!((entry.attempt, entry.error.as_deref()), (1, Some("second error")));
    assert!(entry.failed_at.is_some_and(|at| at > 0) && entry.at >= entries[1].at);
    let oldest = admin::entries(t.backend(), &JobSet::Dead, 0, 1).await.unwrap();
    assert_eq!(oldest[0].jid, first.as_str(), "entries reads oldest first");
    assert_eq!(admin::newest(t.backend(), &JobSet::Dead, 1).await.unwrap()[0].jid, second.as_str());
}

#[job(aliases = ["daily_report"])]
async fn nightly_report(ledger: String) {
    Ledger::named(&ledger).record("reported");
}

/// `--job nightly_report` takes the payloads written before the rename,
/// under `daily_report`, too (and `--job daily_report` the new ones).
async fn a_selection_by_a_renamed_job_takes_the_payloads_of_its_old_names(t: &TestBackend) {
    let registry = jobs_core::Registry::linked().unwrap();
    let later = now_millis() + 3_600_000;
    for name in ["daily_report", "nightly_report", "flaky_sms"] {
        let payload = Envelope::new(name, 1, "default", serde_json::Map::new()).to_json();
        let job = jobs_core::PushJob {
            jid: JobId::new(),
            queue: "default".into(),
            payload,
            run_at: Some(later),
            unique: None,
        };
        t.backend().push(vec![job]).await.unwrap();
    }
    for name in ["nightly_report", "daily_report"] {
        let which = Selection::job_of(&registry, name);
        let listed = admin::first_selected(t.backend(), &JobSet::Scheduled, &which, 10).await.unwrap();
        let mut names: Vec<String> = listed.into_iter().map(|entry| entry.job).collect();
        names.sort();
        assert_eq!(names, ["daily_report", "nightly_report"], "{which:?}");
    }
    assert_eq!(Selection::job_of(&registry, "no_such_job"), Selection::Job("no_such_job".into()));
    let which = Selection::job_of(&registry, "nightly_report");
    assert_eq!(admin::remove(t.backend(), &JobSet::Scheduled, &which).await.unwrap(), 2);
    assert_eq!(t.backend().count(&JobSet::Scheduled).await.unwrap(), 1, "flaky_sms stays");
}

async fn selections_take_ids_a_job_name_or_all_and_nothing_else(t: &TestBackend) {
    let ledger = t.name("selections");
    let mail_a = kill_mail(t, &ledger, "a").await;
    let mail_b = kill_mail(t, &ledger, "b").await;
    FlakySms::perform_later(&t.client(), ledger.clone()).await.unwrap();
    assert_eq!(worker(t).drain().await.unwrap().dead, 1);
    assert_eq!(dead(t).await.len(), 3);

    let by_name = admin::requeue(t.backend(), &JobSet::Dead, &Selection::Job("flaky_sms".into())).await.unwrap();
    assert_eq!(by_name, 1);
    let queued = t.backend().list(&JobSet::Queue("default".into()), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(JobEntry::read(queued[0].clone()).job, "flaky_sms");

    let unknown = Selection::Ids(vec![JobId::from("no-such-job")]);
    assert_eq!(admin::remove(t.backend(), &JobSet::Dead, &unknown).await.unwrap(), 0);
    let one = Selection::Ids(vec![mail_a.clone()]);
    assert_eq!(admin::remove(t.backend(), &JobSet::Dead, &one).await.unwrap(), 1);
    let left: Vec<String> = dead(t).await.into_iter().map(|e| e.jid).collect();
    assert_eq!(left, [mail_b.as_str().to_owned()]);
    assert_eq!(admin::remove(t.backend(), &JobSet::Dead, &Selection::All).await.unwrap(), 1);
    assert!(dead(t).await.is_empty());
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 1, "the queue was not touched");
}

async fn a_job_is_never_queued_twice_when_two_admins_requeue_it(t: &TestBackend) {
    let ledger = t.name("twice");
    kill_mail(t, &ledger, "once").await;
    let payloads: Vec<String> =
        t.backend().list(&JobSet::Dead, 0, 10).await.unwrap().into_iter().map(|s| s.payload).collect();
    // Both read the dead set before either moved the job.
    assert_eq!(t.backend().requeue(&JobSet::Dead, &payloads).await.unwrap(), 1);
    assert_eq!(t.backend().requeue(&JobSet::Dead, &payloads).await.unwrap(), 0);
    assert_eq!(t.backend().remove(&JobSet::Dead, &payloads).await.unwrap(), 0);
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 1);
}

async fn retry_and_scheduled_jobs_run_now_or_are_deleted(t: &TestBackend) {
    let ledger = t.name("run_now");
    let client = t.client();
    let later = Reminder::perform_in(&client, Duration::from_secs(3600), ledger.clone()).await.unwrap();
    let dropped = Reminder::perform_in(&client, Duration::from_secs(7200), ledger.clone()).await.unwrap();
    let retrying = FlakyHook::perform_later(&client, ledger.clone()).await.unwrap();
    let policy = RetryPolicy { retries: 5, base: Duration::from_secs(3600), max_delay: Duration::from_secs(3600) };
    let report = t.worker().retry_policy(policy).build().unwrap().drain().await.unwrap();
    assert_eq!(report.retried, 1);

    let retries = admin::newest(t.backend(), &JobSet::Retry, 10).await.unwrap();
    assert_eq!((retries.len(), retries[0].jid.as_str()), (1, retrying.as_str()));
    assert_eq!((retries[0].attempt, retries[0].error.as_deref()), (1, Some("gateway down")));
    let removed = admin::remove(t.backend(), &JobSet::Retry, &Selection::All).await.unwrap();
    assert_eq!(removed, 1);

    let scheduled = Selection::Ids(vec![later.clone()]);
    assert_eq!(admin::requeue(t.backend(), &JobSet::Scheduled, &scheduled).await.unwrap(), 1);
    let report = worker(t).drain().await.unwrap();
    assert_eq!(report.succeeded, 1, "the scheduled job ran now, not in an hour");
    assert_eq!(Ledger::named(&ledger).entries(), ["ran", "reminded"]);
    let waiting = admin::entries(t.backend(), &JobSet::Scheduled, 0, 10).await.unwrap();
    assert_eq!(waiting.iter().map(|e| e.jid.as_str()).collect::<Vec<_>>(), [dropped.as_str()]);
    assert_eq!(admin::remove(t.backend(), &JobSet::Scheduled, &Selection::Job("reminder".into())).await.unwrap(), 1);
    assert_eq!(t.backend().count(&JobSet::Scheduled).await.unwrap(), 0);
}

/// `scheduled list --job NAME` (and `retry list`) shows the soonest due first,
/// as `first_named` reads them; the dead list shows the latest first.
async fn scheduled_jobs_of_a_name_are_listed_soonest_due_first(t: &TestBackend) {
    let (ledger, client) = (t.name("soonest"), t.client());
    let mut ids = Vec::new();
    for hours in [3, 1, 2] {
        ids.push((
            hours,
            Reminder::perform_in(&client, Duration::from_secs(hours * 3600), ledger.clone()).await.unwrap(),
        ));
    }
    FlakyHook::perform_in(&client, Duration::from_secs(1800), ledger.clone()).await.unwrap();
    ids.sort();
    let listed = admin::first_named(t.backend(), &JobSet::Scheduled, "reminder", 2).await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|entry| entry.jid.as_str()).collect();
    assert_eq!(listed, [ids[0].1.as_str(), ids[1].1.as_str()], "in one hour, then in two");
}

async fn jobs_are_deleted_from_a_queue_before_they_run(t: &TestBackend) {
    let ledger = t.name("deleted_from_queue");
    let client = t.client();
    let unwanted = Reminder::perform_later(&client, ledger.clone()).await.unwrap();
    Reminder::perform_later(&client, ledger.clone()).await.unwrap();
    let queue = JobSet::Queue("default".into());
    assert_eq!(admin::remove(t.backend(), &queue, &Selection::Ids(vec![unwanted])).await.unwrap(), 1);
    assert_eq!(worker(t).drain().await.unwrap().succeeded, 1);
    assert_eq!(Ledger::named(&ledger).entries(), ["reminded"]);
}

async fn queues_and_in_flight_jobs_are_refused_with_the_reason(t: &TestBackend) {
    let queue = JobSet::Queue("default".into());
    let error = admin::requeue(t.backend(), &queue, &Selection::All).await.unwrap_err();
    assert!(!error.is_transient());
    assert!(
        error.to_string().ends_with("cannot requeue jobs of the queue `default`: they are ready to run already"),
        "{error}"
    );
    let error = t.backend().remove(&JobSet::InFlight, &["{}".to_owned()]).await.unwrap_err();
    assert!(error.to_string().contains("leased by a running worker"), "{error}");
    let error = t.backend().requeue(&JobSet::InFlight, &[]).await.unwrap_err();
    assert!(error.to_string().contains("cannot requeue jobs of the in-flight set"), "{error}");
}

#[test]
fn an_unreadable_payload_is_still_listed_with_the_reason() {
    let entry = JobEntry::read(StoredJob { payload: "{\"jid\": ".into(), at: 7 });
    assert_eq!((entry.jid.as_str(), entry.job.as_str(), entry.at), ("", "", 7));
    assert!(entry.error.is_some_and(|e| e.starts_with("unreadable payload: ")));
    let valid = Envelope::new("greet", 3, "mail", serde_json::Map::new());
    let entry = JobEntry::read(StoredJob { payload: valid.to_json(), at: 0 });
    assert_eq!((entry.job.as_str(), entry.version, entry.queue.as_str()), ("greet", 3, "mail"));
}

/// Runs the real worker binary against `t`'s Redis: success, stdout, stderr.
fn run_cli(t: &TestBackend, args: &[&str]) -> (bool, String, String) {
    let url = t.server().map(|s| s.url()).expect("a Redis test backend");
    let output = Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(args)
        .args(["--redis-url", &url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run test-worker");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// The real worker binary lists the dead set, retries a job by id, and refuses
/// a `retry` that names no job, saying what to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_retries_and_deletes_dead_jobs() {
    let t = TestBackend::redis().await;
    let ledger = t.name("cli");
    let jid = kill_mail(&t, &ledger, "smtp said no\nat line 2").await;
    let cli = |args: &[&str]| run_cli(&t, args);

    let (ok, listed, stderr) = cli(&["dead", "list"]);
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one job: {listed}");
    assert!(lines[0].starts_with("jid") && lines[0].ends_with("error"), "{listed}");
    assert!(lines[1].starts_with(jid.as_str()), "{listed}");
    assert!(lines[1].contains("flaky_mail v1") && lines[1].ends_with("smtp said no"), "{listed}");

    // A name with no dead job, while others are dead: not "empty"; a typo is an error.
    let (ok, listed, _) = cli(&["dead", "list", "--job", "append_to_ledger"]);
    assert!(ok);
    assert_eq!(listed, "no `append_to_ledger` job is in the dead set (1 other job)\n");
    let (ok, _, stderr) = cli(&["dead", "list", "--job", "apend_to_ledger"]);
    assert!(!ok && stderr.contains("a typo?"), "{stderr}");

    let (ok, json, _) = cli(&["dead", "list", "--json"]);
    assert!(ok);
    let envelope = Envelope::from_json(json.trim()).unwrap();
    assert_eq!((envelope.jid, envelope.attempt), (jid.clone(), 1));

    let (ok, _, stderr) = cli(&["dead", "retry"]);
    assert!(!ok);
    assert!(
        stderr.contains("required arguments were not provided") && stderr.contains("<JID|--all|--job <NAME>>"),
        "{stderr}"
    );

    let (ok, moved, stderr) = cli(&["dead", "retry", jid.as_str()]);
    assert!(ok, "{stderr}");
    assert_eq!(moved, "moved 1 job from the dead set to its queue\n");
    let (ok, empty, _) = cli(&["dead", "list"]);
    assert!(ok);
    assert_eq!(empty, "the dead set is empty\n");
    assert_eq!(t.backend().count(&JobSet::Queue("default".into())).await.unwrap(), 1);

    let (ok, moved, stderr) = cli(&["dead", "retry", jid.as_str()]);
    assert!(!ok, "an id that is not there is an error");
    assert_eq!(moved, "moved 0 jobs from the dead set to their queues\n");
    assert!(stderr.contains("error: no job with that id is in the dead set (`list` shows what is)"), "{stderr}");

    let (ok, deleted, stderr) = cli(&["scheduled", "delete", "--all"]);
    assert!(ok, "{stderr}");
    assert_eq!(deleted, "deleted 0 jobs from the scheduled set\n");

    // `--job` with a name no job of this binary has: a typo, said so; a registered
    // name with nothing to retry is no error.
    let (ok, _, stderr) = cli(&["dead", "retry", "--job", "apend_to_ledger"]);
    assert!(!ok);
    assert!(stderr.contains("no job of that name is registered in this binary: a typo?"), "{stderr}");
    let (ok, moved, stderr) = cli(&["dead", "delete", "--job", "append_to_ledger"]);
    assert!(ok, "{stderr}");
    assert_eq!(moved, "deleted 0 jobs from the dead set\n");
}

/// `enqueue` checks the arguments as the binary's workers will read them:
/// a wrong type, a missing argument or an unknown one is refused with the
/// field named, and nothing is queued; arguments that read are queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_enqueues_only_arguments_its_workers_can_read() {
    let t = TestBackend::redis().await;
    let cli = |args: &[&str]| {
        let (ok, _, stderr) = run_cli(&t, args);
        (ok, stderr)
    };
    let ledger = JobSet::Queue("ledger".into());

    let (ok, stderr) = cli(&["enqueue", "append_to_ledger", r#"{"path": "/tmp/x", "n": "one", "pause_ms": 0}"#]);
    assert!(!ok);
    assert!(stderr.contains("`n`") && stderr.contains("nothing was enqueued"), "{stderr}");
    let (ok, stderr) = cli(&["enqueue", "append_to_ledger", r#"{"path": "/tmp/x", "n": 1}"#]);
    assert!(!ok);
    assert!(stderr.contains("missing argument `pause_ms`"), "{stderr}");
    // A key that names no parameter (a typo) is refused, not dropped.
    let (ok, stderr) = cli(&["enqueue", "append_to_ledger", r#"{"path": "/tmp/x", "n": 1, "pause": 0}"#]);
    assert!(!ok);
    assert!(stderr.contains("argument `pause`: names no parameter: version 1 takes"), "{stderr}");
    assert!(stderr.contains("nothing was enqueued"), "{stderr}");
    assert!(stderr.contains("`path`, `n`, `pause_ms`"), "{stderr}");
    assert_eq!(t.backend().count(&ledger).await.unwrap(), 0, "nothing was queued");

    let (ok, stderr) = cli(&["enqueue", "append_to_ledger", r#"{"path": "/tmp/x", "n": 1, "pause_ms": 0}"#]);
    assert!(ok, "{stderr}");
    assert_eq!(t.backend().count(&ledger).await.unwrap(), 1);

    // A version newer than the binary's would wait for a newer worker for good: a typo
    // unless said on purpose.
    let args = r#"{"path": "/tmp/x", "n": 1, "pause_ms": 0}"#;
    let (ok, stderr) = cli(&["enqueue", "append_to_ledger", args, "--version", "3"]);
    assert!(!ok);
    assert!(stderr.contains("registers `append_to_ledger` at v1: a v3 payload runs only on a worker"), "{stderr}");
    assert!(stderr.contains("nothing was enqueued") && stderr.contains("--newer"), "{stderr}");
    assert_eq!(t.backend().count(&ledger).await.unwrap(), 1);
    let (ok, stderr) = cli(&["enqueue", "append_to_ledger", args, "--version", "3", "--newer"]);
    assert!(ok, "{stderr}");
    assert_eq!(t.backend().count(&ledger).await.unwrap(), 2);
}

/// `check` exits 0 on a matching lock file, 1 on a breaking change (the
/// report says which), and 2 when there is no lock file to compare: CI can
/// tell a change that breaks from a check that could not run.
#[test]
fn the_cli_check_exit_codes_tell_a_break_from_a_missing_lock_file() {
    let dir = std::env::temp_dir().join(format!("jobs-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("jobs.lock.json");
    let worker = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_test-worker")).args(args).output().unwrap();
    let lock_arg = lock.to_str().unwrap();
    assert!(worker(&["schema", "--write", lock_arg]).status.success());
    assert_eq!(worker(&["check", lock_arg]).status.code(), Some(0));
    // The recorded `n` becomes a String: the code's `u64` no longer reads it.
    let text = std::fs::read_to_string(&lock).unwrap().replacen("\"u64\"", "\"String\"", 1);
    std::fs::write(&lock, text).unwrap();
    let broken = worker(&["check", lock_arg]);
    assert_eq!(broken.status.code(), Some(1), "{}", String::from_utf8_lossy(&broken.stdout));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("breaking: "));
    let missing = worker(&["check", dir.join("nowhere.json").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2), "{}", String::from_utf8_lossy(&missing.stderr));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: "));
    let _ = std::fs::remove_dir_all(&dir);
}
