//! The thumbnail web app (`examples/src/web.rs`) driven over real HTTP: the
//! app served in-process against a real Redis, the jobs run by the real
//! `worker` binary, the page's requests made by a minimal HTTP/1.1 client.
//!
//! What a stream shows depends on where it starts. The `events` link that
//! `POST /thumbnails` answers starts before the push, so it shows `enqueued`,
//! `started`, `succeeded`; a plain `/jobs/{jid}/events` opened after the POST
//! starts where the stream is then, so `enqueued` is already behind it and it
//! shows `started`, `succeeded`. Either ends with `done` and the outcome.

use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use examples::{MakeThumbnail, Thumbnail};
use jobs_core::{Client, JobId, MemoryBackend};
use jobs_redis::RedisBackend;
use jobs_redis::testing::RedisServer;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// The longest any one exchange may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// Serves the app on a free loopback port, in this process.
async fn serve(client: Client) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, examples::web::app(client)).await });
    addr
}

/// An HTTP response, its body read in full.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

/// A body being read off the connection, chunked or not.
struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left in the current chunk.
    left: usize,
    done: bool,
}

impl Body {
    /// The next bytes of the body, or `None` at its end.
    async fn read_some(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        if !self.chunked {
            let mut buf = vec![0; 4096];
            let n = self.reader.read(&mut buf).await.unwrap();
            self.done = n == 0;
            buf.truncate(n);
            return (n > 0).then_some(buf);
        }
        if self.left == 0 {
            let mut size = String::new();
            self.reader.read_line(&mut size).await.unwrap();
            let size = size.trim().split(';').next().unwrap_or_default();
            self.left = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
            if self.left == 0 {
                self.done = true;
                return None;
            }
        }
        let mut buf = vec![0; self.left.min(4096)];
        let n = self.reader.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed inside a chunk");
        buf.truncate(n);
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0; 2];
            self.reader.read_exact(&mut crlf).await.unwrap();
        }
        Some(buf)
    }
}

/// Sends one request and reads the head of its response.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, Body) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body.unwrap_or_default());
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status = line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let Some((name, value)) = line.trim_end().split_once(':') else { break };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let chunked = header(&headers, "transfer-encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
    (status, headers, Body { reader, chunked, left: 0, done: false })
}

/// One request, its whole response read within [`PATIENCE`].
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    let deadline = Instant::now() + PATIENCE;
    let exchange = async {
        let (status, headers, mut reader) = send(addr, method, path, &[], body).await;
        let mut body = Vec::new();
        while let Some(bytes) = reader.read_some().await {
            body.extend(bytes);
        }
        Response { status, headers, body: String::from_utf8(body).unwrap() }
    };
    timeout_at(deadline, exchange).await.unwrap_or_else(|_| panic!("{method} {path}: no answer within {PATIENCE:?}"))
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Message {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open `text/event-stream` response.
struct EventStream {
    body: Body,
    pending: Vec<u8>,
    path: String,
}

impl EventStream {
    async fn open(addr: SocketAddr, path: &str) -> EventStream {
        Self::open_with(addr, path, &[]).await
    }

    async fn open_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> EventStream {
        let deadline = Instant::now() + PATIENCE;
        let (status, headers, body) = timeout_at(deadline, send(addr, "GET", path, headers, None)).await.unwrap();
        assert_eq!(status, 200, "GET {path}");
        assert_eq!(header(&headers, "content-type"), Some("text/event-stream"), "GET {path}");
        EventStream { body, pending: Vec::new(), path: path.to_owned() }
    }

    /// The next line of the stream; `None` when the server closed it.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(String::from_utf8(line).unwrap().trim_end_matches(['\r', '\n']).to_owned());
            }
            self.pending.extend(self.body.read_some().await?);
        }
    }

    /// The next event (keep-alive comments skipped); `None` at the stream's end.
    async fn message(&mut self) -> Option<Message> {
        let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
                return Some(Message { event, id, data });
            }
            match line.split_once(':').map(|(field, value)| (field, value.strip_prefix(' ').unwrap_or(value))) {
                Some(("event", value)) => event = value.to_owned(),
                Some(("id", value)) => id = Some(value.to_owned()),
                Some(("data", value)) => data.push_str(value),
                _ => {} // a comment (keep-alive) or a field this test does not use
            }
        }
    }

    /// Every event up to and including `done`, then checks that the server closed the stream.
    async fn until_done(mut self) -> Vec<Message> {
        let deadline = Instant::now() + PATIENCE;
        let path = self.path.clone();
        let read = async {
            let mut seen = Vec::new();
            while let Some(message) = self.message().await {
                let last = message.event == "done";
                seen.push(message);
                if last {
                    assert!(self.message().await.is_none(), "GET {path}: the stream goes on after `done`");
                    return seen;
                }
            }
            panic!("GET {path}: the stream ended without `done`: {seen:?}");
        };
        timeout_at(deadline, read).await.unwrap_or_else(|_| panic!("GET {path}: no `done` within {PATIENCE:?}"))
    }
}

fn kinds(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|message| message.event.as_str()).collect()
}

/// The real `worker` binary, serving `images` with events on.
struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    fn start(server: &RedisServer) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_worker"))
            .args(["work", "--events", "--queue", "images", "--concurrency", "4"])
            .env("JOBS_REDIS_URL", server.url())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        WorkerProcess { child }
    }

    /// SIGTERM, then its log; it must exit cleanly.
    async fn stop(mut self) -> String {
        tokio::task::spawn_blocking(move || {
            let stopped = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
            assert!(stopped.success());
            let status = self.child.wait().unwrap();
            let mut log = String::new();
            self.child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
            assert!(status.success(), "worker exited with {status}:\n{log}");
            log
        })
        .await
        .unwrap()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A failed test must not leave a worker behind; after `stop` this finds it gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn post_thumbnail(addr: SocketAddr, image_id: u64, width: u32) -> (String, String) {
    let body = json!({ "image_id": image_id, "width": width }).to_string();
    let response = request(addr, "POST", "/thumbnails", Some(&body)).await;
    assert_eq!(response.status, 202, "{response:?}");
    let accepted = response.json();
    let jid = accepted["jid"].as_str().unwrap().to_owned();
    assert_eq!(response.header("location"), Some(format!("/jobs/{jid}").as_str()));
    assert_eq!(accepted["status"], format!("/jobs/{jid}"));
    (jid, accepted["events"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_thumbnail_is_followed_over_server_sent_events_to_its_value() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let client = Client::new(backend).with_events(true);
    let addr = serve(client.clone()).await;

    // No worker yet: both jobs wait in `images`, and every stream is open before anything runs.
    let (cancelled, cancelled_events) = post_thumbnail(addr, 1, 64).await;
    let asked = request(addr, "DELETE", &format!("/jobs/{cancelled}"), None).await;
    assert_eq!(asked.status, 202, "{asked:?}");
    assert_eq!(asked.json(), json!({ "state": "pending", "cancel_requested": true }));
    let before = request(addr, "GET", &format!("/jobs/{cancelled}"), None).await;
    assert_eq!(before.json(), json!({ "state": "pending", "cancel_requested": true }));

    let (jid, events) = post_thumbnail(addr, 7, 128).await;
    assert_eq!(request(addr, "GET", &format!("/jobs/{jid}"), None).await.json(), json!({ "state": "pending" }));
    let from_the_post = EventStream::open(addr, &events).await;
    let from_now = EventStream::open(addr, &format!("/jobs/{jid}/events")).await;
    let cancelled_stream = EventStream::open(addr, &cancelled_events).await;

    let worker = WorkerProcess::start(&server);

    // A job cancelled before it ran is settled as cancelled when a worker fetches it; it never runs.
    let seen = cancelled_stream.until_done().await;
    assert_eq!(kinds(&seen), ["enqueued", "cancelled", "done"], "{seen:?}");
    assert_eq!(seen[2].data, json!({ "state": "cancelled" }));

    let value = json!({ "state": "succeeded", "value": { "url": "/thumbnails/7-128.svg", "width": 128 } });
    let seen = from_the_post.until_done().await;
    let seen_from_the_post = seen.clone();
    assert_eq!(kinds(&seen), ["enqueued", "started", "succeeded", "done"], "{seen:?}");
    for event in &seen[..3] {
        assert_eq!(event.data["jid"], jid.as_str());
        assert_eq!(event.data["job"], "make_thumbnail");
        assert!(event.id.as_deref().is_some_and(|id| id.contains('-')), "a Redis stream id: {event:?}");
    }
    assert_eq!((seen[0].data["attempt"].as_u64(), seen[1].data["attempt"].as_u64()), (Some(0), Some(1)));
    assert!(seen[2].data["duration_ms"].is_u64(), "{:?}", seen[2]);
    assert_eq!(seen[3].data, value);

    let seen = from_now.until_done().await;
    assert_eq!(kinds(&seen), ["started", "succeeded", "done"], "{seen:?}");
    assert_eq!(seen[2].data, value);

    // Afterwards: the status, the typed handle, and a stream of a finished job (only `done`).
    assert_eq!(request(addr, "GET", &format!("/jobs/{jid}"), None).await.json(), value);
    assert_eq!(request(addr, "GET", &format!("/jobs/{cancelled}"), None).await.json(), json!({ "state": "cancelled" }));
    let typed = client.handle::<MakeThumbnail>(JobId::from(jid.as_str())).wait(PATIENCE).await.unwrap();
    assert_eq!(typed, Thumbnail { url: "/thumbnails/7-128.svg".into(), width: 128 });
    let late = EventStream::open(addr, &format!("/jobs/{jid}/events")).await.until_done().await;
    assert_eq!(kinds(&late), ["done"]);
    assert_eq!(late[0].data, value);
    // A browser that reconnects sends the last id it saw, and the stream resumes after it.
    let enqueued_id = seen_from_the_post[0].id.clone().unwrap();
    let path = format!("/jobs/{jid}/events");
    let resumed = EventStream::open_with(addr, &path, &[("Last-Event-ID", &enqueued_id)]).await.until_done().await;
    assert_eq!(kinds(&resumed), ["started", "succeeded", "done"], "{resumed:?}");
    assert_eq!(resumed[0].id, seen_from_the_post[1].id);
    let too_late = request(addr, "DELETE", &format!("/jobs/{jid}"), None).await;
    assert_eq!(too_late.status, 409, "{too_late:?}");
    assert!(too_late.json()["error"].as_str().unwrap().contains("already succeeded"), "{too_late:?}");

    let malformed = request(addr, "GET", "/jobs/not%20a%20jid!", None).await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert_eq!(malformed.header("content-type"), Some("application/json"));
    assert!(malformed.json()["error"].as_str().unwrap().contains("is not a job id"), "{malformed:?}");

    let log = worker.stop().await;
    assert_eq!(log.matches("ran make_thumbnail").count(), 1, "{log}");
    assert!(log.contains("image_id=7 width=128") && !log.contains("image_id=1 "), "{log}");
}

#[tokio::test]
async fn a_failing_job_ends_its_stream_with_its_error() {
    let backend = MemoryBackend::new();
    let addr = serve(Client::new(backend.clone()).with_events(true)).await;
    let worker = jobs_core::Worker::builder(backend).queue("images", 1).events(true).build().unwrap();
    let (_jid, events) = post_thumbnail(addr, 0, 64).await;
    let stream = EventStream::open(addr, &events).await;
    let running = tokio::spawn(async move { worker.run_until(std::future::pending::<()>()).await });

    let seen = stream.until_done().await;
    running.abort();
    assert_eq!(kinds(&seen), ["enqueued", "started", "failed", "dead", "done"], "{seen:?}");
    assert_eq!(seen[4].data, json!({ "state": "dead", "error": "image 0 does not exist" }));
}

#[tokio::test]
async fn malformed_requests_get_a_json_error_with_a_fitting_status() {
    let addr = serve(Client::new(MemoryBackend::new())).await;
    let long = "a".repeat(65);
    let cases: [(&str, String, Option<&str>, u16, &str); 13] = [
        ("GET", "/jobs/not%20a%20jid".into(), None, 400, "is not a job id"),
        ("GET", format!("/jobs/{long}"), None, 400, "is not a job id"),
        ("GET", "/jobs/%E2%28%A1".into(), None, 400, "UTF-8"),
        ("DELETE", "/jobs/..%2Fetc".into(), None, 400, "is not a job id"),
        ("GET", "/jobs/x%3By/events".into(), None, 400, "is not a job id"),
        ("GET", "/jobs/abc/events?after=0;DROP".into(), None, 400, "is not an event id"),
        ("POST", "/thumbnails".into(), Some("{\"image_id\": 7,"), 400, "JSON"),
        ("POST", "/thumbnails".into(), Some("{\"image_id\": 7}"), 422, "missing field `width`"),
        ("POST", "/thumbnails".into(), Some("[7, 128]"), 422, "must be a JSON object"),
        ("POST", "/thumbnails".into(), Some("{\"image_id\": -1, \"width\": 64}"), 422, "image_id"),
        ("POST", "/thumbnails".into(), Some("{\"image_id\": 7, \"width\": 5000}"), 422, "out of range"),
        ("PUT", "/jobs/abc".into(), None, 405, "method"),
        ("GET", "/no/such/route".into(), None, 404, "no such route"),
    ];
    for (method, path, body, status, says) in cases {
        let response = request(addr, method, &path, body).await;
        assert_eq!(response.status, status, "{method} {path}: {response:?}");
        assert_eq!(response.header("content-type"), Some("application/json"), "{method} {path}: {response:?}");
        let error = response.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{method} {path}: {error:?} should say {says:?}");
    }
    // Without a JSON content type the body is refused before it is read.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw = "POST /thumbnails HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    // The page itself.
    let page = request(addr, "GET", "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("new EventSource(answer.events)"), "{}", page.body);
}

#[tokio::test]
async fn the_web_binary_runs_jobs_in_process_with_no_server() {
    let mut web = Command::new(env!("CARGO_BIN_EXE_web"))
        .args(["--port", "0"])
        .env_remove("JOBS_REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = web.stdout.take().unwrap();
    // The URL line comes once the port is bound; reading stops at it, or at the pipe's end.
    let url = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("open http://").map(|rest| rest.trim_end_matches('/').to_owned()))
    })
    .await
    .unwrap();
    let Some(url) = url else {
        let _ = web.kill();
        panic!("the web binary printed no URL");
    };
    let addr: SocketAddr = url.parse().unwrap();

    let (_jid, events) = post_thumbnail(addr, 9, 32).await;
    let seen = EventStream::open(addr, &events).await.until_done().await;

    let stopped = Command::new("kill").args(["-TERM", &web.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let status = tokio::task::spawn_blocking(move || web.wait().unwrap()).await.unwrap();
    assert_eq!(kinds(&seen), ["enqueued", "started", "succeeded", "done"], "{seen:?}");
    assert_eq!(seen[3].data, json!({ "state": "succeeded", "value": { "url": "/thumbnails/9-32.svg", "width": 32 } }));
    assert!(status.success(), "the web binary exited with {status}");
}
