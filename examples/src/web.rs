//! A web app that enqueues a thumbnail job and pushes its progress to the
//! page as server-sent events (`axum`).
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | a page with a form that POSTs and an `EventSource` that shows the events and the thumbnail |
//! | `POST /thumbnails` | `{"image_id": 7, "width": 128}` → `202 {"jid", "status", "events"}` |
//! | `GET /jobs/{jid}` | the job's state: `{"state": "pending\|running\|retrying\|succeeded\|dead\|cancelled", "value"?, "error"?}` |
//! | `GET /jobs/{jid}/events` | server-sent events: each lifecycle event of the job, then `done` with its outcome |
//! | `DELETE /jobs/{jid}` | asks for the job to be cancelled |
//! | `GET /thumbnails/{image_id}-{width}.svg` | the stand-in for the file store the thumbnails go to |
//!
//! Errors are JSON, `{"error": "…"}`, with a 4xx status for a bad request and
//! 503 when the job store is unreachable. See `docs/RESULTS.md`.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use jobs_core::{BackendError, Client, EnqueueError, Event, EventKind, Events, JobHandle, JobId, JobStatus, WaitError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{MakeThumbnail, THUMBNAIL_WIDTHS};

/// How long one event stream follows a job before it gives up (`interrupted`).
pub const FOLLOW_FOR: Duration = Duration::from_secs(3600);

/// How long a browser waits before it reconnects a stream the store cut.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// How long a stream looks for a job's last event once its final outcome is
/// stored. Both are written in one step, so the event is normally there at
/// once; a worker run without `--events` writes none, and this bounds the wait.
const LAST_EVENT_GRACE: Duration = Duration::from_secs(1);

/// The app's routes over `client`: it enqueues through it and reads results
/// and events from its backend. Give it `with_events(true)` so that the
/// `enqueued` event is written; the worker needs `--events` for the others.
pub fn app(client: Client) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/thumbnails", post(create_thumbnail))
        .route("/thumbnails/{file}", get(thumbnail_image))
        .route("/jobs/{jid}", get(job_status).delete(cancel_job))
        .route("/jobs/{jid}/events", get(job_events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(client)
}

/// A request that failed, answered as `{"error": message}` with `status`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn unavailable(error: &BackendError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, format!("the job store is unavailable: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<WaitError> for ApiError {
    fn from(error: WaitError) -> Self {
        match error {
            WaitError::Backend(error) => Self::unavailable(&error),
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// The body of `POST /thumbnails`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailRequest {
    /// The uploaded image's id.
    pub image_id: u64,
    /// The thumbnail's width in pixels.
    pub width: u32,
}

/// The answer to `POST /thumbnails`.
#[derive(Debug, Serialize)]
struct Accepted {
    jid: JobId,
    /// Where to read its state.
    status: String,
    /// Where to follow it, from before it was enqueued: no event is missed.
    events: String,
}

async fn create_thumbnail(
    State(client): State<Client>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let rejected = |rejection: JsonRejection| ApiError::new(rejection.status(), rejection.body_text());
    let Json(body) = body.map_err(rejected)?;
    // serde reads a struct from an array too, by position: only an object is a request.
    if !body.is_object() {
        let message = "the body must be a JSON object: {\"image_id\": 7, \"width\": 128}";
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message.to_owned()));
    }
    let Json(request) = Json::<ThumbnailRequest>::from_bytes(body.to_string().as_bytes()).map_err(rejected)?;
    if !THUMBNAIL_WIDTHS.contains(&request.width) {
        let message = format!(
            "width {} is out of range: thumbnails are {} to {} pixels wide",
            request.width,
            THUMBNAIL_WIDTHS.start(),
            THUMBNAIL_WIDTHS.end()
        );
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message));
    }
    // The stream's position before the push, so a page that follows from it sees `enqueued` too.
    let after = stream_end(&client).await?;
    let jid = MakeThumbnail::perform_later(&client, request.image_id, request.width).await.map_err(|error| {
        let status = match error {
            EnqueueError::Backend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    })?;
    let status = format!("/jobs/{jid}");
    let accepted = Accepted { events: format!("{status}/events?after={after}"), status: status.clone(), jid };
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, status)], Json(accepted)).into_response())
}

/// A job's state as `GET /jobs/{jid}` and the `done` event show it.
#[derive(Debug, Serialize)]
struct StatusBody {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    /// Set when a cancellation was asked for and the job is not settled yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cancel_requested: bool,
}

impl StatusBody {
    fn state(state: &'static str) -> Self {
        Self { state, value: None, error: None, attempt: None, cancel_requested: false }
    }

    fn of(status: JobStatus<Value>) -> Self {
        match status {
            JobStatus::Pending => Self::state("pending"),
            JobStatus::Retrying { error, attempt } => {
                Self { error: Some(error), attempt: Some(attempt), ..Self::state("retrying") }
            }
            JobStatus::Succeeded(value) => Self { value: Some(value), ..Self::state("succeeded") },
            JobStatus::Dead { error } => Self { error: Some(error), ..Self::state("dead") },
            JobStatus::Cancelled => Self::state("cancelled"),
        }
    }

    /// The outcome a final event reports, for a job that keeps no result.
    fn of_event(event: &Event) -> Self {
        Self { error: event.error.clone(), ..Self::state(kind_name(event.kind)) }
    }
}

fn is_final(status: &JobStatus<Value>) -> bool {
    matches!(status, JobStatus::Succeeded(_) | JobStatus::Dead { .. } | JobStatus::Cancelled)
}

async fn job_status(
    State(client): State<Client>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let jid = job_id(path)?;
    let status = client.handle_json(jid.clone()).status().await?;
    let mut body = StatusBody::of(status);
    if !matches!(body.state, "succeeded" | "dead" | "cancelled") {
        body.cancel_requested = cancel_requested(&client, &jid).await?;
    }
    Ok(Json(body).into_response())
}

async fn cancel_job(
    State(client): State<Client>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let jid = job_id(path)?;
    let handle = client.handle_json(jid.clone());
    let status = handle.status().await?;
    if is_final(&status) {
        let state = StatusBody::of(status).state;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {jid} already {state}: there is nothing to cancel"),
        ));
    }
    handle.cancel().await.map_err(|error| ApiError::unavailable(&error))?;
    let body = StatusBody { cancel_requested: true, ..StatusBody::of(status) };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The query of `GET /jobs/{jid}/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Follow from after this event id (as `POST /thumbnails` answers).
    after: Option<String>,
}

/// Streams the job's lifecycle events as they happen, then `done` with its
/// outcome, and closes. The read position is fixed before the job's state is
/// looked at, so an event between the two is not missed. With `?after=ID` (or
/// a browser's `Last-Event-ID` on reconnect) the stream replays from there.
async fn job_events(
    State(client): State<Client>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    let jid = job_id(path)?;
    let Query(query) = query.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let resume = headers.get("last-event-id").and_then(|id| id.to_str().ok()).map(str::to_owned);
    let replay = resume.or(query.after);
    if let Some(id) = replay.as_deref().filter(|id| !is_event_id(id)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not an event id: use the `events` link that POST /thumbnails answered"),
        ));
    }
    let events = match &replay {
        Some(id) => client.events_after(id.clone()),
        None => client.events_after(stream_end(&client).await?),
    };
    let handle = client.handle_json(jid);
    let status = handle.status().await?;
    let (tx, rx) = mpsc::channel(16);
    if is_final(&status) && replay.is_none() {
        // Already over: nothing more will happen, so the outcome is all there is to tell.
        let _ = tx.try_send(done(StatusBody::of(status)));
    } else {
        tokio::spawn(follow(handle, events, tx));
    }
    let stream = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (Ok(event), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Sends the job's events to `tx` until it reaches a final state, then `done`.
/// Its outcome is awaited beside the events, so the stream ends even when
/// events are off or lost. Stops when the page goes away.
async fn follow(handle: JobHandle<Value>, mut events: Events, tx: mpsc::Sender<SseEvent>) {
    let jid = handle.jid().clone();
    let outcome = handle.wait(FOLLOW_FOR);
    tokio::pin!(outcome);
    let mut outcome_stored = false;
    let grace = tokio::time::sleep(FOLLOW_FOR);
    tokio::pin!(grace);
    let last: Option<Event> = loop {
        tokio::select! {
            () = tx.closed() => return,
            next = events.next() => match next {
                Ok(event) if event.jid == jid => {
                    let last = is_final_kind(event.kind);
                    if tx.send(lifecycle(&event)).await.is_err() {
                        return;
                    }
                    if last {
                        break Some(event);
                    }
                }
                Ok(_) => {}
                Err(error) => return lost(&tx, error).await,
            },
            waited = &mut outcome, if !outcome_stored => match waited {
                Err(WaitError::Timeout { .. }) => {
                    let message = format!("job {jid} did not finish within {FOLLOW_FOR:?}; GET /jobs/{jid} for its state");
                    return interrupted(&tx, &ApiError::new(StatusCode::GATEWAY_TIMEOUT, message)).await;
                }
                Err(WaitError::Backend(error)) => return lost(&tx, error).await,
                // Final: read on briefly for the event that reports it.
                _ => {
                    outcome_stored = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + LAST_EVENT_GRACE);
                }
            },
            () = &mut grace, if outcome_stored => break None,
        }
    };
    let body = match handle.status().await {
        Ok(status) if is_final(&status) => StatusBody::of(status),
        // A job that keeps no result: its last event says how it ended.
        Ok(_) => last.as_ref().map_or_else(|| StatusBody::state("pending"), StatusBody::of_event),
        Err(WaitError::Backend(error)) => return lost(&tx, error).await,
        Err(error) => return interrupted(&tx, &ApiError::from(error)).await,
    };
    let _ = tx.send(done(body)).await;
}

fn is_final_kind(kind: EventKind) -> bool {
    matches!(kind, EventKind::Succeeded | EventKind::Dead | EventKind::Cancelled)
}

/// The SSE name of an event kind: its JSON name (`started`, `succeeded`, …).
fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Enqueued => "enqueued",
        EventKind::Started => "started",
        EventKind::Succeeded => "succeeded",
        EventKind::Failed => "failed",
        EventKind::Retrying => "retrying",
        EventKind::Dead => "dead",
        EventKind::Cancelled => "cancelled",
    }
}

fn lifecycle(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_default();
    SseEvent::default().event(kind_name(event.kind)).id(event.id.clone()).data(data)
}

fn done(body: StatusBody) -> SseEvent {
    SseEvent::default().event("done").data(serde_json::to_string(&body).unwrap_or_default())
}

/// Ends a stream the store failed. A transient failure (Redis restarting)
/// ends it with a retry delay and no `done`: the browser reconnects with
/// `Last-Event-ID` and resumes after the last event it saw. Anything else is
/// told in `interrupted`.
async fn lost(tx: &mpsc::Sender<SseEvent>, error: BackendError) {
    if error.is_transient() {
        tracing::warn!(%error, "an event stream lost the job store; the browser reconnects and resumes");
        let _ = tx.send(SseEvent::default().comment("the job store is unavailable").retry(RECONNECT_AFTER)).await;
        return;
    }
    interrupted(tx, &ApiError::unavailable(&error)).await;
}

/// Ends a stream that cannot go on, saying why.
async fn interrupted(tx: &mpsc::Sender<SseEvent>, error: &ApiError) {
    let data = serde_json::json!({ "error": error.message }).to_string();
    let _ = tx.send(SseEvent::default().event("interrupted").data(data)).await;
}

/// The event stream's current end: reading after it sees only what comes next.
async fn stream_end(client: &Client) -> Result<String, ApiError> {
    let end = client.backend().read_events(None, 0, Duration::ZERO).await;
    end.map(|batch| batch.cursor).map_err(|error| ApiError::unavailable(&error))
}

async fn cancel_requested(client: &Client, jid: &JobId) -> Result<bool, ApiError> {
    let flags = client.backend().cancel_requested(std::slice::from_ref(jid)).await;
    flags.map(|flags| flags.first().copied().unwrap_or(false)).map_err(|error| ApiError::unavailable(&error))
}

/// A job id from the path: 1 to 64 letters, digits, `-` or `_` (the client
/// writes 24 hex digits; other producers may write UUIDs).
fn job_id(path: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Path(jid) = path.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let valid = (1..=64).contains(&jid.len())
        && jid.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !valid {
        let shown: String = jid.chars().take(64).collect();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{shown}` is not a job id: expected 1 to 64 letters, digits, `-` or `_`"),
        ));
    }
    Ok(JobId::from(jid))
}

/// An event id of either backend: `17` (embedded) or `1732300000123-0` (Redis).
fn is_event_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    id.len() <= 48 && parts.all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit()))
}

/// A made thumbnail; stands in for the file store a real job writes to.
async fn thumbnail_image(path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(file) = path.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let parsed = file.strip_suffix(".svg").and_then(|stem| stem.split_once('-')).and_then(|(id, width)| {
        Some((id.parse::<u64>().ok()?, width.parse::<u32>().ok().filter(|w| THUMBNAIL_WIDTHS.contains(w))?))
    });
    let Some((image_id, width)) = parsed else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no thumbnail `{file}`")));
    };
    let height = width * 3 / 4;
    let hue = image_id.wrapping_mul(47) % 360;
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="hsl({hue},60%,55%)"/><text x="50%" y="55%" font-family="sans-serif" font-size="{size}" fill="#fff" text-anchor="middle">#{image_id}</text></svg>"##,
        size = (height / 4).max(8),
    );
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route: see GET / for the page, POST /thumbnails, GET /jobs/{jid}")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "this route does not take that method")
}

async fn index() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>jobs: thumbnails</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
  input { width: 6rem; }
  #log { font: 13px/1.5 ui-monospace, monospace; background: #f4f4f4; padding: .5rem; min-height: 6rem; white-space: pre-wrap; }
  #thumb { margin-top: 1rem; }
</style>
</head>
<body>
<h1>Make a thumbnail</h1>
<p>The button enqueues <code>make_thumbnail</code>; a worker makes it, and the page follows the job's events.</p>
<form id="form">
  <label>image id <input id="image" type="number" value="7" min="1"></label>
  <label>width <input id="width" type="number" value="128" min="16" max="1024"></label>
  <button>Make thumbnail</button>
  <button type="button" id="cancel" disabled>Cancel</button>
</form>
<div id="log"></div>
<div id="thumb"></div>
<script>
const log = (line) => { document.getElementById('log').textContent += line + '\n'; };
const kinds = ['enqueued', 'started', 'succeeded', 'failed', 'retrying', 'dead', 'cancelled'];
let current = null;

document.getElementById('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const body = { image_id: Number(document.getElementById('image').value), width: Number(document.getElementById('width').value) };
  const res = await fetch('/thumbnails', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const answer = await res.json();
  if (!res.ok) { log(`refused (${res.status}): ${answer.error}`); return; }
  current = answer.jid;
  document.getElementById('cancel').disabled = false;
  log(`job ${answer.jid} accepted`);
  const source = new EventSource(answer.events);
  for (const kind of kinds) {
    source.addEventListener(kind, (ev) => {
      const event = JSON.parse(ev.data);
      log(`${kind.padEnd(10)} attempt ${event.attempt}` + (event.error ? `: ${event.error}` : '') + (event.duration_ms != null ? ` (${event.duration_ms} ms)` : ''));
    });
  }
  source.addEventListener('done', (ev) => {
    source.close();
    document.getElementById('cancel').disabled = true;
    const outcome = JSON.parse(ev.data);
    log(`done       ${outcome.state}` + (outcome.error ? `: ${outcome.error}` : ''));
    if (outcome.state === 'succeeded') {
      const img = document.createElement('img');
      img.src = outcome.value.url;
      img.alt = `thumbnail of image ${body.image_id}`;
      document.getElementById('thumb').replaceChildren(img);
    }
  });
  source.addEventListener('interrupted', (ev) => { source.close(); log(`stopped following: ${JSON.parse(ev.data).error}`); });
  // A cut stream reconnects by itself and resumes after the last event; a refused reconnect closes it.
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) log('lost the event stream; reload the page to follow again'); };
});

document.getElementById('cancel').addEventListener('click', async () => {
  if (!current) return;
  const res = await fetch(`/jobs/${current}`, { method: 'DELETE' });
  const answer = await res.json();
  log(res.ok ? `cancel requested (job was ${answer.state})` : `cancel refused (${res.status}): ${answer.error}`);
});
</script>
</body>
</html>
"#;
