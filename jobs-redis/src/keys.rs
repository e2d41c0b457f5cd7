//! The key layout. Every key carries the hash tag `{namespace}`, so every
//! script touches one hash slot and the layout works on Redis Cluster.

/// Names the keys of one namespace. The fixed keys are built once, not on
/// every script call; per-queue keys are built from the prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    queues: String,
    scheduled: String,
    retry: String,
    dead: String,
    in_flight: String,
    deadlines: String,
    legacy_deadlines: String,
    leases: String,
    lease_seq: String,
    unique_prefix: String,
    workers: String,
    events: String,
    cancelled: String,
    results: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        let prefix = format!("{{{namespace}}}:");
        let key = |name: &str| format!("{prefix}{name}");
        Self {
            queues: key("queues"),
            scheduled: key("scheduled"),
            retry: key("retry"),
            dead: key("dead"),
            in_flight: key("inflight"),
            deadlines: key("lease-deadlines"),
            legacy_deadlines: key("deadlines"),
            leases: key("leases"),
            lease_seq: key("leaseseq"),
            unique_prefix: key("unique:"),
            workers: key("workers"),
            events: key("events"),
            cancelled: key("cancelled"),
            results: key("results"),
            prefix,
        }
    }

    /// The fixed keys with the Redis type each must have (`TYPE`'s answer).
    pub fn typed(&self) -> [(&str, &'static str); 13] {
        [
            (&self.queues, "set"),
            (&self.scheduled, "zset"),
            (&self.retry, "zset"),
            (&self.dead, "zset"),
            (&self.in_flight, "hash"),
            (&self.deadlines, "zset"),
            (&self.legacy_deadlines, "zset"),
            (&self.leases, "hash"),
            (&self.lease_seq, "string"),
            (&self.workers, "zset"),
            (&self.events, "stream"),
            (&self.cancelled, "zset"),
            (&self.results, "zset"),
        ]
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
    pub fn queues(&self) -> &str {
        &self.queues
    }

    /// Jobs due later, scored by due time.
    pub fn scheduled(&self) -> &str {
        &self.scheduled
    }

    /// Failed jobs waiting for their next attempt, scored by its time.
    pub fn retry(&self) -> &str {
        &self.retry
    }

    /// Dead jobs, scored by time of death.
    pub fn dead(&self) -> &str {
        &self.dead
    }

    /// In-flight jobs: field `L.j` (job j of lease L) -> queue and payload.
    pub fn in_flight(&self) -> &str {
        &self.in_flight
    }

    /// Lease deadlines: lease token scored by the time the lease ends.
    pub fn deadlines(&self) -> &str {
        &self.deadlines
    }

    /// Per-job lease deadlines of workers from before leases covered a whole
    /// fetch (in-flight id -> lease end): only rescued, so that an upgrade
    /// strands nothing while old and new workers run side by side.
    pub fn legacy_deadlines(&self) -> &str {
        &self.legacy_deadlines
    }

    /// Live leases: token -> how many of its jobs are not settled yet.
    pub fn leases(&self) -> &str {
        &self.leases
    }

    /// The counter lease numbers come from.
    pub fn lease_seq(&self) -> &str {
        &self.lease_seq
    }

    /// The prefix of uniqueness locks (`{ns}:unique:<sha1>`).
    pub fn unique_prefix(&self) -> &str {
        &self.unique_prefix
    }

    /// Live workers, scored by the time their heartbeat lapses.
    pub fn workers(&self) -> &str {
        &self.workers
    }

    /// The event stream (`XADD … MAXLEN ~`), one field `e` holding an event's JSON.
    pub fn events(&self) -> &str {
        &self.events
    }

    /// The index of stored outcomes: job id scored by the time the outcome expires.
    pub fn results(&self) -> &str {
        &self.results
    }

    /// Cancellation requests: job id scored by the time the request holds until (ms).
    pub fn cancelled(&self) -> &str {
        &self.cancelled
    }

    /// A job's stored outcome (JSON, with the outcome's ttl).
    pub fn result(&self, jid: &str) -> String {
        format!("{}result:{jid}", self.prefix)
    }

    /// A job's wake-up list: one token while its stored outcome is final.
    pub fn done(&self, jid: &str) -> String {
        format!("{}done:{jid}", self.prefix)
    }
}
