//! Measurements around a phase: CPU seconds of this process (`/proc/self/stat`)
//! and of redis-server (`/proc/PID/stat`, or `INFO cpu` when the server is not
//! local), peak RSS (`VmHWM`), Redis `INFO` fields, wall-clock timestamps.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use jobs_redis::deadpool_redis::redis::{self, aio::MultiplexedConnection};
use serde_json::{Value, json};

use crate::{Result, bail};

/// Clock ticks per second in `/proc/*/stat` (USER_HZ: 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Wall clock in µs since the epoch (CLOCK_REALTIME, comparable across processes).
pub fn now_us() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_nanos() as f64 / 1000.0)
}

/// utime + stime of `pid` ("self" or a number), in seconds.
pub fn proc_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// This process's CPU seconds so far, every thread included (NaN if /proc is unreadable).
pub fn self_cpu_secs() -> f64 {
    proc_cpu_secs("self").unwrap_or(f64::NAN)
}

/// This process's peak resident set size in KiB (`VmHWM`, what `/usr/bin/time -v` reports).
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A plain connection to the Redis under test, for `INFO`, `FLUSHALL` and
/// `SCRIPT LOAD`, and the server's pid when it runs on this machine.
pub struct RedisProbe {
    conn: MultiplexedConnection,
    pid: Option<u32>,
}

impl RedisProbe {
    /// Connects to `url` and finds the server's pid: `JOBS_BENCH_REDIS_PID`,
    /// else the peers' pidfile `/tmp/bench-redis-PORT/redis.pid`, else
    /// `INFO server` `process_id`; kept only when `/proc/PID` exists here.
    pub async fn connect(url: &str, pidfile_port: Option<u16>) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL {url}: {e}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot connect to Redis at {url}: {e}"))?;
        let mut probe = Self { conn, pid: None };
        probe.pid = probe.find_pid(pidfile_port).await;
        Ok(probe)
    }

    async fn find_pid(&mut self, pidfile_port: Option<u16>) -> Option<u32> {
        let local = |pid: u32| std::path::Path::new(&format!("/proc/{pid}/stat")).exists().then_some(pid);
        if let Some(pid) = std::env::var("JOBS_BENCH_REDIS_PID").ok().and_then(|p| p.trim().parse().ok()) {
            return local(pid);
        }
        let from_info = match self.info_field("server", "process_id").await {
            Ok(pid) => pid.parse().ok().and_then(local),
            Err(_) => None,
        };
        let from_file = pidfile_port
            .and_then(|port| std::fs::read_to_string(format!("/tmp/bench-redis-{port}/redis.pid")).ok())
            .and_then(|text| text.trim().parse().ok())
            .and_then(local);
        match (from_file, from_info) {
            (Some(file), Some(info)) if file != info => {
                eprintln!("jobs-bench: the pidfile says redis pid {file}, INFO says {info}; using {info}");
                Some(info)
            }
            (file, info) => file.or(info),
        }
    }

    /// The server's pid, when it runs on this machine.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Runs a command and returns its reply as `T`.
    pub async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T> {
        Ok(cmd.query_async(&mut self.conn).await?)
    }

    /// One field of an `INFO` section, as text.
    pub async fn info_field(&mut self, section: &str, field: &str) -> Result<String> {
        let info: String = self.query(redis::cmd("INFO").arg(section)).await?;
        let prefix = format!("{field}:");
        match info.lines().find_map(|line| line.strip_prefix(prefix.as_str())) {
            Some(value) => Ok(value.trim().to_owned()),
            None => bail!("INFO {section} has no field {field}"),
        }
    }

    /// `INFO memory` `used_memory`, bytes.
    pub async fn used_memory(&mut self) -> Result<u64> {
        Ok(self.info_field("memory", "used_memory").await?.parse()?)
    }

    /// redis-server's CPU seconds so far: `/proc/PID/stat` as the peers read
    /// it, or `INFO cpu` (`used_cpu_sys + used_cpu_user`) when not local.
    pub async fn cpu_secs(&mut self) -> Result<f64> {
        if let Some(secs) = self.pid.and_then(|pid| proc_cpu_secs(&pid.to_string())) {
            return Ok(secs);
        }
        let sys: f64 = self.info_field("cpu", "used_cpu_sys").await?.parse()?;
        let user: f64 = self.info_field("cpu", "used_cpu_user").await?.parse()?;
        Ok(sys + user)
    }

    /// Empties the server (scripts stay loaded).
    pub async fn flushall(&mut self) -> Result<()> {
        self.query::<()>(&redis::cmd("FLUSHALL")).await
    }

    /// Loads a Lua script, returns its SHA1.
    pub async fn script_load(&mut self, body: &str) -> Result<String> {
        self.query(redis::cmd("SCRIPT").arg("LOAD").arg(body)).await
    }
}

/// Wall time and CPU (this process and redis-server) across a measured phase.
pub struct Probe {
    pub t0: Instant,
    redis0: f64,
    self0: f64,
}

/// What a [`Probe`] measured.
pub struct Usage {
    pub secs: f64,
    pub redis_cpu_s: f64,
    pub self_cpu_s: f64,
}

impl Probe {
    /// Reads both CPU counters, then starts the clock.
    pub async fn start(redis: &mut RedisProbe) -> Result<Self> {
        let redis0 = redis.cpu_secs().await?;
        let self0 = self_cpu_secs();
        Ok(Self { t0: Instant::now(), redis0, self0 })
    }

    /// The phase ended at `t_end`; reads the CPU counters again.
    pub async fn stop(&self, redis: &mut RedisProbe, t_end: Instant) -> Result<Usage> {
        let self_cpu_s = self_cpu_secs() - self.self0;
        let redis_cpu_s = redis.cpu_secs().await? - self.redis0;
        Ok(Usage { secs: (t_end - self.t0).as_secs_f64(), redis_cpu_s, self_cpu_s })
    }
}

impl Usage {
    /// The common RESULT fields for `n` jobs; `own` names this process's CPU
    /// (`client` for producers, `worker` for workers).
    pub fn fields(&self, n: u64, own: &str) -> Value {
        let pct = |cpu: f64| if self.secs > 0.0 { 100.0 * cpu / self.secs } else { f64::NAN };
        json!({
            "n": n,
            "secs": self.secs,
            "wall_s": self.secs,
            "jobs_per_s": n as f64 / self.secs,
            "redis_cpu_s": self.redis_cpu_s,
            "redis_cpu_pct": pct(self.redis_cpu_s),
            "redis_cpu_us_per_job": 1e6 * self.redis_cpu_s / n as f64,
            format!("{own}_cpu_s"): self.self_cpu_s,
            format!("{own}_cpu_pct"): pct(self.self_cpu_s),
        })
    }
}
