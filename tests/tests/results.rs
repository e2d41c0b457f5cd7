//! Results, lifecycle events and cancellation: what the web app learns after
//! it enqueued a job. Every test runs on MemoryBackend and on Redis.

use std::time::Duration;

use jobs_core::{EventKind, JobContext, JobError, JobSet, JobStatus, WaitError, job};
use jobs_tests::{Ledger, TestBackend};

jobs_tests::conformance!(
    a_returned_value_is_kept_and_wait_wakes_with_it,
    a_handle_of_another_job_type_is_refused_not_misread,
    a_wait_for_ever_waits_and_wakes_without_overflowing,
    a_unit_job_keeps_nothing_unless_asked,
    retrying_and_dead_outcomes_are_recorded_with_the_error,
    wait_gives_up_at_its_timeout,
    a_job_cancelled_before_it_starts_never_runs,
    a_running_job_sees_its_cancellation_and_stops,
    a_job_running_under_drain_sees_its_cancellation_too,
    events_report_every_step_in_order_and_resume_after_an_id,
    no_events_are_written_unless_turned_on,
    a_running_worker_never_reports_started_before_enqueued,
);

const LONG: Duration = Duration::from_secs(30);

#[job(queue = "images")]
async fn count_pixels(width: u64, height: u64) -> Result<u64, JobError> {
    Ok(width * height)
}

#[job(queue = "images")]
async fn touch(ledger: String) {
    Ledger::named(&ledger).record("touched");
}

#[job(queue = "images", keep_result = "1h")]
async fn touch_kept(ledger: String) {
    Ledger::named(&ledger).record("touched");
}

#[job(queue = "images", retries = 1, keep_result = "10m")]
async fn flaky(ledger: String) -> Result<(), JobError> {
    Ledger::named(&ledger).record("ran");
    Err(JobError::new("the image server said 503"))
}

#[job(queue = "images")]
async fn resize(ledger: String, width: u32) -> Result<String, JobError> {
    Ledger::named(&ledger).record(format!("resized to {width}"));
    Ok(format!("{width}px"))
}

/// Works in steps until cancelled.
#[job(queue = "images", retries = 5)]
async fn transcode(ledger: String, ctx: &JobContext) -> Result<u32, JobError> {
    let ledger = Ledger::named(&ledger);
    ledger.record("started");
    ctx.cancelled().await;
    ledger.record(format!("stopped, cancelled={}", ctx.is_cancelled()));
    Err(JobError::new("cancelled mid-way"))
}

async fn drain(t: &TestBackend) -> jobs_core::WorkerReport {
    t.worker().queue("images", 1).build().unwrap().drain().await.unwrap()
}

async fn a_returned_value_is_kept_and_wait_wakes_with_it(t: &TestBackend) {
    let client = t.client();
    let jid = CountPixels::perform_later(&client, 640, 480).await.unwrap();
    let handle = client.handle::<CountPixels>(jid);
    assert_eq!(handle.status().await.unwrap(), JobStatus::Pending);
    // A waiter that starts before the job runs is woken by its outcome.
    let waiter = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.wait(LONG).await })
    };
    assert_eq!(drain(t).await.succeeded, 1);
    assert_eq!(waiter.await.unwrap().unwrap(), 307_200);
    assert_eq!(handle.status().await.unwrap(), JobStatus::Succeeded(307_200));
    // A wait after the fact returns at once; the untyped handle reads JSON.
    assert_eq!(client.handle_json(handle.jid().clone()).wait(LONG).await.unwrap(), serde_json::json!(307_200));
}

/// Returns a `u64` too: read through its handle, a `count_pixels` id
/// would give that job's value as this one's.
#[job(queue = "images", aliases = ["area_in_pixels"])]
async fn count_pixels_again(width: u64, height: u64) -> Result<u64, JobError> {
    Ok(width * height)
}

async fn a_handle_of_another_job_type_is_refused_not_misread(t: &TestBackend) {
    let client = t.client();
    let jid = CountPixels::perform_later(&client, 640, 480).await.unwrap();
    let raw = jobs_core::RawJob {
        job: "area_in_pixels".into(),
        version: 1,
        queue: "images".into(),
        args: serde_json::json!({"width": 2, "height": 3}),
    };
    let by_alias = client.enqueue_raw(raw).await.unwrap();
    assert_eq!(drain(t).await.succeeded, 2);
    let wrong = client.handle::<CountPixelsAgain>(jid.clone());
    for error in [wrong.wait(LONG).await.unwrap_err(), wrong.status().await.unwrap_err()] {
        assert!(
            matches!(&error, WaitError::OtherJob { expected: "count_pixels_again", found, .. } if found == "count_pixels"),
            "{error:?}"
        );
        assert!(
            error.to_string().ends_with(
                "is a `count_pixels` job, not `count_pixels_again`: get its handle with the job type that enqueued it"
            ),
            "{error}"
        );
    }
    assert_eq!(client.handle::<CountPixels>(jid.clone()).wait(LONG).await.unwrap(), 307_200);
    assert_eq!(client.handle_json(jid).wait(LONG).await.unwrap(), serde_json::json!(307_200));
    // Enqueued under an old name, the job is still its own.
    assert_eq!(client.handle::<CountPixelsAgain>(by_alias).wait(LONG).await.unwrap(), 6);
}

/// `Duration::MAX` (or `u64::MAX` milliseconds) means "for ever": it used to
/// overflow the clock (a panic) or exceed what Redis takes as a timeout.
async fn a_wait_for_ever_waits_and_wakes_without_overflowing(t: &TestBackend) {
    let client = t.client();
    let jid = CountPixels::perform_later(&client, 3, 4).await.unwrap();
    let waiters: Vec<_> = [Duration::MAX, Duration::from_millis(u64::MAX)]
        .into_iter()
        .map(|timeout| {
            let handle = client.handle::<CountPixels>(jid.clone());
            tokio::spawn(async move { handle.wait(timeout).await })
        })
        .collect();
    assert_eq!(drain(t).await.succeeded, 1);
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap().unwrap(), 12);
    }
    let handle = client.handle::<CountPixels>(jid);
    assert_eq!(handle.wait(Duration::MAX).await.unwrap(), 12, "an outcome already there");
    // A read of events that may block for ever returns what is there.
    let event = jobs_core::EventRecord { json: r#"{"n":1}"#.to_owned() };
    t.backend().record(&[], &[event]).await.unwrap();
    let batch = t.backend().read_events(Some("0"), 10, Duration::MAX).await.unwrap();
    assert_eq!(batch.events.len(), 1, "{batch:?}");
}

async fn a_unit_job_keeps_nothing_unless_asked(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("unit");
    let plain = client.handle::<Touch>(Touch::perform_later(&client, ledger.clone()).await.unwrap());
    let kept = client.handle::<TouchKept>(TouchKept::perform_later(&client, ledger.clone()).await.unwrap());
    assert_eq!(drain(t).await.succeeded, 2);
    assert_eq!(Ledger::named(&ledger).entries().len(), 2);
    assert_eq!(plain.status().await.unwrap(), JobStatus::Pending, "a () job keeps no result by default");
    assert_eq!(kept.status().await.unwrap(), JobStatus::Succeeded(()));
    kept.wait(LONG).await.unwrap();
    // Waiting on a job that keeps nothing would only ever time out: it is refused at once.
    let error = plain.wait(LONG).await.unwrap_err();
    assert!(matches!(error, WaitError::NotKept { job: "touch", .. }), "{error:?}");
    assert!(error.to_string().contains("write `keep_result = \"1h\"`"), "{error}");
    // The untyped handle cannot tell, and waits (here not at all).
    let untyped = client.handle_json(plain.jid().clone()).wait(Duration::ZERO).await.unwrap_err();
    assert!(matches!(untyped, WaitError::Timeout { .. }), "{untyped:?}");
}

async fn retrying_and_dead_outcomes_are_recorded_with_the_error(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("flaky");
    let handle = client.handle::<Flaky>(Flaky::perform_later(&client, ledger.clone()).await.unwrap());
    assert_eq!(drain(t).await.retried, 1);
    assert_eq!(
        handle.status().await.unwrap(),
        JobStatus::Retrying { error: "the image server said 503".into(), attempt: 1 }
    );
    t.backend().promote_due(Some(u64::MAX)).await.unwrap();
    assert_eq!(drain(t).await.dead, 1);
    assert_eq!(handle.status().await.unwrap(), JobStatus::Dead { error: "the image server said 503".into() });
    let error = handle.wait(LONG).await.unwrap_err();
    assert!(matches!(&error, WaitError::Dead { error, .. } if error == "the image server said 503"), "{error:?}");
    assert_eq!(Ledger::named(&ledger).entries().len(), 2);
}

async fn wait_gives_up_at_its_timeout(t: &TestBackend) {
    let client = t.client();
    let jid = CountPixels::perform_later(&client, 1, 1).await.unwrap();
    let error = client.handle::<CountPixels>(jid.clone()).wait(Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(&error, WaitError::Timeout { jid: timed_out, .. } if *timed_out == jid), "{error:?}");
    assert!(error.to_string().ends_with("no outcome within 50ms"), "{error}");
}

async fn a_job_cancelled_before_it_starts_never_runs(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("cancel-before");
    let now = Resize::perform_later(&client, ledger.clone(), 100).await.unwrap();
    let later = Resize::perform_in(&client, Duration::from_secs(3600), ledger.clone(), 200).await.unwrap();
    let kept = Resize::perform_later(&client, ledger.clone(), 300).await.unwrap();
    let (now, later, kept) =
        (client.handle::<Resize>(now), client.handle::<Resize>(later), client.handle::<Resize>(kept));
    now.cancel().await.unwrap();
    later.cancel().await.unwrap();

    let waiter = {
        let now = now.clone();
        tokio::spawn(async move { now.wait(LONG).await })
    };
    let report = drain(t).await;
    assert_eq!((report.succeeded, report.cancelled), (1, 1), "{report:?}");
    assert!(matches!(waiter.await.unwrap(), Err(WaitError::Cancelled { .. })));
    assert_eq!(now.status().await.unwrap(), JobStatus::Cancelled);
    assert_eq!(kept.wait(LONG).await.unwrap(), "300px");

    // The scheduled one is cancelled when it comes due, not run.
    t.backend().promote_due(Some(u64::MAX)).await.unwrap();
    assert_eq!(drain(t).await.cancelled, 1);
    assert_eq!(later.status().await.unwrap(), JobStatus::Cancelled);
    assert_eq!(Ledger::named(&ledger).entries(), ["resized to 300"]);
    assert_eq!(t.backend().count(&JobSet::Queue("images".into())).await.unwrap(), 0);
    assert_eq!(t.backend().count(&JobSet::Dead).await.unwrap(), 0);
}

async fn a_running_job_sees_its_cancellation_and_stops(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("cancel-running");
    let handle = client.handle::<Transcode>(Transcode::perform_later(&client, ledger.clone()).await.unwrap());
    // A short lease: the heartbeat that reads cancellations runs every third of it.
    let worker = t.worker().queue("images", 1).lease(Duration::from_millis(600)).build().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run_until(stopped).await });

    Ledger::named(&ledger).wait_for(1).await;
    handle.cancel().await.unwrap();
    let error = handle.wait(LONG).await.unwrap_err();
    assert!(matches!(error, WaitError::Cancelled { .. }), "{error:?}");
    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.cancelled, report.retried, report.dead), (1, 0, 0), "{report:?}");
    assert_eq!(Ledger::named(&ledger).entries(), ["started", "stopped, cancelled=true"]);
    assert_eq!(t.backend().count(&JobSet::Retry).await.unwrap(), 0);
}

async fn a_job_running_under_drain_sees_its_cancellation_too(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("cancel-drain");
    let handle = client.handle::<Transcode>(Transcode::perform_later(&client, ledger.clone()).await.unwrap());
    let worker = t.worker().queue("images", 1).lease(Duration::from_millis(600)).build().unwrap();
    let cancel = async {
        Ledger::named(&ledger).wait_for(1).await;
        handle.cancel().await.unwrap();
    };
    let (report, ()) = tokio::join!(worker.drain(), cancel);
    let report = report.unwrap();
    assert_eq!((report.cancelled, report.retried, report.dead), (1, 0, 0), "{report:?}");
    assert_eq!(Ledger::named(&ledger).entries(), ["started", "stopped, cancelled=true"]);
}

async fn events_report_every_step_in_order_and_resume_after_an_id(t: &TestBackend) {
    let client = t.client().with_events(true);
    let ledger = t.name("events");
    let mut events = client.events().await.unwrap();
    // Position the reader at the stream's end before anything happens.
    let idle = t.backend().read_events(None, 10, Duration::from_millis(1)).await.unwrap();
    assert!(idle.events.is_empty());

    let good = Resize::perform_later(&client, ledger.clone(), 64).await.unwrap();
    let bad = Flaky::perform_later(&client, ledger.clone()).await.unwrap();
    let worker = t.worker().queue("images", 1).concurrency(1).events(true).build().unwrap();
    worker.drain().await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 7 {
        seen.push(tokio::time::timeout(LONG, events.next()).await.unwrap().unwrap());
    }
    // Each job's events come in the order of its life; across jobs, a success
    // is written with its acknowledgement batch, so it may come after the next
    // job's events.
    let of = |jid: &jobs_core::JobId| -> Vec<EventKind> {
        seen.iter().filter(|event| event.jid == *jid).map(|event| event.kind).collect()
    };
    assert_eq!(of(&good), [EventKind::Enqueued, EventKind::Started, EventKind::Succeeded]);
    assert_eq!(of(&bad), [EventKind::Enqueued, EventKind::Started, EventKind::Failed, EventKind::Retrying]);
    assert_eq!((seen[0].jid.clone(), seen[1].jid.clone()), (good.clone(), bad.clone()), "enqueued in order");
    let succeeded = seen.iter().find(|event| event.kind == EventKind::Succeeded).unwrap();
    assert_eq!(
        (succeeded.job.as_str(), succeeded.queue.as_str(), succeeded.version, succeeded.attempt),
        ("resize", "images", 1, 1)
    );
    assert!(succeeded.duration_ms.is_some());
    let failed = seen.iter().find(|event| event.kind == EventKind::Failed).unwrap();
    assert_eq!(failed.error.as_deref(), Some("the image server said 503"));
    assert_eq!(seen[1].attempt, 0);

    // A reader that reconnects after the second event gets the rest again.
    let mut resumed = client.events_after(seen[1].id.clone());
    let again = tokio::time::timeout(LONG, resumed.next()).await.unwrap().unwrap();
    assert_eq!(
        (again.id.clone(), again.kind, again.jid.clone()),
        (seen[2].id.clone(), seen[2].kind, seen[2].jid.clone())
    );
}

/// The `enqueued` event is written with the push, in one step: a worker
/// that picks a job up at once (it was waiting) cannot write `started`
/// first. (Written after the push, it lost that race about once in six.)
async fn a_running_worker_never_reports_started_before_enqueued(t: &TestBackend) {
    let client = t.client().with_events(true);
    let ledger = t.name("first_enqueued");
    let worker = t.worker().queue("images", 1).concurrency(10).events(true).build().unwrap();
    let stop = jobs_tests::Gate::named(&t.name("first_enqueued_stop"));
    let run = tokio::spawn({
        let (worker, stop) = (worker.clone(), stop.clone());
        async move { worker.run_until(stop.wait()).await }
    });
    let mut jids = Vec::new();
    for _ in 0..100 {
        jids.push(Touch::perform_later(&client, ledger.clone()).await.unwrap());
    }
    Ledger::named(&ledger).wait_for(100).await;
    stop.open();
    tokio::time::timeout(LONG, run).await.unwrap().unwrap().unwrap();
    let all = t.backend().read_events(Some("0"), 1000, Duration::from_millis(1)).await.unwrap();
    let events: Vec<jobs_core::Event> =
        all.events.iter().map(|(_, json)| serde_json::from_str(json).unwrap()).collect();
    for jid in &jids {
        let kinds: Vec<EventKind> = events.iter().filter(|e| e.jid == *jid).map(|e| e.kind).collect();
        assert_eq!(kinds[..2], [EventKind::Enqueued, EventKind::Started], "{jid}: {kinds:?}");
    }
}

async fn no_events_are_written_unless_turned_on(t: &TestBackend) {
    let client = t.client();
    let ledger = t.name("quiet");
    Resize::perform_later(&client, ledger, 8).await.unwrap();
    drain(t).await;
    let all = t.backend().read_events(Some("0"), 100, Duration::from_millis(1)).await.unwrap();
    assert!(all.events.is_empty(), "{all:?}");
}

/// Waits at its gate, then returns a value.
#[job(queue = "stale")]
async fn slow_value(ledger: String, gate: String) -> Result<u32, JobError> {
    Ledger::named(&ledger).record("started");
    jobs_tests::Gate::named(&gate).wait().await;
    Ok(7)
}

// Redis only: the lease of a running job is expired and taken over by hand, as
// happens when its worker stalls; that worker's late success must not be recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_does_not_record_a_success_over_the_live_run() {
    let t = TestBackend::redis().await;
    let server = t.server().unwrap();
    let client = t.client();
    let (ledger, gate) = ("stale-success-ledger".to_owned(), "stale-success-gate".to_owned());
    let handle =
        client.handle::<SlowValue>(SlowValue::perform_later(&client, ledger.clone(), gate.clone()).await.unwrap());
    // `drain` runs no maintenance, and with this lease its heartbeat extends
    // the lease only at its start and then after 200 s.
    let worker = t.worker().queue("stale", 1).lease(Duration::from_secs(600)).build().unwrap();
    let running = tokio::spawn(async move { worker.drain().await });
    Ledger::named(&ledger).wait_for(1).await;

    let leases = server.command(&["ZRANGE", "{jobs}:lease-deadlines", "0", "-1"]);
    let token = leases.lines().find(|line| !line.starts_with('*') && !line.starts_with('$')).unwrap().trim().to_owned();
    // The first heartbeat's extension may land after the expiry below: then expire it again.
    let mut taken = Vec::new();
    for _ in 0..3 {
        server.command(&["ZADD", "{jobs}:lease-deadlines", "0", &token]);
        taken = t.backend().rescue(&jobs_core::WorkerId::generate(), Duration::from_secs(60), 10).await.unwrap();
        if !taken.is_empty() {
            break;
        }
    }
    assert_eq!(taken.len(), 1, "the other worker took the job over");

    jobs_tests::Gate::named(&gate).open();
    // The drain ends by flushing its acknowledgements: the stale one is refused.
    let report = running.await.unwrap().unwrap();
    assert_eq!((report.succeeded, report.stale), (0, 1), "{report:?}");
    assert_eq!(handle.status().await.unwrap(), JobStatus::Pending, "no success recorded by the stale worker");
}

#[tokio::test]
async fn the_embedded_backend_caps_stored_outcomes_by_count_too() {
    use jobs_core::{Backend, JobId, MemoryBackend, OutcomeRecord};
    let backend = MemoryBackend::new().results_max(3);
    let succeeded = r#"{"state":"succeeded","value":7,"attempt":1,"finished_at":1}"#;
    for (i, jid) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let ttl = Duration::from_secs(60 + i as u64);
        let record = OutcomeRecord { jid: JobId::from(jid), outcome: succeeded.to_owned(), is_final: true, ttl };
        backend.record(&[record], &[]).await.unwrap();
    }
    for (jid, kept) in [("a", false), ("b", false), ("c", true), ("d", true), ("e", true)] {
        assert_eq!(backend.outcome(&JobId::from(jid)).await.unwrap().is_some(), kept, "{jid}");
    }
}

/// Cancellation requests are capped by count as well as by age: beyond
/// `CANCELS_KEPT`, those closest to expiring go first (a flood of requests
/// for ids that name no job cannot fill Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_requests_are_capped_by_count() {
    let t = TestBackend::redis().await;
    let day_later = jobs_core::now_millis() + 24 * 3600 * 1000;
    let mut fill = vec!["ZADD".to_owned(), "{jobs}:cancelled".to_owned()];
    for n in 0..jobs_core::CANCELS_KEPT as u64 {
        fill.push((day_later + n).to_string());
        fill.push(format!("j{n}"));
    }
    let args: Vec<&str> = fill.iter().map(String::as_str).collect();
    assert_eq!(t.server().unwrap().command(&args).trim(), format!(":{}", jobs_core::CANCELS_KEPT));
    let newest = jobs_core::JobId::from("newest");
    t.backend().cancel(&newest, day_later + 10 * jobs_core::CANCELS_KEPT as u64).await.unwrap();
    let count = t.server().unwrap().command(&["ZCARD", "{jobs}:cancelled"]);
    assert_eq!(count.trim(), format!(":{}", jobs_core::CANCELS_KEPT));
    let held =
        t.backend().cancel_requested(&[jobs_core::JobId::from("j0"), jobs_core::JobId::from("j1"), newest]).await;
    assert_eq!(held.unwrap(), [false, true, true], "the one closest to expiring went");
}

/// The embedded backend bounds its event stream as Redis does: by age
/// (older events are dropped as new ones come) and by count.
#[tokio::test]
async fn the_embedded_event_stream_is_bounded_by_age_and_count() {
    let age = Duration::from_millis(100);
    jobs_tests::events_are_kept_for_their_age_limit(&jobs_core::MemoryBackend::new().events_max_age(age), age).await;

    let backend = jobs_core::MemoryBackend::new().events_max_len(3);
    let events: Vec<jobs_core::EventRecord> =
        (0..5).map(|n| jobs_core::EventRecord { json: format!(r#"{{"n":{n}}}"#) }).collect();
    jobs_core::Backend::record(&backend, &[], &events).await.unwrap();
    let kept = jobs_core::Backend::read_events(&backend, Some("0"), 100, Duration::ZERO).await.unwrap();
    let jsons: Vec<&str> = kept.events.iter().map(|(_, json)| json.as_str()).collect();
    assert_eq!(jsons, [r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":4}"#], "the oldest beyond the cap are gone");
}
