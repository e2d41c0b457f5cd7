//! Test support (feature `test-util`): a private `redis-server` started on a
//! free loopback port with no persistence, answering before it is handed
//! out, killed on drop.
//!
//! ```no_run
//! let server = jobs_redis::testing::RedisServer::start();
//! let url = server.url(); // redis://127.0.0.1:<port>
//! ```
//!
//! [`RedisCluster`] starts a few of them as a Redis Cluster.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server, or panics saying why (a test that needs Redis never skips).
    ///
    /// # Panics
    /// When `redis-server` is missing or does not start.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments, e.g. `["--requirepass", "s3cret"]`.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not start.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            match Self::start_on(port, extra) {
                Ok(server) => return server,
                Err(error) => last_error = error,
            }
        }
        panic!("cannot start a private redis-server: {last_error}");
    }

    fn start_on(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(format!("jobs-test-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "no", "--dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run `redis-server` ({e}); install it (Debian: `apt-get install redis-server`) and try again"
                )
            })?;
        let mut server =
            RedisServer { child: Some(child), port, dir, extra: extra.iter().map(|a| (*a).to_owned()).collect() };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("redis-server on port {} exited with {status}", self.port));
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server on port {} did not answer PING within 10 s", self.port));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let mut last_error = String::new();
        for _ in 0..50 {
            let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
            match Self::start_on(self.port, &extra) {
                Ok(mut server) => {
                    self.child = server.child.take();
                    return;
                }
                Err(error) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cannot restart redis-server on port {}: {last_error}", self.port);
    }

    /// Runs one command through a raw connection and returns the reply's text
    /// (tests that push bytes no client would, or read `INFO`).
    ///
    /// # Panics
    /// When the server cannot be reached: this is test support.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the test redis-server");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("send a command");
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut reply = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = stream.read(&mut buf).expect("read the reply");
            reply.extend_from_slice(&buf[..n]);
            if n == 0 || complete_reply(&reply) {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of private servers: masters that share the 16,384 slots
/// in equal ranges, and replicas of some of them.
///
/// ```no_run
/// // Two masters, and a replica of the second.
/// let cluster = jobs_redis::testing::RedisCluster::start(2, &[1]);
/// let url = cluster.node(0).url(); // any node's URL reaches the whole cluster
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters and one replica of each master index in
    /// `replicas_of`, and returns once every node sees every slot served.
    ///
    /// # Panics
    /// When a server does not start or the cluster does not form within 30 s.
    pub fn start(masters: usize, replicas_of: &[usize]) -> RedisCluster {
        assert!(masters > 0, "a cluster needs a master");
        let settings =
            ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"];
        let nodes = (0..masters + replicas_of.len()).map(|_| RedisServer::start_with(&settings)).collect();
        let cluster = RedisCluster { nodes };
        let per_master = 16_384 / masters;
        for master in 0..masters {
            let first = master * per_master;
            let last = if master + 1 == masters { 16_383 } else { first + per_master - 1 };
            cluster.node(master).command(&["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()]);
        }
        for node in &cluster.nodes[1..] {
            cluster.node(0).command(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()]);
        }
        let all = cluster.nodes.len();
        cluster.wait_until("every node to know every other", |c| {
            c.nodes.iter().all(|node| {
                let nodes = node.command(&["CLUSTER", "NODES"]);
                nodes.lines().filter(|line| line.contains("connected")).count() == all && !nodes.contains("handshake")
            })
        });
        for (index, master) in replicas_of.iter().enumerate() {
            let master_id = cluster.id(*master);
            cluster.node(masters + index).command(&["CLUSTER", "REPLICATE", &master_id]);
        }
        cluster.wait_until("the cluster to serve every slot, with its replicas in sync", |c| {
            c.nodes.iter().all(|node| node.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                && (masters..all).all(|replica| c.info(replica).contains("master_link_status:up"))
        });
        cluster
    }

    /// The `index`th node: the masters first, then the replicas.
    pub fn node(&self, index: usize) -> &RedisServer {
        &self.nodes[index]
    }

    /// The `index`th node, to kill it.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn id(&self, index: usize) -> String {
        let reply = self.node(index).command(&["CLUSTER", "MYID"]);
        reply.lines().nth(1).unwrap_or_default().trim().to_owned()
    }

    /// The node's `INFO replication`.
    pub fn info(&self, index: usize) -> String {
        self.node(index).command(&["INFO", "replication"])
    }

    /// Whether the node is a master now.
    pub fn is_master(&self, index: usize) -> bool {
        self.info(index).contains("role:master")
    }

    /// The index of the master that serves `key`'s slot.
    ///
    /// # Panics
    /// When no live master serves it.
    pub fn owner_of(&self, key: &str) -> usize {
        (0..self.nodes.len())
            .find(|&index| {
                self.nodes[index].child.is_some()
                    && self.is_master(index)
                    && self.node(index).command(&["EXISTS", key]).starts_with(':')
            })
            .expect("a master serves the key's slot")
    }

    /// Waits (polling every 20 ms, at most 30 s) until `done` holds.
    ///
    /// # Panics
    /// When it does not hold within 30 s.
    pub fn wait_until(&self, what: &str, done: impl Fn(&RedisCluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    // A server that wants a password answers -NOAUTH: it is up all the same.
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut buf).is_ok()
        && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
}

/// Whether `reply` holds one whole RESP reply (enough for the replies tests read).
fn complete_reply(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    match text.as_bytes().first() {
        Some(b'+' | b'-' | b':') => text.ends_with("\r\n"),
        Some(b'$') => {
            let Some(header_end) = text.find("\r\n") else { return false };
            let Ok(len) = text[1..header_end].parse::<i64>() else { return false };
            len < 0 || reply.len() >= header_end + 2 + len as usize + 2
        }
        Some(b'*') => text.ends_with("\r\n"),
        _ => false,
    }
}
