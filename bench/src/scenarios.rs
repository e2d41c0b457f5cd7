//! The measured runs, one command each: the peers' `enqueue`, `drain` and
//! `latency` (one `RESULT {json}` line, fields as in ../shared/peers), and the
//! worker processes that `latency` and the suite start.
//!
//! Every run checks that it counted every job and fails otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobs_core::{Backend, Client, Job, JobSet, Worker, WorkerReport};
use jobs_redis::RedisBackend;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::child::{ChildProc, say, stdin_lines, wait_for};
use crate::cli::{EnqueueMode, Order};
use crate::jobs::{self, BULK, CRITICAL, CRITICALS, Critical, FLOODED, LATENCIES, Lat, NOOPS, Noop, QUEUE};
use crate::probe::{Probe, RedisProbe, now_us, peak_rss_kb, percentile, self_cpu_secs};
use crate::{Result, bail, ensure};

/// The `system` of every RESULT line.
pub const SYSTEM: &str = "jobs";
/// The `version` of every RESULT line.
pub const VERSION: &str = concat!("jobs ", env!("CARGO_PKG_VERSION"));
/// A run whose count has not moved for this long has lost a job.
pub const STALL: Duration = Duration::from_secs(30);

/// Where the runs connect: `JOBS_BENCH_URL`, else redis://127.0.0.1:$PORT
/// (PORT default 6393, as the peers' Rust suite); probes (INFO, CPU) use
/// `JOBS_BENCH_DIRECT_URL` when set (the suite's proxy runs), else the same.
pub struct Target {
    pub url: String,
    pub direct_url: String,
    pub port: u16,
}

impl Target {
    pub fn from_env() -> Self {
        let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(6393);
        let url = std::env::var("JOBS_BENCH_URL").unwrap_or_else(|_| format!("redis://127.0.0.1:{port}"));
        let direct_url = std::env::var("JOBS_BENCH_DIRECT_URL").unwrap_or_else(|_| url.clone());
        Self { url, direct_url, port }
    }

    /// A backend with the default settings, as an application would open it.
    pub async fn backend(&self) -> Result<RedisBackend> {
        RedisBackend::connect(&self.url).await.map_err(|e| format!("cannot connect to {}: {e}", self.url).into())
    }

    pub async fn probe(&self) -> Result<RedisProbe> {
        RedisProbe::connect(&self.direct_url, Some(self.port)).await
    }
}

/// The knobs the peer-protocol commands read from the environment.
pub const KNOBS: [&str; 4] = ["N", "CHUNK", "INFLIGHT", "FETCH_AHEAD"];

fn env_usize(name: &str, default: usize) -> usize {
    debug_assert!(KNOBS.contains(&name), "{name} is not listed in KNOBS");
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Prints `RESULT {json}` with `system` (unless the value names a variant) and `version` added.
pub fn emit(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.entry("system").or_insert_with(|| json!(SYSTEM));
        object.insert("version".into(), json!(VERSION));
    }
    say(&format!("RESULT {value}"));
    value
}

/// Adds the fields of `extra` to `value`.
pub fn merge(mut value: Value, extra: Value) -> Value {
    if let (Some(object), Value::Object(extra)) = (value.as_object_mut(), extra) {
        object.extend(extra);
    }
    value
}

/// Jobs waiting in `queue`.
pub async fn queue_len(backend: &RedisBackend, queue: &str) -> Result<u64> {
    Ok(backend.count(&JobSet::Queue(queue.to_owned())).await? as u64)
}

/// Checks that nothing is left anywhere after a drain: queue, in flight, retry, dead.
pub async fn check_empty(backend: &RedisBackend, queues: &[&str]) -> Result<()> {
    for queue in queues {
        let left = queue_len(backend, queue).await?;
        ensure!(left == 0, "{left} jobs left in queue `{queue}` after the drain");
    }
    for (set, name) in [(JobSet::InFlight, "in flight"), (JobSet::Retry, "in the retry set"), (JobSet::Dead, "dead")] {
        let left = backend.count(&set).await?;
        ensure!(left == 0, "{left} jobs {name} after the drain");
    }
    Ok(())
}

/// Enqueues `n` jobs made by `make`, `chunk` per `enqueue_many`, one call at a time.
pub async fn fill<J: Job>(client: &Client, n: u64, chunk: u64, make: impl Fn(u64) -> J) -> Result<()> {
    let mut lo = 0;
    while lo < n {
        let hi = (lo + chunk.max(1)).min(n);
        let ids = client.enqueue_many((lo..hi).map(&make)).await?;
        ensure!(ids.len() as u64 == hi - lo, "enqueue_many took {} of {} jobs", ids.len(), hi - lo);
        lo = hi;
    }
    Ok(())
}

/// `enqueue bulk|single|single-seq N`.
pub async fn enqueue(mode: EnqueueMode, n: u64) -> Result<()> {
    let chunk = env_usize("CHUNK", 1000) as u64;
    let inflight = env_usize("INFLIGHT", 50).max(1);
    let target = Target::from_env();
    let backend = target.backend().await?;
    let client = Client::new(backend.clone());
    let mut redis = target.probe().await?;
    let queued_before = queue_len(&backend, QUEUE).await?;
    let mem0 = redis.used_memory().await?;
    let probe = Probe::start(&mut redis).await?;
    let mode = match mode {
        EnqueueMode::Bulk => {
            fill(&client, n, chunk, |n| Noop { n }).await?;
            "bulk".to_owned()
        }
        EnqueueMode::Single => {
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = JoinSet::new();
            for _ in 0..inflight {
                let (client, next) = (client.clone(), Arc::clone(&next));
                tasks.spawn(async move {
                    loop {
                        let n_ = next.fetch_add(1, Ordering::Relaxed);
                        if n_ >= n {
                            return Ok::<_, jobs_core::EnqueueError>(());
                        }
                        client.enqueue(Noop { n: n_ }).await?;
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            format!("single-c{inflight}")
        }
        EnqueueMode::SingleSeq => {
            for n_ in 0..n {
                client.enqueue(Noop { n: n_ }).await?;
            }
            "single-seq".to_owned()
        }
        EnqueueMode::SingleSeqTask => {
            // The same loop in a task of the runtime: replies need not cross to the thread
            // that runs `block_on`, as they need not in a web handler.
            let client = client.clone();
            let producer = tokio::spawn(async move {
                for n_ in 0..n {
                    client.enqueue(Noop { n: n_ }).await?;
                }
                Ok::<_, jobs_core::EnqueueError>(())
            });
            producer.await??;
            "single-seq-task".to_owned()
        }
    };
    let usage = probe.stop(&mut redis, Instant::now()).await?;
    let mem1 = redis.used_memory().await?;
    let queued = queue_len(&backend, QUEUE).await? - queued_before;
    ensure!(queued == n, "enqueue {mode}: {queued} of {n} jobs are in the queue");
    emit(merge(
        json!({"phase": "enqueue", "mode": mode, "max_rss_kb": peak_rss_kb(),
               "redis_bytes_per_job": (mem1 as f64 - mem0 as f64) / n as f64, "redis_used_memory": mem1}),
        usage.fields(n, "client"),
    ));
    Ok(())
}

/// `drain [C]`: one worker at concurrency C drains the queue; the clock runs
/// from connecting the worker's backend until `run_until` returned after the
/// Nth job, when every completion is written.
pub async fn drain(concurrency: usize) -> Result<()> {
    let target = Target::from_env();
    let backend = target.backend().await?;
    let mut redis = target.probe().await?;
    let mut n = queue_len(&backend, QUEUE).await?;
    if n == 0 {
        n = env_usize("N", 100_000) as u64;
        fill(&Client::new(backend.clone()), n, env_usize("CHUNK", 1000) as u64, |n| Noop { n }).await?;
    }
    NOOPS.reset(n);
    let probe = Probe::start(&mut redis).await?;
    // FETCH_AHEAD=N drains with `fetch_ahead(N)`, a variant row like ChasquiMQ's `CHASQUI_EVENTS=0`.
    let ahead = env_usize("FETCH_AHEAD", 0);
    let worker =
        Worker::builder(target.backend().await?).queue(QUEUE, 1).concurrency(concurrency).fetch_ahead(ahead).build()?;
    let running = worker.clone();
    let report =
        tokio::spawn(async move { running.run_until(jobs::until_done(NOOPS.reached(), || NOOPS.done(), STALL)).await })
            .await??;
    let t_settled = Instant::now();
    let usage = probe.stop(&mut redis, t_settled).await?;
    let done = NOOPS.done();
    ensure!(done == n, "drain c{concurrency}: {done} of {n} jobs ran (stalled for {STALL:?})");
    check_report(&report, n)?;
    check_empty(&backend, &[QUEUE]).await?;
    let (first, last) = (NOOPS.first().unwrap_or(probe.t0), NOOPS.last().unwrap_or(t_settled));
    let variant =
        (ahead > 0).then(|| json!({"system": format!("{SYSTEM} (fetch_ahead={ahead})"), "fetch_ahead": ahead}));
    emit(merge(
        json!({"phase": "drain", "mode": format!("c{concurrency}"), "max_rss_kb": peak_rss_kb(),
               "handlers_secs": (last - probe.t0).as_secs_f64(),
               "first_to_last_jobs_per_s": n as f64 / (t_settled - first).as_secs_f64()}),
        merge(usage.fields(n, "worker"), variant.unwrap_or(Value::Null)),
    ));
    Ok(())
}

fn check_report(report: &WorkerReport, n: u64) -> Result<()> {
    ensure!(
        report.succeeded == n && report.retried == 0 && report.dead == 0,
        "the worker reports {} succeeded, {} retried, {} dead of {n}",
        report.succeeded,
        report.retried,
        report.dead
    );
    Ok(())
}

/// What `latency-worker` reports.
#[derive(Serialize, Deserialize)]
pub struct LatReport {
    /// Latencies in µs.
    pub lat: Vec<f64>,
    pub max_rss_kb: u64,
    pub cpu_s: f64,
}

/// `latency [N] [RATE] [C]`: starts `latency-worker N C`, lets it go idle,
/// then adds N jobs one at a time on a fixed RATE/s schedule, each carrying
/// the wall-clock µs taken just before its enqueue call.
pub async fn latency(n: usize, rate: f64, concurrency: usize) -> Result<()> {
    ensure!(rate > 0.0, "the rate must be above 0");
    let target = Target::from_env();
    let client = Client::new(target.backend().await?);
    let mut worker = ChildProc::spawn(&["latency-worker".into(), n.to_string(), concurrency.to_string()], &[])?;
    worker.expect("READY", Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // let the worker go idle
    let interval = Duration::from_secs_f64(1.0 / rate);
    let produce = async move {
        let start = Instant::now();
        let mut late_max_ms = 0f64;
        for i in 0..n {
            let due = start + interval.mul_f64(i as f64);
            if due > Instant::now() + Duration::from_micros(1500) {
                tokio::time::sleep_until((due - Duration::from_millis(1)).into()).await;
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            late_max_ms = late_max_ms.max((Instant::now() - due).as_secs_f64() * 1000.0);
            client.enqueue(Lat { t: now_us() }).await?;
        }
        Ok::<_, crate::Error>((start.elapsed().as_secs_f64(), late_max_ms))
    };
    // The peers' harness produces in `main`'s `block_on`; LAT_FROM_TASK=1 produces from a
    // task of the runtime, as a web handler enqueues (the replies then stay on its threads).
    let from_task = std::env::var("LAT_FROM_TASK").is_ok_and(|v| v == "1");
    let (send_secs, late_max_ms) = if from_task { tokio::spawn(produce).await?? } else { produce.await? };
    let report: LatReport = worker.expect_json("LAT", STALL * 2).await?;
    worker.finish(Duration::from_secs(60)).await?;
    ensure!(report.lat.len() == n, "latency: the worker saw {} of {n} jobs", report.lat.len());
    let mut lat = report.lat;
    lat.sort_by(f64::total_cmp);
    // Its own phase from a task, so that `report.py` keeps it out of the peers' latency row.
    let phase = if from_task { "latency-task" } else { "latency" };
    emit(json!({
        "phase": phase, "mode": format!("r{}-c{concurrency}", rate as u64), "n": n,
        "achieved_rate": n as f64 / send_secs,
        "p50_ms": percentile(&lat, 50.0) / 1000.0, "p90_ms": percentile(&lat, 90.0) / 1000.0,
        "p99_ms": percentile(&lat, 99.0) / 1000.0, "max_ms": lat.last().copied().unwrap_or(f64::NAN) / 1000.0,
        "producer_late_max_ms": late_max_ms, "worker_max_rss_kb": report.max_rss_kb,
        "worker_cpu_s": report.cpu_s,
    }));
    Ok(())
}

/// The floor under `latency`, measured the same way: N values at RATE/s,
/// each its send time, `RPUSH`ed by one plain blocking client and taken by
/// another waiting in `BLPOP`, both on threads of their own (no runtime, no
/// job system). What is left of `latency` above it is the job system's.
pub async fn latency_floor(n: usize, rate: f64) -> Result<()> {
    use deadpool_redis::redis;
    ensure!(rate > 0.0, "the rate must be above 0");
    const LIST: &str = "jobs-bench:floor";
    let target = Target::from_env();
    let client = redis::Client::open(target.url.as_str())?;
    let (mut producer, mut consumer) = (client.get_connection()?, client.get_connection()?);
    redis::cmd("DEL").arg(LIST).query::<()>(&mut producer)?;
    let run = tokio::task::spawn_blocking(move || -> std::result::Result<(Vec<f64>, f64), String> {
        std::thread::scope(|scope| {
            let taker = scope.spawn(move || -> std::result::Result<Vec<f64>, String> {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let popped: Option<(String, String)> = redis::cmd("BLPOP")
                        .arg(LIST)
                        .arg(STALL.as_secs())
                        .query(&mut consumer)
                        .map_err(|e| format!("BLPOP: {e}"))?;
                    let (_, sent) =
                        popped.ok_or_else(|| format!("latency-floor: {} of {n} values arrived", lat.len()))?;
                    let sent: f64 = sent.parse().map_err(|e| format!("latency-floor: {sent:?}: {e}"))?;
                    lat.push(now_us() - sent);
                }
                Ok(lat)
            });
            // Paced as `latency` paces its enqueues.
            std::thread::sleep(Duration::from_millis(300)); // let the taker block
            let interval = Duration::from_secs_f64(1.0 / rate);
            let start = Instant::now();
            for i in 0..n {
                let due = start + interval.mul_f64(i as f64);
                if due > Instant::now() + Duration::from_micros(1500) {
                    std::thread::sleep(due - Duration::from_millis(1) - Instant::now());
                }
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                redis::cmd("RPUSH")
                    .arg(LIST)
                    .arg(now_us())
                    .query::<()>(&mut producer)
                    .map_err(|e| format!("RPUSH: {e}"))?;
            }
            let send_secs = start.elapsed().as_secs_f64();
            let lat = taker.join().map_err(|_| "latency-floor: the taker panicked".to_owned())??;
            Ok((lat, send_secs))
        })
    });
    let (mut lat, send_secs) = run.await??;
    ensure!(lat.len() == n, "latency-floor: {} of {n} values arrived", lat.len());
    lat.sort_by(f64::total_cmp);
    emit(json!({
        "phase": "latency-floor", "mode": format!("rpush-blpop-r{}", rate as u64), "n": n,
        "achieved_rate": n as f64 / send_secs,
        "p50_ms": percentile(&lat, 50.0) / 1000.0, "p90_ms": percentile(&lat, 90.0) / 1000.0,
        "p99_ms": percentile(&lat, 99.0) / 1000.0, "max_ms": lat.last().copied().unwrap_or(f64::NAN) / 1000.0,
    }));
    Ok(())
}

/// The worker side of `latency`: READY once running, `LAT {json}` after N jobs.
pub async fn latency_worker(n: usize, concurrency: usize) -> Result<()> {
    let target = Target::from_env();
    let worker = Worker::builder(target.backend().await?).queue(QUEUE, 1).concurrency(concurrency).build()?;
    LATENCIES.reset(n as u64);
    let cpu0 = self_cpu_secs();
    let running = worker.clone();
    let run = tokio::spawn(async move {
        running.run_until(jobs::until_done(LATENCIES.reached(), || LATENCIES.count(), STALL)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    say("READY");
    let report = run.await??;
    let lat = LATENCIES.take();
    ensure!(lat.len() == n, "latency-worker: {} of {n} jobs arrived (stalled for {STALL:?})", lat.len());
    check_report(&report, n as u64)?;
    let report = LatReport { lat, max_rss_kb: peak_rss_kb(), cpu_s: self_cpu_secs() - cpu0 };
    say(&format!("LAT {}", serde_json::to_string(&report)?));
    Ok(())
}

/// What `drain-part` reports.
#[derive(Serialize, Deserialize)]
pub struct PartReport {
    /// Jobs its handlers ran.
    pub done: u64,
    /// Jobs its worker counted as succeeded.
    pub succeeded: u64,
    pub cpu_s: f64,
    pub max_rss_kb: u64,
}

/// One of several worker processes draining one backlog: prints READY once
/// built, starts at GO, stops gracefully at STOP (or end of stdin), then
/// prints `PART {json}`.
pub async fn drain_part(concurrency: usize) -> Result<()> {
    let target = Target::from_env();
    let worker = Worker::builder(target.backend().await?).queue(QUEUE, 1).concurrency(concurrency).build()?;
    NOOPS.reset(u64::MAX);
    let mut stdin = stdin_lines();
    say("READY");
    wait_for(&mut stdin, "GO", Duration::from_secs(120)).await?;
    let cpu0 = self_cpu_secs();
    let stop = async move {
        while let Some(line) = stdin.recv().await {
            if line.trim() == "STOP" {
                break;
            }
        }
    };
    let report = worker.run_until(stop).await?;
    let part = PartReport {
        done: NOOPS.done(),
        succeeded: report.succeeded,
        cpu_s: self_cpu_secs() - cpu0,
        max_rss_kb: peak_rss_kb(),
    };
    say(&format!("PART {}", serde_json::to_string(&part)?));
    Ok(())
}

/// What `priority-worker` reports.
#[derive(Serialize, Deserialize)]
pub struct PrioReport {
    /// Latencies of the critical jobs, µs.
    pub lat: Vec<f64>,
    pub flood_done: u64,
    /// From GO to the last flood job's return.
    pub flood_secs: f64,
    pub succeeded: u64,
    pub cpu_s: f64,
    pub max_rss_kb: u64,
}

/// The worker of the priority scenario: serves `critical` (weight 10) and
/// `bulk` (weight 1), or both strictly in that order. READY, GO, then
/// `FLOOD_DONE` when the flood has drained; reads `SENT k`, waits for the k
/// critical jobs, stops and prints `PRIO {json}`.
pub async fn priority_worker(order: Order, flood: u64, concurrency: usize) -> Result<()> {
    let target = Target::from_env();
    let mut builder =
        Worker::builder(target.backend().await?).queue(CRITICAL, 10).queue(BULK, 1).concurrency(concurrency);
    if order == Order::Strict {
        builder = builder.strict();
    }
    let worker = builder.build()?;
    FLOODED.reset(flood);
    CRITICALS.reset(u64::MAX);
    let mut stdin = stdin_lines();
    say("READY");
    wait_for(&mut stdin, "GO", Duration::from_secs(120)).await?;
    let (cpu0, t0) = (self_cpu_secs(), Instant::now());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = worker.clone();
    let run = tokio::spawn(async move {
        running
            .run_until(async move {
                let _ = stop_rx.await;
            })
            .await
    });
    jobs::until_done(FLOODED.reached(), || FLOODED.done(), STALL).await;
    let flood_done = FLOODED.done();
    let flood_secs = (FLOODED.last().unwrap_or_else(Instant::now) - t0).as_secs_f64();
    say("FLOOD_DONE");
    let sent = wait_for(&mut stdin, "SENT", STALL).await?;
    let sent: u64 = match sent.split_whitespace().nth(1).map(str::parse) {
        Some(Ok(k)) => k,
        _ => bail!("bad SENT line `{sent}`"),
    };
    CRITICALS.set_target(sent);
    jobs::until_done(CRITICALS.reached(), || CRITICALS.count(), STALL).await;
    let _ = stop_tx.send(());
    let report = run.await??;
    let lat = CRITICALS.take();
    ensure!(flood_done == flood, "priority: {flood_done} of {flood} bulk jobs ran (stalled for {STALL:?})");
    ensure!(lat.len() as u64 == sent, "priority: {} of {sent} critical jobs ran", lat.len());
    check_report(&report, flood + sent)?;
    let prio = PrioReport {
        lat,
        flood_done,
        flood_secs,
        succeeded: report.succeeded,
        cpu_s: self_cpu_secs() - cpu0,
        max_rss_kb: peak_rss_kb(),
    };
    say(&format!("PRIO {}", serde_json::to_string(&prio)?));
    Ok(())
}

/// Adds `critical` jobs at `rate`/s until `flood_done` resolves and at least
/// `min` were sent; returns how many it sent.
pub async fn send_critical(
    client: &Client,
    rate: f64,
    min: u64,
    flood_done: impl std::future::Future<Output = Result<String>>,
) -> Result<u64> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    tokio::pin!(flood_done);
    let mut finished = false;
    let mut sent = 0u64;
    loop {
        if finished && sent >= min {
            return Ok(sent);
        }
        let due = start + interval.mul_f64(sent as f64);
        tokio::select! {
            done = &mut flood_done, if !finished => {
                done?;
                finished = true;
            }
            () = tokio::time::sleep_until(due) => {
                client.enqueue(Critical { t: now_us() }).await?;
                sent += 1;
            }
        }
    }
}

/// `proxy UPSTREAM DELAY_MS`: serves until stdin closes.
pub async fn proxy(upstream: SocketAddr, delay_ms: f64) -> Result<()> {
    ensure!(delay_ms >= 0.0, "the delay must not be negative");
    let port = crate::proxy::start(upstream, Duration::from_secs_f64(delay_ms / 1000.0))?;
    say(&format!("READY {port}"));
    let mut stdin = stdin_lines();
    while stdin.recv().await.is_some() {}
    Ok(())
}
