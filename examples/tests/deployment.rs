//! The deployment users run: a web process enqueues into Redis while a
//! separate worker process runs the jobs. Both are the real binaries.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobs_redis::testing::RedisServer;

fn redis_count(server: &RedisServer, args: &[&str]) -> i64 {
    let reply = server.command(args);
    reply.trim_start_matches(':').trim().parse().unwrap_or_else(|_| panic!("{args:?} answered {reply:?}"))
}

#[test]
fn web_process_enqueues_and_a_separate_worker_process_runs_every_job() {
    let server = RedisServer::start();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["work", "--queue", "critical:10", "--queue", "bulk:1", "--concurrency", "8"])
        .env("JOBS_REDIS_URL", server.url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let producer =
        Command::new(env!("CARGO_BIN_EXE_enqueue")).arg("50").env("JOBS_REDIS_URL", server.url()).output().unwrap();
    assert!(producer.status.success(), "{}", String::from_utf8_lossy(&producer.stderr));
    assert!(String::from_utf8_lossy(&producer.stdout).contains("enqueued 50 SMS"));

    // Every job is done when nothing is ready, leased, scheduled, retrying or dead.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = redis_count(&server, &["LLEN", "{jobs}:q:critical"])
            + redis_count(&server, &["LLEN", "{jobs}:q:bulk"])
            + redis_count(&server, &["HLEN", "{jobs}:inflight"])
            + redis_count(&server, &["ZCARD", "{jobs}:retry"])
            + redis_count(&server, &["ZCARD", "{jobs}:scheduled"]);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} jobs still unfinished");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(redis_count(&server, &["ZCARD", "{jobs}:dead"]), 0);

    // SIGTERM: the worker shuts down gracefully and exits 0.
    let stopped = Command::new("kill").args(["-TERM", &worker.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let status = worker.wait().unwrap();
    let mut log = String::new();
    worker.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(status.success(), "worker exited with {status}:\n{log}");
    assert_eq!(log.matches("ran send_confirmation_sms").count(), 50, "{log}");
    assert_eq!(log.matches("ran send_promotional_mail").count(), 50, "{log}");
    assert!(log.contains("SIGTERM received") && log.contains("worker stopped"), "{log}");
}

#[test]
fn worker_binary_lists_its_jobs_and_explains_its_flags() {
    let list = Command::new(env!("CARGO_BIN_EXE_worker")).arg("list").output().unwrap();
    let text = String::from_utf8(list.stdout).unwrap();
    assert!(text.contains("send_confirmation_sms  v2  queue=critical"), "{text}");
    assert!(text.contains("locale: String  [default for payloads before v2; required from v2]"), "{text}");
    let help = Command::new(env!("CARGO_BIN_EXE_worker")).args(["work", "--help"]).output().unwrap();
    let text = String::from_utf8(help.stdout).unwrap();
    for flag in
        ["--queue <NAME[:WEIGHT]>", "--strict", "--concurrency", "--fetch-ahead", "--queue-limit", "JOBS_REDIS_URL"]
    {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}

#[test]
fn worker_waits_for_an_unreachable_redis_and_says_why() {
    use std::io::{BufRead, BufReader};
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{free}");
    // A one-off run (`--drain`, a script) fails at once, with the reason.
    let output =
        Command::new(env!("CARGO_BIN_EXE_worker")).args(["work", "--drain", "--redis-url", &url]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("error: ") && stderr.contains(&format!("cannot connect to Redis at {url}")), "{stderr}");
    // A long-running worker started before Redis waits for it, saying so.
    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["work", "--redis-url", &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(worker.stderr.take().unwrap());
    let said = stderr.lines().map_while(Result::ok).find(|line| line.contains("cannot reach Redis yet"));
    let _ = worker.kill();
    let _ = worker.wait();
    let said = said.expect("the worker exited instead of waiting for Redis");
    assert!(said.contains(&format!("cannot connect to Redis at {url}")), "{said}");
}
