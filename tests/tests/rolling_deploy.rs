//! A rolling deploy with two real worker processes built from two versions of
//! the same job (`rolling-v1`, `rolling-v2`): the old worker puts back the
//! payloads it is too old to read — not run, not dead, not lost — with a
//! counter, and warns once; the new worker then runs them, and runs the old
//! payloads too with the added parameter's default.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jobs_core::{Backend, Client, Envelope, JobSet, RawJob};
use jobs_redis::RedisBackend;
use jobs_tests::RedisServer;
use serde_json::json;

/// How long any one condition may take on a loaded machine; met conditions return at once.
const PATIENCE: Duration = Duration::from_secs(30);

/// A worker process with its stderr read on a thread, so a full pipe never blocks it.
struct WorkerProcess {
    child: Child,
    log: Option<JoinHandle<String>>,
}

impl WorkerProcess {
    fn start(binary: &str, server: &RedisServer, ledger: &str) -> WorkerProcess {
        // A defer delay under the 1 s maintenance tick: a put-back payload is offered again every tick.
        let mut child = Command::new(binary)
            .args(["work", "--queue", "rolling", "--concurrency", "4", "--lease", "2", "--defer-delay", "0.7"])
            .args(["--retry-backoff", "0.05", "--grace", "5"])
            .env("JOBS_REDIS_URL", server.url())
            .env("ROLLING_LEDGER", ledger)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            log
        });
        WorkerProcess { child, log: Some(log) }
    }

    /// Sends SIGTERM, waits for a clean exit and returns everything it logged.
    fn stop(mut self) -> String {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let status = self.child.wait().unwrap();
        let log = self.log.take().unwrap().join().unwrap();
        assert!(status.success(), "worker exited with {status}:\n{log}");
        log
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A failed assertion must not leave a worker running.
        if self.log.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ledger_path(server: &RedisServer) -> String {
    let path = std::env::temp_dir().join(format!("jobs-ledger-rolling-{}-{}", std::process::id(), server.port()));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

fn ledger(path: &str) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Polls `done` until it holds, failing the test after [`PATIENCE`].
async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn payloads(backend: &RedisBackend, set: &JobSet) -> Vec<Envelope> {
    let stored = backend.list(set, 0, 1000).await.unwrap();
    stored.iter().map(|job| Envelope::from_json(&job.payload).unwrap()).collect()
}

/// Jobs not yet done or dead, counted in one atomic step (counting the sets
/// one by one could miss a job that moves between two of them meanwhile).
fn unfinished(server: &RedisServer) -> u64 {
    const COUNT: &str = "return redis.call('LLEN', KEYS[1]) + redis.call('HLEN', KEYS[2]) \
        + redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[5])";
    let keys = ["{jobs}:q:rolling", "{jobs}:inflight", "{jobs}:scheduled", "{jobs}:retry", "{jobs}:dead"];
    let reply = server.command(&[&["EVAL", COUNT, "5"][..], &keys[..]].concat());
    reply.trim_start_matches(':').trim().parse().unwrap_or_else(|_| panic!("the count answered {reply:?}"))
}

fn greet(version: u32, args: serde_json::Value) -> RawJob {
    RawJob { job: "greet".into(), version, queue: "rolling".into(), args }
}

/// The number after `field=` in the log's "worker exited" line.
fn exit_count(log: &str, field: &str) -> u64 {
    let line = log.lines().find(|l| l.contains("worker exited")).unwrap_or_else(|| panic!("no exit line in:\n{log}"));
    let value = line.split_whitespace().find_map(|word| word.strip_prefix(&format!("{field}=")));
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {field}= in {line:?}"))
}

/// When the old worker stops in the deploy below.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Retire {
    /// As soon as the new worker is live (the new replica is ready, the old one is replaced).
    OnceNewIsLive,
    /// Only after the new worker ran every newer payload (both serve the queue meanwhile).
    AfterNewRanThem,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_worker_puts_newer_payloads_back_and_the_new_worker_runs_them_once() {
    rolling_deploy(Retire::OnceNewIsLive).await;
}

/// Both workers keep serving the queue. With equal, fixed `BLPOP` timeouts the
/// worker whose maintenance tick promoted a deferred payload was also the
/// longest waiter on the wake list, so the old worker won its payloads back
/// every round and the new one starved; the fetch loop's random wait fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_worker_gets_the_deferred_payloads_while_the_old_worker_still_runs() {
    rolling_deploy(Retire::AfterNewRanThem).await;
}

async fn rolling_deploy(retire: Retire) {
    let server = RedisServer::start();
    let path = ledger_path(&server);
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    let old = WorkerProcess::start(env!("CARGO_BIN_EXE_rolling-v1"), &server, &path);

    // Web processes of both versions enqueue while the deploy rolls.
    client.enqueue_raw(greet(1, json!({ "name": "ada" }))).await.unwrap();
    let newer = [
        json!({ "name": "bob", "greeting": "Howdy" }),
        json!({ "name": "cy", "greeting": "Hi" }),
        json!({ "name": "dee", "greeting": "Ahoy" }),
    ];
    let mut jids = HashMap::new();
    for args in newer {
        let jid = client.enqueue_raw(greet(2, args.clone())).await.unwrap();
        jids.insert(jid.as_str().to_owned(), args);
    }

    // The old worker runs the old payload, and keeps putting the newer ones back:
    // each seen scheduled again, version and arguments intact, with `deferred` ≥ 2.
    let mut most_deferred: HashMap<String, u32> = HashMap::new();
    wait_until("v1 to run its payload and defer every v2 payload twice", async || {
        for envelope in payloads(&backend, &JobSet::Scheduled).await {
            let Some(args) = jids.get(envelope.jid.as_str()) else { continue };
            assert_eq!((envelope.job.as_str(), envelope.version, &envelope.args), ("greet", 2, args), "{envelope:?}");
            assert_eq!(envelope.attempt, 0, "a deferral is not a failed attempt: {envelope:?}");
            let seen = most_deferred.entry(envelope.jid.as_str().to_owned()).or_default();
            *seen = (*seen).max(envelope.deferred);
        }
        assert_eq!(backend.count(&JobSet::Dead).await.unwrap(), 0, "nothing may be dead-lettered");
        assert_eq!(backend.count(&JobSet::Retry).await.unwrap(), 0, "a newer payload is not a failure");
        assert!(unfinished(&server) >= 3, "a v2 payload was lost");
        ledger(&path).contains(&r#"ran=v1 payload=v1 name="ada""#.to_owned())
            && most_deferred.len() == jids.len()
            && most_deferred.values().all(|&deferred| deferred >= 2)
    })
    .await;
    assert_eq!(ledger(&path), [r#"ran=v1 payload=v1 name="ada""#], "v1 must not run a v2 payload");

    // The new worker joins; the old one retires now or only once the new one ran them.
    let new = WorkerProcess::start(env!("CARGO_BIN_EXE_rolling-v2"), &server, &path);
    let mut old = Some(old);
    let mut old_log = None;
    if retire == Retire::OnceNewIsLive {
        wait_until("v2 to be live", async || backend.live_workers().await.unwrap().len() == 2).await;
        old_log = old.take().map(WorkerProcess::stop);
    }
    wait_until("v2 to run every v2 payload and nothing to be left", async || {
        ledger(&path).len() >= 4 && unfinished(&server) == 0
    })
    .await;
    let mut runs = ledger(&path);
    runs.sort();
    let mut expected = vec![
        r#"ran=v1 payload=v1 name="ada""#.to_owned(),
        r#"ran=v2 payload=v2 name="bob" greeting="Howdy""#.to_owned(),
        r#"ran=v2 payload=v2 name="cy" greeting="Hi""#.to_owned(),
        r#"ran=v2 payload=v2 name="dee" greeting="Ahoy""#.to_owned(),
    ];
    expected.sort();
    assert_eq!(runs, expected, "each payload runs exactly once, on a worker that knows its version");
    let old_log = old_log.or_else(|| old.take().map(WorkerProcess::stop)).unwrap();

    // A straggling old web process still enqueues v1: the new worker fills the default.
    client.enqueue_raw(greet(1, json!({ "name": "eve" }))).await.unwrap();
    let filled = r#"ran=v2 payload=v1 name="eve" greeting="Hello""#.to_owned();
    wait_until("v2 to run the v1 payload with the default", async || {
        ledger(&path).contains(&filled) && unfinished(&server) == 0
    })
    .await;
    let new_log = new.stop();
    assert_eq!(ledger(&path).iter().filter(|line| **line == filled).count(), 1);
    assert_eq!(ledger(&path).len(), 5);

    // One warning per (job, version), however often it deferred; the count is in the exit line.
    let warnings: Vec<&str> = old_log.lines().filter(|l| l.contains("newer than this worker")).collect();
    assert_eq!(warnings.len(), 1, "{old_log}");
    assert!(warnings[0].contains("greet") && warnings[0].contains("payload_version=2"), "{}", warnings[0]);
    let deferrals: u64 = most_deferred.values().map(|&d| u64::from(d)).sum();
    assert!(deferrals >= 6);
    assert!(exit_count(&old_log, "deferred") >= deferrals, "seen {deferrals} deferrals:\n{old_log}");
    assert_eq!(exit_count(&old_log, "dead"), 0, "{old_log}");
    assert_eq!(exit_count(&new_log, "deferred"), 0, "{new_log}");
    assert!(!new_log.contains("newer than this worker"), "{new_log}");
    let _ = std::fs::remove_file(&path);
}
