//! Fault injection against a real Redis and real worker processes: SIGKILL in
//! the middle of 2,000 jobs, Redis restarted under a running worker, and bytes
//! no client would write pushed straight into a queue.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobs_core::{Client, Envelope, JobSet, Worker};
use jobs_redis::RedisBackend;
use jobs_redis::deadpool_redis::redis;
use jobs_tests::RedisServer;
use jobs_tests::jobs::{AppendToLedger, ledger_lines};

fn count(server: &RedisServer, args: &[&str]) -> u64 {
    let reply = server.command(args);
    // An integer reply (`:1`), or a number as a bulk string (`$1`, then `1`).
    let last = reply.lines().last().unwrap_or_default();
    last.trim_start_matches(':').trim().parse().unwrap_or_else(|_| panic!("{args:?} answered {reply:?}"))
}

fn spawn_worker(server: &RedisServer) -> Child {
    Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(["work", "--queue", "ledger", "--concurrency", "20", "--lease", "2", "--retry-backoff", "0.05"])
        .env("JOBS_REDIS_URL", server.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start test-worker")
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ledger_path(server: &RedisServer, name: &str) -> String {
    let path = std::env::temp_dir().join(format!("jobs-ledger-{name}-{}-{}", std::process::id(), server.port()));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

#[test]
fn worker_killed_with_sigkill_in_the_middle_of_2000_jobs_loses_none() {
    const JOBS: u64 = 2000;
    let server = RedisServer::start();
    let ledger = ledger_path(&server, "sigkill");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::new(RedisBackend::connect(&server.url()).await.unwrap());
        let jobs = (0..JOBS).map(|n| AppendToLedger { path: ledger.clone(), n, pause_ms: 3 });
        assert_eq!(client.enqueue_many(jobs).await.unwrap().len() as u64, JOBS);
    });

    let mut first = spawn_worker(&server);
    wait_for("the first worker to get going", Duration::from_secs(60), || ledger_lines(&ledger).len() >= 300);
    // Freeze the worker at a moment it holds leases (between two batches it may
    // briefly hold none), then SIGKILL it: no shutdown, no put-back, leases left behind.
    let pid = first.id().to_string();
    loop {
        Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        if count(&server, &["HLEN", "{jobs}:inflight"]) > 0 {
            break;
        }
        Command::new("kill").args(["-CONT", &pid]).status().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let leased_at_kill = count(&server, &["HLEN", "{jobs}:inflight"]);
    assert!(leased_at_kill > 0, "the worker should die holding leases");

    let mut second = spawn_worker(&server);
    // One atomic read: the worker's maintenance tick moves rescued jobs from
    // retry to the queue to in-flight, and separate reads can each miss them.
    const UNFINISHED: &str = "return redis.call('LLEN', KEYS[1]) + redis.call('HLEN', KEYS[2]) \
        + redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4])";
    wait_for("every job to complete", Duration::from_secs(120), || {
        let keys = ["{jobs}:q:ledger", "{jobs}:inflight", "{jobs}:retry", "{jobs}:scheduled"];
        count(&server, &["EVAL", UNFINISHED, "4", keys[0], keys[1], keys[2], keys[3]]) == 0
    });
    Command::new("kill").args(["-TERM", &second.id().to_string()]).status().unwrap();
    assert!(second.wait().unwrap().success());

    let lines = ledger_lines(&ledger);
    let mut seen = vec![0u32; JOBS as usize];
    for n in &lines {
        seen[*n as usize] += 1;
    }
    let missing: Vec<usize> = seen.iter().enumerate().filter(|(_, c)| **c == 0).map(|(n, _)| n).collect();
    let duplicates = lines.len() as u64 - (JOBS - missing.len() as u64);
    println!(
        "SIGKILL with {leased_at_kill} jobs leased: {} runs for {JOBS} jobs, {duplicates} duplicates",
        lines.len()
    );
    assert!(missing.is_empty(), "lost jobs: {missing:?}");
    assert!(duplicates <= leased_at_kill, "only jobs leased at the kill may run twice");
    assert_eq!(count(&server, &["ZCARD", "{jobs}:dead"]), 0);
    let _ = std::fs::remove_file(&ledger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_recovers_when_redis_restarts_under_it() {
    let mut server = RedisServer::start();
    let ledger = ledger_path(&server, "restart");
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    let worker = Worker::builder(backend).queue("ledger", 1).concurrency(4).build().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run_until(stop_rx).await });

    for n in 0..20 {
        AppendToLedger::perform_later(&client, ledger.clone(), n, 0).await.unwrap();
    }
    let path = ledger.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the first 20 jobs", Duration::from_secs(30), || ledger_lines(&path).len() >= 20)
    })
    .await
    .unwrap();

    tokio::task::block_in_place(|| server.restart()); // empty again: no persistence

    // The client reconnects by itself; the first command after the restart may fail.
    for n in 20..40 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(error) = AppendToLedger::perform_later(&client, ledger.clone(), n, 0).await {
            assert!(Instant::now() < deadline, "the client never reconnected: {error}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let path = ledger.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the worker to run jobs again", Duration::from_secs(60), || ledger_lines(&path).len() >= 40)
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().expect("the worker loop survives a Redis restart");
    // An ack in flight across the restart lands on the empty server as stale.
    assert!(report.succeeded + report.stale >= 40, "{report:?}");
    let mut lines = ledger_lines(&ledger);
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines, (0..40).collect::<Vec<u64>>());
    let _ = std::fs::remove_file(&ledger);
}

#[tokio::test]
async fn malformed_json_and_unknown_jobs_pushed_with_raw_commands_land_in_the_dead_set_or_retry() {
    let server = RedisServer::start();
    let ledger = ledger_path(&server, "raw");
    server.command(&["RPUSH", "{jobs}:q:ledger", "this is not json"]);
    server.command(&["RPUSH", "{jobs}:q:ledger", r#"{"jid":"u1","job":"no_such_job","args":{}}"#]);
    server.command(&["RPUSH", "{jobs}:q:ledger", r#"{"jid":"w1","job":"append_to_ledger","args":{"path":7}}"#]);
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    // Bytes that are not UTF-8 (JSON must be): one such payload used to fail the whole
    // fetch's reply, stranding every job of the batch under a lease nobody held.
    let mut conn = backend.pool().get().await.unwrap();
    let not_utf8: &[u8] = b"\xff\xfe{\"jid\":\"b1\",\"job\":\"append_to_ledger\"}";
    redis::cmd("RPUSH").arg("{jobs}:q:ledger").arg(not_utf8).query_async::<()>(&mut conn).await.unwrap();
    // Valid JSON around a bad byte: read with U+FFFD it would run on an altered path.
    let altered: Vec<u8> = [
        &br#"{"jid":"b2","job":"append_to_ledger","args":{"path":""#[..],
        ledger.as_bytes(),
        b"\xff",
        br#"","n":2,"pause_ms":0}}"#,
    ]
    .concat();
    redis::cmd("RPUSH").arg("{jobs}:q:ledger").arg(altered).query_async::<()>(&mut conn).await.unwrap();
    let client = Client::new(backend.clone());
    AppendToLedger::perform_later(&client, ledger.clone(), 1, 0).await.unwrap();

    let worker = Worker::builder(backend.clone()).queue("ledger", 1).build().unwrap();
    let report = worker.drain().await.unwrap();
    assert_eq!((report.succeeded, report.dead, report.retried), (1, 4, 1), "{report:?}");
    assert_eq!(ledger_lines(&ledger), [1], "the worker went on after the bad input");

    let dead = jobs_core::Backend::list(&backend, &JobSet::Dead, 0, 10).await.unwrap();
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(&d.payload).unwrap()["error"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.iter().filter(|r| r.starts_with("malformed payload: ")).count(), 2, "{reasons:?}");
    assert!(
        reasons.contains(
            &"job `append_to_ledger`: malformed payload: the payload is not valid UTF-8 (JSON must be)".to_owned()
        ),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with(
            "job `append_to_ledger`: 3 arguments are wrong: argument `path`: invalid type: integer `7`, expected a string"
        ) && r.ends_with("; missing argument `n`; missing argument `pause_ms`")),
        "{reasons:?}"
    );
    let retry = jobs_core::Backend::list(&backend, &JobSet::Retry, 0, 10).await.unwrap();
    let unknown = Envelope::from_json(&retry[0].payload).unwrap();
    assert!(unknown.error.unwrap().starts_with("unknown job `no_such_job`"));

    // `dead retry` of them all: each is buried again as it was; the one whose bytes were
    // not UTF-8 does not run on the text with U+FFFD its entry keeps.
    let all = jobs_core::admin::Selection::All;
    assert_eq!(jobs_core::admin::requeue(&backend, &JobSet::Dead, &all).await.unwrap(), 4);
    let again = worker.drain().await.unwrap();
    assert_eq!((again.succeeded, again.dead), (0, 4), "{again:?}");
    assert_eq!(ledger_lines(&ledger), [1], "nothing ran on altered arguments");
    let _ = std::fs::remove_file(&ledger);
}

/// A worker started before Redis (a deploy, a reboot) waits for it and says
/// so, instead of exiting: once Redis is up it runs jobs, and SIGTERM still
/// stops it cleanly.
#[test]
fn a_worker_started_before_redis_waits_for_it() {
    use std::io::{BufRead, BufReader};
    let mut server = RedisServer::start();
    server.kill();
    let ledger = ledger_path(&server, "redis_comes_later");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(["work", "--queue", "ledger"])
        .env("JOBS_REDIS_URL", server.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start test-worker");
    let mut lines = BufReader::new(worker.stderr.take().unwrap()).lines();
    let waiting = lines.by_ref().map_while(Result::ok).find(|line| line.contains("cannot reach Redis yet"));
    assert!(waiting.is_some(), "the worker exited instead of waiting for Redis: {:?}", worker.wait());
    // The rest of its log is read away, so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));

    server.restart();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::new(RedisBackend::connect(&server.url()).await.unwrap());
        client.enqueue(AppendToLedger { path: ledger.clone(), n: 1, pause_ms: 0 }).await.unwrap();
    });
    wait_for("the job to run once Redis is up", Duration::from_secs(60), || ledger_lines(&ledger).len() == 1);
    Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert!(worker.wait().unwrap().success(), "a clean stop");
}

/// SIGINT (Ctrl-C in a terminal) shuts the worker down as gracefully as
/// SIGTERM: the running job finishes and is acknowledged, the process exits 0.
#[test]
fn sigint_lets_the_running_job_finish_and_exits_cleanly() {
    let server = RedisServer::start();
    let ledger = ledger_path(&server, "sigint");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::new(RedisBackend::connect(&server.url()).await.unwrap());
        AppendToLedger::perform_later(&client, ledger.clone(), 7, 1_500).await.unwrap();
    });
    let mut worker = spawn_worker(&server);
    wait_for("the job to start", Duration::from_secs(30), || count(&server, &["HLEN", "{jobs}:inflight"]) == 1);
    Command::new("kill").args(["-INT", &worker.id().to_string()]).status().unwrap();
    assert!(worker.wait().unwrap().success(), "a clean exit after SIGINT");
    assert_eq!(ledger_lines(&ledger), [7], "the running job finished, once");
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 0, "and was acknowledged");
    assert_eq!(count(&server, &["LLEN", "{jobs}:q:ledger"]), 0, "not put back: it had finished");
    let _ = std::fs::remove_file(&ledger);
}

/// Starts `test-worker work` on the ledger queue with an hour's grace period
/// and a 10-minute job, and stops it with SIGINT once the job runs: the
/// worker, its log lines, and the job's ledger.
fn worker_in_its_grace_period(server: &RedisServer, name: &str) -> (Child, std::sync::mpsc::Receiver<String>, String) {
    use std::io::{BufRead, BufReader};
    let ledger = ledger_path(server, name);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::new(RedisBackend::connect(&server.url()).await.unwrap());
        AppendToLedger::perform_later(&client, ledger.clone(), 7, 600_000).await.unwrap();
    });
    let mut worker = Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(["work", "--queue", "ledger", "--grace", "3600"])
        .env("JOBS_REDIS_URL", server.url())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start test-worker");
    let (lines, log) = std::sync::mpsc::channel();
    let stderr = BufReader::new(worker.stderr.take().unwrap());
    std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|line| drop(lines.send(line))));
    wait_for("the job to start", Duration::from_secs(30), || count(server, &["HLEN", "{jobs}:inflight"]) == 1);
    signal(&worker, "-INT");
    // The next signal is sent once this one was taken: two at once may arrive as one.
    wait_for_log(&log, "shutting down");
    (worker, log, ledger)
}

/// Reads the worker's log until a line holds `text`.
fn wait_for_log(log: &std::sync::mpsc::Receiver<String>, text: &str) {
    let found = log.iter().find(|line| line.contains(text));
    assert!(found.is_some(), "the worker exited before logging {text:?}");
}

/// The worker's exit status, once it exits (within a minute).
fn exit_status(worker: &mut Child) -> std::process::ExitStatus {
    let mut status = None;
    wait_for("the worker to exit", Duration::from_secs(60), || {
        status = worker.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

fn signal(worker: &Child, name: &str) {
    Command::new("kill").args([name, &worker.id().to_string()]).status().unwrap();
}

/// Ctrl-C pressed twice: the first starts the graceful shutdown, the second
/// ends its grace period (an hour here) at once. The running job goes back to
/// the head of its queue, whole, and the worker exits 0.
#[test]
fn a_second_sigint_ends_the_grace_period_and_puts_the_job_back() {
    let server = RedisServer::start();
    let (mut worker, log, ledger) = worker_in_its_grace_period(&server, "second-sigint");
    signal(&worker, "-INT");
    wait_for_log(&log, "second signal");
    assert!(exit_status(&mut worker).success(), "a clean exit");
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 0, "nothing left leased");
    assert_eq!(count(&server, &["LLEN", "{jobs}:q:ledger"]), 1, "the job is back in its queue");
    let payload = server.command(&["LINDEX", "{jobs}:q:ledger", "0"]);
    assert!(payload.contains(r#""n":7"#) && !payload.contains(r#""attempt":1"#), "back whole: {payload}");
    assert!(ledger_lines(&ledger).is_empty());
}

/// A third Ctrl-C exits at once, with 130, even while the shutdown waits for a
/// Redis that takes no writes; the job still leased returns when its lease ends.
#[test]
fn a_third_sigint_exits_at_once_with_130() {
    let server = RedisServer::start();
    let (mut worker, log, _) = worker_in_its_grace_period(&server, "third-sigint");
    // From here Redis takes no writes: putting the job back waits.
    server.command(&["CLIENT", "PAUSE", "60000", "WRITE"]);
    signal(&worker, "-INT");
    wait_for_log(&log, "second signal");
    signal(&worker, "-INT");
    assert_eq!(exit_status(&mut worker).code(), Some(130));
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 1, "still leased: it comes back with its lease");
    server.command(&["CLIENT", "UNPAUSE"]);
}

/// `work --drain` (a cron job, a CI step) ends on SIGTERM as `work` does (but exits 1):
/// the job still running after the grace period goes back to its queue,
/// instead of staying leased to a dead process until its lease runs out.
#[test]
fn sigterm_ends_a_drain_gracefully_and_puts_the_running_job_back() {
    let server = RedisServer::start();
    let ledger = ledger_path(&server, "drain-sigterm");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::new(RedisBackend::connect(&server.url()).await.unwrap());
        AppendToLedger::perform_later(&client, ledger.clone(), 7, 600_000).await.unwrap();
    });
    let worker = Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(["work", "--drain", "--queue", "ledger", "--grace", "0"])
        .env("JOBS_REDIS_URL", server.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start test-worker");
    wait_for("the job to start", Duration::from_secs(30), || count(&server, &["HLEN", "{jobs}:inflight"]) == 1);
    Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    let output = worker.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Exit 1, not a crash: a script can tell a drain cut short from one that emptied the queues.
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.trim(),
        "drain stopped by a signal: 0 succeeded, 0 retried, 0 dead, 0 deferred for a newer worker, 1 put back"
    );
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 0, "nothing left leased");
    assert_eq!(count(&server, &["LLEN", "{jobs}:q:ledger"]), 1, "the job is back in its queue");
    assert!(ledger_lines(&ledger).is_empty());
}

/// A job whose bytes are not UTF-8 but whose cancellation was asked for is
/// settled as cancelled (its id reads), not dead-lettered.
#[tokio::test]
async fn a_cancelled_job_whose_bytes_are_not_utf8_is_cancelled() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let mut conn = backend.pool().get().await.unwrap();
    let payload: &[u8] =
        b"{\"jid\":\"k1\",\"job\":\"append_to_ledger\",\"args\":{\"path\":\"x\xff\",\"n\":3,\"pause_ms\":0}}";
    redis::cmd("RPUSH").arg("{jobs}:q:ledger").arg(payload).query_async::<()>(&mut conn).await.unwrap();
    Client::new(backend.clone()).cancel(&jobs_core::JobId::from("k1")).await.unwrap();
    let worker = Worker::builder(backend.clone()).queue("ledger", 1).build().unwrap();
    let report = worker.drain().await.unwrap();
    assert_eq!((report.cancelled, report.dead, report.succeeded), (1, 0, 0), "{report:?}");
}

/// Entries that are not UTF-8, written into the sets and a queue by hand or
/// by another program, are listed with that reason and can be moved or
/// deleted like any other (`--all` used to skip them, and they stayed).
#[tokio::test]
async fn entries_that_are_not_utf8_are_listed_moved_and_deleted_like_any_other() {
    use jobs_core::admin::{self, Selection};
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let mut conn = backend.pool().get().await.unwrap();
    let not_utf8: &[u8] = b"\xff\xfe raw";
    for (set, score) in [("{jobs}:dead", 1_000), ("{jobs}:retry", 9_999_999_999_999u64)] {
        redis::cmd("ZADD").arg(set).arg(score).arg(not_utf8).query_async::<()>(&mut conn).await.unwrap();
    }
    redis::cmd("RPUSH").arg("{jobs}:q:ledger").arg(not_utf8).query_async::<()>(&mut conn).await.unwrap();

    for set in [JobSet::Dead, JobSet::Retry, JobSet::Queue("ledger".into())] {
        let listed = admin::entries(&backend, &set, 0, 10).await.unwrap();
        assert_eq!(listed.len(), 1, "{set}");
        assert_eq!(listed[0].error.as_deref(), Some("unreadable payload: not valid UTF-8 (JSON must be)"), "{set}");
    }
    assert_eq!(admin::requeue(&backend, &JobSet::Dead, &Selection::All).await.unwrap(), 1);
    assert_eq!(admin::remove(&backend, &JobSet::Retry, &Selection::All).await.unwrap(), 1);
    assert_eq!(admin::remove(&backend, &JobSet::Queue("ledger".into()), &Selection::All).await.unwrap(), 1);
    for set in [JobSet::Dead, JobSet::Retry, JobSet::Queue("ledger".into())] {
        assert_eq!(jobs_core::Backend::count(&backend, &set).await.unwrap(), 0, "{set}");
    }
    // Moved with its bytes as they were, to `default` (its payload names no queue).
    let moved: Vec<Vec<u8>> =
        redis::cmd("LRANGE").arg("{jobs}:q:default").arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert_eq!(moved, [not_utf8.to_vec()]);

    // Text that starts as a stand-in does is listed under one of its own: removing it
    // removes it, not the entry whose bytes its hex would spell.
    let look_alike = "\u{FFFF}not-utf8:7b7d";
    for member in [look_alike, "{}"] {
        redis::cmd("ZADD").arg("{jobs}:dead").arg(1).arg(member).query_async::<()>(&mut conn).await.unwrap();
    }
    let listed = jobs_core::Backend::list(&backend, &JobSet::Dead, 0, 10).await.unwrap();
    let look_alike_listed = listed.iter().find(|stored| stored.payload != "{}").unwrap().payload.clone();
    assert_eq!(jobs_core::Backend::remove(&backend, &JobSet::Dead, &[look_alike_listed]).await.unwrap(), 1);
    let left: Vec<String> =
        redis::cmd("ZRANGE").arg("{jobs}:dead").arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    assert_eq!(left, ["{}"]);
}

#[jobs_core::job(queue = "across_restart")]
async fn held_across_a_restart(name: String) {
    jobs_tests::Ledger::named(&name).record("held started");
    jobs_tests::Gate::named(&format!("{name}-held")).wait().await;
}

#[jobs_core::job(queue = "across_restart", retries = 3)]
async fn fails_after_a_restart(name: String) -> Result<(), jobs_core::JobError> {
    jobs_tests::Ledger::named(&name).record("failing started");
    jobs_tests::Gate::named(&format!("{name}-failing")).wait().await;
    Err(jobs_core::JobError::new("the mail server said 503"))
}

/// Redis restarted without its data counts leases from 1 again. A job still
/// running under lease 1 from before the restart must not settle the job
/// fetched after it: with the same number, its acknowledgement used to match
/// the new lease, delete the new job from flight, and the new job's failure
/// was then refused as stale: a job lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_from_before_an_empty_restart_never_settles_a_job_fetched_after_it() {
    let mut server = RedisServer::start();
    let name = format!("restart-lease-{}", server.port());
    let ledger = jobs_tests::Ledger::named(&name);
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    let policy =
        jobs_core::RetryPolicy { retries: 3, base: Duration::from_secs(3600), max_delay: Duration::from_secs(3600) };
    let worker = std::sync::Arc::new(
        Worker::builder(backend.clone())
            .queue("across_restart", 1)
            .concurrency(4)
            .retry_policy(policy)
            .build()
            .unwrap(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run_until(stop_rx).await }
    });

    HeldAcrossARestart::perform_later(&client, name.clone()).await.unwrap();
    ledger.wait_for(1).await;
    assert_eq!(count(&server, &["GET", "{jobs}:leaseseq"]), 1, "the held job's lease is number 1");
    tokio::task::block_in_place(|| server.restart()); // empty again: no persistence
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(error) = FailsAfterARestart::perform_later(&client, name.clone()).await {
        assert!(Instant::now() < deadline, "the client never reconnected: {error}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ledger.wait_for(2).await;
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 1);
    assert!(count(&server, &["GET", "{jobs}:leaseseq"]) > 1, "a number above the one the worker still holds");

    // The job from before the restart ends: its acknowledgement finds no lease of its own.
    jobs_tests::Gate::named(&format!("{name}-held")).open();
    let acked = worker.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the held job's acknowledgement", Duration::from_secs(30), || {
            let report = acked.report();
            report.succeeded + report.stale >= 1
        })
    })
    .await
    .unwrap();
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 1, "the job fetched after the restart is still in flight");

    // The job fetched after the restart fails: it is retried, not lost.
    jobs_tests::Gate::named(&format!("{name}-failing")).open();
    let retried = worker.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the failure's write", Duration::from_secs(30), || {
            let report = retried.report();
            report.retried + report.stale >= 2
        })
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!(count(&server, &["ZCARD", "{jobs}:retry"]), 1, "{report:?}");
    assert_eq!((report.retried, report.stale), (1, 1), "{report:?}");
}

#[jobs_core::job(queue = "outage")]
async fn outlasts_an_outage(name: String) {
    jobs_tests::Ledger::named(&name).record("started");
    jobs_tests::Gate::named(&name).wait().await;
}

/// Redis (with its data) away for longer than a lease: when it answers
/// again, every live worker's leases have expired. The worker's own rescue
/// used to come first and take its own job, done during the outage but not
/// yet acknowledged, and run it a second time. It now extends its own leases
/// before it rescues, and waits a lease after an outage before rescuing,
/// so that the other live workers have extended theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_workers_jobs_are_not_rescued_after_an_outage_longer_than_the_lease() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let name = format!("outage-{}", server.port());
    let ledger = jobs_tests::Ledger::named(&name);
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    let lease = Duration::from_millis(600);
    let worker = std::sync::Arc::new(
        Worker::builder(backend.clone())
            .queue("outage", 1)
            .concurrency(2)
            .lease(lease)
            .maintenance_interval(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run_until(stop_rx).await }
    });
    OutlastsAnOutage::perform_later(&client, name.clone()).await.unwrap();
    ledger.wait_for(1).await;

    tokio::task::block_in_place(|| server.kill());
    // The job ends while Redis is away: its acknowledgement waits.
    jobs_tests::Gate::named(&name).open();
    // The outage must outlast the lease: that takes time, not a signal.
    tokio::time::sleep(lease * 3).await;
    tokio::task::block_in_place(|| server.restart()); // with its data (append-only file)
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 1, "the job came back with Redis, leased");

    let settled = worker.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the acknowledgement", Duration::from_secs(30), || {
            let report = settled.report();
            report.succeeded + report.stale >= 1
        })
    })
    .await
    .unwrap();
    // A rescue, had it come, came before the acknowledgement (which ends the lease) and
    // made it stale.
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!(ledger.entries(), ["started"], "the job ran once: {report:?}");
    assert_eq!((report.succeeded, report.rescued, report.stale), (1, 0, 0), "{report:?}");
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 0);
}

/// The same outage seen by a second, idle worker: its rescue, the moment
/// Redis answers, would take the first worker's job before that worker's
/// heartbeat came round. After an outage a worker waits a lease before it
/// rescues, and by then the live worker has extended its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_live_workers_jobs_are_not_rescued_after_an_outage_longer_than_the_lease() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let name = format!("outage-other-{}", server.port());
    let ledger = jobs_tests::Ledger::named(&name);
    let lease = Duration::from_secs(2);
    let url = server.url();
    let start = |maintenance: Duration| {
        let url = url.clone();
        async move {
            let backend = RedisBackend::connect(&url).await.unwrap();
            let worker = Worker::builder(backend)
                .queue("outage", 1)
                .concurrency(2)
                .lease(lease)
                .maintenance_interval(maintenance)
                .build()
                .unwrap();
            let worker = std::sync::Arc::new(worker);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let running = tokio::spawn({
                let worker = worker.clone();
                async move { worker.run_until(stopped).await }
            });
            (worker, stop, running)
        }
    };
    // The one running the job looks after its own lease through its heartbeat only.
    let (runner, stop_runner, runner_done) = start(Duration::from_secs(3600)).await;
    let client = Client::new(RedisBackend::connect(&server.url()).await.unwrap());
    OutlastsAnOutage::perform_later(&client, name.clone()).await.unwrap();
    ledger.wait_for(1).await;
    let (idle, stop_idle, idle_done) = start(Duration::from_millis(50)).await;

    tokio::task::block_in_place(|| server.kill());
    // The outage must outlast the lease: that takes time, not a signal.
    tokio::time::sleep(lease * 2).await;
    tokio::task::block_in_place(|| server.restart()); // with its data (append-only file)
    assert_eq!(count(&server, &["HLEN", "{jobs}:inflight"]), 1, "the job came back with Redis, leased");
    // The idle worker looks every 50 ms: well past its hold, the runner has kept its lease.
    let held = Instant::now() + lease * 2;
    tokio::task::spawn_blocking({
        let (idle, runner) = (idle.clone(), runner.clone());
        move || {
            wait_for("a lease and more", Duration::from_secs(30), || {
                assert_eq!(idle.report().rescued, 0, "the idle worker rescued a live worker's job");
                Instant::now() >= held
            });
            assert_eq!(runner.report().stale, 0);
        }
    })
    .await
    .unwrap();
    jobs_tests::Gate::named(&name).open();
    tokio::task::spawn_blocking({
        let runner = runner.clone();
        move || {
            wait_for("the acknowledgement", Duration::from_secs(30), || {
                runner.report().succeeded + runner.report().stale >= 1
            })
        }
    })
    .await
    .unwrap();
    stop_idle.send(()).unwrap();
    stop_runner.send(()).unwrap();
    let (idle_report, runner_report) = (idle_done.await.unwrap().unwrap(), runner_done.await.unwrap().unwrap());
    assert_eq!(ledger.entries(), ["started"]);
    assert_eq!(
        (idle_report.rescued, runner_report.succeeded, runner_report.stale),
        (0, 1, 0),
        "{idle_report:?} {runner_report:?}"
    );
}

#[jobs_core::job(queue = "one_lease")]
async fn first_of_a_lease(name: String) {
    jobs_tests::Gate::named(&format!("{name}-first")).wait().await;
}

#[jobs_core::job(queue = "one_lease")]
async fn second_of_a_lease(name: String) {
    jobs_tests::Gate::named(&name).wait().await;
}

/// On Redis one lease covers a whole fetch. The first job's acknowledgement
/// must not forget the lease's confirmation while the second still runs: the
/// second's acknowledgement, applied but its reply lost, is still known for
/// its own (it used to count as stale, its outcome dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_the_second_acknowledgement_of_one_lease_still_counts_the_success() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;
    let server = RedisServer::start();
    let name = format!("one-lease-{}", server.port());
    let redis = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(redis.clone());
    FirstOfALease::perform_later(&client, name.clone()).await.unwrap();
    SecondOfALease::perform_later(&client, name.clone()).await.unwrap();
    let spy = Arc::new(jobs_tests::Spy::new(Arc::new(redis)));
    // A long lease: after its first, at the start, no heartbeat comes during the test.
    let worker =
        Worker::builder_shared(spy.clone()).queue("one_lease", 1).concurrency(2).lease(Duration::from_secs(60));
    let worker = Arc::new(worker.build().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run_until(stop_rx).await }
    });
    // The first heartbeat has extended the lease (its deadline moved): only then does a job end.
    let deadline = || server.command(&["ZRANGE", "{jobs}:lease-deadlines", "0", "-1", "WITHSCORES"]);
    let leased = {
        let start = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = deadline();
            if reply.lines().count() >= 4 {
                break reply;
            }
            assert!(Instant::now() < start, "never leased: {reply}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let start = Instant::now() + Duration::from_secs(30);
    while deadline() == leased {
        assert!(Instant::now() < start, "no heartbeat extended the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    jobs_tests::Gate::named(&format!("{name}-first")).open();
    let first = worker.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the first ack", Duration::from_secs(30), || first.report().succeeded >= 1)
    })
    .await
    .unwrap();
    assert_eq!(count(&server, &["GET", "{jobs}:leaseseq"]), 1, "both jobs came in one fetch, under one lease");
    spy.lose_ack_replies.store(1, Relaxed);
    jobs_tests::Gate::named(&name).open();
    let second = worker.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the second ack", Duration::from_secs(30), || {
            let report = second.report();
            report.succeeded + report.stale >= 2
        })
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!(spy.lose_ack_replies.load(Relaxed), 0, "the reply was lost");
    assert_eq!((report.succeeded, report.stale), (2, 0), "{report:?}");
}
