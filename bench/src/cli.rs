//! The command line: the peers' protocol (`enqueue`, `drain`, `latency`), the
//! whole suite (`all`), and the hidden child-process commands.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{Result, scenarios, suite};

/// Benchmark of `jobs` on Redis.
///
/// `enqueue`, `drain` and `latency` speak the protocol of ../shared/peers
/// (one `RESULT {json}` line each) against the Redis at
/// redis://127.0.0.1:$PORT (default 6393). `all` starts a private
/// redis-server and runs every scenario.
#[derive(Parser, Debug)]
#[command(name = "jobs-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Enqueue N no-op jobs (env CHUNK=1000 jobs per bulk call, INFLIGHT=50 concurrent adds).
    Enqueue {
        /// bulk: one `enqueue_many` per chunk; single: INFLIGHT adds outstanding; single-seq: one at a time
        /// (the loop in `block_on`, as the peers' harness runs it); single-seq-task: one at a time from a
        /// spawned task, as a web handler enqueues.
        mode: EnqueueMode,
        #[arg(default_value_t = 100_000)]
        n: u64,
    },
    /// Drain what is queued (or N=100000 jobs enqueued first, outside the timing) with one worker.
    Drain {
        #[arg(default_value_t = 50)]
        concurrency: usize,
    },
    /// Idle-worker latency: a worker child process, N jobs added at RATE/s, each carrying its enqueue time.
    Latency {
        #[arg(default_value_t = 2000)]
        n: usize,
        #[arg(default_value_t = 500.0)]
        rate: f64,
        #[arg(default_value_t = 50)]
        concurrency: usize,
    },
    /// The floor under `latency`: N values at RATE/s, `RPUSH`ed by a plain blocking client
    /// and taken by another in `BLPOP`, each carrying its send time (no job system).
    LatencyFloor {
        #[arg(default_value_t = 2000)]
        n: usize,
        #[arg(default_value_t = 500.0)]
        rate: f64,
    },
    /// Every scenario on a private redis-server, repeated; a table at the end.
    All(AllArgs),
    /// (child) The worker of `latency`: prints READY, then LAT {json} after N jobs.
    #[command(hide = true)]
    LatencyWorker { n: usize, concurrency: usize },
    /// (child) One of several worker processes draining one backlog: READY, GO, STOP, PART {json}.
    #[command(hide = true)]
    DrainPart { concurrency: usize },
    /// (child) The worker of the priority scenario.
    #[command(hide = true)]
    PriorityWorker { order: Order, flood: u64, concurrency: usize },
    /// (child) A loopback TCP proxy adding DELAY_MS each way; prints READY PORT, stops at end of stdin.
    #[command(hide = true)]
    Proxy { upstream: std::net::SocketAddr, delay_ms: f64 },
}

#[derive(Args, Debug, Clone)]
pub struct AllArgs {
    /// Jobs per scenario.
    #[arg(long, default_value_t = 100_000)]
    pub n: u64,
    /// Repetitions of every scenario (the table shows median, min and max).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Worker concurrency of the drain, latency, multi-process, priority and proxy scenarios.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// CI mode: N=2000, one repetition, no redis-benchmark; fails unless every scenario
    /// completed and counted every job. Never checks a speed.
    #[arg(long)]
    pub quick: bool,
    /// Also run enqueue, drain and latency through a loopback proxy adding this many
    /// milliseconds each way (0: skip).
    #[arg(long, default_value_t = 1.0)]
    pub proxy_delay_ms: f64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueMode {
    Bulk,
    Single,
    SingleSeq,
    SingleSeqTask,
}

/// How the priority worker orders its queues.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// critical:10, bulk:1.
    Weighted,
    /// critical before bulk, always.
    Strict,
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Enqueue { mode, n } => scenarios::enqueue(mode, n).await,
        Command::Drain { concurrency } => scenarios::drain(concurrency).await,
        Command::Latency { n, rate, concurrency } => scenarios::latency(n, rate, concurrency).await,
        Command::LatencyFloor { n, rate } => scenarios::latency_floor(n, rate).await,
        Command::All(args) => suite::run(args).await,
        Command::LatencyWorker { n, concurrency } => scenarios::latency_worker(n, concurrency).await,
        Command::DrainPart { concurrency } => scenarios::drain_part(concurrency).await,
        Command::PriorityWorker { order, flood, concurrency } => {
            scenarios::priority_worker(order, flood, concurrency).await
        }
        Command::Proxy { upstream, delay_ms } => scenarios::proxy(upstream, delay_ms).await,
    }
}
