//! [`RedisBackend`]: the production broker, on a `deadpool-redis` pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError, Value};
use deadpool_redis::{Connection, Manager, Pool, PoolConfig, Runtime, Timeouts};
use jobs_core::{
    Backend, BackendError, BoxFuture, DeadLimits, EventBatch, EventRecord, FetchRequest, Fetched, JobId, JobSet, Lease,
    Outcome, OutcomeRecord, PushJob, PushOutcome, StoredJob, WorkerId,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::cluster::{self, Cluster};
use crate::keys::Keys;
use crate::scripts::Scripts;

/// The oldest Redis this backend runs on: `LPOP` with a count needs 6.2.
pub const MIN_REDIS_VERSION: (u32, u32, u32) = (6, 2, 0);

/// How many events the stream keeps by default (about: `MAXLEN ~`).
const DEFAULT_EVENTS_MAX_LEN: usize = 10_000;

/// How many stored outcomes are kept at most by default (the oldest to expire go first).
const DEFAULT_RESULTS_MAX: usize = 100_000;
/// The most client waits blocking on connections of their own at once.
const DEFAULT_MAX_WAITS: usize = 128;

/// How long events are kept by default.
const DEFAULT_EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Connections of a [`detached`](Backend::detached) handle: a worker's heartbeat needs one.
const DETACHED_POOL_SIZE: usize = 2;

/// What [`RedisBackend::open`] needs besides the pool.
struct Settings {
    namespace: String,
    dead_limits: DeadLimits,
    timeout: Duration,
    events_max_len: usize,
    events_max_age: Duration,
    results_max: usize,
    max_waits: usize,
}

/// How often a client wait that found every wait connection busy looks again.
const OVERFLOW_POLL: Duration = Duration::from_millis(100);

/// The longest one blocking command waits; a longer wait is several.
const LONGEST_BLOCK: Duration = Duration::from_secs(60);

/// Single pushes waiting to go out together (see `RedisBackend::push_one_now`).
#[derive(Default)]
struct PendingPushes {
    waiting: Vec<Waiting>,
    /// A caller is gathering a batch: pushes that arrive now join it.
    gathering: bool,
}

/// One waiting push and where its answer goes (the error as message and transience).
struct Waiting {
    queue: String,
    payload: String,
    done: oneshot::Sender<Result<(), (String, bool)>>,
}

/// Armed while a batch gathers, from before its task is spawned: should the
/// gathering end before it takes the batch (its task dropped, run or not, as
/// the runtime shuts down), the pushes waiting are answered (their senders
/// dropped: "may or may not be queued", and they were not sent) and the next
/// push gathers anew, so none waits for ever.
struct Gathering(Option<RedisBackend>);

impl Gathering {
    /// Takes the batch and disarms.
    fn take(&mut self) -> Vec<Waiting> {
        match self.0.take() {
            Some(backend) => {
                let mut pending = backend.pending();
                pending.gathering = false;
                std::mem::take(&mut pending.waiting)
            }
            None => Vec::new(),
        }
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// What [`RedisBackend::server_check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCheck {
    /// The server's version as numbers.
    pub version: (u32, u32, u32),
    /// The version as the server reports it.
    pub version_text: String,
    /// `maxmemory-policy`, when `CONFIG GET` is allowed.
    pub eviction_policy: Option<String>,
    /// Settings that can lose jobs, in words; logged at connect.
    pub warnings: Vec<String>,
}

/// Settings for [`RedisBackend`]; start with [`RedisBackend::builder`].
#[derive(Clone, Debug)]
pub struct RedisConfig {
    url: String,
    namespace: String,
    pool_size: usize,
    dead_limits: DeadLimits,
    timeout: Duration,
    events_max_len: usize,
    events_max_age: Duration,
    results_max: usize,
    max_waits: usize,
}

/// A broker on Redis. Cheap to clone; clones share the pool.
///
/// On a Redis Cluster any node's URL will do: every key of the namespace is
/// in one slot, and the backend talks to the node that owns it, following it
/// when it moves (resharding, failover).
///
/// ```no_run
/// # async fn run() -> Result<(), jobs_core::BackendError> {
/// use jobs_redis::RedisBackend;
///
/// let backend = RedisBackend::connect("redis://127.0.0.1:6379").await?;
/// let client = jobs_core::Client::new(backend.clone());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server that holds the namespace's keys, and how to reach it.
    route: Mutex<Route>,
    /// Set on a Redis Cluster: the nodes to ask when the namespace's node is gone.
    cluster: Mutex<Option<Cluster>>,
    /// One multiplexed connection pipelines every non-blocking command.
    shared: Mutex<Option<MultiplexedConnection>>,
    /// Idle connections for blocking waits (one per waiter while it waits),
    /// kept out of the pool; at most `idle_blocking` stay open between waits.
    blocking: Mutex<Vec<Blocking>>,
    /// The server's ids of the connections blocked in a worker's wait for
    /// jobs now, for [`Backend::end_waits`] to unblock.
    worker_waits: Mutex<Vec<i64>>,
    idle_blocking: usize,
    keys: Keys,
    scripts: Scripts,
    dead_limits: DeadLimits,
    timeout: Duration,
    /// The event stream's approximate cap (`XADD … MAXLEN ~`).
    events_max_len: usize,
    /// How long events are kept (`XTRIM … MINID`, whenever events are written).
    events_max_age: Duration,
    /// The most stored outcomes kept.
    results_max: usize,
    /// Permits for client waits (outcomes, events) that block on a connection of their own.
    waits: Arc<Semaphore>,
    /// Single pushes waiting for the one on its way (see `push_one_now`).
    pending: Mutex<PendingPushes>,
    /// The highest lease number a fetch or rescue gave this backend's workers:
    /// the scripts never give them one at or below it again, even when Redis
    /// lost its counter (restarted without its data, `FLUSHALL`, a failover
    /// to a replica behind). A number given twice to one worker would let the
    /// old lease's writes settle the new lease's jobs: lost jobs.
    lease_floor: Arc<AtomicU64>,
}

/// A connection for blocking commands, with its id on the server (`CLIENT
/// ID`; `None` where the command is not allowed), which `CLIENT UNBLOCK` takes.
struct Blocking {
    conn: MultiplexedConnection,
    id: Option<i64>,
}

/// Where the namespace's keys are served. On a Redis Cluster every key of a
/// namespace is in one slot (its hash tag), so the backend talks to the one
/// node that owns it, and moves when the slot does (resharding, failover).
struct Route {
    pool: Pool,
    /// The server's address without its password, for messages.
    server: String,
    /// How to open connections of its own (not known for a backend on a given
    /// pool, which therefore cannot follow a moved slot).
    dial: Option<Dial>,
    /// Counts the moves: a connection checked out before one is not kept.
    generation: u64,
}

impl RedisConfig {
    /// Uses `namespace` as the prefix (and hash tag) of every key (default `jobs`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The most connections the pool holds (default 16). Blocking waits (for
    /// jobs, outcomes, events) use connections of their own, taken out of the
    /// pool, so they never starve it; up to this many of those stay open
    /// between waits.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections;
        self
    }

    /// Keeps at most this much in the dead set (default 10,000 jobs, 180 days).
    pub fn dead_limits(mut self, limits: DeadLimits) -> Self {
        self.dead_limits = limits;
        self
    }

    /// How long connecting, waiting for a pooled connection and a command's
    /// reply may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Keeps about this many events in the event stream, `{ns}:events`
    /// (default 10,000; trimmed with `XADD … MAXLEN ~`, so a few more may stay).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), jobs_core::BackendError> {
    /// let backend = jobs_redis::RedisBackend::builder("redis://127.0.0.1:6379").events_max_len(50_000).connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn events_max_len(mut self, events: usize) -> Self {
        self.events_max_len = events;
        self
    }

    /// Keeps events for `age` (default 24 h): whenever events are written,
    /// older ones are trimmed (`XTRIM … MINID`).
    pub fn events_max_age(mut self, age: Duration) -> Self {
        self.events_max_age = age;
        self
    }

    /// Keeps at most this many stored job outcomes (default 100,000): beyond
    /// it, the ones closest to expiring are dropped first. Every outcome also
    /// expires after its job's `keep_result`.
    pub fn results_max(mut self, results: usize) -> Self {
        self.results_max = results;
        self
    }

    /// The most client waits ([`JobHandle::wait`](jobs_core::JobHandle::wait),
    /// [`Client::events`](jobs_core::Client::events) streams) that block on a
    /// connection of their own at once (default 128). A wait beyond it looks
    /// for its outcome or events every 100 ms on the shared connection
    /// instead, until a blocking connection frees up, so a burst of requests
    /// that each wait for a job never opens a connection apiece. A worker's
    /// own wait for jobs does not count.
    pub fn max_waits(mut self, waits: usize) -> Self {
        self.max_waits = waits;
        self
    }

    /// Connects, checks the server (version, eviction policy) and loads the scripts.
    pub async fn connect(self) -> Result<RedisBackend, BackendError> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let invalid =
            |error: RedisError| BackendError::permanent(format!("invalid Redis URL `{}`: {error}", redact(&self.url)));
        // TCP_NODELAY, as Redis sets on its side: a small command is sent at once, never held
        // back (Nagle) until the server acknowledges an earlier one.
        let info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map_err(invalid)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let dial = Dial { info, connection };
        let pool = dial.pool(self.pool_size, self.timeout).map_err(BackendError::permanent)?;
        let settings = Settings {
            namespace: self.namespace,
            dead_limits: self.dead_limits,
            timeout: self.timeout,
            events_max_len: self.events_max_len,
            events_max_age: self.events_max_age,
            results_max: self.results_max,
            max_waits: self.max_waits,
        };
        RedisBackend::open(pool, redact(&self.url), settings, Some(dial)).await
    }
}

/// How to open connections to the server: kept so that a
/// [`detached`](Backend::detached) handle can open its own.
#[derive(Clone)]
struct Dial {
    info: redis::ConnectionInfo,
    connection: AsyncConnectionConfig,
}

impl Dial {
    /// The same settings for the node at `host:port`; `None` on a Unix socket
    /// (never a cluster node's address).
    fn at(&self, host: &str, port: u16) -> Option<Dial> {
        let mut addr = self.info.addr().clone();
        match &mut addr {
            redis::ConnectionAddr::Tcp(h, p) | redis::ConnectionAddr::TcpTls { host: h, port: p, .. } => {
                (*h, *p) = (host.to_owned(), port);
            }
            _ => return None,
        }
        Some(Dial { info: self.info.clone().set_addr(addr), connection: self.connection.clone() })
    }

    fn pool(&self, size: usize, timeout: Duration) -> Result<Pool, String> {
        let cannot = |error: &dyn std::fmt::Display| format!("cannot build the Redis pool: {error}");
        let manager =
            Manager::new_with_config(self.info.clone(), self.connection.clone()).map_err(|error| cannot(&error))?;
        Pool::builder(manager)
            .config(PoolConfig {
                max_size: size.max(1),
                timeouts: Timeouts { wait: Some(timeout), create: Some(timeout), recycle: Some(timeout) },
                ..PoolConfig::default()
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| cannot(&error))
    }
}

impl RedisBackend {
    /// Settings for a backend on the Redis at `url` (`redis://[:password@]host:port[/db]`).
    pub fn builder(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            namespace: "jobs".to_owned(),
            pool_size: 16,
            dead_limits: DeadLimits::default(),
            timeout: Duration::from_secs(5),
            events_max_len: DEFAULT_EVENTS_MAX_LEN,
            events_max_age: DEFAULT_EVENTS_MAX_AGE,
            results_max: DEFAULT_RESULTS_MAX,
            max_waits: DEFAULT_MAX_WAITS,
        }
    }

    /// Connects with the default settings; see [`RedisConfig::connect`].
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        Self::builder(url).connect().await
    }

    /// A backend on an existing pool, under `namespace`.
    pub async fn from_pool(pool: Pool, namespace: &str) -> Result<Self, BackendError> {
        let server = "the pool's server".to_owned();
        let settings = Settings {
            namespace: namespace.to_owned(),
            dead_limits: DeadLimits::default(),
            timeout: Duration::from_secs(5),
            events_max_len: DEFAULT_EVENTS_MAX_LEN,
            events_max_age: DEFAULT_EVENTS_MAX_AGE,
            results_max: DEFAULT_RESULTS_MAX,
            max_waits: DEFAULT_MAX_WAITS,
        };
        Self::open(pool, server, settings, None).await
    }

    async fn open(pool: Pool, server: String, settings: Settings, dial: Option<Dial>) -> Result<Self, BackendError> {
        let Settings { namespace, dead_limits, timeout, events_max_len, events_max_age, results_max, max_waits } =
            settings;
        if namespace.is_empty() || namespace.contains(['{', '}']) || namespace.chars().any(char::is_control) {
            return Err(BackendError::permanent(format!(
                "namespace {namespace:?} must be non-empty and free of braces (it is the keys' hash tag) and of control characters"
            )));
        }
        let idle_blocking = pool.status().max_size;
        let backend = Self {
            inner: Arc::new(Inner {
                route: Mutex::new(Route { pool, server, dial, generation: 0 }),
                cluster: Mutex::default(),
                shared: Mutex::default(),
                blocking: Mutex::default(),
                worker_waits: Mutex::default(),
                idle_blocking,
                keys: Keys::new(&namespace),
                scripts: Scripts::new(),
                dead_limits,
                timeout,
                events_max_len: events_max_len.max(1),
                events_max_age,
                results_max: results_max.max(1),
                waits: Arc::new(Semaphore::new(max_waits.clamp(1, Semaphore::MAX_PERMITS))),
                pending: Mutex::default(),
                lease_floor: Arc::default(),
            }),
        };
        backend.locate().await?;
        backend.check_server().await?;
        Ok(backend)
    }

    /// The namespace's key prefix, `{namespace}:`.
    pub fn key_prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The pool of the server that holds the namespace's keys (on a Redis
    /// Cluster, the node that owns their slot, which changes when the slot moves).
    pub fn pool(&self) -> Pool {
        self.route().pool.clone()
    }

    fn route(&self) -> MutexGuard<'_, Route> {
        self.inner.route.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cluster(&self) -> MutexGuard<'_, Option<Cluster>> {
        self.inner.cluster.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On a Redis Cluster, moves to the node that owns the namespace's slot
    /// (a keyed command there answers `MOVED` with it) and remembers the
    /// cluster's nodes, to find the slot again should that node go away.
    async fn locate(&self) -> Result<(), BackendError> {
        if self.route().dial.is_none() {
            return Ok(());
        }
        let info: String = self.query(redis::cmd("INFO").arg("cluster")).await?;
        if !cluster::enabled(&info) {
            return Ok(());
        }
        // The other nodes, to ask when this one is gone (an ACL may forbid the command:
        // the backend then follows `MOVED` replies only).
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read the Redis Cluster's nodes; a failed master's replica is found only through MOVED");
            String::new()
        });
        *self.cluster() = Some(Cluster::new(cluster::nodes(&nodes)));
        let mut conn = self.conn().await?;
        let exists = redis::cmd("EXISTS").arg(self.inner.keys.queues()).query_async::<i64>(&mut conn).await;
        let owner = match &exists {
            Err(error) => moved(error).map(|node| cluster::redirected(&node, &self.dialled_host())),
            Ok(_) => None,
        };
        match owner.as_deref().and_then(cluster::host_port) {
            Some((host, port)) if self.reroute(host, port, false) => {}
            _ => drop(exists.map_err(|e| self.fail(e))?),
        }
        tracing::info!(node = %self.route().server, "Redis Cluster: the namespace's keys live on this node");
        Ok(())
    }

    /// Points the backend at `host:port`, the namespace's node now (`moved`:
    /// from another, as opposed to found at connect); false when it cannot (a
    /// backend on a given pool, a Unix socket).
    fn reroute(&self, host: &str, port: u16, moved: bool) -> bool {
        let mut route = self.route();
        let Some(current) = route.dial.as_ref() else { return false };
        let Some(dial) = current.at(host, port) else { return false };
        if dial.info.addr() == current.info.addr() {
            return true;
        }
        let pool = match dial.pool(route.pool.status().max_size, self.inner.timeout) {
            Ok(pool) => pool,
            Err(error) => {
                tracing::warn!(%error, node = %format!("{host}:{port}"), "cannot follow the namespace's keys");
                return false;
            }
        };
        let server = format!("redis://{host}:{port}");
        if moved {
            tracing::warn!(from = %route.server, to = %server, "the namespace's keys moved (Redis Cluster resharding or failover): following them");
        }
        *route = Route { pool, server, dial: Some(dial), generation: route.generation + 1 };
        drop(route);
        *self.shared() = None;
        self.inner.blocking.lock().unwrap_or_else(|p| p.into_inner()).clear();
        true
    }

    /// The host of the node the backend talks to ('' when it is not known, or a Unix socket).
    fn dialled_host(&self) -> String {
        match self.route().dial.as_ref().map(|dial| dial.info.addr()) {
            Some(redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. }) => host.clone(),
            _ => String::new(),
        }
    }

    /// On a Redis Cluster whose node for the namespace cannot be reached (it
    /// failed, a replica took over), asks the other nodes who owns the slot
    /// now and moves there; at most one round of questions a second.
    async fn relocate(&self) -> bool {
        let seeds = match self.cluster().as_mut() {
            Some(cluster) => match cluster.ask_now(Instant::now()) {
                Some(seeds) => seeds,
                None => return false,
            },
            None => return false,
        };
        let Some(dial) = self.route().dial.clone() else { return false };
        let key = self.inner.keys.queues().to_owned();
        for (host, port) in seeds {
            let Some(Dial { info, .. }) = dial.at(&host, port) else { continue };
            let Ok(client) = redis::Client::open(info) else { continue };
            let connect = client.get_multiplexed_async_connection_with_config(&dial.connection);
            let Ok(Ok(mut conn)) = tokio::time::timeout(self.inner.timeout, connect).await else { continue };
            let owner = match redis::cmd("EXISTS").arg(&key).query_async::<i64>(&mut conn).await {
                Ok(_) => Some((host.clone(), port)),
                Err(error) => moved(&error)
                    .map(|node| cluster::redirected(&node, &host))
                    .as_deref()
                    .and_then(cluster::host_port)
                    .map(|(h, p)| (h.to_owned(), p)),
            };
            if let Ok(nodes) = redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut conn).await
                && let Some(cluster) = self.cluster().as_mut()
            {
                cluster.learn(cluster::nodes(&nodes));
            }
            if let Some((host, port)) = owner
                && dial.at(&host, port).is_some_and(|owner| owner.info.addr() != dial.info.addr())
            {
                return self.reroute(&host, port, true);
            }
        }
        false
    }

    /// Refuses a Redis older than [`MIN_REDIS_VERSION`], warns when keys may
    /// be evicted, and loads the scripts.
    async fn check_server(&self) -> Result<(), BackendError> {
        let check = self.server_check().await?;
        recent_enough(check.version, &check.version_text)?;
        for warning in &check.warnings {
            tracing::warn!("{warning}");
        }
        let mut conn = self.conn().await?;
        for (name, script) in self.inner.scripts.all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(|e| self.fail(e).context(&format!("loading script `{name}`")))?;
        }
        self.check_key_types().await?;
        tracing::info!(redis = %check.version_text, keys = %format!("{}*", self.key_prefix()), "connected to Redis");
        Ok(())
    }

    /// Refuses a namespace where a key has the wrong type (something else
    /// writes under it): a script that meets one fails halfway, and Redis
    /// does not undo what the script did before, so jobs could be lost.
    async fn check_key_types(&self) -> Result<(), BackendError> {
        let keys = &self.inner.keys;
        // One command first, whose refusal (a Redis Cluster node that does not own the
        // slot) reads clearly; the queue names only from a set.
        let queues_type: String = self.query(redis::cmd("TYPE").arg(keys.queues())).await?;
        let queues: Vec<Text> = match queues_type.as_str() {
            "set" => self.query(redis::cmd("SMEMBERS").arg(keys.queues())).await?,
            _ => Vec::new(),
        };
        let per_queue: Vec<(String, &'static str)> =
            queues.iter().flat_map(|queue| [(keys.queue(&queue.0), "list"), (keys.wake(&queue.0), "list")]).collect();
        let expected: Vec<(&str, &str)> =
            keys.typed().into_iter().chain(per_queue.iter().map(|(key, kind)| (key.as_str(), *kind))).collect();
        let mut pipe = redis::pipe();
        for (key, _) in &expected {
            pipe.cmd("TYPE").arg(*key);
        }
        let mut conn = self.conn().await?;
        let found: Vec<String> = pipe.query_async(&mut conn).await.map_err(|e| self.fail(e))?;
        for ((key, kind), found) in expected.iter().zip(found) {
            if found != "none" && found != *kind {
                return Err(BackendError::permanent(format!(
                    "Redis key `{key}` is a {found}, not a {kind}: something other than jobs writes under the namespace `{}`; give jobs a namespace of its own (`RedisConfig::namespace`, `--namespace`) or remove the key",
                    keys.prefix().trim_start_matches('{').trim_end_matches("}:")
                )));
            }
        }
        Ok(())
    }

    /// Reads the server's version and the settings that can lose jobs.
    pub async fn server_check(&self) -> Result<ServerCheck, BackendError> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.map_err(|e| self.fail(e))?;
        let version_text =
            info.lines().find_map(|line| line.strip_prefix("redis_version:")).map_or("unknown", str::trim).to_owned();
        let version = parse_version(&version_text);
        let policy: Result<Vec<String>, _> =
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut conn).await;
        let eviction_policy = match policy {
            Ok(pair) => pair.into_iter().nth(1),
            Err(error) => {
                tracing::debug!(%error, "cannot read maxmemory-policy (CONFIG may be disabled)");
                None
            }
        };
        let mut warnings = Vec::new();
        if let Some(policy) = eviction_policy.as_deref().filter(|p| *p != "noeviction") {
            warnings.push(format!(
                "Redis maxmemory-policy is `{policy}`, not `noeviction`: under memory pressure Redis may evict keys, and an evicted key is a lost job; set `maxmemory-policy noeviction`"
            ));
        }
        Ok(ServerCheck { version, version_text, eviction_policy, warnings })
    }

    fn shared(&self) -> MutexGuard<'_, Option<MultiplexedConnection>> {
        self.inner.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The shared connection, opened on first use and after a failure.
    async fn conn(&self) -> Result<MultiplexedConnection, BackendError> {
        if let Some(conn) = self.shared().clone() {
            return Ok(conn);
        }
        let generation = self.route().generation;
        let conn = self.checkout().await?;
        // Checked out from the pool of a node the backend has left since: used once (a
        // `MOVED` makes the command run again), never kept as the shared connection.
        if self.route().generation == generation {
            *self.shared() = Some(conn.clone());
        }
        Ok(conn)
    }

    async fn checkout(&self) -> Result<MultiplexedConnection, BackendError> {
        match self.checkout_once().await {
            Err(error) if error.is_transient() && self.relocate().await => self.checkout_once().await,
            checked_out => checked_out,
        }
    }

    async fn checkout_once(&self) -> Result<MultiplexedConnection, BackendError> {
        let (pool, server) = {
            let route = self.route();
            (route.pool.clone(), route.server.clone())
        };
        let pooled = pool.get().await.map_err(|error| {
            // Unreachable (refused, timed out, dropped): worth waiting for. Reached, but refused
            // (a wrong password, a server that will not talk): waiting would not help.
            let (reason, transient) = match &error {
                deadpool_redis::PoolError::Backend(e) => (with_hint(e), is_broken(e) || is_not_ready(e)),
                other => (other.to_string(), true),
            };
            let message = format!("cannot connect to Redis at {server}: {reason}");
            if transient { BackendError::transient(message) } else { BackendError::permanent(message) }
                .with_source(error)
        })?;
        Ok(Connection::take(pooled))
    }

    /// A connection of its own for a command that blocks up to `block`, taken
    /// out of the pool (so blocked waiters never starve it), with a reply
    /// timeout longer than the block: a client that gave up first would leave
    /// the server's blocking command running.
    async fn blocking(&self, block: Duration) -> Result<Blocking, BackendError> {
        let reused = self.inner.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut blocking = match reused {
            Some(blocking) => blocking,
            None => {
                let mut conn = self.checkout().await?;
                let id = redis::cmd("CLIENT").arg("ID").query_async::<i64>(&mut conn).await.ok();
                Blocking { conn, id }
            }
        };
        blocking.conn.set_response_timeout(block + self.inner.timeout);
        Ok(blocking)
    }

    /// Keeps a blocking connection whose command completed for the next wait;
    /// beyond the pool's size idle ones are closed, so a burst of waiters does
    /// not hold connections for good.
    fn release_blocking(&self, conn: Blocking) {
        let mut idle = self.inner.blocking.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.inner.idle_blocking {
            idle.push(conn);
        }
    }

    /// A permit for a client wait that blocks, if one frees up `within`.
    async fn wait_permit(&self, within: Duration) -> Option<OwnedSemaphorePermit> {
        let acquire = Arc::clone(&self.inner.waits).acquire_owned();
        tokio::time::timeout(within, acquire).await.ok().and_then(Result::ok)
    }

    /// Runs a command that blocks up to `block` on a blocking connection.
    async fn query_blocking<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        block: Duration,
    ) -> Result<T, BackendError> {
        let mut blocking = self.blocking(block).await?;
        let reply = cmd.query_async(&mut blocking.conn).await.map_err(|e| self.fail(e))?;
        self.release_blocking(blocking);
        Ok(reply)
    }

    /// Runs a worker's wait for jobs (`BLPOP`, alone or with the fetch behind
    /// it) on `blocking`, its connection registered for [`Backend::end_waits`] meanwhile.
    async fn worker_wait<T>(
        &self,
        id: Option<i64>,
        wait: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        /// Takes the id off the list however the wait ends, dropped mid-way included.
        struct Registered<'a>(&'a Mutex<Vec<i64>>, i64);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                let mut waits = self.0.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = waits.iter().position(|waiting| *waiting == self.1) {
                    waits.swap_remove(at);
                }
            }
        }
        let waits = &self.inner.worker_waits;
        let _registered = id.map(|id| {
            waits.lock().unwrap_or_else(|p| p.into_inner()).push(id);
            Registered(waits, id)
        });
        wait.await
    }

    /// Maps a command error, dropping the shared connection when it is broken.
    fn fail(&self, error: RedisError) -> BackendError {
        let (broken, not_ready) = (is_broken(&error), is_not_ready(&error));
        if let Some(node) = moved(&error) {
            let node = cluster::redirected(&node, &self.dialled_host());
            // Whichever node this connection reached, it is not the namespace's any more.
            *self.shared() = None;
            if !cluster::host_port(&node).is_some_and(|(host, port)| self.reroute(host, port, true)) {
                return BackendError::permanent(format!(
                    "Redis Cluster: the namespace's keys live on {node}, and a backend made from a pool (or on a Unix socket) cannot follow them there; connect with `RedisBackend::connect` (any node's URL will do): {error}"
                ))
                .with_source(error);
            }
            return BackendError::transient(format!("the namespace's keys moved to {node} (Redis Cluster): {error}"))
                .with_source(error);
        }
        if broken {
            *self.shared() = None;
            let message = if error.is_timeout() {
                // A reply that came while this process could not read it times out too.
                format!(
                    "Redis did not answer in time (slow or unreachable, or this process's runtime was blocked): {error}"
                )
            } else {
                format!("Redis unreachable: {error}")
            };
            BackendError::transient(message).with_source(error)
        } else if not_ready {
            BackendError::transient(format!("Redis is not ready: {error}")).with_source(error)
        } else {
            BackendError::permanent(format!("Redis refused a command: {error}")).with_source(error)
        }
    }

    /// Runs a script, once more on the new node after a `MOVED` (see [`Self::once_more_if_moved`]).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let invocation = &invocation;
        self.once_more_if_moved(|mut conn| async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// Runs a command, once more on the new node after a `MOVED` (see [`Self::once_more_if_moved`]).
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackendError> {
        self.once_more_if_moved(|mut conn| async move { cmd.query_async(&mut conn).await }).await
    }

    /// Runs a pipeline (or `MULTI`), once more on the new node after a `MOVED`.
    async fn query_pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, BackendError> {
        self.once_more_if_moved(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }

    /// Runs `run` on the shared connection; a command refused with `MOVED` (a
    /// Redis Cluster moved the namespace's slot, so it did not run) runs again
    /// on the node the reply names.
    async fn once_more_if_moved<T, F: std::future::Future<Output = redis::RedisResult<T>>>(
        &self,
        run: impl Fn(MultiplexedConnection) -> F,
    ) -> Result<T, BackendError> {
        match run(self.conn().await?).await {
            Err(error) if moved(&error).is_some() => {
                let error = self.fail(error);
                if !error.is_transient() {
                    return Err(error);
                }
                run(self.conn().await?).await.map_err(|e| self.fail(e))
            }
            reply => reply.map_err(|e| self.fail(e)),
        }
    }
}

trait Context {
    fn context(self, what: &str) -> Self;
}

impl Context for BackendError {
    fn context(self, what: &str) -> Self {
        let transient = self.is_transient();
        let message = format!("{what}: {self}");
        if transient { BackendError::transient(message) } else { BackendError::permanent(message) }
    }
}

/// The connection failed (refused, dropped, timed out): worth trying again.
fn is_broken(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_connection_refusal()
}

/// The server is up but cannot serve yet (loading its data after a restart, a
/// replica whose master is down, a Redis Cluster slot on its way to another
/// node): it will, soon.
fn is_not_ready(error: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    // A script that reached a key of a migrating slot the node no longer holds.
    if error.to_string().contains("non local key") {
        return true;
    }
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::Ask
        )
    )
}

/// A connection error in words, with what to check when the cause is not in
/// them: a reply that is not Redis's protocol (another server on that port),
/// a refused password (also what a server with no password set answers).
fn with_hint(error: &RedisError) -> String {
    let hint = match error.kind() {
        redis::ErrorKind::Parse => {
            " (the server did not answer in Redis's protocol: is this the port of a Redis server?)"
        }
        redis::ErrorKind::AuthenticationFailed => {
            " (check the user and password in the URL; a server with no password set refuses one too)"
        }
        _ => "",
    };
    // Parse errors span lines (one per unexpected byte): keep the first.
    format!("{}{hint}", error.to_string().lines().next().unwrap_or_default())
}

/// The node named by a `MOVED` reply: a Redis Cluster serves the namespace's slot there now.
/// Also inside the error of a pipeline or a `MULTI` (redis-rs gathers their
/// commands' errors in one): every key is in one slot, so one `MOVED` there
/// means all of them.
fn moved(error: &RedisError) -> Option<String> {
    if let (redis::ErrorKind::Server(redis::ServerErrorKind::Moved), Some((node, _))) =
        (error.kind(), error.redirect_node())
    {
        return Some(node.to_owned());
    }
    let errors = error.clone().into_server_errors()?;
    errors.iter().find_map(|(_, error)| {
        let node = error.details()?.split_ascii_whitespace().nth(1)?;
        (error.kind() == Some(redis::ServerErrorKind::Moved)).then(|| node.to_owned())
    })
}

/// Hides the password of a URL in messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// The caller's end of a [`RedisBackend::wait_and_fetch`]: if the caller drops
/// it after the jobs arrived but before it took them (its `select!` chose
/// another branch in the same poll), they are put back instead of staying
/// leased to nobody.
struct Abandoned {
    received: Option<tokio::sync::oneshot::Receiver<Result<Vec<Fetched>, BackendError>>>,
    backend: RedisBackend,
}

impl std::future::Future for Abandoned {
    type Output = Result<Vec<Fetched>, BackendError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let Some(received) = self.received.as_mut() else {
            return std::task::Poll::Ready(Err(BackendError::transient("the wait for jobs was polled after it ended")));
        };
        let reply = std::task::ready!(std::pin::Pin::new(received).poll(cx));
        self.received = None;
        std::task::Poll::Ready(
            reply.unwrap_or_else(|_| Err(BackendError::transient("the wait for jobs ended before its reply"))),
        )
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(mut received) = self.received.take() else { return };
        received.close();
        if let Ok(Ok(fetched)) = received.try_recv()
            && !fetched.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let backend = self.backend.clone();
            runtime.spawn(async move { backend.put_back_abandoned(fetched).await });
        }
    }
}

/// Reads what the fetch and rescue scripts return after the request count:
/// the lease token and number, then per queue its name, a count and that many
/// payloads. Job j (1-based, in reply order) is in flight as field `L.j`.
fn leases(mut values: impl Iterator<Item = Text>) -> Vec<Fetched> {
    let (Some(token), Some(number)) = (values.next(), values.next()) else { return Vec::new() };
    // One token and one name per queue for the whole fetch, shared by its jobs.
    let token: Arc<str> = token.0.into();
    let mut fetched = Vec::new();
    while let (Some(queue), Some(count)) = (values.next(), values.next()) {
        let queue: Arc<str> = queue.0.into();
        for Text(payload, lossy) in values.by_ref().take(count.0.parse().unwrap_or(0)) {
            let id = format!("{number}.{}", fetched.len() + 1, number = number.0);
            let lease = Lease { id, queue: queue.clone(), token: token.clone() };
            let unreadable = lossy.then(|| "the payload is not valid UTF-8 (JSON must be)".to_owned());
            fetched.push(Fetched { payload, lease, cancelled: false, unreadable });
        }
    }
    fetched
}

/// Text from Redis, read even when it is not valid UTF-8 (a payload another
/// producer wrote): the bad bytes become U+FFFD, so that one such payload
/// does not fail the whole reply, and with it the batch of jobs it leased.
/// The flag says whether bytes were replaced: a fetched job whose payload was
/// is dead-lettered unrun, since its arguments are not what was written.
struct Text(String, bool);

impl redis::FromRedisValue for Text {
    fn from_redis_value(value: Value) -> Result<Self, redis::ParsingError> {
        match value {
            Value::BulkString(bytes) => Ok(match String::from_utf8(bytes) {
                Ok(text) => Text(text, false),
                Err(error) => Text(String::from_utf8_lossy(error.as_bytes()).into_owned(), true),
            }),
            other => String::from_redis_value(other).map(|text| Text(text, false)),
        }
    }
}

/// The lease number and job count of a lease token, `<worker>/<L>/<k>`.
fn lease_number(token: &str) -> Option<(&str, usize)> {
    let mut parts = token.rsplitn(3, '/');
    let size = parts.next()?.parse().ok()?;
    let number = parts.next().filter(|n| n.bytes().all(|b| b.is_ascii_digit()))?;
    Some((number, size))
}

/// Groups leases by token, in order of first appearance: `(token, indices)`.
fn by_token(leases: &[Lease]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (index, lease) in leases.iter().enumerate() {
        // A batch holds a few leases (one per fetch), so a linear search beats hashing.
        match groups.iter_mut().rev().find(|(token, _)| *token == &*lease.token) {
            Some((_, indices)) => indices.push(index),
            None => groups.push((&lease.token, vec![index])),
        }
    }
    groups
}

/// Spreads one flag per token group back over the leases.
fn per_lease(groups: &[(&str, Vec<usize>)], held: &[i64], leases: usize) -> Vec<bool> {
    let mut out = vec![false; leases];
    for ((_, indices), held) in groups.iter().zip(held) {
        for index in indices {
            out[*index] = *held == 1;
        }
    }
    out
}

/// The `jid` of a payload, when it has one (a malformed payload has none).
fn jid_of(payload: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(payload).ok()?.get_mut("jid")?.take() {
        serde_json::Value::String(jid) => Some(jid),
        _ => None,
    }
}

/// Whether an outcome's JSON is a final [`Outcome`] (succeeded, dead, cancelled).
fn is_final(json: &str) -> bool {
    serde_json::from_str::<Outcome>(json).is_ok_and(|outcome| outcome.is_final())
}

/// Whether a JSON text is an [`Outcome`] this version can read.
fn is_outcome(json: &str) -> bool {
    serde_json::from_str::<Outcome>(json).is_ok()
}

/// A stream id as Redis writes it (`<ms>-<seq>`); an event's JSON is its field `e`.
type StreamEntry = (String, Vec<String>);

/// The JSON of an event entry: the value of its field `e`.
fn event_json(fields: Vec<String>) -> Option<String> {
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name == "e" {
            return Some(value);
        }
    }
    None
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The longest time to live given to Redis (about 2,000 years, "for ever"):
/// `SET … PX` and `PEXPIRE` refuse times past the end of its clock.
const MAX_EXPIRY_MS: u64 = 1 << 46;

/// A lease or a stored outcome's time to live, at most [`MAX_EXPIRY_MS`].
fn expiry_millis(duration: Duration) -> u64 {
    millis(duration).min(MAX_EXPIRY_MS)
}

/// A uniqueness lock's time to live: `SET … PX` refuses 0, so at least a millisecond.
fn lock_millis(duration: Duration) -> u64 {
    expiry_millis(duration).max(1)
}

/// A blocking command's timeout in seconds, rounded up to whole milliseconds:
/// never a fraction that the server would read as 0 ("for ever"), and never
/// shorter than the caller's wait.
fn seconds(duration: Duration) -> String {
    let ms = duration.as_micros().div_ceil(1000).max(1);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

impl Backend for RedisBackend {
    fn push(&self, mut jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
        Box::pin(async move {
            if let [job] = jobs.as_slice()
                && job.unique.is_none()
                && job.run_at.is_none_or(|at| at <= jobs_core::now_millis())
                && let Some(job) = jobs.pop()
            {
                return self.push_one_now(job).await;
            }
            self.push_batch(jobs, Vec::new()).await
        })
    }

    /// Through `push.lua`, which appends each stored job's event in the same step.
    fn push_with_events(
        &self,
        jobs: Vec<PushJob>,
        events: Vec<Option<EventRecord>>,
    ) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
        Box::pin(self.push_batch(jobs, events))
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        Box::pin(async move {
            let (keys, args) = self.fetch_parts(&request);
            self.leased(self.invoke_fetch(&keys, &args).await?).await
        })
    }

    fn wait_for_jobs<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let timeout = timeout.min(LONGEST_BLOCK);
            let mut blocking = self.blocking(timeout).await?;
            let blpop = self.blpop(queues, timeout);
            let (id, conn) = (blocking.id, &mut blocking.conn);
            let wait = async { blpop.query_async::<Option<(String, String)>>(conn).await.map_err(|e| self.fail(e)) };
            let popped = self.worker_wait(id, wait).await?;
            self.release_blocking(blocking);
            if let Some((wake, _)) = popped {
                // This wait leases nothing: the token goes back (one at most), for a waiter
                // that fetches. Taken, it would leave such a waiter asleep beside queued jobs.
                let mut pipe = redis::pipe();
                pipe.cmd("RPUSH").arg(&wake).arg(1).ignore().cmd("LTRIM").arg(&wake).arg(0).arg(0).ignore();
                if let Err(error) = self.query_pipeline::<()>(&pipe).await {
                    tracing::debug!(%error, "cannot put a wake-up token back; waiters find the jobs at their next look");
                }
            }
            Ok(())
        })
    }

    /// Unblocks the workers' waits for jobs in progress (`CLIENT UNBLOCK`, as
    /// if their timeout came): a worker that shuts down stops at once. A
    /// server that refuses the command leaves them to end at their timeout.
    fn end_waits(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let ids = self.inner.worker_waits.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for id in ids {
                if let Err(error) = self.query::<i64>(redis::cmd("CLIENT").arg("UNBLOCK").arg(id)).await {
                    tracing::debug!(%error, "cannot unblock a wait for jobs; it ends at its timeout");
                    return;
                }
            }
        })
    }

    fn wait_and_fetch<'a>(
        &'a self,
        queues: &'a [String],
        timeout: Duration,
        request: FetchRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        Box::pin(async move {
            let timeout = timeout.min(LONGEST_BLOCK);
            // BLPOP and the fetch script travel together on one blocking connection: Redis runs
            // the script the moment the wait ends, so an idle worker's job starts one round trip
            // sooner than with a wait, a reply, then a fetch.
            let (keys, args) = self.fetch_parts(&request);
            let mut blocking = self.blocking(timeout).await?;
            let (sent, received) = tokio::sync::oneshot::channel();
            let (backend, blpop) = (self.clone(), self.blpop(queues, timeout));
            // In a task of its own, so that a caller who stops waiting does not cut the round
            // trip short: what it leased then goes back to the head of its queues at once.
            tokio::spawn(async move {
                let (id, conn) = (blocking.id, &mut blocking.conn);
                let outcome = backend.worker_wait(id, backend.blpop_then_fetch(conn, blpop, keys, args)).await;
                if outcome.is_ok() {
                    backend.release_blocking(blocking);
                }
                if let Err(Ok(fetched)) = sent.send(outcome) {
                    backend.put_back_abandoned(fetched).await;
                }
            });
            Abandoned { received: Some(received), backend: self.clone() }.await
        })
    }

    fn complete<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let keys = &self.inner.keys;
            let mut call = self.inner.scripts.complete.key(keys.in_flight());
            call.key(keys.deadlines()).key(keys.leases());
            let groups = by_token(leases);
            for (token, indices) in &groups {
                call.arg(*token).arg(indices.len());
                for index in indices {
                    call.arg(&leases[*index].id);
                }
            }
            let held: Vec<i64> = self.invoke(call).await?;
            Ok(per_lease(&groups, &held, leases.len()))
        })
    }

    fn retry<'a>(
        &'a self,
        lease: &'a Lease,
        payload: String,
        run_at: u64,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.settle(lease, "later", self.inner.keys.retry(), payload, run_at).await })
    }

    fn defer<'a>(
        &'a self,
        lease: &'a Lease,
        payload: String,
        run_at: u64,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.settle(lease, "later", self.inner.keys.scheduled(), payload, run_at).await })
    }

    fn kill<'a>(&'a self, lease: &'a Lease, payload: String) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.settle(lease, "dead", self.inner.keys.dead(), payload, 0).await })
    }

    fn put_back<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(0);
            }
            let keys = &self.inner.keys;
            let mut call = self.inner.scripts.put_back.key(keys.in_flight());
            call.key(keys.deadlines()).key(keys.leases()).arg(keys.prefix());
            for lease in leases {
                call.arg(&lease.id).arg(&*lease.token);
            }
            self.invoke(call).await
        })
    }

    fn extend<'a>(&'a self, leases: &'a [Lease], lease: Duration) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(Vec::new());
            }
            let keys = &self.inner.keys;
            let mut call = self.inner.scripts.extend.key(keys.deadlines());
            call.key(keys.leases()).arg(expiry_millis(lease));
            let groups = by_token(leases);
            for (token, _) in &groups {
                call.arg(*token);
            }
            let held: Vec<i64> = self.invoke(call).await?;
            Ok(per_lease(&groups, &held, leases.len()))
        })
    }

    fn rescue<'a>(
        &'a self,
        worker: &'a WorkerId,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            let mut call = self.inner.scripts.rescue.key(keys.in_flight());
            call.key(keys.deadlines())
                .key(keys.lease_seq())
                .key(keys.cancelled())
                .key(keys.leases())
                .key(keys.legacy_deadlines())
                .arg(worker.as_str())
                .arg(expiry_millis(lease))
                .arg(max)
                .arg(self.lease_floor());
            self.leased(self.invoke(call).await?).await
        })
    }

    fn promote_due(&self, until: Option<u64>) -> BoxFuture<'_, Result<usize, BackendError>> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            let mut total = 0;
            loop {
                let mut call = self.inner.scripts.promote.key(keys.scheduled());
                call.key(keys.retry()).key(keys.queues()).arg(keys.prefix());
                match until {
                    Some(at) => call.arg(at),
                    None => call.arg("now"),
                };
                call.arg(1000);
                let moved: usize = self.invoke(call).await?;
                total += moved;
                if moved < 1000 {
                    return Ok(total);
                }
            }
        })
    }

    fn list<'a>(
        &'a self,
        set: &'a JobSet,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredJob>, BackendError>> {
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let keys = &self.inner.keys;
            // Redis reads `-1` as the end: a range past `i64::MAX` stops there.
            let start = i64::try_from(offset).unwrap_or(i64::MAX);
            let stop = i64::try_from(offset.saturating_add(limit - 1)).unwrap_or(i64::MAX);
            let sorted = |key: &str| {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(key).arg(start).arg(stop).arg("WITHSCORES");
                cmd
            };
            // A payload that is not UTF-8 is listed under a stand-in that `requeue` and
            // `remove` map back to its bytes, so it can be moved or deleted like any other.
            let stored = StoredJob::from_bytes;
            if let Some(key) = self.sorted_set(set) {
                let scored: Vec<(Vec<u8>, f64)> = self.query(&sorted(key)).await?;
                return Ok(scored.into_iter().map(|(payload, at)| stored(payload, at as u64)).collect());
            }
            match set {
                JobSet::Queue(queue) => {
                    let mut cmd = redis::cmd("LRANGE");
                    cmd.arg(keys.queue(queue)).arg(start).arg(stop);
                    let payloads: Vec<Vec<u8>> = self.query(&cmd).await?;
                    Ok(payloads.into_iter().map(|payload| stored(payload, 0)).collect())
                }
                _ => self.list_in_flight(offset, limit).await,
            }
        })
    }

    fn requeue<'a>(&'a self, set: &'a JobSet, payloads: &'a [String]) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            let Some(key) = self.sorted_set(set) else {
                return Err(set.refuse("requeue"));
            };
            let keys = &self.inner.keys;
            let mut moved = 0;
            let payloads: Vec<Vec<u8>> = payloads.iter().map(|payload| StoredJob::bytes_of(payload)).collect();
            for chunk in payloads.chunks(1000) {
                let mut call = self.inner.scripts.requeue.key(key);
                let forget = if *set == JobSet::Dead { "1" } else { "0" };
                call.key(keys.queues()).key(keys.results()).arg(keys.prefix()).arg(forget).arg(chunk);
                moved += self.invoke::<usize>(call).await?;
            }
            Ok(moved)
        })
    }

    fn remove<'a>(&'a self, set: &'a JobSet, payloads: &'a [String]) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            if *set == JobSet::InFlight {
                return Err(set.refuse("remove"));
            }
            let mut removed = 0;
            let payloads: Vec<Vec<u8>> = payloads.iter().map(|payload| StoredJob::bytes_of(payload)).collect();
            for chunk in payloads.chunks(1000) {
                removed += match (set, self.sorted_set(set)) {
                    (_, Some(key)) => self.query::<usize>(redis::cmd("ZREM").arg(key).arg(chunk)).await?,
                    (JobSet::Queue(queue), None) => {
                        let mut pipe = redis::pipe();
                        for payload in chunk {
                            pipe.cmd("LREM").arg(self.inner.keys.queue(queue)).arg(1).arg(payload);
                        }
                        let counts: Vec<usize> = self.query_pipeline(&pipe).await?;
                        counts.into_iter().sum()
                    }
                    _ => return Err(set.refuse("remove")),
                };
            }
            Ok(removed)
        })
    }

    fn heartbeat<'a>(&'a self, worker: &'a WorkerId, ttl: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let until = jobs_core::now_millis().saturating_add(millis(ttl));
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD").arg(self.inner.keys.workers()).arg(until).arg(worker.as_str()).ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(self.inner.keys.workers())
                .arg("-inf")
                .arg(jobs_core::now_millis())
                .ignore();
            self.query_pipeline::<()>(&pipe).await
        })
    }

    fn retire<'a>(&'a self, worker: &'a WorkerId) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(
            async move { self.query(redis::cmd("ZREM").arg(self.inner.keys.workers()).arg(worker.as_str())).await },
        )
    }

    /// A backend with a small pool of its own, whose connections are opened
    /// (and driven) by the runtime that first uses them; `None` for a backend
    /// made [`from_pool`](RedisBackend::from_pool).
    fn detached(&self) -> Option<Arc<dyn Backend>> {
        let inner = &self.inner;
        let (dial, server) = {
            let route = self.route();
            (route.dial.clone()?, route.server.clone())
        };
        let pool = match dial.pool(DETACHED_POOL_SIZE, inner.timeout) {
            Ok(pool) => pool,
            Err(error) => {
                tracing::warn!(%error, "cannot open a detached Redis handle");
                return None;
            }
        };
        Some(Arc::new(RedisBackend {
            inner: Arc::new(Inner {
                route: Mutex::new(Route { pool, server, dial: Some(dial), generation: 0 }),
                cluster: Mutex::new(self.cluster().clone()),
                shared: Mutex::default(),
                blocking: Mutex::default(),
                worker_waits: Mutex::default(),
                idle_blocking: 0,
                keys: inner.keys.clone(),
                scripts: Scripts::new(),
                dead_limits: inner.dead_limits,
                timeout: inner.timeout,
                events_max_len: inner.events_max_len,
                events_max_age: inner.events_max_age,
                results_max: inner.results_max,
                waits: Arc::new(Semaphore::new(1)),
                pending: Mutex::default(),
                lease_floor: Arc::clone(&inner.lease_floor),
            }),
        }))
    }

    fn release_unique<'a>(&'a self, key: &'a str, jid: &'a JobId) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut call = self.inner.scripts.release.prepare_invoke();
            call.key(self.inner.keys.queues()).arg(self.inner.keys.unique_prefix()).arg(key).arg(jid.as_str());
            Ok(self.invoke::<u8>(call).await? == 1)
        })
    }

    fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            let cmd = match set {
                JobSet::Queue(queue) => redis::cmd("LLEN").arg(keys.queue(queue)).to_owned(),
                JobSet::Scheduled | JobSet::Retry | JobSet::Dead => {
                    redis::cmd("ZCARD").arg(self.sorted_set(set)).to_owned()
                }
                JobSet::InFlight => redis::cmd("HLEN").arg(keys.in_flight()).to_owned(),
            };
            self.query(&cmd).await
        })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(self.queue_names())
    }

    fn record<'a>(
        &'a self,
        outcomes: &'a [OutcomeRecord],
        events: &'a [EventRecord],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            if outcomes.is_empty() && events.is_empty() {
                return Ok(());
            }
            let keys = &self.inner.keys;
            let mut call = self.inner.scripts.record.key(keys.events());
            call.key(keys.results());
            for record in outcomes {
                call.key(keys.result(record.jid.as_str())).key(keys.done(record.jid.as_str()));
            }
            call.arg(self.inner.events_max_len).arg(self.inner.results_max).arg(keys.prefix()).arg(outcomes.len());
            call.arg(millis(self.inner.events_max_age));
            for record in outcomes {
                call.arg(&record.outcome).arg(expiry_millis(record.ttl)).arg(if record.is_final { "1" } else { "0" });
                call.arg(record.jid.as_str());
            }
            for event in events {
                call.arg(&event.json);
            }
            self.invoke::<Value>(call).await.map(drop)
        })
    }

    fn outcome<'a>(&'a self, jid: &'a JobId) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move { self.query(redis::cmd("GET").arg(self.inner.keys.result(jid.as_str()))).await })
    }

    fn wait_outcome<'a>(
        &'a self,
        jid: &'a JobId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            let deadline = jobs_core::deadline_after(timeout);
            let (result, done) = (self.inner.keys.result(jid.as_str()), self.inner.keys.done(jid.as_str()));
            let mut woken = false;
            loop {
                let stored: Option<String> = self.query(redis::cmd("GET").arg(&result)).await?;
                if let Some(json) = stored {
                    // After a wake-up the token vouches for finality: an outcome written by a newer
                    // version, unreadable here, is returned rather than waited on in a busy loop.
                    if is_final(&json) || (woken && !is_outcome(&json)) {
                        return Ok(Some(json));
                    }
                }
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if remaining < Duration::from_millis(1) {
                    return Ok(None);
                }
                // Rotating the token (a move from the list to itself) leaves it in place, so every
                // waiter wakes, and a wait the client abandons takes nothing away from the others.
                let Some(_permit) = self.wait_permit(remaining.min(OVERFLOW_POLL)).await else {
                    // Every wait connection is busy: look again, the token standing in for a wake-up.
                    woken = self.query::<usize>(redis::cmd("LLEN").arg(&done)).await? > 0;
                    continue;
                };
                // One block at most a minute long, the loop going on until the deadline: Redis
                // refuses a timeout beyond its range ("timeout is negative").
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).min(LONGEST_BLOCK);
                let mut blmove = redis::cmd("BLMOVE");
                blmove.arg(&done).arg(&done).arg("LEFT").arg("RIGHT").arg(seconds(remaining));
                let token: Option<String> = self.query_blocking(&blmove, remaining).await?;
                woken = token.is_some();
            }
        })
    }

    fn cancel<'a>(&'a self, jid: &'a JobId, until: u64) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let key = self.inner.keys.cancelled();
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.cmd("ZREMRANGEBYSCORE").arg(key).arg("-inf").arg(jobs_core::now_millis()).ignore();
            pipe.cmd("ZADD").arg(key).arg(until).arg(jid.as_str()).ignore();
            // Beyond the cap, the requests closest to expiring go first.
            let keep_from = -(jobs_core::CANCELS_KEPT as i64) - 1;
            pipe.cmd("ZREMRANGEBYRANK").arg(key).arg(0).arg(keep_from).ignore();
            self.query_pipeline::<()>(&pipe).await
        })
    }

    fn cancel_requested<'a>(&'a self, jids: &'a [JobId]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
        Box::pin(async move { self.cancels_holding(jids.iter().map(JobId::as_str)).await })
    }

    fn read_events<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<EventBatch, BackendError>> {
        Box::pin(async move {
            let stream = self.inner.keys.events();
            let cursor = match after {
                Some(id) => id.to_owned(),
                None => {
                    // The stream's last id, not `$`: a reader that reads again from the cursor
                    // returned misses nothing written between its reads.
                    let last: Vec<StreamEntry> =
                        self.query(redis::cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(1)).await?;
                    last.into_iter().next().map_or_else(|| "0-0".to_owned(), |(id, _)| id)
                }
            };
            if max == 0 {
                return Ok(EventBatch { cursor, events: Vec::new() });
            }
            let xread = |block_ms: u64| {
                let mut xread = redis::cmd("XREAD");
                // `BLOCK 0` would block for ever: a zero wait reads without blocking.
                if block_ms > 0 {
                    xread.arg("BLOCK").arg(block_ms);
                }
                xread.arg("COUNT").arg(max).arg("STREAMS").arg(stream).arg(&cursor);
                xread
            };
            // With every wait connection busy, the wait is spent queueing for one, then
            // the read does not block.
            // A read blocks a minute at most (Redis refuses a block beyond its range): it
            // then returns no events, as at the end of any wait.
            let block = block.min(LONGEST_BLOCK);
            let deadline = jobs_core::deadline_after(block);
            let permit = if block.is_zero() { None } else { self.wait_permit(block).await };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let read: Option<Vec<(String, Vec<StreamEntry>)>> = match permit {
                Some(_permit) if millis(left) > 0 => self.query_blocking(&xread(millis(left)), left).await?,
                _ => self.query(&xread(0)).await?,
            };
            let entries = read.into_iter().flatten().flat_map(|(_, entries)| entries);
            let mut batch = EventBatch { cursor, events: Vec::new() };
            for (id, fields) in entries {
                batch.cursor.clone_from(&id);
                if let Some(json) = event_json(fields) {
                    batch.events.push((id, json));
                }
            }
            Ok(batch)
        })
    }
}

impl RedisBackend {
    /// Every queue a job was ever pushed to, sorted.
    pub async fn queue_names(&self) -> Result<Vec<String>, BackendError> {
        let mut names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(self.inner.keys.queues())).await?;
        names.sort();
        Ok(names)
    }

    /// Workers whose heartbeat has not lapsed, by id.
    pub async fn live_workers(&self) -> Result<Vec<String>, BackendError> {
        let now = jobs_core::now_millis();
        self.query(redis::cmd("ZRANGEBYSCORE").arg(self.inner.keys.workers()).arg(now).arg("+inf")).await
    }

    /// Reads what the fetch and rescue scripts return: the number of
    /// cancellation requests, then the leased jobs. Only when requests exist
    /// are the jobs' ids looked up, in one `ZMSCORE`.
    async fn leased(&self, values: Vec<Text>) -> Result<Vec<Fetched>, BackendError> {
        let mut values = values.into_iter();
        let Some(Text(requests, _)) = values.next() else { return Ok(Vec::new()) };
        let mut fetched = leases(values);
        if let Some(number) = fetched.first().and_then(|job| job.lease.id.split('.').next()?.parse().ok()) {
            self.inner.lease_floor.fetch_max(number, Ordering::AcqRel);
        }
        if requests == "0" || fetched.is_empty() {
            return Ok(fetched);
        }
        let jids: Vec<Option<String>> = fetched.iter().map(|job| jid_of(&job.payload)).collect();
        match self.cancels_holding(jids.iter().flatten().map(String::as_str)).await {
            Ok(held) => {
                let mut held = held.into_iter();
                for (job, jid) in fetched.iter_mut().zip(&jids) {
                    job.cancelled = jid.is_some() && held.next().unwrap_or(false);
                }
            }
            // The jobs are leased already: handing them out beats stranding them until their
            // leases expire. A running job still sees its cancellation at the next heartbeat.
            Err(error) => tracing::warn!(%error, "cannot look up cancellation requests of fetched jobs"),
        }
        Ok(fetched)
    }

    /// Pushes a batch through `push.lua`, all or none, with `events[i]` (the
    /// `enqueued` event of `jobs[i]`, when there is one) appended in the same
    /// step for each job stored.
    async fn push_batch(
        &self,
        jobs: Vec<PushJob>,
        events: Vec<Option<EventRecord>>,
    ) -> Result<PushOutcome, BackendError> {
        if jobs.is_empty() {
            return Ok(PushOutcome::default());
        }
        let now = jobs_core::now_millis();
        let keys = &self.inner.keys;
        let mut queues: Vec<&str> = Vec::new();
        for job in &jobs {
            if !queues.contains(&job.queue.as_str()) {
                queues.push(&job.queue);
            }
        }
        let mut call = self.inner.scripts.push.key(keys.scheduled());
        call.key(keys.queues()).key(keys.events());
        for queue in &queues {
            call.key(keys.queue(queue)).key(keys.wake(queue));
        }
        call.arg(keys.unique_prefix()).arg(self.inner.events_max_len).arg(millis(self.inner.events_max_age));
        call.arg(queues.len());
        for queue in &queues {
            call.arg(*queue);
        }
        let mut events = events.into_iter();
        for job in &jobs {
            let index = queues.iter().position(|q| *q == job.queue).map_or(1, |i| i + 1);
            let (unique, ttl) = job.unique.as_ref().map_or((String::new(), 0), |u| (u.key.clone(), lock_millis(u.ttl)));
            let due_later = job.run_at.filter(|at| *at > now).unwrap_or(0);
            let event = events.next().flatten().map(|event| event.json).unwrap_or_default();
            // The jid is the lock's value: sent only with a lock (a bulk push carries none).
            let holder = if job.unique.is_some() { job.jid.as_str() } else { "" };
            call.arg(index).arg(due_later).arg(&job.payload).arg(unique).arg(ttl).arg(event).arg(holder);
        }
        let duplicates: Vec<usize> = self.invoke(call).await?;
        Ok(PushOutcome { duplicates })
    }

    /// Pushes one job that is due now and takes no uniqueness lock, the
    /// commonest enqueue, without a script: Lua's call overhead (~5 µs of
    /// Redis CPU, half of what an enqueue costs Redis) buys nothing when the
    /// job's own write is one `RPUSH`, atomic by itself.
    ///
    /// Pushes that are ready at the same moment go out together (group
    /// commit): the caller that finds no batch gathering starts one on a task
    /// of its own, which lets the tasks that are ready to run add their jobs
    /// (one yield) and sends them all as one pipeline with one `RPUSH` per
    /// queue. Many callers (requests, or the replies of one batch waking
    /// theirs together) share a round trip, and Redis and the client parse a
    /// command per batch instead of per job. Batches do not wait for each
    /// other, so a slow link costs no extra round trip; the batch lives on
    /// its task, so no caller that stalls or gives up holds the others back.
    /// A caller that gives up before its batch is sent is left out of it.
    async fn push_one_now(&self, job: PushJob) -> Result<PushOutcome, BackendError> {
        let (done, receipt) = oneshot::channel();
        let lead = {
            let mut pending = self.pending();
            pending.waiting.push(Waiting { queue: job.queue, payload: job.payload, done });
            !std::mem::replace(&mut pending.gathering, true)
        };
        if lead {
            let gather = self.clone().gather_and_send(Gathering(Some(self.clone())));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(gather)),
                // Off a tokio runtime there is no task to hand it to: this caller sends.
                Err(_) => gather.await,
            }
        }
        match receipt.await {
            Ok(Ok(())) => Ok(PushOutcome::default()),
            Ok(Err((message, true))) => Err(BackendError::transient(message)),
            Ok(Err((message, false))) => Err(BackendError::permanent(message)),
            Err(_) => Err(BackendError::transient(
                "the push was interrupted before Redis answered; the job may or may not be queued",
            )),
        }
    }

    fn pending(&self) -> MutexGuard<'_, PendingPushes> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gathers the pushes that are ready now and sends them in one pipeline:
    /// per queue, one `RPUSH` of its jobs in arrival order, `SADD` of its name,
    /// and its wake-up token (`RPUSH` then `LTRIM 0 0`: the one token
    /// `push.lua` keeps with `LLEN`). Were the connection lost after a `RPUSH`,
    /// its jobs are in and an idle worker still finds them: its wait ends
    /// within a second and fetches either way.
    async fn gather_and_send(self, mut gathering: Gathering) {
        tokio::task::yield_now().await;
        // Callers that gave up meanwhile are left out: their jobs are not sent.
        let batch: Vec<Waiting> = gathering.take().into_iter().filter(|push| !push.done.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        let keys = &self.inner.keys;
        // The batch's queues in arrival order, with their jobs; each push's queue by index.
        let mut queues: Vec<(&str, Vec<&str>)> = Vec::new();
        let mut queue_of = Vec::with_capacity(batch.len());
        for push in &batch {
            let index = match queues.iter().position(|(queue, _)| *queue == push.queue) {
                Some(index) => index,
                None => {
                    queues.push((&push.queue, Vec::new()));
                    queues.len() - 1
                }
            };
            queues[index].1.push(&push.payload);
            queue_of.push(index);
        }
        // Each queue's `RPUSH` answers for its jobs: one refused (out of memory)
        // must not report another queue's stored jobs as failed.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (queue, payloads) in &queues {
            let wake = keys.wake(queue);
            pipe.cmd("RPUSH").arg(keys.queue(queue)).arg(payloads);
            pipe.cmd("SADD").arg(keys.queues()).arg(*queue).ignore();
            pipe.cmd("RPUSH").arg(&wake).arg("1").ignore();
            pipe.cmd("LTRIM").arg(&wake).arg(0).arg(0).ignore();
        }
        let mut sent = self.send_pipeline(&pipe).await;
        // Every key is in one slot: a `MOVED` for one push is a `MOVED` for all, and none ran.
        if let Ok(replies) = &sent
            && let Some(Err(error)) = replies.first()
            && moved(error).is_some()
            && self.fail(error.clone()).is_transient()
        {
            sent = self.send_pipeline(&pipe).await;
        }
        let refused = |error: BackendError| Err((error.message().to_owned(), error.is_transient()));
        let answers: Vec<Result<(), (String, bool)>> = match sent {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                (0..queues.len())
                    .map(|_| match replies.next() {
                        Some(Ok(_)) => Ok(()),
                        Some(Err(error)) => refused(self.fail(error)),
                        None => refused(BackendError::transient("Redis answered fewer replies than it was sent")),
                    })
                    .collect()
            }
            Err(error) => vec![refused(error); queues.len()],
        };
        for (push, index) in batch.into_iter().zip(queue_of) {
            let _ = push.done.send(answers[index].clone());
        }
    }

    /// Sends a pipeline whose commands answer one by one (`ignore_errors`).
    async fn send_pipeline(&self, pipe: &redis::Pipeline) -> Result<Vec<redis::RedisResult<Value>>, BackendError> {
        let mut conn = self.conn().await?;
        pipe.query_async(&mut conn).await.map_err(|e| self.fail(e))
    }

    /// Sends `BLPOP` and the fetch script in one pipeline and reads the fetch's
    /// reply (whatever the `BLPOP` answered); when the server forgot the script,
    /// fetches again through the reloading path.
    async fn blpop_then_fetch(
        &self,
        conn: &mut MultiplexedConnection,
        blpop: redis::Cmd,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<Fetched>, BackendError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().add_command(blpop);
        pipe.cmd("EVALSHA").arg(self.inner.scripts.fetch.get_hash()).arg(keys.len()).arg(&keys).arg(&args);
        let mut replies: Vec<redis::RedisResult<Value>> = pipe.query_async(conn).await.map_err(|e| self.fail(e))?;
        let fetched = replies.pop().unwrap_or_else(|| Ok(Value::Nil));
        let values: Vec<Text> = match fetched {
            Ok(value) => redis::from_redis_value(value).map_err(|e| self.fail(e.into()))?,
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.invoke_fetch(&keys, &args).await?
            }
            Err(error) => return Err(self.fail(error)),
        };
        self.leased(values).await
    }

    /// Returns jobs leased for a caller that stopped waiting to the head of their queues.
    async fn put_back_abandoned(&self, fetched: Vec<Fetched>) {
        if fetched.is_empty() {
            return;
        }
        let leases: Vec<Lease> = fetched.into_iter().map(|job| job.lease).collect();
        if let Err(error) = self.put_back(&leases).await {
            tracing::warn!(%error, jobs = leases.len(), "could not put back the jobs of an abandoned wait; they return when their lease expires");
        }
    }

    /// `BLPOP` on the wake lists of `queues`, for up to `timeout`.
    fn blpop(&self, queues: &[String], timeout: Duration) -> redis::Cmd {
        let mut blpop = redis::cmd("BLPOP");
        for queue in queues {
            blpop.arg(self.inner.keys.wake(queue));
        }
        blpop.arg(timeout.as_secs_f64().max(0.01));
        blpop
    }

    /// Runs `fetch.lua` (loading it when the server forgot it) and returns its raw reply.
    async fn invoke_fetch(&self, keys: &[String], args: &[String]) -> Result<Vec<Text>, BackendError> {
        let mut call = self.inner.scripts.fetch.prepare_invoke();
        for key in keys {
            call.key(key);
        }
        for arg in args {
            call.arg(arg);
        }
        self.invoke(call).await
    }

    /// The keys and arguments of `fetch.lua` for a request.
    fn fetch_parts(&self, request: &FetchRequest<'_>) -> (Vec<String>, Vec<String>) {
        let keys = &self.inner.keys;
        let mut names = vec![
            keys.in_flight().to_owned(),
            keys.deadlines().to_owned(),
            keys.lease_seq().to_owned(),
            keys.cancelled().to_owned(),
            keys.leases().to_owned(),
        ];
        names.extend(request.queues.iter().map(|take| keys.queue(&take.queue)));
        names.extend(request.queues.iter().map(|take| keys.wake(&take.queue)));
        // Lua writes a number above 10^14 in exponent form (`1e+17`), which `LPOP` refuses.
        const MOST: usize = 1_000_000_000;
        let mut args = vec![
            request.worker.as_str().to_owned(),
            expiry_millis(request.lease).to_string(),
            request.max.min(MOST).to_string(),
        ];
        args.extend(request.queues.iter().map(|take| take.max.min(MOST).to_string()));
        args.extend(request.queues.iter().map(|take| take.queue.clone()));
        args.push(self.lease_floor().to_string());
        (names, args)
    }

    /// The lease number the next fetch or rescue must go above (see `Inner::lease_floor`).
    fn lease_floor(&self) -> u64 {
        self.inner.lease_floor.load(Ordering::Acquire)
    }

    /// The key of the scheduled, retry or dead set; `None` for a queue or the in-flight set.
    fn sorted_set(&self, set: &JobSet) -> Option<&str> {
        let keys = &self.inner.keys;
        match set {
            JobSet::Scheduled => Some(keys.scheduled()),
            JobSet::Retry => Some(keys.retry()),
            JobSet::Dead => Some(keys.dead()),
            JobSet::Queue(_) | JobSet::InFlight => None,
        }
    }

    /// Jobs in flight, by lease end then fetch order: whole leases before
    /// `offset` are skipped by their count of unsettled jobs, and only the
    /// leases of the page are read.
    async fn list_in_flight(&self, offset: usize, limit: usize) -> Result<Vec<StoredJob>, BackendError> {
        let keys = &self.inner.keys;
        let all = redis::cmd("ZRANGE").arg(keys.deadlines()).arg(0).arg(-1).arg("WITHSCORES").to_owned();
        let scored: Vec<(String, f64)> = self.query(&all).await?;
        if scored.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts = redis::cmd("HMGET");
        counts.arg(keys.leases());
        for (token, _) in &scored {
            counts.arg(token);
        }
        let unsettled: Vec<Option<usize>> = self.query(&counts).await?;
        let (mut skip, mut in_page) = (offset, 0);
        let mut fields = redis::cmd("HMGET");
        fields.arg(keys.in_flight());
        let mut ends = Vec::new();
        for ((token, at), unsettled) in scored.iter().zip(unsettled) {
            let (Some((number, size)), Some(unsettled)) = (lease_number(token), unsettled) else { continue };
            if in_page == 0 && skip >= unsettled {
                skip -= unsettled;
                continue;
            }
            for j in 1..=size {
                fields.arg(format!("{number}.{j}"));
                ends.push(*at as u64);
            }
            in_page += unsettled;
            if in_page >= skip + limit {
                break;
            }
        }
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<Option<Vec<u8>>> = self.query(&fields).await?;
        // Each record is `<token>\n<payload>`; a payload that is not UTF-8 is listed as `list` lists it.
        let payload = |record: Vec<u8>| {
            let start = record.iter().position(|&byte| byte == b'\n')? + 1;
            Some(record.get(start..)?.to_vec())
        };
        Ok(ends
            .into_iter()
            .zip(stored)
            .filter_map(|(at, stored)| Some(StoredJob::from_bytes(payload(stored?)?, at)))
            .skip(skip)
            .take(limit)
            .collect())
    }

    /// For each job id, whether a cancellation request holds for it now (one `ZMSCORE`).
    async fn cancels_holding(&self, jids: impl Iterator<Item = &str>) -> Result<Vec<bool>, BackendError> {
        let mut zmscore = redis::cmd("ZMSCORE");
        zmscore.arg(self.inner.keys.cancelled());
        let mut any = false;
        for jid in jids {
            zmscore.arg(jid);
            any = true;
        }
        if !any {
            return Ok(Vec::new());
        }
        let now = jobs_core::now_millis() as f64;
        let scores: Vec<Option<f64>> = self.query(&zmscore).await?;
        Ok(scores.into_iter().map(|until| until.is_some_and(|until| until > now)).collect())
    }

    async fn settle(
        &self,
        lease: &Lease,
        action: &str,
        target: &str,
        payload: String,
        due: u64,
    ) -> Result<bool, BackendError> {
        let keys = &self.inner.keys;
        let limits = self.inner.dead_limits;
        let mut call = self.inner.scripts.settle.key(keys.in_flight());
        call.key(keys.deadlines())
            .key(keys.leases())
            .key(target)
            .arg(&lease.id)
            .arg(&*lease.token)
            .arg(action)
            .arg(payload)
            .arg(due)
            .arg(limits.max_jobs)
            .arg(millis(limits.max_age));
        let applied: u8 = self.invoke(call).await?;
        Ok(applied == 1)
    }
}

/// `7.0.15` as `(7, 0, 15)`; a part that does not read is 0.
fn parse_version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Refuses a server older than [`MIN_REDIS_VERSION`], naming its version.
fn recent_enough(version: (u32, u32, u32), text: &str) -> Result<(), BackendError> {
    if version < MIN_REDIS_VERSION {
        let (a, b, c) = MIN_REDIS_VERSION;
        return Err(BackendError::permanent(format!("Redis {text} is too old: jobs needs Redis {a}.{b}.{c} or newer")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    #[test]
    fn a_redis_too_old_is_refused_with_its_version() {
        let refused = recent_enough(parse_version("6.0.16"), "6.0.16").unwrap_err();
        assert!(!refused.is_transient());
        assert_eq!(refused.to_string(), "backend error: Redis 6.0.16 is too old: jobs needs Redis 6.2.0 or newer");
        assert!(recent_enough(parse_version("6.2.0"), "6.2.0").is_ok());
        assert!(recent_enough(parse_version("7.0.15"), "7.0.15").is_ok());
        assert_eq!(parse_version("unknown"), (0, 0, 0), "an unreadable version is refused, never trusted");
    }

    /// Out of the box every store is bounded, by count and by age (DESIGN:
    /// "Bounded by default"; the dead set's defaults are `DeadLimits::default`).
    #[test]
    fn outcomes_and_events_are_bounded_by_default() {
        let config = RedisBackend::builder("redis://127.0.0.1:6379");
        assert_eq!((config.events_max_len, config.events_max_age), (10_000, Duration::from_secs(86_400)));
        assert_eq!(config.results_max, 100_000, "and each outcome expires after its job's keep_result");
        assert_eq!(config.dead_limits, DeadLimits::default());
    }

    /// A server loading its data after a restart answers `-LOADING`: the
    /// worker waits for it (transient), as for one it cannot reach; a
    /// refused password is not worth waiting for.
    #[test]
    fn a_server_loading_its_data_is_not_ready_yet_not_broken_for_good() {
        let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert!(is_not_ready(&loading) && !is_broken(&loading));
        let master_down = RedisError::from((ErrorKind::Server(ServerErrorKind::MasterDown), "master down"));
        assert!(is_not_ready(&master_down));
        let refused = RedisError::from((ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert!(!is_not_ready(&refused) && !is_broken(&refused));
    }
}
