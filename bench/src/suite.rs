//! `all`: every scenario of the performance issue on a private redis-server,
//! repeated, then one table (median, min–max). Each measurement runs in a
//! process of its own (the peers' protocol: `enqueue`, `drain`, `latency` as
//! child processes), so CPU and peak RSS belong to that run alone.

use std::process::Command;
use std::time::{Duration, Instant};

use jobs_core::{Backend, Client, JobSet};
use jobs_redis::RedisBackend;
use jobs_redis::testing::RedisServer;
use serde_json::{Value, json};

use crate::child::ChildProc;
use crate::cli::{AllArgs, Order};
use crate::jobs::{Flood, Noop, QUEUE};
use crate::probe::{Probe, RedisProbe, percentile, proc_cpu_secs};
use crate::scenarios::{self, PartReport, PrioReport, STALL, SYSTEM, VERSION, fill, merge, queue_len};
use crate::{Result, bail, ensure};

/// Drain concurrencies measured besides `--concurrency`.
const DRAIN_LEVELS: [usize; 4] = [1, 10, 50, 200];
/// The opt-in `fetch_ahead` of the extra drain run (ChasquiMQ reads 64 ahead).
const FETCH_AHEAD: usize = 64;
/// The idle-latency run: 2000 jobs at 500/s.
const LAT_N: usize = 2000;
const LAT_RATE: f64 = 500.0;
/// Critical jobs per second during the flood, and at least this many in all.
const CRITICAL_RATE: f64 = 200.0;
const CRITICAL_MIN: u64 = 20;
/// One-at-a-time enqueue through the proxy pays a round trip per job: at most this many.
const PROXY_SEQ_N: u64 = 5000;
/// Through the proxy one awaited enqueue takes over 2 ms, so the producer cannot keep 500/s.
const PROXY_LAT_RATE: f64 = 200.0;
/// Jobs per bulk call when the suite fills a queue (outside any timing).
const CHUNK: u64 = 1000;

struct Suite {
    n: u64,
    reps: u32,
    concurrency: usize,
    quick: bool,
    port: u16,
    direct_url: String,
    pid: Option<u32>,
    redis: RedisProbe,
    backend: RedisBackend,
    client: Client,
    proxy: Option<(ChildProc, String, f64)>,
    records: Vec<Record>,
    have_redis_benchmark: bool,
}

struct Record {
    key: String,
    value: Value,
}

/// Runs `all`.
pub async fn run(args: AllArgs) -> Result<()> {
    let (n, reps) = if args.quick { (2000, 1) } else { (args.n, args.reps) };
    ensure!(n > 0 && reps > 0 && args.concurrency > 0, "--n, --reps and --concurrency must be at least 1");
    let started = Instant::now();
    // A fatal setup step: RedisServer::start panics with the reason (e.g. redis-server missing).
    let server = RedisServer::start();
    let direct_url = server.url();
    let mut redis = RedisProbe::connect(&direct_url, None).await?;
    let pid = redis.pid();
    let backend = RedisBackend::connect(&direct_url).await?;
    let machine = describe_machine(&mut redis).await;
    println!("jobs-bench all: N={n}, {reps} rep(s), concurrency {}{}", args.concurrency, quick_note(args.quick));
    println!("machine: {machine}");
    println!("redis: private redis-server on {direct_url} (pid {}), --save \"\" --appendonly no", opt(pid));
    let mut suite = Suite {
        n,
        reps,
        concurrency: args.concurrency,
        quick: args.quick,
        port: server.port(),
        direct_url,
        pid,
        redis,
        client: Client::new(backend.clone()),
        backend,
        proxy: None,
        records: Vec::new(),
        have_redis_benchmark: !args.quick && redis_benchmark_available(),
    };
    if !args.quick && !suite.have_redis_benchmark {
        eprintln!("jobs-bench: redis-benchmark not found (apt-get install redis-tools); the ceiling is skipped");
    }
    if args.proxy_delay_ms > 0.0 {
        suite.start_proxy(args.proxy_delay_ms).await?;
    }
    for rep in 1..=reps {
        eprintln!("== rep {rep} of {reps}");
        suite.rep(rep).await?;
    }
    suite.print_table();
    suite.check_complete()?;
    if let Some((proxy, _, _)) = suite.proxy.as_mut() {
        proxy.finish(Duration::from_secs(10)).await?;
    }
    println!(
        "\nevery scenario completed and counted every job ({} measurements, {:.0} s)",
        suite.records.len(),
        started.elapsed().as_secs_f64()
    );
    drop(server);
    Ok(())
}

/// The arguments of a child run.
fn argv(parts: &[&dyn ToString]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

fn quick_note(quick: bool) -> &'static str {
    if quick { " (quick: correctness only, no redis-benchmark; speeds mean nothing here)" } else { "" }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

impl Suite {
    /// Environment of a child run connecting through `url`.
    fn env(&self, url: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("JOBS_BENCH_URL".to_owned(), url.to_owned()),
            ("JOBS_BENCH_DIRECT_URL".to_owned(), self.direct_url.clone()),
            ("PORT".to_owned(), self.port.to_string()),
        ];
        if let Some(pid) = self.pid {
            env.push(("JOBS_BENCH_REDIS_PID".to_owned(), pid.to_string()));
        }
        env
    }

    /// A generous limit for a run of `n` jobs (a stall fails sooner, inside the child).
    fn timeout(n: u64) -> Duration {
        Duration::from_secs(180) + Duration::from_secs_f64(n as f64 / 200.0)
    }

    fn record(&mut self, key: &str, rep: u32, value: Value) {
        let value = merge(value, json!({"rep": rep, "scenario": key}));
        println!("RESULT {value}");
        eprintln!("   {key}: {}", summary(&value));
        self.records.push(Record { key: key.to_owned(), value });
    }

    /// Runs `jobs-bench ARGS` (a peer-protocol command) and records its one RESULT line.
    async fn child_run(
        &mut self,
        key: &str,
        rep: u32,
        args: &[String],
        url: &str,
        n: u64,
        relabel: impl FnOnce(Value) -> Value,
    ) -> Result<()> {
        self.child_run_env(key, rep, args, url, &[], n, relabel).await
    }

    /// [`child_run`](Self::child_run) with `extra` added to the child's environment.
    #[allow(clippy::too_many_arguments)]
    async fn child_run_env(
        &mut self,
        key: &str,
        rep: u32,
        args: &[String],
        url: &str,
        extra: &[(&str, &str)],
        n: u64,
        relabel: impl FnOnce(Value) -> Value,
    ) -> Result<()> {
        // Through the proxy, also what the proxy itself cost (it shares the cores).
        let proxy_pid = self.proxy.as_ref().filter(|(_, proxy_url, _)| proxy_url == url).map(|(p, _, _)| p.pid());
        let proxy_cpu = |pid: Option<u32>| pid.and_then(|pid| proc_cpu_secs(&pid.to_string()));
        let (cpu0, t0) = (proxy_cpu(proxy_pid), Instant::now());
        let mut env = self.env(url);
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut child = ChildProc::spawn(args, &env)?;
        let mut results = child.finish(Self::timeout(n)).await?;
        ensure!(results.len() == 1, "`jobs-bench {}` printed {} RESULT lines", args.join(" "), results.len());
        let mut value = relabel(results.remove(0));
        if let (Some(cpu0), Some(cpu1)) = (cpu0, proxy_cpu(proxy_pid)) {
            let pct = 100.0 * (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
            value = merge(value, json!({"proxy_cpu_s": cpu1 - cpu0, "proxy_cpu_pct_of_run": pct}));
        }
        self.record(key, rep, value);
        Ok(())
    }

    async fn fresh(&mut self) -> Result<()> {
        self.redis.flushall().await
    }

    async fn rep(&mut self, rep: u32) -> Result<()> {
        let (n, c) = (self.n, self.concurrency);
        let direct = self.direct_url.clone();
        for (mode, key) in [
            ("single-seq", "enqueue single-seq"),
            ("single-seq-task", "enqueue single-seq-task"),
            ("single", "enqueue single"),
            ("bulk", "enqueue bulk"),
        ] {
            self.fresh().await?;
            self.child_run(key, rep, &argv(&[&"enqueue", &mode, &n]), &direct, n, |v| v).await?;
        }
        for level in self.drain_levels() {
            self.fresh().await?;
            fill(&self.client, n, CHUNK, |n| Noop { n }).await?;
            // Only the run at --concurrency is the peers' `drain` row; the others are a scaling curve.
            let relabel = move |v: Value| if level == c { v } else { merge(v, json!({"phase": "drain-scaling"})) };
            self.child_run(&format!("drain c{level}"), rep, &argv(&[&"drain", &level]), &direct, n, relabel).await?;
        }
        // The opt-in `fetch_ahead`, as the peers' drain row's variant (like ChasquiMQ's events off).
        self.fresh().await?;
        fill(&self.client, n, CHUNK, |n| Noop { n }).await?;
        let ahead = FETCH_AHEAD.to_string();
        let (key, args) = (format!("drain c{c} ahead"), argv(&[&"drain", &c]));
        self.child_run_env(&key, rep, &args, &direct, &[("FETCH_AHEAD", &ahead)], n, |v| v).await?;
        for procs in [1, 2] {
            self.drain_processes(rep, procs, &direct, "").await?;
        }
        self.fresh().await?;
        let lat_args = argv(&[&"latency", &LAT_N, &LAT_RATE, &c]);
        self.child_run("latency", rep, &lat_args, &direct, LAT_N as u64, |v| v).await?;
        self.fresh().await?;
        let env = [("LAT_FROM_TASK", "1")];
        self.child_run_env("latency task", rep, &lat_args, &direct, &env, LAT_N as u64, |v| v).await?;
        self.fresh().await?;
        let floor_args = argv(&[&"latency-floor", &LAT_N, &LAT_RATE]);
        self.child_run("latency floor", rep, &floor_args, &direct, LAT_N as u64, |v| v).await?;
        for order in [Order::Weighted, Order::Strict] {
            self.priority(rep, order).await?;
        }
        if self.have_redis_benchmark {
            self.ceiling(rep).await?;
        }
        if let Some((url, delay)) = self.proxy.as_ref().map(|(_, url, delay)| (url.clone(), *delay)) {
            let via = move |v: Value| {
                let phase = v.get("phase").and_then(Value::as_str).unwrap_or("").to_owned();
                merge(v, json!({"phase": format!("proxy-{phase}"), "proxy_delay_ms": delay}))
            };
            let seq_n = n.min(PROXY_SEQ_N);
            self.fresh().await?;
            let args = argv(&[&"enqueue", &"single-seq", &seq_n]);
            self.child_run("proxy enqueue single-seq", rep, &args, &url, seq_n, via).await?;
            self.fresh().await?;
            let args = argv(&[&"enqueue", &"single", &n]);
            self.child_run("proxy enqueue single", rep, &args, &url, n, via).await?;
            self.fresh().await?;
            fill(&self.client, n, CHUNK, |n| Noop { n }).await?;
            self.child_run("proxy drain", rep, &argv(&[&"drain", &c]), &url, n, via).await?;
            // Where round trips, not the cores, bound a worker, a second process adds its own.
            for procs in [1, 2] {
                self.drain_processes(rep, procs, &url, "proxy ").await?;
            }
            self.fresh().await?;
            let args = argv(&[&"latency", &LAT_N, &PROXY_LAT_RATE, &c]);
            self.child_run("proxy latency", rep, &args, &url, LAT_N as u64, via).await?;
        }
        Ok(())
    }

    /// `procs` worker processes at the suite's concurrency drain one backlog of
    /// N through `url` (recorded as `{prefix}drain p{procs}`). The clock runs
    /// from GO (workers built and connected) until Redis shows the queue and
    /// the in-flight set empty, polled every millisecond.
    async fn drain_processes(&mut self, rep: u32, procs: usize, url: &str, prefix: &str) -> Result<()> {
        let (n, c) = (self.n, self.concurrency);
        self.fresh().await?;
        fill(&self.client, n, CHUNK, |n| Noop { n }).await?;
        let env = self.env(url);
        let mut children = Vec::with_capacity(procs);
        for _ in 0..procs {
            children.push(ChildProc::spawn(&["drain-part".to_owned(), c.to_string()], &env)?);
        }
        for child in &mut children {
            child.expect("READY", Duration::from_secs(60)).await?;
        }
        let probe = Probe::start(&mut self.redis).await?;
        for child in &mut children {
            child.send("GO")?;
        }
        let (mut last_left, mut since) = (u64::MAX, Instant::now());
        loop {
            let left = queue_len(&self.backend, QUEUE).await? + self.backend.count(&JobSet::InFlight).await? as u64;
            if left == 0 {
                break;
            }
            if left != last_left {
                (last_left, since) = (left, Instant::now());
            } else if since.elapsed() > STALL {
                bail!("{procs} worker processes: {left} jobs still queued or in flight, unchanged for {STALL:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let usage = probe.stop(&mut self.redis, Instant::now()).await?;
        for child in &mut children {
            child.send("STOP")?;
        }
        let mut parts = Vec::with_capacity(procs);
        for child in &mut children {
            let part: PartReport = child.expect_json("PART", Duration::from_secs(60)).await?;
            child.finish(Duration::from_secs(30)).await?;
            parts.push(part);
        }
        let done: u64 = parts.iter().map(|p| p.done).sum();
        let succeeded: u64 = parts.iter().map(|p| p.succeeded).sum();
        ensure!(done == n && succeeded == n, "{procs} worker processes ran {done} and counted {succeeded} of {n} jobs");
        scenarios::check_empty(&self.backend, &[QUEUE]).await?;
        let worker_cpu_s: f64 = parts.iter().map(|p| p.cpu_s).sum();
        let value = merge(
            usage.fields(n, "suite"),
            json!({
                "system": SYSTEM, "version": VERSION, "phase": format!("{}drain-procs", prefix.replace(' ', "-")),
                "mode": format!("p{procs}-c{c}"),
                "processes": procs, "worker_cpu_s": worker_cpu_s, "worker_cpu_pct": 100.0 * worker_cpu_s / usage.secs,
                "max_rss_kb": parts.iter().map(|p| p.max_rss_kb).max().unwrap_or(0),
                "per_process_done": parts.iter().map(|p| p.done).collect::<Vec<_>>(),
            }),
        );
        self.record(&format!("{prefix}drain p{procs}"), rep, value);
        Ok(())
    }

    /// N `bulk` jobs drain while `critical` jobs arrive at 200/s: their latency.
    async fn priority(&mut self, rep: u32, order: Order) -> Result<()> {
        let (n, c) = (self.n, self.concurrency);
        self.fresh().await?;
        fill(&self.client, n, CHUNK, |n| Flood { n }).await?;
        let order_arg = match order {
            Order::Weighted => "weighted",
            Order::Strict => "strict",
        };
        let args = ["priority-worker".to_owned(), order_arg.to_owned(), n.to_string(), c.to_string()];
        let mut child = ChildProc::spawn(&args, &self.env(&self.direct_url))?;
        child.expect("READY", Duration::from_secs(60)).await?;
        let probe = Probe::start(&mut self.redis).await?;
        child.send("GO")?;
        let flood_done = child.expect("FLOOD_DONE", Self::timeout(n));
        let sent = scenarios::send_critical(&self.client, CRITICAL_RATE, CRITICAL_MIN, flood_done).await?;
        child.send(&format!("SENT {sent}"))?;
        let prio: PrioReport = child.expect_json("PRIO", STALL * 2).await?;
        let usage = probe.stop(&mut self.redis, Instant::now()).await?;
        child.finish(Duration::from_secs(30)).await?;
        ensure!(prio.flood_done == n, "priority {order_arg}: {} of {n} bulk jobs ran", prio.flood_done);
        ensure!(prio.lat.len() as u64 == sent, "priority {order_arg}: {} of {sent} critical jobs ran", prio.lat.len());
        let mut lat = prio.lat;
        lat.sort_by(f64::total_cmp);
        let mode = if order == Order::Weighted { "weighted-10:1" } else { "strict" };
        let value = json!({
            "system": SYSTEM, "version": VERSION, "phase": "priority", "mode": mode, "n": n,
            "critical_n": sent, "critical_rate": CRITICAL_RATE,
            "p50_ms": percentile(&lat, 50.0) / 1000.0, "p99_ms": percentile(&lat, 99.0) / 1000.0,
            "max_ms": lat.last().copied().unwrap_or(f64::NAN) / 1000.0,
            "flood_secs": prio.flood_secs, "flood_jobs_per_s": n as f64 / prio.flood_secs,
            "secs": usage.secs, "redis_cpu_s": usage.redis_cpu_s, "worker_cpu_s": prio.cpu_s,
            "worker_max_rss_kb": prio.max_rss_kb,
        });
        self.record(&format!("priority {order_arg}"), rep, value);
        Ok(())
    }

    /// redis-benchmark against the same server: LPUSH, XADD, EVALSHA (`return 1`
    /// and the peers' minimal enqueue INCR+HSET+LPUSH), -P 1 and -P 16, -c 50.
    async fn ceiling(&mut self, rep: u32) -> Result<()> {
        const ENQUEUE: &str = "local id = redis.call('INCR', KEYS[1])\n\
             redis.call('HSET', KEYS[2] .. id, 'data', ARGV[1])\n\
             redis.call('LPUSH', KEYS[3], id)\nreturn id";
        for pipeline in [1u32, 16] {
            let requests: u64 = if pipeline == 1 { 100_000 } else { 500_000 };
            for name in ["LPUSH", "XADD", "EVALSHA return 1", "EVALSHA enqueue"] {
                self.fresh().await?;
                let noop = self.redis.script_load("return 1").await?;
                let enqueue = self.redis.script_load(ENQUEUE).await?;
                let command: Vec<String> = match name {
                    "LPUSH" => vec!["lpush".into(), "bq:wait".into(), "__rand_int__".into()],
                    "XADD" => vec!["xadd".into(), "bq:stream".into(), "*".into(), "n".into(), "__rand_int__".into()],
                    "EVALSHA return 1" => vec!["evalsha".into(), noop, "0".into()],
                    _ => ["evalsha", &enqueue, "3", "bq:id", "bq:job:", "bq:wait", "payload-__rand_int__"]
                        .map(str::to_owned)
                        .to_vec(),
                };
                let mut args: Vec<String> =
                    ["-h", "127.0.0.1", "-p", &self.port.to_string(), "-c", "50"].map(str::to_owned).to_vec();
                args.extend(["-n".into(), requests.to_string(), "-P".into(), pipeline.to_string()]);
                args.extend(["-r".into(), "1000000".into(), "--csv".into()]);
                args.extend(command);
                let probe = Probe::start(&mut self.redis).await?;
                let output =
                    tokio::task::spawn_blocking(move || Command::new("redis-benchmark").args(&args).output()).await??;
                let usage = probe.stop(&mut self.redis, Instant::now()).await?;
                ensure!(output.status.success(), "redis-benchmark {name} failed: {}", output.status);
                let csv = String::from_utf8_lossy(&output.stdout);
                let Some(row) = parse_benchmark_csv(&csv) else {
                    bail!("cannot read redis-benchmark's output for {name}: {csv}");
                };
                let value = json!({
                    "system": SYSTEM, "version": VERSION, "phase": "ceiling", "mode": format!("{name} -P {pipeline}"),
                    "requests": requests, "ops_per_s": row.0, "p50_ms": row.1, "p99_ms": row.2,
                    "secs": usage.secs, "redis_cpu_s": usage.redis_cpu_s,
                    "redis_cpu_pct": 100.0 * usage.redis_cpu_s / usage.secs,
                    "redis_cpu_us_per_op": 1e6 * usage.redis_cpu_s / requests as f64,
                });
                self.record(&format!("ceiling {name} -P {pipeline}"), rep, value);
            }
        }
        Ok(())
    }

    async fn start_proxy(&mut self, delay_ms: f64) -> Result<()> {
        let args = ["proxy".to_owned(), format!("127.0.0.1:{}", self.port), delay_ms.to_string()];
        let mut proxy = ChildProc::spawn(&args, &[])?;
        let port = proxy.expect("READY", Duration::from_secs(10)).await?;
        let url = format!("redis://127.0.0.1:{port}");
        println!("proxy: {url} → {} with {delay_ms} ms each way", self.direct_url);
        self.proxy = Some((proxy, url, delay_ms));
        Ok(())
    }

    /// 1, 10, 50, 200 and `--concurrency`.
    fn drain_levels(&self) -> Vec<usize> {
        let mut levels = DRAIN_LEVELS.to_vec();
        if !levels.contains(&self.concurrency) {
            levels.push(self.concurrency);
            levels.sort_unstable();
        }
        levels
    }

    fn expected_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = ["enqueue single-seq", "enqueue single-seq-task", "enqueue single", "enqueue bulk"]
            .map(str::to_owned)
            .to_vec();
        keys.extend(self.drain_levels().iter().map(|c| format!("drain c{c}")));
        keys.extend(
            [
                "drain p1",
                "drain p2",
                "latency",
                "latency task",
                "latency floor",
                "priority weighted",
                "priority strict",
            ]
            .map(str::to_owned),
        );
        if self.proxy.is_some() {
            keys.extend(
                ["proxy enqueue single-seq", "proxy enqueue single", "proxy drain", "proxy drain p1", "proxy drain p2"]
                    .map(str::to_owned),
            );
            keys.push("proxy latency".to_owned());
        }
        keys
    }

    /// Every expected scenario has a result for every repetition.
    fn check_complete(&self) -> Result<()> {
        for key in self.expected_keys() {
            let got = self.records.iter().filter(|r| r.key == key).count();
            ensure!(got == self.reps as usize, "scenario `{key}` has {got} of {} results", self.reps);
        }
        Ok(())
    }

    fn values(&self, key: &str, field: &str) -> Vec<f64> {
        self.records
            .iter()
            .filter(|r| r.key == key)
            .filter_map(|r| r.value.get(field).and_then(Value::as_f64))
            .collect()
    }

    fn median(&self, key: &str, field: &str) -> Option<f64> {
        median(&self.values(key, field))
    }

    fn print_table(&self) {
        let c = self.concurrency;
        let mut rows: Vec<[String; 5]> = Vec::new();
        let rate = |xs: &[f64]| format!("{} jobs/s", spread(xs, int));
        let pct_pair = |key: &str, own: &str| match (self.median(key, own), self.median(key, "redis_cpu_pct")) {
            (Some(a), Some(b)) => format!("{a:.0}% / {b:.0}%"),
            _ => String::new(),
        };
        let us = |key: &str| self.median(key, "redis_cpu_us_per_job").map_or(String::new(), |x| format!("{x:.1}"));
        let rss = |key: &str, field: &str| {
            self.median(key, field).map_or(String::new(), |kb| format!("peak RSS {:.1} MiB", kb / 1024.0))
        };
        for (key, label) in [
            ("enqueue single-seq", "enqueue, 1 in flight".to_owned()),
            ("enqueue single-seq-task", "enqueue, 1 in flight, from a spawned task".to_owned()),
            ("enqueue single", "enqueue, 50 in flight".to_owned()),
            ("enqueue bulk", format!("enqueue bulk ({CHUNK}/call)")),
        ] {
            let bytes =
                self.median(key, "redis_bytes_per_job").map_or(String::new(), |b| format!("Redis {b:.0} B/job"));
            rows.push([label, rate(&self.values(key, "jobs_per_s")), us(key), pct_pair(key, "client_cpu_pct"), bytes]);
        }
        let drains = self.drain_levels().into_iter().map(|level| (format!("drain c{level}"), format!("c={level}")));
        let ahead = (format!("drain c{c} ahead"), format!("c={c}, fetch_ahead={FETCH_AHEAD} (opt-in)"));
        for (key, label) in drains.chain([ahead]) {
            rows.push([
                format!("drain, 1 worker, {label}"),
                rate(&self.values(&key, "jobs_per_s")),
                us(&key),
                pct_pair(&key, "worker_cpu_pct"),
                rss(&key, "max_rss_kb"),
            ]);
        }
        // One worker process and two, on one clock (GO → Redis empty); `prefix` names the link.
        let procs_rows = |prefix: &str, link: &str| -> Vec<[String; 5]> {
            let one = self.median(&format!("{prefix}drain p1"), "jobs_per_s");
            [1, 2]
                .map(|procs| {
                    let key = format!("{prefix}drain p{procs}");
                    let mut notes = rss(&key, "max_rss_kb");
                    if procs == 2
                        && let (Some(two), Some(one)) = (self.median(&key, "jobs_per_s"), one)
                    {
                        notes = format!("{:.2}× one process; {notes} (largest)", two / one);
                    }
                    [
                        if procs == 1 {
                            format!("{link}drain, 1 worker process, c={c} (clock: GO → Redis empty)")
                        } else {
                            format!("{link}drain, {procs} worker processes, c={c} each (same clock)")
                        },
                        rate(&self.values(&key, "jobs_per_s")),
                        us(&key),
                        pct_pair(&key, "worker_cpu_pct"),
                        notes,
                    ]
                })
                .to_vec()
        };
        rows.extend(procs_rows("", ""));
        let lat_row = |key: &str, label: String, notes: String| -> [String; 5] {
            let p50 = spread(&self.values(key, "p50_ms"), ms);
            let p99 = spread(&self.values(key, "p99_ms"), ms);
            [label, format!("p50 {p50} / p99 {p99} ms"), String::new(), String::new(), notes]
        };
        let max = self.median("latency", "max_ms").map_or(String::new(), |m| format!("max {m:.2} ms"));
        rows.push(lat_row("latency", format!("idle latency, {LAT_N} jobs at {LAT_RATE}/s, c={c}"), max));
        let max = self.median("latency task", "max_ms").map_or(String::new(), |m| format!("max {m:.2} ms"));
        rows.push(lat_row(
            "latency task",
            format!("idle latency, producer in a spawned task (LAT_FROM_TASK=1), c={c}"),
            max,
        ));
        let over_floor = ["p50_ms", "p99_ms"].map(|field| {
            match (self.median("latency", field), self.median("latency floor", field)) {
                (Some(jobs), Some(floor)) if floor > 0.0 => format!("{:.1}×", jobs / floor),
                _ => "?".to_owned(),
            }
        });
        rows.push(lat_row(
            "latency floor",
            format!("floor: plain blocking clients, RPUSH → BLPOP, {LAT_N} at {LAT_RATE}/s"),
            format!("idle latency ÷ floor: p50 {} / p99 {}", over_floor[0], over_floor[1]),
        ));
        for (key, label) in [("priority weighted", "weights 10:1"), ("priority strict", "strict")] {
            let notes = match (self.median(key, "critical_n"), self.median(key, "flood_jobs_per_s")) {
                (Some(k), Some(f)) => format!("{k:.0} critical jobs; the flood drained at {} jobs/s", int(f)),
                _ => String::new(),
            };
            rows.push(lat_row(key, format!("critical job under a flood of N bulk, {label}"), notes));
        }
        rows.push([
            "footprint: Redis memory per queued job".to_owned(),
            format!(
                "{} B (bulk), {} B (single)",
                spread(&self.values("enqueue bulk", "redis_bytes_per_job"), int),
                spread(&self.values("enqueue single", "redis_bytes_per_job"), int)
            ),
            String::new(),
            String::new(),
            "INFO used_memory delta / N".to_owned(),
        ]);
        rows.push([
            format!("footprint: worker peak RSS, c={c}"),
            format!(
                "{} MiB",
                spread(
                    &self.values("drain p1", "max_rss_kb").iter().map(|kb| kb / 1024.0).collect::<Vec<_>>(),
                    |x| format!("{x:.1}")
                )
            ),
            String::new(),
            String::new(),
            "VmHWM of a worker process draining N".to_owned(),
        ]);
        if self.have_redis_benchmark {
            for pipeline in [1, 16] {
                for name in ["LPUSH", "XADD", "EVALSHA return 1", "EVALSHA enqueue"] {
                    let key = format!("ceiling {name} -P {pipeline}");
                    let us = self.median(&key, "redis_cpu_us_per_op").map_or(String::new(), |x| format!("{x:.2} /op"));
                    let cpu = self.median(&key, "redis_cpu_pct").map_or(String::new(), |x| format!("– / {x:.0}%"));
                    let p99 = self.median(&key, "p99_ms").map_or(String::new(), |x| format!("p99 {x:.2} ms"));
                    rows.push([
                        format!("ceiling: redis-benchmark {name}, -P {pipeline}, -c 50"),
                        format!("{} ops/s", spread(&self.values(&key, "ops_per_s"), int)),
                        us,
                        cpu,
                        p99,
                    ]);
                }
            }
        }
        let proxy_note = |key: &str| {
            self.median(key, "proxy_cpu_pct_of_run")
                .map_or(String::new(), |x| format!("proxy process {x:.0}% of a core"))
        };
        if let Some((_, _, delay)) = &self.proxy {
            let seq_n = self.n.min(PROXY_SEQ_N);
            for (key, label, own) in [
                (
                    "proxy enqueue single-seq",
                    format!("proxy {delay} ms: enqueue, 1 in flight (N={seq_n})"),
                    "client_cpu_pct",
                ),
                ("proxy enqueue single", format!("proxy {delay} ms: enqueue, 50 in flight"), "client_cpu_pct"),
                ("proxy drain", format!("proxy {delay} ms: drain, 1 worker, c={c}"), "worker_cpu_pct"),
            ] {
                rows.push([label, rate(&self.values(key, "jobs_per_s")), us(key), pct_pair(key, own), proxy_note(key)]);
            }
            rows.extend(procs_rows("proxy ", &format!("proxy {delay} ms: ")));
            rows.push(lat_row(
                "proxy latency",
                format!("proxy {delay} ms: idle latency, {LAT_N} jobs at {PROXY_LAT_RATE}/s"),
                proxy_note("proxy latency"),
            ));
        }
        println!(
            "\n## jobs-bench all: N={}, {} rep(s) (median (min–max)), {}\n",
            int(self.n as f64),
            self.reps,
            if self.quick {
                "QUICK MODE: checks completion only, the speeds mean nothing"
            } else {
                "one machine, one sitting"
            }
        );
        println!("| scenario | result | Redis CPU µs/job | CPU own / Redis (% of a core) | notes |");
        println!("|---|---|---|---|---|");
        for row in rows {
            println!("| {} |", row.join(" | "));
        }
    }
}

/// A short progress line for stderr.
fn summary(value: &Value) -> String {
    let get = |field: &str| value.get(field).and_then(Value::as_f64);
    if let Some(ops) = get("ops_per_s") {
        return format!("{} ops/s", int(ops));
    }
    if let (Some(p50), Some(p99)) = (get("p50_ms"), get("p99_ms")) {
        return format!("p50 {p50:.2} ms, p99 {p99:.2} ms");
    }
    match get("jobs_per_s") {
        Some(rate) => format!("{} jobs/s", int(rate)),
        None => "done".to_owned(),
    }
}

fn median(xs: &[f64]) -> Option<f64> {
    let mut xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    Some(if xs.len() % 2 == 1 { xs[mid] } else { (xs[mid - 1] + xs[mid]) / 2.0 })
}

/// "median (min–max)", or the one value, or "n/a".
fn spread(xs: &[f64], fmt: impl Fn(f64) -> String) -> String {
    let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let Some(mid) = median(&finite) else { return "n/a".to_owned() };
    if finite.len() == 1 {
        return fmt(mid);
    }
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}–{})", fmt(mid), fmt(min), fmt(max))
}

/// 12345.6 → "12,346".
fn int(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn ms(x: f64) -> String {
    if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.2}") }
}

/// (requests/s, p50 ms, p99 ms) from `redis-benchmark --csv`.
fn parse_benchmark_csv(csv: &str) -> Option<(f64, f64, f64)> {
    let row = csv.lines().rfind(|line| line.starts_with('"') && !line.starts_with("\"test\""))?;
    let fields: Vec<f64> = row.split(',').skip(1).map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN)).collect();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    Some((*fields.first()?, *fields.get(3)?, *fields.get(5)?))
}

fn redis_benchmark_available() -> bool {
    Command::new("redis-benchmark").arg("--version").output().is_ok_and(|o| o.status.success())
}

async fn describe_machine(redis: &mut RedisProbe) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(String::new(), |kb| format!(", {:.0} GiB", kb / 1024.0 / 1024.0));
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "?".to_owned(), |k| k.trim().to_owned());
    let redis_version = redis.info_field("server", "redis_version").await.unwrap_or_else(|_| "?".to_owned());
    format!("{cpus} CPUs ({model}){mem_gib}, Linux {kernel}; Redis {redis_version}")
}
