//! `versions`: the census of payloads by job name and version, in every queue
//! and set, read in bounded batches; and the CLI table that prints it.

use std::process::Command;
use std::time::Duration;

use jobs_core::{
    Census, CensusCounts, CensusRow, Envelope, FetchRequest, Fetched, JobId, JobSet, PushJob, QueueTake, RawJob,
    WorkerId, census, census_in_batches, now_millis,
};
use jobs_tests::TestBackend;

jobs_tests::conformance!(
    census_counts_each_name_and_version_where_it_waits,
    census_in_small_batches_counts_every_payload_exactly_once,
    census_of_an_empty_backend_says_nothing_waits,
    queues_lists_every_queue_a_push_named_sorted,
);

/// The queue jobs pass through on their way to the retry, dead and in-flight sets.
const HELD: &str = "held";

fn payload(job: &str, version: u32) -> String {
    Envelope::new(job, version, "", serde_json::Map::new()).to_json()
}

async fn push(t: &TestBackend, queue: &str, payload: String, run_at: Option<u64>) {
    let job = PushJob { jid: JobId::new(), queue: queue.into(), payload, run_at, unique: None };
    t.backend().push(vec![job]).await.unwrap();
}

async fn enqueue(t: &TestBackend, job: &str, version: u32, queue: &str, times: usize) {
    let client = t.client();
    for _ in 0..times {
        let raw = RawJob { job: job.into(), version, queue: queue.into(), args: serde_json::json!({"n": 1}) };
        client.enqueue_raw(raw).await.unwrap();
    }
}

/// Leases `payload` for a minute, so it can be settled into a set or left in flight.
async fn lease(t: &TestBackend, payload: &str) -> Fetched {
    push(t, HELD, payload.to_owned(), None).await;
    let (queues, worker) = ([QueueTake { queue: HELD.into(), max: 1 }], WorkerId::generate());
    let request = FetchRequest { queues: &queues, max: 1, worker: &worker, lease: Duration::from_secs(60) };
    let mut fetched = t.backend().fetch(request).await.unwrap();
    assert_eq!(fetched.len(), 1, "the held queue holds exactly the job just pushed");
    fetched.remove(0)
}

async fn to_retry(t: &TestBackend, payload: String) {
    let job = lease(t, &payload).await;
    assert!(t.backend().retry(&job.lease, payload, now_millis() + 3_600_000).await.unwrap());
}

async fn to_dead(t: &TestBackend, payload: String) {
    let job = lease(t, &payload).await;
    assert!(t.backend().kill(&job.lease, payload).await.unwrap());
}

/// A known mix: two versions of `greet`, an alias-era name, a newer version
/// scheduled, and unreadable payloads in several places.
async fn known_mix(t: &TestBackend) {
    let later = Some(now_millis() + 3_600_000);
    enqueue(t, "greet", 1, "default", 3).await;
    enqueue(t, "greet", 2, "default", 2).await;
    enqueue(t, "greet", 1, "mail", 1).await;
    push(t, "default", "{nope".into(), None).await;
    push(t, "mail", r#"{"jid":"z0","job":"greet","version":0}"#.into(), None).await;
    // Readable name and version, malformed elsewhere: still a v2 payload waiting.
    push(t, "mail", r#"{"jid":"z1","job":"greet","version":2,"attempt":"bad"}"#.into(), None).await;
    push(t, "default", payload("greet", 1), later).await;
    push(t, "default", payload("send_sms", 3), later).await;
    push(t, "critical", payload("send_sms", 3), later).await;
    push(t, "default", r#"{"jid":"z2","job":"greet","version":"2"}"#.into(), later).await;
    to_retry(t, payload("greet", 1)).await;
    to_retry(t, payload("greet", 1)).await;
    to_retry(t, payload("greet", 2)).await;
    to_dead(t, payload("greet", 1)).await;
    to_dead(t, payload("send_notice", 1)).await;
    to_dead(t, "[1,2]".into()).await;
    for _ in 0..3 {
        lease(t, &payload("greet", 2)).await;
    }
}

fn counts(queues: &[(&str, usize)], [scheduled, retry, dead, in_flight]: [usize; 4]) -> CensusCounts {
    let queues = queues.iter().map(|(q, n)| ((*q).to_owned(), *n)).collect();
    CensusCounts { queues, scheduled, retry, dead, in_flight }
}

fn row(job: &str, version: u32, counts: CensusCounts) -> CensusRow {
    CensusRow { job: job.into(), version, counts }
}

fn known_mix_census() -> Census {
    Census {
        rows: vec![
            row("greet", 1, counts(&[("default", 3), ("mail", 1)], [1, 2, 1, 0])),
            row("greet", 2, counts(&[("default", 2), ("mail", 1)], [0, 1, 0, 3])),
            row("send_notice", 1, counts(&[], [0, 0, 1, 0])),
            row("send_sms", 3, counts(&[], [2, 0, 0, 0])),
        ],
        unreadable: counts(&[("default", 1), ("mail", 1)], [1, 0, 1, 0]),
    }
}

/// What `versions` prints for the known mix.
const KNOWN_MIX_TABLE: &str = "\
job           version  default  mail  scheduled  retry  dead  in-flight  total
greet               1        3     1          1      2     1          0      8
greet               2        2     1          0      1     0          3      7
send_notice         1        0     0          0      0     1          0      1
send_sms            3        0     0          2      0     0          0      2
(unreadable)        -        1     1          1      0     1          0      4
";

async fn census_counts_each_name_and_version_where_it_waits(t: &TestBackend) {
    known_mix(t).await;
    let found = census(t.backend()).await.unwrap();
    assert_eq!(found, known_mix_census());
    assert_eq!(found.get("greet", 1).map(CensusCounts::total), Some(8));
    assert_eq!(found.to_string(), KNOWN_MIX_TABLE);
}

async fn census_in_small_batches_counts_every_payload_exactly_once(t: &TestBackend) {
    known_mix(t).await;
    enqueue(t, "greet", 1, "default", 1).await; // 7 ready in `default`: batches of 2 end on a short page
    let mut expected = known_mix_census();
    expected.rows[0].counts.queues.insert("default".into(), 4);
    for batch in [1, 2, 3, 7, 500] {
        assert_eq!(census_in_batches(t.backend(), batch).await.unwrap(), expected, "batch {batch}");
    }
    assert_eq!(census_in_batches(t.backend(), 0).await.unwrap(), expected, "a batch of 0 reads 1 at a time");
}

async fn census_of_an_empty_backend_says_nothing_waits(t: &TestBackend) {
    let nothing = "nothing waits: every queue and the scheduled, retry, dead and in-flight sets are empty\n";
    assert_eq!(census(t.backend()).await.unwrap().to_string(), nothing);
    let job = lease(t, &payload("greet", 1)).await;
    let held = census(t.backend()).await.unwrap();
    assert_eq!(held.rows, [row("greet", 1, counts(&[], [0, 0, 0, 1]))], "a leased job is counted in flight");
    assert_eq!(t.backend().complete(&[job.lease]).await.unwrap(), [true]);
    let done = census(t.backend()).await.unwrap();
    assert!(done.is_empty(), "a queue that held a finished job adds nothing: {done:?}");
    assert_eq!(done.to_string(), nothing);
}

async fn queues_lists_every_queue_a_push_named_sorted(t: &TestBackend) {
    assert!(t.backend().queues().await.unwrap().is_empty());
    enqueue(t, "greet", 1, "mail", 1).await;
    enqueue(t, "greet", 1, "default", 1).await;
    push(t, "bulk", payload("greet", 1), Some(now_millis() + 3_600_000)).await;
    enqueue(t, "greet", 1, "mail", 1).await;
    assert_eq!(t.backend().queues().await.unwrap(), ["bulk", "default", "mail"]);
    // A queue stays named once its only job is gone (deleted before it was due).
    let later = payload("greet", 1);
    push(t, "later", later.clone(), Some(now_millis() + 3_600_000)).await;
    assert_eq!(t.backend().remove(&JobSet::Scheduled, &[later]).await.unwrap(), 1);
    assert_eq!(t.backend().queues().await.unwrap(), ["bulk", "default", "later", "mail"]);
}

/// The real worker binary's `versions` prints the census table of a real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_command_prints_the_census_table() {
    let t = TestBackend::redis().await;
    known_mix(&t).await;
    let url = t.server().map(|s| s.url()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_test-worker"))
        .args(["versions", "--redis-url", &url])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run test-worker versions");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "versions failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), KNOWN_MIX_TABLE, "stderr: {stderr}");
}

/// A producer in another language that pushes with `RPUSH` alone records no
/// queue name: `versions` and `stats` still find the payloads waiting in
/// the queue of a job linked into the worker binary (`ledger`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_and_stats_see_a_linked_jobs_queue_pushed_to_by_hand() {
    let t = TestBackend::redis().await;
    let server = t.server().unwrap();
    let payload = r#"{"jid":"by-hand","job":"append_to_ledger","args":{"path":"/dev/null","n":1,"pause_ms":0}}"#;
    server.command(&["RPUSH", "{jobs}:q:ledger", payload]);
    let run = |command: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_test-worker"))
            .args([command, "--redis-url", &server.url()])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run test-worker");
        assert!(output.status.success(), "{command} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let versions = run("versions");
    assert!(versions.lines().any(|line| line.starts_with("append_to_ledger") && line.contains(" 1 ")), "{versions}");
    let stats = run("stats");
    assert!(stats.lines().any(|line| line.split_whitespace().eq(["ledger", "1"])), "{stats}");
}
