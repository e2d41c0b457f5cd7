//! Redis-specific promises of results, events and cancellation: one script
//! call per record, keys that expire with the outcome, waits on blocking
//! connections that outlast the 500 ms reply timeout and all wake on one
//! outcome, a capped event stream, and cancellation flags on fetched jobs
//! that cost no extra command while no request is pending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs_core::{Backend, EventRecord, FetchRequest, Fetched, JobId, OutcomeRecord, PushJob, QueueTake, WorkerId};
use jobs_redis::RedisBackend;
use jobs_tests::RedisServer;

const SUCCEEDED: &str = r#"{"state":"succeeded","value":7,"attempt":1,"finished_at":1}"#;
const RUNNING: &str = r#"{"state":"running","attempt":2,"started_at":1}"#;
const MINUTE: Duration = Duration::from_secs(60);

fn outcome(jid: &str, json: &str, is_final: bool, ttl: Duration) -> OutcomeRecord {
    OutcomeRecord { jid: JobId::from(jid), outcome: json.to_owned(), is_final, ttl }
}

fn event(n: usize) -> EventRecord {
    EventRecord { json: format!(r#"{{"n":{n}}}"#) }
}

/// An integer reply of the test server (`:42`).
fn int(server: &RedisServer, args: &[&str]) -> i64 {
    let reply = server.command(args);
    reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("{args:?} answered {reply:?}"))
}

/// How many times the server ran `command` (lowercase) so far.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    server
        .command(&["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Waits until `count` clients block in `command` (lowercase).
async fn blocked_in(server: &RedisServer, command: &str, count: usize) {
    let needle = format!("cmd={command}");
    while server.command(&["CLIENT", "LIST"]).matches(needle.as_str()).count() < count {
        tokio::task::yield_now().await;
    }
}

async fn push(backend: &RedisBackend, payloads: &[&str]) {
    let jobs = payloads
        .iter()
        .map(|payload| PushJob {
            jid: JobId::new(),
            queue: "images".into(),
            payload: (*payload).to_owned(),
            run_at: None,
            unique: None,
        })
        .collect();
    backend.push(jobs).await.unwrap();
}

async fn fetch(backend: &RedisBackend, lease: Duration) -> Vec<Fetched> {
    let takes = [QueueTake { queue: "images".into(), max: 10 }];
    let worker = WorkerId::generate();
    backend.fetch(FetchRequest { queues: &takes, max: 10, worker: &worker, lease }).await.unwrap()
}

fn flags(fetched: &[Fetched]) -> Vec<bool> {
    fetched.iter().map(|job| job.cancelled).collect()
}

#[tokio::test]
async fn a_record_is_one_script_call_and_its_keys_expire_with_the_outcome() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url()).namespace("shop").connect().await.unwrap();
    let before = calls(&server, "evalsha");
    let outcomes = [outcome("a", SUCCEEDED, true, MINUTE), outcome("b", RUNNING, false, MINUTE)];
    backend.record(&outcomes, &[event(1), event(2)]).await.unwrap();
    assert_eq!(calls(&server, "evalsha") - before, 1, "two outcomes and two events, one script call");

    assert_eq!(backend.outcome(&JobId::from("a")).await.unwrap().as_deref(), Some(SUCCEEDED));
    assert_eq!(backend.outcome(&JobId::from("b")).await.unwrap().as_deref(), Some(RUNNING));
    for key in ["{shop}:result:a", "{shop}:done:a", "{shop}:result:b"] {
        let ttl = int(&server, &["PTTL", key]);
        assert!(ttl > 0 && ttl <= 60_000, "{key} expires with its outcome, found PTTL {ttl}");
    }
    assert_eq!(int(&server, &["EXISTS", "{shop}:done:b"]), 0, "a running job has no wake-up token");
    assert_eq!(int(&server, &["XLEN", "{shop}:events"]), 2);

    backend.cancel(&JobId::from("a"), jobs_core::now_millis() + 60_000).await.unwrap();
    let keys = server.command(&["KEYS", "*"]);
    let names: Vec<&str> = keys.lines().filter(|l| !l.starts_with(['*', '$'])).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.iter().all(|k| k.starts_with("{shop}:")), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_wakes_on_one_final_outcome() {
    let server = RedisServer::start();
    let backend = Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let backend = Arc::clone(&backend);
        waiters.spawn(async move { backend.wait_outcome(&JobId::from("a"), Duration::from_secs(60)).await });
    }
    blocked_in(&server, "blmove", 3).await;
    backend.record(&[outcome("a", SUCCEEDED, true, MINUTE)], &[]).await.unwrap();
    for _ in 0..3 {
        let woke = tokio::time::timeout(Duration::from_secs(20), waiters.join_next()).await;
        let stored = woke.expect("a waiter slept through the outcome").unwrap().unwrap().unwrap();
        assert_eq!(stored.as_deref(), Some(SUCCEEDED));
    }
    assert_eq!(int(&server, &["LLEN", "{jobs}:done:a"]), 1, "the token stays for later waiters");
}

/// Waits beyond `max_waits` hold no connection of their own: they look again
/// on the shared one, and still all see the outcome; an event read beyond it
/// spends its wait queueing and then reads without blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_beyond_the_cap_share_a_connection_and_still_see_the_outcome() {
    let server = RedisServer::start();
    let backend = Arc::new(RedisBackend::builder(server.url()).max_waits(2).connect().await.unwrap());
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let backend = Arc::clone(&backend);
        waiters.spawn(async move { backend.wait_outcome(&JobId::from("a"), Duration::from_secs(60)).await });
    }
    blocked_in(&server, "blmove", 2).await;
    // The other four are looking on the shared connection now.
    let gets = calls(&server, "get");
    let looking = async {
        while calls(&server, "get") < gets + 4 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), looking).await.expect("the waits beyond the cap never looked again");
    let clients = server.command(&["CLIENT", "LIST"]);
    assert_eq!(clients.matches("cmd=blmove").count(), 2, "{clients}");

    let connected = |server: &RedisServer| server.command(&["CLIENT", "LIST"]).lines().count();
    let before = connected(&server);
    let events = backend.read_events(None, 10, Duration::from_millis(300)).await.unwrap();
    assert!(events.events.is_empty());
    assert_eq!(connected(&server), before, "the read opened no connection of its own");
    assert_eq!(calls(&server, "xread"), 1, "one read, after the wait for a connection");

    backend.record(&[outcome("a", SUCCEEDED, true, MINUTE)], &[]).await.unwrap();
    for _ in 0..6 {
        let woke = tokio::time::timeout(Duration::from_secs(20), waiters.join_next()).await;
        let stored = woke.expect("a waiter missed the outcome").unwrap().unwrap().unwrap();
        assert_eq!(stored.as_deref(), Some(SUCCEEDED));
    }
}

#[tokio::test]
async fn a_wait_outlasts_the_500ms_response_timeout_and_ignores_outcomes_that_are_not_final() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    backend.record(&[outcome("a", RUNNING, false, MINUTE)], &[]).await.unwrap();
    let started = Instant::now();
    let stored = backend.wait_outcome(&JobId::from("a"), Duration::from_millis(1200)).await.unwrap();
    assert_eq!(stored, None);
    assert!(started.elapsed() >= Duration::from_millis(1200), "returned after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_later_outcome_that_is_not_final_takes_the_wake_up_token_away() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    // A dead job retried by hand runs again: its waiters wait for the new run.
    backend.record(&[outcome("a", SUCCEEDED, true, MINUTE)], &[]).await.unwrap();
    backend.record(&[outcome("a", RUNNING, false, MINUTE)], &[]).await.unwrap();
    assert_eq!(int(&server, &["EXISTS", "{jobs}:done:a"]), 0);
    let blmoves = calls(&server, "blmove");
    assert_eq!(backend.wait_outcome(&JobId::from("a"), Duration::from_millis(300)).await.unwrap(), None);
    assert_eq!(calls(&server, "blmove") - blmoves, 1, "one blocking wait, no busy loop");
}

#[tokio::test]
async fn an_outcome_kept_for_zero_time_is_not_kept() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    backend.record(&[outcome("a", SUCCEEDED, true, MINUTE)], &[]).await.unwrap();
    backend.record(&[outcome("a", SUCCEEDED, true, Duration::ZERO)], &[]).await.unwrap();
    assert_eq!(backend.outcome(&JobId::from("a")).await.unwrap(), None);
    assert_eq!(int(&server, &["EXISTS", "{jobs}:result:a", "{jobs}:done:a"]), 0);
}

#[tokio::test]
async fn the_event_stream_is_capped() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url()).events_max_len(10).connect().await.unwrap();
    for batch in 0..10 {
        let events: Vec<EventRecord> = (0..100).map(|n| event(batch * 100 + n)).collect();
        backend.record(&[], &events).await.unwrap();
    }
    // `MAXLEN ~` trims whole stream nodes (100 entries by default): about 10, never 1,000.
    let kept = int(&server, &["XLEN", "{jobs}:events"]);
    assert!((10..=110).contains(&kept), "kept {kept}");
    let all = backend.read_events(Some("0"), 1000, Duration::ZERO).await.unwrap();
    assert_eq!(all.events.len() as i64, kept);
    assert_eq!(all.events.last().map(|(_, json)| json.as_str()), Some(r#"{"n":999}"#));
    assert_eq!(all.events.last().map(|(id, _)| id), Some(&all.cursor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_event_read_outlasts_the_response_timeout_and_wakes_on_a_record() {
    let server = RedisServer::start();
    let backend = Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    backend.record(&[], &[event(0)]).await.unwrap();
    // From the stream's end: the event written before is not read again.
    let started = Instant::now();
    let idle = backend.read_events(None, 10, Duration::from_millis(1200)).await.unwrap();
    assert!(idle.events.is_empty(), "{idle:?}");
    assert!(started.elapsed() >= Duration::from_millis(1200), "returned after {:?}", started.elapsed());

    let reader = {
        let (backend, cursor) = (Arc::clone(&backend), idle.cursor.clone());
        tokio::spawn(async move { backend.read_events(Some(&cursor), 10, Duration::from_secs(60)).await })
    };
    blocked_in(&server, "xread", 1).await;
    backend.record(&[], &[event(1), event(2)]).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(20), reader).await.expect("the reader slept through a record");
    let read = read.unwrap().unwrap();
    let jsons: Vec<&str> = read.events.iter().map(|(_, json)| json.as_str()).collect();
    assert_eq!(jsons, [r#"{"n":1}"#, r#"{"n":2}"#]);
    assert_eq!(Some(&read.cursor), read.events.last().map(|(id, _)| id));
    assert!(read.events[0].0 > idle.cursor, "{read:?} after {}", idle.cursor);
}

#[tokio::test]
async fn fetch_flags_cancelled_jobs_with_no_lookup_while_no_request_holds() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let now = jobs_core::now_millis();

    push(&backend, &[r#"{"jid":"d","job":"x"}"#]).await;
    assert_eq!(flags(&fetch(&backend, MINUTE).await), [false]);
    assert_eq!(calls(&server, "zmscore"), 0, "no request, no lookup");

    // An expired request is dropped by the fetch, and costs no lookup either.
    backend.cancel(&JobId::from("c"), now - 1).await.unwrap();
    push(&backend, &[r#"{"jid":"c","job":"x"}"#]).await;
    assert_eq!(flags(&fetch(&backend, MINUTE).await), [false]);
    assert_eq!(calls(&server, "zmscore"), 0);
    assert_eq!(int(&server, &["ZCARD", "{jobs}:cancelled"]), 0);

    backend.cancel(&JobId::from("b"), now + 60_000).await.unwrap();
    push(&backend, &[r#"{"jid":"a","job":"x"}"#, r#"{"jid":"b","job":"x"}"#, "not json", r#"{"jid":7}"#]).await;
    assert_eq!(flags(&fetch(&backend, MINUTE).await), [false, true, false, false]);
    assert_eq!(calls(&server, "zmscore"), 1, "one lookup for the whole batch");

    let asked = [JobId::from("a"), JobId::from("b"), JobId::from("c")];
    assert_eq!(backend.cancel_requested(&asked).await.unwrap(), [false, true, false]);
    assert_eq!(backend.cancel_requested(&[]).await.unwrap(), Vec::<bool>::new());
}

#[tokio::test]
async fn a_rescued_job_carries_its_cancellation() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    push(&backend, &[r#"{"jid":"a","job":"x"}"#, r#"{"jid":"b","job":"x"}"#]).await;
    // A lease of zero has expired by the time anyone looks.
    assert_eq!(fetch(&backend, Duration::ZERO).await.len(), 2);
    backend.cancel(&JobId::from("a"), jobs_core::now_millis() + 60_000).await.unwrap();
    let mut rescued = backend.rescue(&WorkerId::generate(), MINUTE, 10).await.unwrap();
    rescued.sort_by(|x, y| x.payload.cmp(&y.payload));
    assert_eq!(flags(&rescued), [true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_outcomes_are_capped_by_count_dropping_the_closest_to_expiring() {
    let server = RedisServer::start();
    let backend = RedisBackend::builder(server.url()).namespace("cap").results_max(3).connect().await.unwrap();
    // Five outcomes, each kept a little longer than the one before.
    for (i, jid) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let ttl = MINUTE + Duration::from_secs(i as u64);
        backend.record(&[outcome(jid, SUCCEEDED, true, ttl)], &[]).await.unwrap();
    }
    for (jid, kept) in [("a", false), ("b", false), ("c", true), ("d", true), ("e", true)] {
        let stored = backend.outcome(&JobId::from(jid)).await.unwrap();
        assert_eq!(stored.is_some(), kept, "{jid}");
        assert_eq!(int(&server, &["EXISTS", &format!("{{cap}}:done:{jid}")]), i64::from(kept), "{jid}'s token");
    }
    assert_eq!(int(&server, &["ZCARD", "{cap}:results"]), 3);
}

/// Events older than the age limit are trimmed when later ones are recorded.
#[tokio::test]
async fn events_older_than_the_age_limit_are_trimmed() {
    let server = RedisServer::start();
    let backend =
        RedisBackend::builder(server.url()).events_max_age(Duration::from_millis(100)).connect().await.unwrap();
    jobs_tests::events_are_kept_for_their_age_limit(&backend, Duration::from_millis(100)).await;
}

/// A client that writes events trims those older than the age limit too:
/// the limit holds on a deployment whose workers write none.
#[tokio::test]
async fn a_push_with_events_trims_those_older_than_the_age_limit() {
    let server = RedisServer::start();
    let backend =
        RedisBackend::builder(server.url()).events_max_age(Duration::from_millis(100)).connect().await.unwrap();
    let client = jobs_core::Client::new(backend.clone()).with_events(true);
    let raw = || jobs_core::RawJob {
        job: "greet".into(),
        version: 1,
        queue: "default".into(),
        args: serde_json::json!({"n": 1}),
    };
    client.enqueue_raw(raw()).await.unwrap();
    // The limit is a matter of time: wait for the clock, not for a signal.
    let first = Instant::now();
    while first.elapsed() <= Duration::from_millis(110) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = client.enqueue_raw(raw()).await.unwrap();
    let kept = backend.read_events(Some("0"), 100, Duration::ZERO).await.unwrap();
    assert_eq!(kept.events.len(), 1, "{:?}", kept.events);
    assert!(kept.events[0].1.contains(second.as_str()), "the newer event is kept: {:?}", kept.events);
}
