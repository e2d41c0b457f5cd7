//! The registered-worker command line. A worker binary is three lines:
//!
//! ```no_run
//! // use my_app_jobs as _;   // link the crate that holds your #[job]s
//! fn main() -> std::process::ExitCode {
//!     jobs_redis::cli::main()
//! }
//! ```
//!
//! It runs every job linked into the binary: `work` serves queues, `list`
//! shows the registered jobs, `stats` shows what waits in Redis, `schema`
//! and `check` guard signature changes with a lock file, `versions` counts
//! waiting payloads by job version, and `enqueue` adds a job from the shell.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jobs_core::admin::{self, JobEntry, Selection};
use jobs_core::schema::Schema;
use jobs_core::{Backend, Client, JobId, JobSet, Registry, RetryPolicy, Worker, WorkerError};

use crate::RedisBackend;

/// Runs and inspects the background jobs linked into this binary.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Runs and inspects the background jobs linked into this binary",
    after_help = "Examples:\n  worker work                                  serve every queue a registered job names\n  worker work -q critical:10 -q default:3 -q bulk:1 --concurrency 20\n  worker work -q critical -q bulk --strict    bulk runs only when critical is empty\n  worker list                                  what this binary can run\n  worker stats                                 what waits in Redis\n  worker schema --write jobs.lock.json         record the job signatures (commit the file)\n  worker check jobs.lock.json                  exit 1 if a change breaks payloads still queued\n  worker versions                              payloads waiting, by job and version\n  worker dead list                             the latest dead jobs with their errors\n  worker dead retry --job send_email           give every dead send_email one more run\n  worker retry now 3f9c2a7d41e0b6c58a9e12f4      run a failed job now, not at its next retry\n  worker enqueue send_welcome_email '{\"user_id\": 42}'"
)]
pub struct Cli {
    /// Redis URL, e.g. redis://:password@host:6379/0
    #[arg(long, global = true, env = "JOBS_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Key namespace (the hash tag of every key)
    #[arg(long, global = true, env = "JOBS_NAMESPACE", default_value = "jobs")]
    pub namespace: String,
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs until SIGTERM or SIGINT, then shut down gracefully (a second signal ends the grace period, a third exits)
    Work(WorkArgs),
    /// List the registered jobs: name, aliases, version, queue, options (retries, timeout, unique_for, keep_result), parameters
    List,
    /// Show how many jobs wait in each queue and set
    Stats,
    /// Print the signature of every registered job as JSON (the lock file)
    Schema(SchemaArgs),
    /// Compare the registered jobs with a lock file; exit 1 on a breaking change, 2 when the lock file cannot be read
    Check(CheckArgs),
    /// Count the payloads waiting in Redis by job name and version
    Versions,
    /// Enqueue a registered job from the shell, its arguments as JSON
    Enqueue(EnqueueArgs),
    /// Move every scheduled and retry job to its queue now, without waiting for its time
    Promote,
    /// The dead set: jobs out of attempts or failed for good; list, retry or delete them
    #[command(subcommand)]
    Dead(SetAction),
    /// The retry set: failed jobs waiting for their next attempt; list, run now or delete them
    #[command(subcommand)]
    Retry(SetAction),
    /// The scheduled set: jobs enqueued to run later; list, run now or delete them
    #[command(subcommand)]
    Scheduled(SetAction),
}

/// What `dead`, `retry` and `scheduled` do with their set.
#[derive(Debug, Subcommand)]
pub enum SetAction {
    /// List the jobs with their attempts and last error: the dead that died last first, scheduled and retry jobs soonest due first
    List(ListArgs),
    /// Move jobs to their queue to run now (a dead job gets one more attempt)
    Retry(SelectArgs),
    // A subcommand, not an alias of `retry`: its help then says `now`, not `retry retry`.
    /// The same as `retry` (`worker retry now JID` reads as it does)
    Now(SelectArgs),
    /// Delete jobs for good
    Delete(SelectArgs),
}

/// Options of `list` under `dead`, `retry` and `scheduled`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show at most this many jobs
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Only jobs of this name
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Print each job's whole stored payload, one JSON line each, instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Which jobs `retry` and `delete` take: ids, every job of a name, or all.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["jids", "all", "job"]))]
pub struct SelectArgs {
    /// The ids of the jobs (the `jid` column of `list`; a payload too broken to
    /// show one, listed as `?`, is taken by `--all` only)
    #[arg(value_name = "JID", conflicts_with_all = ["all", "job"])]
    pub jids: Vec<String>,
    /// Every job of the set
    #[arg(long, conflicts_with = "job")]
    pub all: bool,
    /// Every job of this name
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
}

/// Options of `enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The job's registered name or one of its aliases
    #[arg(value_name = "JOB")]
    pub job: String,
    /// The arguments, a JSON object keyed by parameter name, e.g. '{"user_id": 42}'
    #[arg(value_name = "ARGS", default_value = "{}")]
    pub args: String,
    /// The signature version the arguments follow (default: the registered version)
    #[arg(long)]
    pub version: Option<u32>,
    /// Allow a --version newer than this binary registers (workers of a newer build are deploying)
    #[arg(long)]
    pub newer: bool,
    /// The queue (default: the job's queue)
    #[arg(long)]
    pub queue: Option<String>,
}

/// Options of `schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Write the schema to this file (e.g. jobs.lock.json) instead of printing it
    #[arg(long, value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,
}

/// Options of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The lock file written earlier by `schema --write`
    #[arg(value_name = "LOCKFILE")]
    pub lockfile: std::path::PathBuf,
}

/// Options of `work`.
#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Queue to serve, as name or name:weight (repeatable; default: every queue a registered job names); a name with a colon takes its weight, e.g. mail:high:1
    #[arg(short, long = "queue", value_name = "NAME[:WEIGHT]", value_parser = parse_queue)]
    pub queues: Vec<(String, u32)>,
    /// Serve queues in the order given with -q (required): a queue runs only when those before it are empty
    #[arg(long)]
    pub strict: bool,
    /// Jobs run at once
    #[arg(short, long, default_value_t = 10)]
    pub concurrency: usize,
    /// Jobs leased ahead of free slots, so a freed slot starts one without a round trip
    /// (for short jobs; a held job waits behind running ones)
    #[arg(long, default_value_t = 0, value_name = "JOBS")]
    pub fetch_ahead: usize,
    /// Cap on the jobs of one queue running at once, as name=count (repeatable)
    #[arg(long = "queue-limit", value_name = "NAME=COUNT", value_parser = parse_limit)]
    pub queue_limits: Vec<(String, usize)>,
    /// Seconds running jobs get to finish after SIGTERM before they are put back (a second SIGTERM or Ctrl-C ends it)
    #[arg(long, default_value_t = 25)]
    pub grace: u64,
    /// Seconds a job's lease lasts without a heartbeat (a dead worker's jobs return after it)
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease: u64,
    /// Seconds before the first retry of a failed job; each later retry waits twice as long
    #[arg(long, default_value = "15", value_name = "SECS", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub retry_backoff: Duration,
    /// Retries of a failed job, for jobs that set no `retries` of their own
    #[arg(long, default_value_t = 20)]
    pub retries: u32,
    /// Seconds a payload newer than this worker's code waits before it is offered again (rolling deploys)
    #[arg(long, default_value = "10", value_name = "SECS", allow_negative_numbers = true, value_parser = parse_seconds)]
    pub defer_delay: Duration,
    /// Run the jobs that are ready now (and those of killed workers whose lease ran out, as a retry), print what happened, and exit when none is left (exit 0) or on SIGTERM/SIGINT (exit 1, unfinished jobs put back) (scripts, CI, cron)
    #[arg(long)]
    pub drain: bool,
    /// Write lifecycle events (started, succeeded, failed, …) for `Client::events()` readers
    #[arg(long)]
    pub events: bool,
}

/// `name` or `name:weight`; the weight follows the last colon, so a queue
/// whose name holds one is written with its weight (`mail:high:1`).
fn parse_queue(text: &str) -> Result<(String, u32), String> {
    let (name, weight) = match text.rsplit_once(':') {
        Some((name, weight)) => {
            let weight = weight.parse::<u32>().map_err(|_| {
                format!(
                    "weight `{weight}` is not a whole number (a queue name with a colon takes its weight: `{text}:1`)"
                )
            })?;
            (name, weight)
        }
        None => (text, 1),
    };
    if name.is_empty() {
        return Err("the queue name is empty".into());
    }
    if weight == 0 {
        return Err("weights start at 1".into());
    }
    Ok((name.to_owned(), weight))
}

/// A number of seconds, whole or not, that is not negative: `15`, `0.05`.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("`{text}` is not a number of seconds (0 or more, e.g. 15 or 0.5)"))
}

fn parse_limit(text: &str) -> Result<(String, usize), String> {
    let (name, count) = text.split_once('=').ok_or_else(|| format!("write NAME=COUNT, e.g. bulk=5, not `{text}`"))?;
    let count = count.parse::<usize>().map_err(|_| format!("count `{count}` is not a whole number"))?;
    if name.is_empty() || count == 0 {
        return Err("write a queue name and a count of at least 1, e.g. bulk=5".into());
    }
    Ok((name.to_owned(), count))
}

/// Parses the command line, runs it, and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // `check` tells CI a breaking change (1) from a lock file it cannot read (2).
    if let Command::Check(args) = &cli.command {
        return match check_lock(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(CheckFailure::Breaking) => ExitCode::FAILURE,
            Err(CheckFailure::Unreadable(message)) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: piped into a file or a log collector, the lines stay plain.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours).try_init();
}

/// Runs a parsed command line. An error with an empty message was reported
/// on stdout already (`check` finding a breaking change).
pub async fn run(cli: Cli) -> Result<(), String> {
    let Cli { redis_url, namespace, command } = cli;
    let builder = || RedisBackend::builder(redis_url.clone()).namespace(namespace.clone());
    let connect = || async { builder().connect().await.map_err(|e| e.to_string()) };
    match command {
        Command::List => {
            // No job linked is the linking mistake: an error, as for every other command.
            print!("{}", list(&registered()?));
            Ok(())
        }
        Command::Work(args) => {
            let registry = registered()?;
            // A one-off `--drain` fails at once; a worker waits for Redis (None: stopped meanwhile).
            let connected = if args.drain { Some(connect().await?) } else { wait_for_redis(builder).await? };
            let Some(backend) = connected else { return Ok(()) };
            work(backend, registry, args).await
        }
        Command::Stats => stats(&connect().await?).await,
        Command::Schema(args) => schema(args),
        Command::Check(args) => check(args),
        Command::Versions => versions(&connect().await?).await,
        Command::Promote => {
            let moved = connect().await?.promote_due(Some(u64::MAX)).await.map_err(|e| e.to_string())?;
            let jobs = if moved == 1 { "job" } else { "jobs" };
            let to = if moved == 1 { "its queue" } else { "their queues" };
            println!("moved {moved} {jobs} from the scheduled and retry sets to {to}");
            Ok(())
        }
        Command::Enqueue(args) => {
            let registry = registered()?;
            enqueue(connect().await?, &registry, args).await
        }
        Command::Dead(action) => manage(&connect().await?, JobSet::Dead, action).await,
        Command::Retry(action) => manage(&connect().await?, JobSet::Retry, action).await,
        Command::Scheduled(action) => manage(&connect().await?, JobSet::Scheduled, action).await,
    }
}

fn registered() -> Result<Registry, String> {
    let registry = Registry::linked().map_err(|e| e.to_string())?;
    if registry.is_empty() {
        return Err(WorkerError::NoJobsRegistered.to_string());
    }
    Ok(registry)
}

/// Connects, waiting while Redis cannot be reached: a worker that starts
/// before Redis (a deploy, a reboot) waits for it, as it rides out an outage
/// later; a wrong URL or password still fails at once. `None` when SIGTERM or
/// SIGINT came first (one listener for the whole wait: a signal that lands
/// mid-attempt is not lost).
async fn wait_for_redis(builder: impl Fn() -> crate::RedisConfig) -> Result<Option<RedisBackend>, String> {
    let stop = jobs_core::shutdown_signal();
    tokio::pin!(stop);
    let mut delay = Duration::from_secs(1);
    loop {
        let connected = tokio::select! {
            () = &mut stop => return Ok(None),
            connected = builder().connect() => connected,
        };
        match connected {
            Ok(backend) => return Ok(Some(backend)),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, retry_in = ?delay, "cannot reach Redis yet; waiting for it");
                tokio::select! {
                    () = &mut stop => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

async fn work(backend: RedisBackend, registry: Registry, args: WorkArgs) -> Result<(), String> {
    let mut builder = Worker::builder(backend)
        .registry(registry)
        .concurrency(args.concurrency)
        .fetch_ahead(args.fetch_ahead)
        .grace_period(Duration::from_secs(args.grace))
        .lease(Duration::from_secs(args.lease))
        .retry_policy(RetryPolicy { retries: args.retries, base: args.retry_backoff, ..RetryPolicy::default() })
        .defer_delay(args.defer_delay);
    for (queue, weight) in args.queues {
        builder = builder.queue(queue, weight);
    }
    if args.strict {
        builder = builder.strict();
    }
    for (queue, count) in args.queue_limits {
        builder = builder.queue_limit(queue, count);
    }
    builder = builder.events(args.events);
    let drain = args.drain;
    let worker = builder.build().map_err(|e| e.to_string())?;
    // A first SIGTERM or SIGINT stops the worker gracefully; a second one ends the grace
    // period (what still runs goes back to its queue); a third exits at once.
    let signalled = std::sync::atomic::AtomicBool::new(false);
    let (first_signal, stop) = tokio::sync::oneshot::channel::<()>();
    let mut incoming = Signals::listen();
    // Counted when the run takes it: a signal during the wind-up of a drain that emptied
    // the queues does not make it a drain cut short.
    let stop = async {
        if stop.await.is_ok() {
            signalled.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let signals = async {
        incoming.next().await;
        let _ = first_signal.send(());
        incoming.next().await;
        tracing::warn!("second signal: the grace period ends now; running jobs go back to their queues");
        worker.end_grace();
        incoming.next().await;
        tracing::error!("third signal: exiting now; the jobs still leased return when their leases expire");
        exit_at_once()
    };
    let run = async { if drain { worker.drain_until(stop).await } else { worker.run_until(stop).await } };
    let report = tokio::select! {
        report = run => report.map_err(|e| e.to_string())?,
        never = signals => match never {},
    };
    if drain {
        if signalled.load(std::sync::atomic::Ordering::Relaxed) {
            // Exit 1: a script can tell a drain cut short from one that emptied the queues.
            println!("drain stopped by a signal: {report}");
            return Err(
                "stopped by SIGTERM/SIGINT before the queues were empty; unfinished jobs are back in their queues"
                    .into(),
            );
        }
        println!("drained: {report}");
        return Ok(());
    }
    tracing::info!(
        succeeded = report.succeeded,
        retried = report.retried,
        dead = report.dead,
        put_back = report.put_back,
        deferred = report.deferred,
        rescued = report.rescued,
        cancelled = report.cancelled,
        stale = report.stale,
        "worker exited: {report}"
    );
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), listened to from the moment it is made: one
/// that comes while the last is being handled is not missed.
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(term), Ok(int)) => Signals { streams: Some((term, int)) },
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                    Signals { streams: None }
                }
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.streams {
            tokio::select! {
                Some(()) = term.recv() => tracing::info!("SIGTERM received"),
                Some(()) = int.recv() => tracing::info!("SIGINT received"),
                // Both streams ended (they do not, while the runtime runs): no signal comes.
                else => std::future::pending().await,
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Exits the process with 130, the code of a shell's Ctrl-C.
fn exit_at_once() -> std::convert::Infallible {
    std::process::exit(130)
}

/// The `list` table: one block per registered job.
pub fn list(registry: &Registry) -> String {
    let mut out = String::new();
    if registry.is_empty() {
        out.push_str(
            "no job is registered in this binary (link the crate that holds your #[job]s: `use my_app_jobs as _;`)\n",
        );
        return out;
    }
    for job in registry.jobs() {
        out.push_str(&format!("{}  v{}  queue={}", job.name, job.version, job.queue));
        if !job.aliases.is_empty() {
            out.push_str(&format!("  aliases={}", job.aliases.join(",")));
        }
        let options = &job.options;
        if let Some(retries) = options.retries {
            out.push_str(&format!("  retries={retries}"));
        }
        for (name, duration) in
            [("timeout", options.timeout), ("unique_for", options.unique_for), ("keep_result", options.keep_result)]
        {
            if let Some(duration) = duration {
                out.push_str(&format!("  {name}={duration:?}"));
            }
        }
        out.push_str(&format!("  ({})\n", job.function));
        for param in job.params {
            out.push_str(&format!("    {}: {}", param.name, param.ty));
            // The default fills a missing value, but from `since` on payloads must carry it.
            match (param.default.is_some(), param.explicit_since) {
                (true, true) if param.since <= 1 => out.push_str("  [required: since v1, the default never applies]"),
                (true, true) => out.push_str(&format!(
                    "  [default for payloads before v{since}; required from v{since}]",
                    since = param.since
                )),
                (true, false) => out.push_str("  [default when missing]"),
                (false, true) => out.push_str(&format!("  [since v{}]", param.since)),
                (false, false) => {}
            }
            if !param.aliases.is_empty() {
                out.push_str(&format!("  [alias {}]", param.aliases.join(",")));
            }
            out.push('\n');
        }
    }
    out
}

async fn enqueue(backend: RedisBackend, registry: &Registry, args: EnqueueArgs) -> Result<(), String> {
    let job = registry.get(&args.job).ok_or_else(|| {
        let names: Vec<&str> = registry.jobs().iter().map(|job| job.name).collect();
        format!("no job named `{}` is registered in this binary; it knows: {}", args.job, names.join(", "))
    })?;
    let values = parse_arguments(&args.args)?;
    let version = args.version.unwrap_or(job.version);
    // Workers of this build would put such a payload back for a newer one, every
    // --defer-delay, for good: most likely a typo.
    if version > job.version && !args.newer {
        return Err(format!(
            "this binary registers `{}` at v{}: a v{version} payload runs only on a worker built with v{version} or newer, and workers of this build put it back for one; nothing was enqueued. Use the `enqueue` of such a build, or pass --newer if its workers are deploying",
            job.name, job.version
        ));
    }
    let queue = args.queue.unwrap_or_else(|| job.queue.to_owned());
    // Read as this binary's workers will read them (a typo fails here, not in the dead
    // set), and enqueued as `perform_later` would: defaults filled, `unique_for` held.
    let id = Client::new(backend).enqueue_registered(job, version, &queue, values).await.map_err(|e| match e {
        jobs_core::EnqueueError::Arg(e) => {
            let older = if version > 1 { " (or --version N to write an older version's arguments)" } else { "" };
            format!("{e}; nothing was enqueued. Fix the arguments{older}; `worker list` shows each job's parameters")
        }
        other => other.to_string(),
    })?;
    // Enqueued at the registered version, or as written when that is newer.
    println!("enqueued {} v{} on `{queue}`: {id}", job.name, version.max(job.version));
    if version > job.version {
        eprintln!(
            "note: this binary registers `{}` at v{}: the job runs on a worker built with v{version} or newer; workers of this build put it back for one (every --defer-delay)",
            job.name, job.version
        );
    }
    Ok(())
}

/// The `enqueue` arguments as JSON, refused when an object names a key twice:
/// `serde_json` would keep the last value without a word. The keys are
/// checked in a pass of their own, so the values read exactly as
/// `serde_json::Value` reads them (whatever its features).
fn parse_arguments(text: &str) -> Result<serde_json::Value, String> {
    let not_json = |e: serde_json::Error| {
        format!("the arguments are not JSON ({e}); write an object such as '{{\"user_id\": 42}}'")
    };
    serde_json::from_str::<KeysOnce>(text).map_err(not_json)?;
    serde_json::from_str(text).map_err(not_json)
}

/// Reads JSON only to check that each object names each key once.
struct KeysOnce;

impl<'de> serde::Deserialize<'de> for KeysOnce {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeysOnceVisitor)
    }
}

struct KeysOnceVisitor;

impl<'de> serde::de::Visitor<'de> for KeysOnceVisitor {
    type Value = KeysOnce;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<KeysOnce, E> {
        Ok(KeysOnce)
    }

    fn visit_i64<E>(self, _: i64) -> Result<KeysOnce, E> {
        Ok(KeysOnce)
    }

    fn visit_u64<E>(self, _: u64) -> Result<KeysOnce, E> {
        Ok(KeysOnce)
    }

    fn visit_f64<E>(self, _: f64) -> Result<KeysOnce, E> {
        Ok(KeysOnce)
    }

    fn visit_str<E>(self, _: &str) -> Result<KeysOnce, E> {
        Ok(KeysOnce)
    }

    fn visit_unit<E>(self) -> Result<KeysOnce, E> {
        Ok(KeysOnce)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeysOnce, A::Error> {
        while seq.next_element::<KeysOnce>()?.is_some() {}
        Ok(KeysOnce)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeysOnce, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key `{key}` is given twice")));
            }
            map.next_value::<KeysOnce>()?;
        }
        Ok(KeysOnce)
    }
}

fn schema(args: SchemaArgs) -> Result<(), String> {
    let schema = Schema::of(&registered()?);
    match args.write {
        Some(path) => {
            schema.write(&path).map_err(|e| e.to_string())?;
            let count = schema.jobs.len();
            let jobs = if count == 1 { "job" } else { "jobs" };
            println!("wrote the signatures of {count} {jobs} to {}", path.display());
        }
        None => print!("{}", schema.to_json()),
    }
    Ok(())
}

/// Why `check` failed: a breaking change (the report says which), or no
/// lock file (or no job) to compare.
enum CheckFailure {
    Breaking,
    Unreadable(String),
}

fn check(args: CheckArgs) -> Result<(), String> {
    match check_lock(&args) {
        Ok(()) => Ok(()),
        // The report said why; an empty message exits 1 without repeating it.
        Err(CheckFailure::Breaking) => Err(String::new()),
        Err(CheckFailure::Unreadable(message)) => Err(message),
    }
}

fn check_lock(args: &CheckArgs) -> Result<(), CheckFailure> {
    let lock = Schema::read(&args.lockfile).map_err(|e| CheckFailure::Unreadable(e.to_string()))?;
    let registry = registered().map_err(CheckFailure::Unreadable)?;
    let report = jobs_core::schema::check(&lock, &Schema::of(&registry));
    print!("{}", report.render(&args.lockfile.display().to_string()));
    if report.is_breaking() { Err(CheckFailure::Breaking) } else { Ok(()) }
}

/// Prints the census of payloads by job name and version, read in bounded batches.
async fn versions(backend: &RedisBackend) -> Result<(), String> {
    let census = jobs_core::census(backend).await.map_err(|e| e.to_string())?;
    print!("{census}");
    Ok(())
}

/// `dead`, `retry` and `scheduled`: list, requeue or delete jobs of `set`.
async fn manage(backend: &RedisBackend, set: JobSet, action: SetAction) -> Result<(), String> {
    let jobs = |n: usize| if n == 1 { "job" } else { "jobs" };
    match action {
        SetAction::List(args) => {
            let total = backend.count(&set).await.map_err(|e| e.to_string())?;
            // The dead that died last come first; scheduled jobs and retries, the soonest due.
            let newest_first = set == JobSet::Dead;
            let which = args.job.as_deref().map(job_selection);
            let entries = match (&which, newest_first) {
                (Some(which), true) => admin::newest_selected(backend, &set, which, args.limit).await,
                (Some(which), false) => admin::first_selected(backend, &set, which, args.limit).await,
                (None, true) => admin::newest(backend, &set, args.limit).await,
                (None, false) => admin::entries(backend, &set, 0, args.limit).await,
            }
            .map_err(|e| e.to_string())?;
            if args.json {
                for entry in &entries {
                    println!("{}", entry.payload);
                }
            } else if let Some(name) = args.job.as_deref().filter(|_| entries.is_empty() && total > 0) {
                // The set holds jobs, just none of this name: say so, not "empty".
                println!("no `{name}` job is in the {set} ({total} other {})", jobs(total));
                return known_name(Some(name), 0, &set);
            } else {
                print!("{}", render_entries(&set, &entries, jobs_core::now_millis()));
                let more = match &args.job {
                    Some(_) => entries.len() == args.limit && total > args.limit,
                    None => entries.len() < total,
                };
                if more {
                    println!("({} shown of {total} {} in the {set}; --limit N shows more)", entries.len(), jobs(total));
                }
            }
            Ok(())
        }
        SetAction::Retry(args) | SetAction::Now(args) => {
            let (named, job) = (distinct(&args.jids), args.job.clone());
            let moved = admin::requeue(backend, &set, &selection(args)).await.map_err(|e| e.to_string())?;
            let to = if moved == 1 { "its queue" } else { "their queues" };
            println!("moved {moved} {} from the {set} to {to}", jobs(moved));
            all_found(named, moved, &set)?;
            known_name(job.as_deref(), moved, &set)
        }
        SetAction::Delete(args) => {
            let (named, job) = (distinct(&args.jids), args.job.clone());
            let deleted = admin::remove(backend, &set, &selection(args)).await.map_err(|e| e.to_string())?;
            println!("deleted {deleted} {} from the {set}", jobs(deleted));
            all_found(named, deleted, &set)?;
            known_name(job.as_deref(), deleted, &set)
        }
    }
}

/// How many different ids were named.
fn distinct(jids: &[String]) -> usize {
    jids.iter().collect::<std::collections::HashSet<_>>().len()
}

/// Fails when ids were named and some were not found (a typo, or the job moved on).
fn all_found(named: usize, done: usize, set: &JobSet) -> Result<(), String> {
    if done < named {
        let missing = named - done;
        let what = if named == 1 {
            "no job with that id is".to_owned()
        } else {
            format!("{missing} of the {named} job ids are not")
        };
        return Err(format!("{what} in the {set} (`list` shows what is)"));
    }
    Ok(())
}

/// Fails when `--job` matched nothing and names no job registered in this
/// binary either: most likely a typo. A registered name with nothing to act
/// on is no error.
fn known_name(job: Option<&str>, done: usize, set: &JobSet) -> Result<(), String> {
    let Some(name) = job.filter(|_| done == 0) else { return Ok(()) };
    match Registry::linked() {
        Ok(registry) if !registry.is_empty() && registry.get(name).is_none() => Err(format!(
            "no `{name}` job is in the {set}, and no job of that name is registered in this binary: a typo? (`list` shows the registered names)"
        )),
        _ => Ok(()),
    }
}

/// The jobs `--job name` takes: those of the registered job that answers to
/// `name` under its name or any alias (payloads written before a rename
/// carry the old name), or of that name alone when none is registered.
fn job_selection(name: &str) -> Selection {
    match Registry::linked() {
        Ok(registry) => Selection::job_of(&registry, name),
        Err(_) => Selection::Job(name.to_owned()),
    }
}

fn selection(args: SelectArgs) -> Selection {
    match (args.all, args.job) {
        (_, Some(name)) => job_selection(&name),
        (true, None) => Selection::All,
        (false, None) => Selection::Ids(args.jids.into_iter().map(JobId::from).collect()),
    }
}

/// The table of `list`: id, job and version, queue, attempts, when, last error.
pub fn render_entries(set: &JobSet, entries: &[JobEntry], now: u64) -> String {
    if entries.is_empty() {
        return format!("the {set} is empty\n");
    }
    let when = match set {
        JobSet::Dead => "died",
        _ => "due",
    };
    let mut out = format!("{:<24} {:<28} {:<12} {:>7}  {:<12} {}\n", "jid", "job", "queue", "attempt", when, "error");
    for entry in entries {
        let job = if entry.job.is_empty() { "?".to_owned() } else { format!("{} v{}", entry.job, entry.version) };
        let queue = if entry.queue.is_empty() { "-" } else { &entry.queue };
        let error = entry.error.as_deref().unwrap_or("-").lines().next().unwrap_or("");
        let error: String = if error.chars().count() > 100 {
            error.chars().take(99).chain(['…']).collect()
        } else {
            error.to_owned()
        };
        out.push_str(&format!(
            "{:<24} {:<28} {:<12} {:>7}  {:<12} {}\n",
            if entry.jid.is_empty() { "?" } else { &entry.jid },
            job,
            queue,
            entry.attempt,
            relative(entry.at, now),
            error
        ));
    }
    out
}

/// `at` as a time from `now`, for people: `3m ago`, `in 15s`, `now`.
fn relative(at: u64, now: u64) -> String {
    let (span, past) = if at <= now { (now - at, true) } else { (at - now, false) };
    let secs = span / 1000;
    let amount = match secs {
        0 => return "now".to_owned(),
        1..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    };
    if past { format!("{amount} ago") } else { format!("in {amount}") }
}

async fn stats(backend: &RedisBackend) -> Result<(), String> {
    let queues = jobs_core::census::queues(backend).await.map_err(|e| e.to_string())?;
    println!("{:<24} {:>10}", "queue", "ready");
    for queue in &queues {
        let ready = backend.count(&JobSet::Queue(queue.clone())).await.map_err(|e| e.to_string())?;
        println!("{queue:<24} {ready:>10}");
    }
    for (name, set) in [
        ("in flight", JobSet::InFlight),
        ("scheduled", JobSet::Scheduled),
        ("retry", JobSet::Retry),
        ("dead", JobSet::Dead),
    ] {
        let count = backend.count(&set).await.map_err(|e| e.to_string())?;
        println!("{name:<24} {count:>10}");
    }
    let workers = backend.live_workers().await.map_err(|e| e.to_string())?;
    println!("{:<24} {:>10}", "live workers", workers.len());
    for worker in workers {
        println!("  {worker}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // This crate's test binary links no #[job]: exactly the linking mistake.
    #[tokio::test]
    async fn work_refuses_to_start_when_no_job_is_linked_and_says_how_to_fix_it() {
        let cli = Cli::parse_from(["worker", "work", "--redis-url", "redis://127.0.0.1:1"]);
        let error = run(cli).await.unwrap_err();
        assert!(error.starts_with("no job is registered in this binary"), "{error}");
        assert!(error.contains("`use my_app_jobs as _;`"), "{error}");
    }

    #[tokio::test]
    async fn list_fails_when_no_job_is_linked() {
        let error = run(Cli::parse_from(["worker", "list"])).await.unwrap_err();
        assert!(error.starts_with("no job is registered in this binary"), "{error}");
    }

    #[test]
    fn retry_now_is_retry_under_its_own_name() {
        let cli = Cli::parse_from(["worker", "retry", "now", "3f9c2a7d41e0b6c58a9e12f4"]);
        assert!(
            matches!(&cli.command, Command::Retry(SetAction::Now(args)) if args.jids == ["3f9c2a7d41e0b6c58a9e12f4"]),
            "{:?}",
            cli.command
        );
        let mut command = <Cli as clap::CommandFactory>::command();
        let help = command.try_get_matches_from_mut(["worker", "retry", "now", "--help"]).unwrap_err().to_string();
        assert!(help.contains("Usage: worker retry now "), "{help}");
    }

    #[test]
    fn enqueue_arguments_name_each_key_once() {
        let read =
            parse_arguments(r#"{"user_id": 7, "tags": ["a", {"n": -1.5}], "none": null, "big": 18446744073709551615}"#);
        assert_eq!(
            read,
            Ok(serde_json::json!({"user_id": 7, "tags": ["a", {"n": -1.5}], "none": null, "big": u64::MAX}))
        );
        let twice = parse_arguments(r#"{"user_id": 7, "user_id": 8}"#).unwrap_err();
        assert!(twice.starts_with("the arguments are not JSON (the key `user_id` is given twice"), "{twice}");
        let nested = parse_arguments(r#"{"a": [{"k": 1, "k": 1}]}"#).unwrap_err();
        assert!(nested.contains("the key `k` is given twice"), "{nested}");
        let broken = parse_arguments(r#"{"user_id": }"#).unwrap_err();
        assert!(broken.contains("write an object such as"), "{broken}");
    }

    #[test]
    fn queue_and_limit_flags_parse_or_explain() {
        assert_eq!(parse_queue("critical:10"), Ok(("critical".to_owned(), 10)));
        assert_eq!(parse_queue("bulk"), Ok(("bulk".to_owned(), 1)));
        assert_eq!(parse_queue("bulk:0"), Err("weights start at 1".to_owned()));
        assert_eq!(parse_queue(":3"), Err("the queue name is empty".to_owned()));
        assert_eq!(parse_queue("mail:high:2"), Ok(("mail:high".to_owned(), 2)));
        assert_eq!(parse_seconds("0.05"), Ok(Duration::from_millis(50)));
        for bad in ["-1", "nan", "inf", "soon"] {
            assert!(parse_seconds(bad).unwrap_err().contains("is not a number of seconds"), "{bad}");
        }
        assert_eq!(parse_limit("bulk=5"), Ok(("bulk".to_owned(), 5)));
        assert!(parse_limit("bulk").unwrap_err().contains("NAME=COUNT"));
    }

    #[test]
    fn a_lease_of_zero_seconds_is_refused_at_parse() {
        let error = Cli::try_parse_from(["worker", "work", "--lease", "0"]).unwrap_err();
        assert!(error.to_string().contains("--lease"), "{error}");
        assert!(Cli::try_parse_from(["worker", "work", "--lease", "1"]).is_ok());
    }

    #[test]
    fn times_read_as_spans_from_now() {
        let now = 1_000_000_000;
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(now - 42_000, now), "42s ago");
        assert_eq!(relative(now + 15 * 60_000, now), "in 15m");
        assert_eq!(relative(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(relative(now + 2 * 86_400_000, now), "in 2d");
    }

    #[test]
    fn the_list_table_shows_one_line_per_job_with_the_first_line_of_its_error() {
        let entry = JobEntry {
            jid: "3f9c2a7d41e0b6c58a9e12f4".into(),
            job: "send_email".into(),
            version: 2,
            queue: "mail".into(),
            attempt: 21,
            error: Some(format!("{}\nbacktrace", "x".repeat(150))),
            failed_at: Some(5),
            at: 40_000,
            payload: String::new(),
        };
        let table = render_entries(&JobSet::Dead, &[entry], 100_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].contains("died") && lines[0].ends_with("error"), "{table}");
        assert!(lines[1].starts_with("3f9c2a7d41e0b6c58a9e12f4 send_email v2"), "{table}");
        assert!(lines[1].contains(" mail ") && lines[1].contains(" 21  1m ago "), "{table}");
        assert!(lines[1].ends_with(&format!("{}…", "x".repeat(99))), "{table}");
        assert_eq!(render_entries(&JobSet::Retry, &[], 0), "the retry set is empty\n");
    }

    #[test]
    fn list_shows_each_jobs_options_and_parameters() {
        // Written by hand: a #[job] here would be linked into this test binary,
        // which must link none (see the test above).
        struct Charge;
        impl jobs_core::Job for Charge {
            const NAME: &'static str = "charge";
            const VERSION: u32 = 2;
            const QUEUE: &'static str = "billing";
            const PARAMS: &'static [jobs_core::ParamSpec] = &[
                jobs_core::ParamSpec {
                    name: "order_id",
                    ty: "u64",
                    since: 1,
                    explicit_since: false,
                    aliases: &[],
                    default: None,
                },
                jobs_core::ParamSpec {
                    name: "currency",
                    ty: "String",
                    since: 2,
                    explicit_since: true,
                    aliases: &[],
                    default: Some(|| Ok(serde_json::json!("EUR"))),
                },
                jobs_core::ParamSpec {
                    name: "note",
                    ty: "String",
                    since: 1,
                    explicit_since: false,
                    aliases: &["memo"],
                    default: Some(|| Ok(serde_json::json!(""))),
                },
            ];
            const OPTIONS: jobs_core::JobOptions = jobs_core::JobOptions {
                retries: Some(5),
                timeout: Some(Duration::from_secs(30)),
                unique_for: None,
                keep_result: None,
            };
            type Output = ();
            fn to_args(&self) -> Result<jobs_core::Args, jobs_core::ArgError> {
                Ok(jobs_core::Args::new())
            }
            fn from_args(_: jobs_core::Args) -> Result<Self, jobs_core::ArgError> {
                Ok(Charge)
            }
            fn perform(
                self,
                _: jobs_core::JobContext,
            ) -> jobs_core::BoxFuture<'static, Result<(), jobs_core::JobError>> {
                Box::pin(async { Ok(()) })
            }
        }
        static CHARGE: jobs_core::JobRegistration = jobs_core::JobRegistration::of::<Charge>("billing::charge");
        let registry = Registry::from_jobs(vec![&CHARGE]).unwrap();
        let listed = list(&registry);
        assert_eq!(listed.lines().next(), Some("charge  v2  queue=billing  retries=5  timeout=30s  (billing::charge)"));
        let params: Vec<&str> = listed.lines().skip(1).collect();
        assert_eq!(
            params,
            [
                "    order_id: u64",
                "    currency: String  [default for payloads before v2; required from v2]",
                "    note: String  [default when missing]  [alias memo]"
            ]
        );
    }

    #[test]
    fn list_of_an_empty_registry_says_how_to_link_jobs() {
        let registry = Registry::from_jobs(Vec::new()).unwrap();
        assert!(list(&registry).contains("use my_app_jobs as _;"));
    }
}
