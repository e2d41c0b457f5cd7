//! [`RedisBackend`]: the production broker, on a `deadpool-redis` pool.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use deadpool_redis::redis::aio::MultiplexedConnection;
use deadpool_redis::redis::{self, AsyncConnectionConfig, RedisError, Value};
use deadpool_redis::{Connection, Manager, Pool, PoolConfig, Runtime, Timeouts};
use jobs_core::{
    Backend, BackendError, BoxFuture, DeadLimits, FetchRequest, Fetched, JobSet, Lease, PushJob, PushOutcome,
    StoredJob, WorkerId,
};

use crate::keys::Keys;
use crate::scripts::Scripts;

/// The oldest Redis this backend runs on: `LPOP` with a count needs 6.2.
pub const MIN_REDIS_VERSION: (u32, u32, u32) = (6, 2, 0);

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
}

/// A broker on Redis. Cheap to clone; clones share the pool.
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
    pool: Pool,
    /// One multiplexed connection pipelines every non-blocking command.
    shared: Mutex<Option<MultiplexedConnection>>,
    /// Connections for blocking waits, one per waiter, kept out of the pool.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    keys: Keys,
    scripts: Scripts,
    dead_limits: DeadLimits,
    timeout: Duration,
    /// The server's URL without its password, for messages.
    server: String,
}

impl RedisConfig {
    /// Uses `namespace` as the prefix (and hash tag) of every key (default `jobs`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The most connections the pool holds (default 16). Blocking waits use
    /// connections of their own, taken out of the pool, so they never starve it.
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

    /// Connects, checks the server (version, eviction policy) and loads the scripts.
    pub async fn connect(self) -> Result<RedisBackend, BackendError> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let manager = Manager::new_with_config(self.url.as_str(), connection)
            .map_err(|error| BackendError::permanent(format!("invalid Redis URL `{}`: {error}", redact(&self.url))))?;
        let pool = Pool::builder(manager)
            .config(PoolConfig {
                max_size: self.pool_size.max(1),
                timeouts: Timeouts {
                    wait: Some(self.timeout),
                    create: Some(self.timeout),
                    recycle: Some(self.timeout),
                },
                ..PoolConfig::default()
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|error| BackendError::permanent(format!("cannot build the Redis pool: {error}")))?;
        RedisBackend::open(pool, redact(&self.url), self.namespace, self.dead_limits, self.timeout).await
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
        }
    }

    /// Connects with the default settings; see [`RedisConfig::connect`].
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        Self::builder(url).connect().await
    }

    /// A backend on an existing pool, under `namespace`.
    pub async fn from_pool(pool: Pool, namespace: &str) -> Result<Self, BackendError> {
        let server = "the pool's server".to_owned();
        Self::open(pool, server, namespace.to_owned(), DeadLimits::default(), Duration::from_secs(5)).await
    }

    async fn open(
        pool: Pool,
        server: String,
        namespace: String,
        dead_limits: DeadLimits,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        if namespace.is_empty() || namespace.contains(['{', '}']) {
            return Err(BackendError::permanent(format!(
                "namespace `{namespace}` must be non-empty and free of braces (it is the keys' hash tag)"
            )));
        }
        let backend = Self {
            inner: Arc::new(Inner {
                pool,
                shared: Mutex::default(),
                blocking: Mutex::default(),
                keys: Keys::new(&namespace),
                scripts: Scripts::new(),
                dead_limits,
                timeout,
                server,
            }),
        };
        backend.check_server().await?;
        Ok(backend)
    }

    /// The namespace's key prefix, `{namespace}:`.
    pub fn key_prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The underlying pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Refuses a Redis older than [`MIN_REDIS_VERSION`], warns when keys may
    /// be evicted, and loads the scripts.
    async fn check_server(&self) -> Result<(), BackendError> {
        let check = self.server_check().await?;
        if check.version < MIN_REDIS_VERSION {
            let (a, b, c) = MIN_REDIS_VERSION;
            return Err(BackendError::permanent(format!(
                "Redis {} is too old: jobs needs Redis {a}.{b}.{c} or newer",
                check.version_text
            )));
        }
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
        tracing::info!(redis = %check.version_text, namespace = %self.key_prefix(), "connected to Redis");
        Ok(())
    }

    /// Reads the server's version and the settings that can lose jobs.
    pub async fn server_check(&self) -> Result<ServerCheck, BackendError> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.map_err(|e| self.fail(e))?;
        let version_text =
            info.lines().find_map(|line| line.strip_prefix("redis_version:")).map_or("unknown", str::trim).to_owned();
        let mut parts = version_text.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
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
        let conn = self.checkout().await?;
        *self.shared() = Some(conn.clone());
        Ok(conn)
    }

    async fn checkout(&self) -> Result<MultiplexedConnection, BackendError> {
        let pooled = self.inner.pool.get().await.map_err(|error| {
            let reason = match &error {
                deadpool_redis::PoolError::Backend(e) => e.to_string(),
                other => other.to_string(),
            };
            BackendError::transient(format!("cannot connect to Redis at {}: {reason}", self.inner.server))
                .with_source(error)
        })?;
        Ok(Connection::take(pooled))
    }

    /// Maps a command error, dropping the shared connection when it is broken.
    fn fail(&self, error: RedisError) -> BackendError {
        let broken =
            error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_connection_refusal();
        if broken {
            *self.shared() = None;
            BackendError::transient(format!("Redis unreachable: {error}")).with_source(error)
        } else {
            BackendError::permanent(format!("Redis refused a command: {error}")).with_source(error)
        }
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let mut conn = self.conn().await?;
        invocation.invoke_async(&mut conn).await.map_err(|e| self.fail(e))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackendError> {
        let mut conn = self.conn().await?;
        cmd.query_async(&mut conn).await.map_err(|e| self.fail(e))
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

/// Hides the password of a URL in messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Reads the `id, queue, payload, token` quadruples the fetch and rescue scripts return.
fn leases(values: Vec<String>) -> Vec<Fetched> {
    values
        .chunks_exact(4)
        .map(|c| Fetched {
            payload: c[2].clone(),
            lease: Lease { id: c[0].clone(), queue: c[1].clone(), token: c[3].clone() },
        })
        .collect()
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

impl Backend for RedisBackend {
    fn push(&self, jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
        Box::pin(async move {
            if jobs.is_empty() {
                return Ok(PushOutcome::default());
            }
            let keys = &self.inner.keys;
            let mut queues: Vec<&str> = Vec::new();
            for job in &jobs {
                if !queues.contains(&job.queue.as_str()) {
                    queues.push(&job.queue);
                }
            }
            let now = jobs_core::now_millis();
            let script = &self.inner.scripts.push;
            let mut call = script.key(keys.scheduled());
            call.key(keys.queues());
            for queue in &queues {
                call.key(keys.queue(queue)).key(keys.wake(queue));
            }
            call.arg(keys.unique_prefix()).arg(queues.len());
            for queue in &queues {
                call.arg(*queue);
            }
            for job in &jobs {
                let index = queues.iter().position(|q| *q == job.queue).map_or(1, |i| i + 1);
                let (unique, ttl) = job.unique.as_ref().map_or((String::new(), 0), |u| (u.key.clone(), millis(u.ttl)));
                let due_later = job.run_at.filter(|at| *at > now).unwrap_or(0);
                call.arg(index).arg(due_later).arg(&job.payload).arg(unique).arg(ttl);
            }
            let duplicates: Vec<usize> = self.invoke(call).await?;
            Ok(PushOutcome { duplicates })
        })
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            let script = &self.inner.scripts.fetch;
            let mut call = script.key(keys.in_flight());
            call.key(keys.deadlines()).key(keys.lease_seq());
            for take in request.queues {
                call.key(keys.queue(&take.queue));
            }
            for take in request.queues {
                call.key(keys.wake(&take.queue));
            }
            call.arg(request.worker.as_str()).arg(millis(request.lease)).arg(request.max);
            for take in request.queues {
                call.arg(take.max);
            }
            for take in request.queues {
                call.arg(&take.queue);
            }
            Ok(leases(self.invoke(call).await?))
        })
    }

    fn wait_for_jobs<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let reused = self.inner.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match reused {
                Some(conn) => conn,
                None => self.checkout().await?,
            };
            // The reply comes only when BLPOP returns: the client must wait longer than the server blocks.
            conn.set_response_timeout(timeout + self.inner.timeout);
            let mut blpop = redis::cmd("BLPOP");
            for queue in queues {
                blpop.arg(self.inner.keys.wake(queue));
            }
            blpop.arg(timeout.as_secs_f64().max(0.01));
            match blpop.query_async::<Value>(&mut conn).await {
                Ok(_) => {
                    self.inner.blocking.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
                    Ok(())
                }
                Err(error) => Err(self.fail(error)),
            }
        })
    }

    fn complete<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            if leases.is_empty() {
                return Ok(0);
            }
            let keys = &self.inner.keys;
            let mut call = self.inner.scripts.complete.key(keys.in_flight());
            call.key(keys.deadlines());
            for lease in leases {
                call.arg(&lease.id).arg(&lease.token);
            }
            self.invoke(call).await
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
            call.key(keys.deadlines()).arg(keys.prefix());
            for lease in leases {
                call.arg(&lease.id).arg(&lease.token);
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
            let mut call = self.inner.scripts.extend.key(keys.in_flight());
            call.key(keys.deadlines()).arg(millis(lease));
            for held in leases {
                call.arg(&held.id).arg(&held.token);
            }
            let held: Vec<u8> = self.invoke(call).await?;
            Ok(held.into_iter().map(|h| h == 1).collect())
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
            call.key(keys.deadlines()).key(keys.lease_seq()).arg(worker.as_str()).arg(millis(lease)).arg(max);
            Ok(leases(self.invoke(call).await?))
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
            let (start, stop) = (offset as i64, (offset + limit) as i64 - 1);
            let sorted = |key: &str| {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(key).arg(start).arg(stop).arg("WITHSCORES");
                cmd
            };
            match set {
                JobSet::Queue(queue) => {
                    let mut cmd = redis::cmd("LRANGE");
                    cmd.arg(keys.queue(queue)).arg(start).arg(stop);
                    let payloads: Vec<String> = self.query(&cmd).await?;
                    Ok(payloads.into_iter().map(|payload| StoredJob { payload, at: 0 }).collect())
                }
                JobSet::Scheduled | JobSet::Retry | JobSet::Dead => {
                    let key = match set {
                        JobSet::Scheduled => keys.scheduled(),
                        JobSet::Retry => keys.retry(),
                        _ => keys.dead(),
                    };
                    let scored: Vec<(String, f64)> = self.query(&sorted(key)).await?;
                    Ok(scored.into_iter().map(|(payload, at)| StoredJob { payload, at: at as u64 }).collect())
                }
                JobSet::InFlight => {
                    let scored: Vec<(String, f64)> = self.query(&sorted(keys.deadlines())).await?;
                    if scored.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut hmget = redis::cmd("HMGET");
                    hmget.arg(keys.in_flight());
                    for (id, _) in &scored {
                        hmget.arg(id);
                    }
                    let stored: Vec<Option<String>> = self.query(&hmget).await?;
                    Ok(scored
                        .into_iter()
                        .zip(stored)
                        .filter_map(|((_, at), stored)| {
                            let payload = stored?.splitn(3, '\n').nth(2)?.to_owned();
                            Some(StoredJob { payload, at: at as u64 })
                        })
                        .collect())
                }
            }
        })
    }

    fn heartbeat<'a>(&'a self, worker: &'a WorkerId, ttl: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let until = jobs_core::now_millis() + millis(ttl);
            let mut pipe = redis::pipe();
            pipe.cmd("ZADD").arg(self.inner.keys.workers()).arg(until).arg(worker.as_str()).ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(self.inner.keys.workers())
                .arg("-inf")
                .arg(jobs_core::now_millis())
                .ignore();
            let mut conn = self.conn().await?;
            pipe.query_async::<()>(&mut conn).await.map_err(|e| self.fail(e))
        })
    }

    fn retire<'a>(&'a self, worker: &'a WorkerId) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(
            async move { self.query(redis::cmd("ZREM").arg(self.inner.keys.workers()).arg(worker.as_str())).await },
        )
    }

    fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            let cmd = match set {
                JobSet::Queue(queue) => redis::cmd("LLEN").arg(keys.queue(queue)).to_owned(),
                JobSet::Scheduled => redis::cmd("ZCARD").arg(keys.scheduled()).to_owned(),
                JobSet::Retry => redis::cmd("ZCARD").arg(keys.retry()).to_owned(),
                JobSet::Dead => redis::cmd("ZCARD").arg(keys.dead()).to_owned(),
                JobSet::InFlight => redis::cmd("HLEN").arg(keys.in_flight()).to_owned(),
            };
            self.query(&cmd).await
        })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        Box::pin(self.queue_names())
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
            .key(target)
            .arg(&lease.id)
            .arg(&lease.token)
            .arg(action)
            .arg(payload)
            .arg(due)
            .arg(limits.max_jobs)
            .arg(millis(limits.max_age));
        let applied: u8 = self.invoke(call).await?;
        Ok(applied == 1)
    }
}
