//! Redis Cluster support: what the backend reads from a cluster's replies.
//!
//! Every key of a namespace shares one hash tag, so on a Redis Cluster they
//! all live in one slot, on one node: the backend talks to that node alone
//! (scripts, blocking waits and pipelines work as on a single server) and
//! moves when the slot does. A `MOVED` reply names the new node; when the
//! node is gone (its replica took over), the backend asks the other nodes it
//! knows from `CLUSTER NODES`.

use std::time::{Duration, Instant};

/// The least time between two rounds of questions to the cluster's nodes.
const ASK_EVERY: Duration = Duration::from_secs(1);

/// The nodes a backend on a Redis Cluster knows, to find its slot again.
#[derive(Clone, Debug)]
pub(crate) struct Cluster {
    nodes: Vec<(String, u16)>,
    asked: Option<Instant>,
}

impl Cluster {
    pub fn new(nodes: Vec<(String, u16)>) -> Self {
        let mut cluster = Cluster { nodes: Vec::new(), asked: None };
        cluster.learn(nodes);
        cluster
    }

    /// Adds nodes not known yet (a node that left stays: it may come back).
    pub fn learn(&mut self, nodes: Vec<(String, u16)>) {
        for node in nodes {
            if !self.nodes.contains(&node) {
                self.nodes.push(node);
            }
        }
    }

    /// The nodes to ask now, or `None` when the last round was under a second ago.
    pub fn ask_now(&mut self, now: Instant) -> Option<Vec<(String, u16)>> {
        if self.asked.is_some_and(|asked| now.duration_since(asked) < ASK_EVERY) {
            return None;
        }
        self.asked = Some(now);
        Some(self.nodes.clone())
    }
}

/// Whether `INFO cluster` says the server is a cluster node.
pub(crate) fn enabled(info: &str) -> bool {
    info.lines().any(|line| line.trim() == "cluster_enabled:1")
}

/// The addresses in a `CLUSTER NODES` reply (`<id> <host:port@bus[,name]> <flags> …`),
/// leaving out nodes without an address and nodes in a handshake.
pub(crate) fn nodes(reply: &str) -> Vec<(String, u16)> {
    reply
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.split(',').any(|flag| flag == "noaddr" || flag == "handshake") {
                return None;
            }
            let node = address.split(['@', ',']).next()?;
            host_port(node).map(|(host, port)| (host.to_owned(), port))
        })
        .collect()
}

/// The node a `MOVED` reply names, asked of `asked` (a host): an empty host
/// (`:6381`, a node whose address the cluster does not announce) means the
/// host of the node that answered.
pub(crate) fn redirected(node: &str, asked: &str) -> String {
    if node.starts_with(':') { format!("{asked}{node}") } else { node.to_owned() }
}

/// `host:port` (the host may be an IPv6 address, with colons) split in two;
/// `None` without a host or a port.
pub(crate) fn host_port(node: &str) -> Option<(&str, u16)> {
    let (host, port) = node.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok().filter(|port| *port != 0)?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_nodes_of_a_cluster_nodes_reply() {
        let reply = "\
07c37dfeb2352e0b3d3f7e8f0a3b4c5d6e7f8091 127.0.0.1:30004@31004,node-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
6ec23923021cf3ffec47632106199cb7f496ce01 :0@0 master,noaddr - 1426238316232 1426238316232 5 disconnected
1111111111111111111111111111111111111111 127.0.0.1:30009@31009 handshake - 0 0 0 connected
2222222222222222222222222222222222222222 [::1]:30010@31010 master - 0 0 6 connected 10923-16383
";
        assert_eq!(
            nodes(reply),
            [
                ("127.0.0.1".to_owned(), 30004),
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30001),
                ("::1".to_owned(), 30010)
            ]
        );
        assert!(nodes("").is_empty());
        assert!(nodes("garbage\nid only-one-field").is_empty());
    }

    #[test]
    fn a_redirect_without_a_host_is_to_the_host_asked() {
        assert_eq!(redirected(":6381", "10.0.0.5"), "10.0.0.5:6381");
        assert_eq!(redirected("10.0.0.7:6381", "10.0.0.5"), "10.0.0.7:6381");
    }

    #[test]
    fn splits_host_and_port() {
        assert_eq!(host_port("10.0.0.5:6379"), Some(("10.0.0.5", 6379)));
        assert_eq!(host_port("::1:7000"), Some(("::1", 7000)));
        assert_eq!(host_port(":6379"), None);
        assert_eq!(host_port("host:0"), None);
        assert_eq!(host_port("host"), None);
        assert_eq!(host_port("host:port"), None);
    }

    #[test]
    fn asks_the_nodes_at_most_once_a_second() {
        let start = Instant::now();
        let mut cluster = Cluster::new(vec![("a".into(), 1), ("b".into(), 2), ("a".into(), 1)]);
        assert_eq!(cluster.ask_now(start), Some(vec![("a".into(), 1), ("b".into(), 2)]));
        assert_eq!(cluster.ask_now(start + Duration::from_millis(500)), None);
        cluster.learn(vec![("c".into(), 3)]);
        assert_eq!(cluster.ask_now(start + ASK_EVERY).map(|nodes| nodes.len()), Some(3));
        assert!(enabled("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!enabled("# Cluster\r\ncluster_enabled:0\r\n"));
    }
}
