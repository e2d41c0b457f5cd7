//! Redis-specific promises: the pitfalls DESIGN.md lists (response timeout vs
//! blocking commands, pool size vs blocked consumers, a cancelled wait),
//! clear errors at connect, script reload, server checks, key layout.

use std::sync::Arc;
use std::time::Duration;

use jobs_core::{Backend, Client, Envelope, FetchRequest, JobSet, QueueTake, RawJob, WorkerId};
use jobs_redis::RedisBackend;
use jobs_tests::RedisServer;
use jobs_tests::jobs::AppendToLedger;

fn job(n: u64) -> AppendToLedger {
    AppendToLedger { path: "/dev/null".into(), n, pause_ms: 0 }
}

/// A one-value reply as text: an integer (`:5`) or a bulk string (`$1`, `5`).
fn value(server: &RedisServer, args: &[&str]) -> String {
    let reply = server.command(args);
    reply.lines().last().unwrap_or_default().trim_start_matches(':').trim().to_owned()
}

/// How many times the server ran `command` (lowercase) so far.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    let stats = server.command(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A private server and a backend on it, with `n` jobs queued on `ledger`.
async fn with_queued(n: u64) -> (RedisServer, RedisBackend) {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    Client::new(backend.clone()).enqueue_many((0..n).map(job)).await.unwrap();
    (server, backend)
}

async fn fetch_one(backend: &RedisBackend) -> usize {
    let takes = [QueueTake { queue: "ledger".into(), max: 10 }];
    let worker = WorkerId::generate();
    let request = FetchRequest { queues: &takes, max: 10, worker: &worker, lease: Duration::from_secs(30) };
    backend.fetch(request).await.unwrap().len()
}

#[tokio::test]
async fn blocking_wait_outlasts_the_default_500ms_response_timeout() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    // redis 1.x gives up on a reply after 500 ms by default; a 1.5 s BLPOP must not fail.
    backend.wait_for_jobs(&["ledger".to_owned()], Duration::from_millis(1500)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_waiters_beyond_the_pool_size_do_not_starve_other_commands() {
    let server = RedisServer::start();
    let backend = Arc::new(RedisBackend::builder(server.url()).pool_size(2).connect().await.unwrap());
    let queues = vec!["idle".to_owned()];
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (backend, queues) = (Arc::clone(&backend), queues.clone());
        waiters.spawn(async move { backend.wait_for_jobs(&queues, Duration::from_secs(30)).await });
    }
    let client = Client::from_arc(backend.clone());
    // Push and fetch finish while six waiters still block (each waits up to 30 s).
    let work = async {
        AppendToLedger::perform_later(&client, "/dev/null".into(), 1, 0).await.unwrap();
        fetch_one(&backend).await
    };
    tokio::select! {
        fetched = work => assert_eq!(fetched, 1),
        _ = waiters.join_next() => panic!("a waiter returned before the push and fetch finished"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_strands_no_job() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let queues = vec!["ledger".to_owned()];
    // The client gives up on a blocking wait; the server-side BLPOP goes on.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), backend.wait_for_jobs(&queues, Duration::from_secs(5))).await;
    assert!(gave_up.is_err());
    Client::new(backend.clone()).enqueue(job(1)).await.unwrap();
    // Waits never move jobs, so the job is still in its queue for the next fetch.
    assert_eq!(fetch_one(&backend).await, 1);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 1);
}

#[tokio::test]
async fn an_idle_wait_wakes_on_a_push() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let queues = vec!["ledger".to_owned()];
    let waiting = backend.wait_for_jobs(&queues, Duration::from_secs(60));
    let push = async {
        tokio::task::yield_now().await;
        Client::new(backend.clone()).enqueue(job(1)).await.unwrap();
        std::future::pending::<()>().await;
    };
    tokio::select! {
        woke = waiting => woke.unwrap(),
        () = push => unreachable!(),
    }
}

#[tokio::test]
async fn connect_refuses_a_malformed_url_a_closed_port_and_a_wrong_password_with_clear_errors() {
    let error = RedisBackend::connect("http://localhost").await.err().unwrap();
    assert!(error.to_string().contains("invalid Redis URL `http://localhost`"), "{error}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let error = RedisBackend::connect(&format!("redis://127.0.0.1:{closed}")).await.err().unwrap();
    assert!(error.to_string().contains(&format!("cannot connect to Redis at redis://127.0.0.1:{closed}")), "{error}");
    assert!(error.is_transient(), "a server not up yet may come: worth waiting for");

    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let error = RedisBackend::connect(&url).await.err().unwrap();
    let text = error.to_string();
    assert!(text.to_lowercase().contains("authentication failed"), "{text}");
    assert!(!error.is_transient(), "a wrong password stays wrong: not worth waiting for");
    assert!(!text.contains("wrong@"), "the password is not echoed: {text}");
    assert!(text.contains("a server with no password set refuses one too"), "{text}");
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    RedisBackend::connect(&url).await.unwrap();

    // Another kind of server on the port: one line, and what to check.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Write;
        for stream in http.incoming().flatten().take(5) {
            let _ = (&stream).write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n<html></html>");
        }
    });
    let error = RedisBackend::connect(&format!("redis://127.0.0.1:{port}")).await.err().unwrap();
    let text = error.to_string();
    assert!(text.contains("is this the port of a Redis server?") && !text.contains('\n'), "{text}");
}

#[tokio::test]
async fn scripts_reload_after_the_server_forgets_them() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    client.enqueue(job(1)).await.unwrap();
    assert!(server.command(&["SCRIPT", "FLUSH"]).starts_with("+OK"));
    client.enqueue(job(2)).await.unwrap();
    assert_eq!(fetch_one(&backend).await, 2);
}

#[tokio::test]
async fn eviction_policy_other_than_noeviction_is_reported() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let check = backend.server_check().await.unwrap();
    assert_eq!(check.eviction_policy.as_deref(), Some("noeviction"));
    assert!(check.warnings.is_empty());
    assert!(check.version >= jobs_redis::MIN_REDIS_VERSION, "{check:?}");
    server.command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let check = backend.server_check().await.unwrap();
    assert_eq!(check.warnings.len(), 1);
    assert!(check.warnings[0].contains("an evicted key is a lost job"), "{check:?}");
}

#[tokio::test]
async fn bulk_enqueue_is_one_round_trip_per_batch() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let before = calls(&server, "evalsha");
    let ids = Client::new(backend.clone()).enqueue_many((0..500).map(job)).await.unwrap();
    assert_eq!(ids.len(), 500);
    assert_eq!(calls(&server, "evalsha") - before, 1, "500 jobs, one script call");
    assert_eq!(backend.count(&JobSet::Queue("ledger".into())).await.unwrap(), 500);
}

/// One job due now goes in as plain commands, no script, and leaves what the
/// script leaves: the jobs in order at the queue's tail, the queue's name, and
/// exactly one wake-up token however many were pushed.
#[tokio::test]
async fn a_single_enqueue_due_now_runs_no_script_and_leaves_one_wake_token() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    for n in 0..3 {
        client.enqueue(job(n)).await.unwrap();
    }
    let stats = server.command(&["INFO", "commandstats"]);
    assert!(!stats.contains("cmdstat_evalsha"), "{stats}");
    assert_eq!(value(&server, &["LLEN", "{jobs}:wake:ledger"]), "1");
    assert_eq!(value(&server, &["SISMEMBER", "{jobs}:queues", "ledger"]), "1");
    let queued = backend.list(&JobSet::Queue("ledger".into()), 0, 10).await.unwrap();
    let ns: Vec<u64> =
        queued.iter().map(|stored| Envelope::from_json(&stored.payload).unwrap().args["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 2]);
    // A plain wait wakes on the token and leaves it, one, for a waiter that fetches.
    backend.wait_for_jobs(&["ledger".to_owned()], Duration::from_secs(60)).await.unwrap();
    assert_eq!(value(&server, &["LLEN", "{jobs}:wake:ledger"]), "1");
    assert_eq!(fetch_one(&backend).await, 3);
}

/// A producer that pushes a wake token per job without trimming piles them
/// up; the first fetch that finds the queue empty drops them, so idle
/// workers are not sent round once per stale token.
#[tokio::test]
async fn a_fetch_that_finds_its_queue_empty_drops_the_stale_wake_tokens() {
    let (server, backend) = with_queued(2).await;
    let tokens: Vec<&str> = std::iter::repeat_n("1", 500).collect();
    server.command(&[&["RPUSH", "{jobs}:wake:ledger"][..], &tokens].concat());
    assert_eq!(fetch_one(&backend).await, 2);
    assert_eq!(value(&server, &["LLEN", "{jobs}:wake:ledger"]), "501", "a fetch that empties the queue keeps them");
    assert_eq!(fetch_one(&backend).await, 0);
    assert_eq!(value(&server, &["LLEN", "{jobs}:wake:ledger"]), "0");
}

/// Pushes that are ready together go out together, one `RPUSH` for all of
/// them. On a current-thread runtime the order is fixed: the first caller
/// gathers, and the other twenty-three, ready to run, join its batch.
#[tokio::test(flavor = "current_thread")]
async fn single_pushes_ready_together_go_out_as_one_batch() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let mut pushes = tokio::task::JoinSet::new();
    for n in 0..24 {
        let client = Client::new(backend.clone());
        pushes.spawn(async move { client.enqueue(job(n)).await });
    }
    let mut ids = Vec::new();
    while let Some(pushed) = pushes.join_next().await {
        ids.push(pushed.unwrap().unwrap());
    }
    assert_eq!(calls(&server, "rpush"), 2, "one RPUSH of the twenty-four jobs, one of the wake token");
    let queued = backend.list(&JobSet::Queue("ledger".into()), 0, 100).await.unwrap();
    let mut queued: Vec<String> =
        queued.iter().map(|stored| Envelope::from_json(&stored.payload).unwrap().jid.as_str().to_owned()).collect();
    let mut ids: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
    queued.sort();
    ids.sort();
    assert_eq!(queued, ids, "every job once");
    assert_eq!(value(&server, &["LLEN", "{jobs}:wake:ledger"]), "1");
}

/// A caller that gathers a batch and then gives up (a request cancelled
/// mid-push) strands no one: the batch, with the jobs of the callers who
/// joined it, goes out on a task of its own.
#[tokio::test(flavor = "current_thread")]
async fn a_batch_goes_out_when_the_caller_that_gathered_it_gives_up() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    // The first caller starts gathering; it is polled once, then given up.
    let mut abandoned = Box::pin(client.enqueue(job(0)));
    tokio::select! {
        biased;
        _ = &mut abandoned => panic!("answered before Redis could reply"),
        () = std::future::ready(()) => {}
    }
    let mut waiting = tokio::task::JoinSet::new();
    for n in 10..15 {
        let client = client.clone();
        waiting.spawn(async move { client.enqueue(job(n)).await });
    }
    // The five join the batch, whose caller then leaves.
    tokio::task::yield_now().await;
    drop(abandoned);
    let mut pushed = 0;
    let stranded = Duration::from_secs(20);
    while let Some(done) = tokio::time::timeout(stranded, waiting.join_next()).await.expect("a push was stranded") {
        done.unwrap().unwrap();
        pushed += 1;
    }
    assert_eq!(pushed, 5);
    let queued = backend.list(&JobSet::Queue("ledger".into()), 0, 100).await.unwrap();
    let ns: Vec<u64> = queued
        .iter()
        .map(|stored| Envelope::from_json(&stored.payload).unwrap().args["n"].as_u64().unwrap())
        .filter(|n| *n >= 10)
        .collect();
    assert_eq!(ns, [10, 11, 12, 13, 14], "the five, in the order they came");
}

/// A batch whose task never runs (its runtime ended first) strands no later
/// push: the next caller gathers anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_dropped_with_its_runtime_strands_no_later_push() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend.clone());
    let ended = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // The push starts a batch on this runtime, gives up, and the runtime ends
        // before the batch's task ever runs.
        runtime.block_on(async {
            tokio::select! {
                biased;
                _ = client.enqueue(job(1)) => panic!("answered before its batch ran"),
                () = std::future::ready(()) => {}
            }
        });
    });
    ended.join().unwrap();
    let client = Client::new(backend.clone());
    tokio::time::timeout(Duration::from_secs(20), client.enqueue(job(2)))
        .await
        .expect("a later push was stranded")
        .unwrap();
    let queued = backend.list(&JobSet::Queue("ledger".into()), 0, 10).await.unwrap();
    let ns: Vec<u64> =
        queued.iter().map(|stored| Envelope::from_json(&stored.payload).unwrap().args["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [2], "the abandoned job was not sent; the later one was");
}

/// In one batch, each queue's `RPUSH` answers for its own jobs: a queue Redis
/// refuses fails its callers (permanently: a retry would fail the same), and
/// the jobs of the other queue are reported stored, as they are.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_queue_in_a_batch_fails_only_its_own_jobs() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    server.command(&["SET", "{jobs}:q:broken", "not a list"]);
    let mut pushes = tokio::task::JoinSet::new();
    for queue in ["fine", "broken", "fine"] {
        let client = Client::new(backend.clone());
        let raw = RawJob { job: "ping".into(), version: 1, queue: queue.into(), args: serde_json::json!({}) };
        pushes.spawn(async move { (queue, client.enqueue_raw(raw).await) });
    }
    let mut answers = Vec::new();
    while let Some(done) = pushes.join_next().await {
        let (queue, pushed) = done.unwrap();
        answers.push((queue, pushed.map_err(|e| e.to_string())));
    }
    answers.sort_by_key(|(queue, _)| *queue);
    assert!(matches!(&answers[0], ("broken", Err(e)) if e.contains("WRONGTYPE")), "{answers:?}");
    assert!(answers[1..].iter().all(|(queue, pushed)| *queue == "fine" && pushed.is_ok()), "{answers:?}");
    assert_eq!(backend.count(&JobSet::Queue("fine".into())).await.unwrap(), 2);
}

#[tokio::test]
async fn every_key_carries_the_namespace_hash_tag() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url()).namespace("shop").connect().await.unwrap();
    let client = Client::new(backend.clone());
    client.enqueue(job(1)).await.unwrap();
    client.enqueue_in(Duration::from_secs(60), job(2)).await.unwrap();
    assert_eq!(fetch_one(&backend).await, 1);
    backend.heartbeat(&WorkerId::generate(), Duration::from_secs(10)).await.unwrap();
    let keys = server.command(&["KEYS", "*"]);
    let names: Vec<&str> = keys.lines().filter(|l| !l.starts_with(['*', '$'])).collect();
    assert!(names.len() >= 5, "{names:?}");
    assert!(names.iter().all(|k| k.starts_with("{shop}:")), "{names:?}");
    // A namespace that cannot be a hash tag, or would break key names and log lines, is refused.
    for bad in ["", "a{b", "a}b", "a\nb", "tab\there"] {
        let refused = RedisBackend::builder(server.url()).namespace(bad).connect().await.map(drop).unwrap_err();
        assert!(refused.to_string().contains("must be non-empty and free of braces"), "{bad:?}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_wakes_every_idle_worker_in_turn() {
    let server = RedisServer::start();
    let backend = Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let backend = Arc::clone(&backend);
        waiters.spawn(async move { backend.wait_for_jobs(&["ledger".to_owned()], Duration::from_secs(60)).await });
    }
    // Give both waiters time to block; a late one still wakes (the token stays until popped).
    while server.command(&["CLIENT", "LIST"]).matches("cmd=blpop").count() < 2 {
        tokio::task::yield_now().await;
    }
    Client::from_arc(backend.clone()).enqueue_many((0..100).map(job)).await.unwrap();
    waiters.join_next().await.unwrap().unwrap().unwrap();
    assert_eq!(fetch_one(&backend).await, 10, "the first worker takes a batch and leaves the rest");
    // Without the token passed on, the second waiter would sleep its full 60 s.
    let second = tokio::time::timeout(Duration::from_secs(20), waiters.join_next()).await;
    second.expect("the second idle worker was never woken").unwrap().unwrap().unwrap();
}

// A fetch takes one lease for all its jobs (one record in `{jobs}:leases` and
// `{jobs}:lease-deadlines`); each way of settling a job counts it off, and the record
// goes with the lease's last job, so settled leases leave nothing behind.
#[tokio::test]
async fn a_lease_covers_a_whole_fetch_and_goes_with_its_last_job() {
    let (server, backend) = with_queued(5).await;
    let takes = [QueueTake { queue: "ledger".into(), max: 5 }];
    let worker = WorkerId::generate();
    let request = FetchRequest { queues: &takes, max: 5, worker: &worker, lease: Duration::from_secs(30) };
    let held = backend.fetch(request).await.unwrap();
    assert_eq!(held.len(), 5);
    assert!(held.iter().all(|job| job.lease.token == held[0].lease.token), "one lease for the fetch");
    assert_eq!(value(&server, &["ZCARD", "{jobs}:lease-deadlines"]), "1");
    assert_eq!(value(&server, &["HGET", "{jobs}:leases", &held[0].lease.token]), "5");

    let listed = backend.list(&JobSet::InFlight, 1, 3).await.unwrap();
    let expected: Vec<_> = held[1..4].iter().map(|job| job.payload.clone()).collect();
    assert_eq!(listed.into_iter().map(|job| job.payload).collect::<Vec<_>>(), expected, "paged in fetch order");

    let leases: Vec<_> = held.iter().map(|job| job.lease.clone()).collect();
    assert_eq!(backend.complete(&leases[..2]).await.unwrap(), [true, true]);
    assert!(backend.retry(&leases[2], held[2].payload.clone(), u64::MAX / 2).await.unwrap());
    assert!(backend.kill(&leases[3], held[3].payload.clone()).await.unwrap());
    assert_eq!(value(&server, &["HGET", "{jobs}:leases", &held[0].lease.token]), "1", "one job left");
    assert_eq!(backend.put_back(&leases[4..]).await.unwrap(), 0);
    for key in ["{jobs}:leases", "{jobs}:lease-deadlines", "{jobs}:inflight"] {
        assert_eq!(value(&server, &["EXISTS", key]), "0", "{key} is gone with the last job");
    }
    assert_eq!(backend.count(&JobSet::Queue("ledger".into())).await.unwrap(), 1, "the put-back job waits again");
}

// A worker from before leases covered a whole fetch kept one deadline per job
// in `{jobs}:deadlines` and an entry "token\nqueue\npayload"; when such a
// worker dies during an upgrade, a new worker's rescue takes its jobs over.
#[tokio::test]
async fn a_rescue_takes_over_the_jobs_of_a_worker_from_before_per_fetch_leases() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let payload = r#"{"jid":"old1","job":"append_to_ledger","args":{"path":"/dev/null","n":1,"pause_ms":0}}"#;
    server.command(&["HSET", "{jobs}:inflight", "7", &format!("old-host:1:0000abcd:7\nledger\n{payload}")]);
    server.command(&["ZADD", "{jobs}:deadlines", "0", "7"]);
    let rescuer = WorkerId::generate();
    let rescued = backend.rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!((rescued[0].payload.as_str(), &*rescued[0].lease.queue), (payload, "ledger"));
    assert_eq!(value(&server, &["EXISTS", "{jobs}:deadlines"]), "0", "the old deadline is gone");
    assert_eq!(value(&server, &["HEXISTS", "{jobs}:inflight", "7"]), "0", "so is the old entry");
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 1, "held under the rescuer's lease");
    assert_eq!(backend.complete(&[rescued[0].lease.clone()]).await.unwrap(), [true]);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 0);
    // An entry without the token (not written so by any worker) is taken over as it is,
    // to `default`, where the worker reads it; it used to be dropped.
    server.command(&["HSET", "{jobs}:inflight", "8", payload]);
    server.command(&["ZADD", "{jobs}:deadlines", "0", "8"]);
    let rescued = backend.rescue(&rescuer, Duration::from_secs(30), 10).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!((rescued[0].payload.as_str(), &*rescued[0].lease.queue), (payload, "default"));
}

// Listing in-flight jobs pages across leases, skipping whole leases by their
// unsettled jobs and leaving settled ones out.
#[tokio::test]
async fn in_flight_jobs_page_across_leases_in_fetch_order() {
    let (_server, backend) = with_queued(6).await;
    let takes = [QueueTake { queue: "ledger".into(), max: 3 }];
    let worker = WorkerId::generate();
    let request = || FetchRequest { queues: &takes, max: 3, worker: &worker, lease: Duration::from_secs(30) };
    let mut held = backend.fetch(request()).await.unwrap();
    held.extend(backend.fetch(request()).await.unwrap());
    assert_eq!(held.len(), 6);
    assert_eq!(backend.complete(&[held[0].lease.clone()]).await.unwrap(), [true]);
    let payloads = |range: std::ops::Range<usize>| held[range].iter().map(|j| j.payload.clone()).collect::<Vec<_>>();
    for (offset, limit, expected) in
        [(0, 1, payloads(1..2)), (1, 3, payloads(2..5)), (2, 10, payloads(3..6)), (5, 1, vec![])]
    {
        let listed = backend.list(&JobSet::InFlight, offset, limit).await.unwrap();
        let listed: Vec<_> = listed.into_iter().map(|job| job.payload).collect();
        assert_eq!(listed, expected, "offset {offset}, limit {limit}");
    }
}

/// Waits (bounded) until the server has a client blocked in a command.
async fn until_a_client_blocks(server: &RedisServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.command(&["INFO", "clients"]).lines().any(|line| line.trim() == "blocked_clients:1") {
        assert!(tokio::time::Instant::now() < deadline, "no client blocked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// An idle worker's wait and fetch travel together: the push wakes the wait and the
// job comes back leased in the same round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_and_fetch_returns_the_pushed_job_leased() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let (queues, takes) = (vec!["ledger".to_owned()], [QueueTake { queue: "ledger".into(), max: 10 }]);
    let worker = WorkerId::generate();
    let request = FetchRequest { queues: &takes, max: 10, worker: &worker, lease: Duration::from_secs(30) };
    let waiting = backend.wait_and_fetch(&queues, Duration::from_secs(60), request);
    let push = async {
        until_a_client_blocks(&server).await;
        Client::new(backend.clone()).enqueue(job(1)).await.unwrap();
        std::future::pending::<()>().await;
    };
    let fetched = tokio::select! {
        fetched = waiting => fetched.unwrap(),
        () = push => unreachable!(),
    };
    assert_eq!(fetched.len(), 1);
    assert_eq!(backend.complete(&[fetched[0].lease.clone()]).await.unwrap(), [true], "it was leased");
    // The waiting connection ran the fetch itself, right behind its BLPOP.
    let clients = server.command(&["CLIENT", "LIST"]);
    assert!(!clients.contains("cmd=blpop"), "{clients}");
}

// After a restart the server has forgotten the fetch script: the wait's fetch
// loads it again and still returns the job.
#[tokio::test]
async fn a_wait_and_fetch_reloads_a_forgotten_script() {
    let (server, backend) = with_queued(1).await;
    server.command(&["SCRIPT", "FLUSH"]);
    let (queues, takes) = (vec!["ledger".to_owned()], [QueueTake { queue: "ledger".into(), max: 10 }]);
    let worker = WorkerId::generate();
    let request = FetchRequest { queues: &takes, max: 10, worker: &worker, lease: Duration::from_secs(30) };
    let fetched = backend.wait_and_fetch(&queues, Duration::from_secs(60), request).await.unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(backend.count(&JobSet::InFlight).await.unwrap(), 1);
}

// A caller that stops waiting loses nothing: the job its wait leased after it left
// goes back to the head of its queue, not into a lease that nobody holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_wait_and_fetch_puts_back_what_it_leased() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let waiter = backend.clone();
    let waiting = tokio::spawn(async move {
        let (queues, takes) = (vec!["ledger".to_owned()], [QueueTake { queue: "ledger".into(), max: 10 }]);
        let worker = WorkerId::generate();
        let request = FetchRequest { queues: &takes, max: 10, worker: &worker, lease: Duration::from_secs(30) };
        waiter.wait_and_fetch(&queues, Duration::from_secs(60), request).await
    });
    until_a_client_blocks(&server).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    Client::new(backend.clone()).enqueue(job(1)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let queued = backend.count(&JobSet::Queue("ledger".into())).await.unwrap();
        if queued == 1 && backend.count(&JobSet::InFlight).await.unwrap() == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never came back to its queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fetch_one(&backend).await, 1, "the next fetch takes it");
}

/// A key of the wrong type under the namespace (another application writing
/// there) is refused at connect, naming the key: a script that met it would
/// fail halfway, and Redis does not undo a failed script's earlier writes
/// (a fetch would lose the jobs it had popped).
#[tokio::test]
async fn connect_refuses_a_namespace_holding_a_key_of_the_wrong_type() {
    let server = RedisServer::start();
    RedisBackend::connect(&server.url()).await.unwrap();
    server.command(&["SET", "{jobs}:inflight", "not a hash"]);
    let error = RedisBackend::connect(&server.url()).await.err().expect("refused");
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("`{jobs}:inflight` is a string, not a hash"), "{error}");
    server.command(&["DEL", "{jobs}:inflight"]);
    server.command(&["SADD", "{jobs}:queues", "mail"]);
    server.command(&["SET", "{jobs}:q:mail", "oops"]);
    let error = RedisBackend::connect(&server.url()).await.err().expect("refused");
    assert!(error.to_string().contains("`{jobs}:q:mail` is a string, not a list"), "{error}");
    // Another namespace is untouched by them.
    RedisBackend::builder(server.url()).namespace("mine").connect().await.unwrap();
}
