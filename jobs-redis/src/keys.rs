//! The key layout. Every key carries the hash tag `{namespace}`, so every
//! script touches one hash slot and the layout works on Redis Cluster.

/// Names the keys of one namespace.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self { prefix: format!("{{{namespace}}}:") }
    }

    /// `{ns}:`, the prefix scripts build per-queue keys from.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A queue's ready list (FIFO: pushed on the right, fetched from the left).
    pub fn queue(&self, queue: &str) -> String {
        format!("{}q:{queue}", self.prefix)
    }

    /// A queue's wake list: at most one token, popped by blocked idle workers.
    pub fn wake(&self, queue: &str) -> String {
        format!("{}wake:{queue}", self.prefix)
    }

    /// Every queue name ever pushed to.
    pub fn queues(&self) -> String {
        format!("{}queues", self.prefix)
    }

    pub fn scheduled(&self) -> String {
        format!("{}scheduled", self.prefix)
    }

    pub fn retry(&self) -> String {
        format!("{}retry", self.prefix)
    }

    pub fn dead(&self) -> String {
        format!("{}dead", self.prefix)
    }

    /// In-flight jobs: lease id -> token, queue and payload.
    pub fn in_flight(&self) -> String {
        format!("{}inflight", self.prefix)
    }

    /// Lease deadlines: lease id scored by the time its lease ends.
    pub fn deadlines(&self) -> String {
        format!("{}deadlines", self.prefix)
    }

    /// The counter lease ids come from.
    pub fn lease_seq(&self) -> String {
        format!("{}leaseseq", self.prefix)
    }

    /// The prefix of uniqueness locks (`{ns}:unique:<sha1>`).
    pub fn unique_prefix(&self) -> String {
        format!("{}unique:", self.prefix)
    }

    /// Live workers, scored by their last heartbeat.
    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }
}
