//! [`census()`]: how many payloads of each job name and version a backend
//! holds, and where, so a team knows when an old version is gone and the
//! default that served it may be removed.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, JobSet};
use crate::error::BackendError;

/// How many payloads [`census()`] reads with one [`Backend::list`] call.
pub const DEFAULT_CENSUS_BATCH: usize = 500;

/// The payloads a backend holds, counted by job name and version and by where
/// they wait. Made by [`census()`]; prints as a table.
///
/// `rows` are sorted by job name, then version. A payload counts under the
/// `job` and `version` written in it (an old name still in use as an alias is
/// its own row); payloads whose name or version cannot be read are counted in
/// `unreadable`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{census, Client, MemoryBackend, RawJob};
///
/// let backend = MemoryBackend::new();
/// let client = Client::new(backend.clone());
/// for version in [1, 2, 2] {
///     let args = serde_json::json!({ "user_id": 7 });
///     client.enqueue_raw(RawJob { job: "send_sms".into(), version, queue: "critical".into(), args }).await?;
/// }
///
/// let census = census(&backend).await?;
/// assert_eq!(census.get("send_sms", 1).map(|c| c.total()), Some(1));
/// assert_eq!(census.get("send_sms", 2).map(|c| c.ready()), Some(2));
/// assert_eq!(
///     census.to_string(),
///     "job       version  critical  scheduled  retry  dead  in-flight  total\n\
///      send_sms        1         1          0      0     0          0      1\n\
///      send_sms        2         2          0      0     0          0      2\n"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// One row per job name and version found, sorted by name, then version.
    pub rows: Vec<CensusRow>,
    /// Payloads whose job name or version could not be read, by location.
    pub unreadable: CensusCounts,
}

/// The payloads of one job name at one version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusRow {
    /// The job name as written in the payloads (a current name or an alias).
    pub job: String,
    /// The signature version the payloads were written at.
    pub version: u32,
    /// Where they wait.
    pub counts: CensusCounts,
}

/// How many payloads wait in each place a job can be.
///
/// ```
/// use jobs_core::CensusCounts;
///
/// let counts = CensusCounts { dead: 2, retry: 1, ..CensusCounts::default() };
/// assert_eq!((counts.ready(), counts.total()), (0, 3));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusCounts {
    /// Ready to run, per queue; queues holding none are left out.
    pub queues: BTreeMap<String, usize>,
    /// Enqueued to run later, or put back for a newer worker.
    pub scheduled: usize,
    /// Failed, waiting for their next attempt.
    pub retry: usize,
    /// In the dead set (they come back if someone retries them from there).
    pub dead: usize,
    /// Fetched by a worker and not yet settled.
    pub in_flight: usize,
}

impl CensusCounts {
    /// The payloads ready in all queues together.
    pub fn ready(&self) -> usize {
        self.queues.values().sum()
    }

    /// Every payload counted, the dead set included: an old version is gone
    /// only when this is 0, since a dead job can be retried.
    pub fn total(&self) -> usize {
        self.ready() + self.scheduled + self.retry + self.dead + self.in_flight
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    fn add(&mut self, set: &JobSet) {
        match set {
            JobSet::Queue(queue) => *self.queues.entry(queue.clone()).or_default() += 1,
            JobSet::Scheduled => self.scheduled += 1,
            JobSet::Retry => self.retry += 1,
            JobSet::Dead => self.dead += 1,
            JobSet::InFlight => self.in_flight += 1,
        }
    }
}

impl Census {
    /// The counts of `job` at `version`, when any payload of it was found.
    ///
    /// ```
    /// let census = jobs_core::Census::default();
    /// assert!(census.get("send_sms", 1).is_none());
    /// ```
    pub fn get(&self, job: &str, version: u32) -> Option<&CensusCounts> {
        self.rows.iter().find(|row| row.job == job && row.version == version).map(|row| &row.counts)
    }

    /// Whether no payload at all was found (readable or not).
    ///
    /// ```
    /// assert!(jobs_core::Census::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.unreadable.is_empty()
    }

    /// The queues that hold at least one counted payload, sorted.
    ///
    /// ```
    /// assert!(jobs_core::Census::default().queues().is_empty());
    /// ```
    pub fn queues(&self) -> Vec<&str> {
        let all = self.rows.iter().map(|row| &row.counts).chain([&self.unreadable]);
        let mut names: Vec<&str> = all.flat_map(|counts| counts.queues.keys().map(String::as_str)).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The table `versions` prints: a header, then one line per job name and
/// version with its counts per queue (only queues that hold a counted
/// payload), in the scheduled, retry and dead sets, in flight, and in total;
/// a last `(unreadable)` line when some payload could not be read. When
/// nothing waits, one line says so.
impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str(NOTHING_WAITS);
        }
        let queues = self.queues();
        let mut lines: Vec<Vec<String>> = Vec::with_capacity(self.rows.len() + 2);
        let mut header = vec!["job".to_owned(), "version".to_owned()];
        header.extend(queues.iter().map(|q| queue_header(q)));
        header.extend(SET_HEADERS.iter().map(|h| (*h).to_owned()));
        lines.push(header);
        let cells = |job: &str, version: String, counts: &CensusCounts| {
            let mut line = vec![job.to_owned(), version];
            line.extend(queues.iter().map(|q| counts.queues.get(*q).copied().unwrap_or(0).to_string()));
            let sets = [counts.scheduled, counts.retry, counts.dead, counts.in_flight, counts.total()];
            line.extend(sets.iter().map(usize::to_string));
            line
        };
        for row in &self.rows {
            lines.push(cells(&row.job, row.version.to_string(), &row.counts));
        }
        if !self.unreadable.is_empty() {
            lines.push(cells("(unreadable)", "-".to_owned(), &self.unreadable));
        }
        let columns = lines.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|c| lines.iter().map(|l| l.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        for line in &lines {
            for (c, (cell, width)) in line.iter().zip(&widths).enumerate() {
                match c {
                    0 => write!(f, "{cell:<width$}")?,
                    _ => write!(f, "  {cell:>width$}")?,
                }
            }
            f.write_str("\n")?;
        }
        Ok(())
    }
}

/// What the table says when there is nothing to count.
const NOTHING_WAITS: &str = "nothing waits: every queue and the scheduled, retry, dead and in-flight sets are empty\n";

/// The columns after the queues', in order.
const SET_HEADERS: [&str; 5] = ["scheduled", "retry", "dead", "in-flight", "total"];

/// A queue's column header: its name, unless that would read as another column.
fn queue_header(queue: &str) -> String {
    if queue == "job" || queue == "version" || SET_HEADERS.contains(&queue) {
        format!("queue:{queue}")
    } else {
        queue.to_owned()
    }
}

/// Counts the payloads of `backend` by job name, version and location,
/// reading [`DEFAULT_CENSUS_BATCH`] payloads per call.
///
/// It pages through every queue ([`Backend::queues`], and those of the jobs
/// linked into this binary, which a producer in another language may push
/// to without recording the name), the scheduled, retry
/// and dead sets and the in-flight jobs with [`Backend::list`], so that no
/// single call holds a Redis server for long. A payload that cannot be read
/// is counted as unreadable, never an error; only a failing backend is.
///
/// It is a census, not a snapshot: a job that moves while the census runs
/// (fetched, retried, promoted, finished) may be counted twice, in two
/// places, or not at all. Counts are exact when nothing moves, as when the
/// workers are stopped.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{census, Client, MemoryBackend, RawJob};
///
/// let backend = MemoryBackend::new();
/// let args = serde_json::json!({ "user_id": 7 });
/// let raw = RawJob { job: "send_sms".into(), version: 1, queue: "critical".into(), args };
/// Client::new(backend.clone()).enqueue_raw(raw).await?;
///
/// let census = census(&backend).await?;
/// let v1 = census.get("send_sms", 1).expect("one v1 payload waits");
/// assert_eq!(v1.queues["critical"], 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub async fn census<B: Backend + ?Sized>(backend: &B) -> Result<Census, BackendError> {
    census_in_batches(backend, DEFAULT_CENSUS_BATCH).await
}

/// The queues to look at, sorted: those [`Backend::queues`] lists and those
/// the jobs linked into this binary name (a producer in another language
/// may push to one without recording its name).
pub async fn queues<B: Backend + ?Sized>(backend: &B) -> Result<Vec<String>, BackendError> {
    let mut queues = backend.queues().await?;
    queues.extend(inventory::iter::<crate::registry::JobRegistration>.into_iter().map(|job| job.queue.to_owned()));
    queues.sort_unstable();
    queues.dedup();
    Ok(queues)
}

/// [`census()`], reading at most `batch` payloads per [`Backend::list`] call
/// (a `batch` of 0 reads 1).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{census_in_batches, MemoryBackend};
///
/// let census = census_in_batches(&MemoryBackend::new(), 100).await?;
/// assert!(census.is_empty());
/// # Ok::<(), jobs_core::BackendError>(())
/// # }).unwrap();
/// ```
pub async fn census_in_batches<B: Backend + ?Sized>(backend: &B, batch: usize) -> Result<Census, BackendError> {
    let batch = batch.max(1);
    let mut sets: Vec<JobSet> = queues(backend).await?.into_iter().map(JobSet::Queue).collect();
    sets.extend([JobSet::Scheduled, JobSet::Retry, JobSet::Dead, JobSet::InFlight]);
    let mut tally = Tally::default();
    for set in &sets {
        let mut offset = 0;
        loop {
            let page = backend.list(set, offset, batch).await?;
            if page.is_empty() {
                break;
            }
            for job in &page {
                tally.count(&job.payload, set);
            }
            // A page may come back short of `batch` before the end (an in-flight job
            // settled between two reads), so only an empty page ends the set.
            offset += batch;
        }
    }
    Ok(tally.into_census())
}

#[derive(Default)]
struct Tally {
    rows: BTreeMap<(String, u32), CensusCounts>,
    unreadable: CensusCounts,
}

impl Tally {
    fn count(&mut self, payload: &str, set: &JobSet) {
        match name_and_version(payload) {
            Some(key) => self.rows.entry(key).or_default().add(set),
            None => self.unreadable.add(set),
        }
    }

    fn into_census(self) -> Census {
        let rows = self.rows.into_iter().map(|((job, version), counts)| CensusRow { job, version, counts }).collect();
        Census { rows, unreadable: self.unreadable }
    }
}

/// The two fields a census needs; the rest of the payload (arguments
/// included) is skipped, not built.
#[derive(Deserialize)]
struct NameAndVersion<'a> {
    #[serde(borrow)]
    job: Cow<'a, str>,
    #[serde(default = "first_version")]
    version: u64,
}

fn first_version() -> u64 {
    1
}

/// The job name and version of a payload, read as a worker reads them (a
/// missing `version` is 1), even when other fields are malformed: such a
/// payload still holds its version's arguments. `None` when either is unreadable.
fn name_and_version(payload: &str) -> Option<(String, u32)> {
    // serde would also read a struct from a JSON array; a payload must be an object.
    if !payload.trim_start().starts_with('{') {
        return None;
    }
    let head: NameAndVersion<'_> = serde_json::from_str(payload).ok()?;
    let version = u32::try_from(head.version).ok().filter(|v| *v >= 1)?;
    (!head.job.is_empty()).then(|| (head.job.into_owned(), version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_version_are_read_as_a_worker_reads_them() {
        let cases = [
            (r#"{"jid":"a","job":"greet"}"#, Some(("greet", 1))),
            (r#"{"jid":"a","job":"greet","version":1}"#, Some(("greet", 1))),
            (r#" {"version":3,"args":{"deep":[1,{"x":null}]},"job":"gr\u0065et"}"#, Some(("greet", 3))),
            (r#"{"jid":"a","job":"greet","version":2,"attempt":"bad"}"#, Some(("greet", 2))),
            (r#"{"jid":"a","job":"greet","version":0}"#, None),
            (r#"{"jid":"a","job":"greet","version":4294967296}"#, None),
            (r#"{"jid":"a","job":"greet","version":"2"}"#, None),
            (r#"{"jid":"a","job":"greet","version":null}"#, None),
            (r#"{"jid":"a","job":"greet","version":2.0}"#, None),
            (r#"{"jid":"a","job":""}"#, None),
            (r#"{"jid":"a","job":7}"#, None),
            (r#"{"jid":"a"}"#, None),
            (r#"["greet",2]"#, None),
            ("{nope", None),
            ("", None),
        ];
        for (payload, expected) in cases {
            let found = name_and_version(payload);
            assert_eq!(found.as_ref().map(|(j, v)| (j.as_str(), *v)), expected, "{payload}");
        }
    }

    fn counts(queues: &[(&str, usize)], sets: [usize; 4]) -> CensusCounts {
        CensusCounts {
            queues: queues.iter().map(|(q, n)| ((*q).to_owned(), *n)).collect(),
            scheduled: sets[0],
            retry: sets[1],
            dead: sets[2],
            in_flight: sets[3],
        }
    }

    #[test]
    fn table_has_a_column_per_queue_that_holds_a_payload_and_a_total() {
        let census = Census {
            rows: vec![
                CensusRow {
                    job: "greet".into(),
                    version: 1,
                    counts: counts(&[("default", 3), ("mail", 12)], [1, 0, 2, 0]),
                },
                CensusRow { job: "greet".into(), version: 2, counts: counts(&[("default", 2)], [0, 0, 0, 1]) },
                CensusRow { job: "send_welcome_email".into(), version: 10, counts: counts(&[], [0, 1, 0, 0]) },
            ],
            unreadable: counts(&[("mail", 1)], [0, 0, 1, 0]),
        };
        let expected = "\
job                 version  default  mail  scheduled  retry  dead  in-flight  total
greet                     1        3    12          1      0     2          0     18
greet                     2        2     0          0      0     0          1      3
send_welcome_email       10        0     0          0      1     0          0      1
(unreadable)              -        0     1          0      0     1          0      2
";
        assert_eq!(census.to_string(), expected);
        assert_eq!(census.queues(), ["default", "mail"]);
    }

    #[test]
    fn a_queue_named_like_a_set_is_marked_as_a_queue() {
        let census = Census {
            rows: vec![CensusRow { job: "x".into(), version: 1, counts: counts(&[("dead", 1)], [0, 0, 0, 0]) }],
            unreadable: CensusCounts::default(),
        };
        assert_eq!(
            census.to_string(),
            "job  version  queue:dead  scheduled  retry  dead  in-flight  total\nx          1           1          0      0     0          0      1\n"
        );
    }

    #[test]
    fn an_empty_census_says_nothing_waits() {
        assert_eq!(Census::default().to_string(), NOTHING_WAITS);
    }

    /// A [`MemoryBackend`](crate::MemoryBackend) that records every `list` call's limit.
    struct Recording {
        inner: crate::MemoryBackend,
        limits: std::sync::Mutex<Vec<usize>>,
    }

    impl Backend for Recording {
        fn push(&self, jobs: Vec<crate::PushJob>) -> crate::BoxFuture<'_, Result<crate::PushOutcome, BackendError>> {
            self.inner.push(jobs)
        }
        fn fetch<'a>(
            &'a self,
            request: crate::FetchRequest<'a>,
        ) -> crate::BoxFuture<'a, Result<Vec<crate::Fetched>, BackendError>> {
            self.inner.fetch(request)
        }
        fn wait_for_jobs<'a>(
            &'a self,
            queues: &'a [String],
            timeout: std::time::Duration,
        ) -> crate::BoxFuture<'a, Result<(), BackendError>> {
            self.inner.wait_for_jobs(queues, timeout)
        }
        fn complete<'a>(&'a self, leases: &'a [crate::Lease]) -> crate::BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            self.inner.complete(leases)
        }
        fn retry<'a>(
            &'a self,
            lease: &'a crate::Lease,
            payload: String,
            run_at: u64,
        ) -> crate::BoxFuture<'a, Result<bool, BackendError>> {
            self.inner.retry(lease, payload, run_at)
        }
        fn defer<'a>(
            &'a self,
            lease: &'a crate::Lease,
            payload: String,
            run_at: u64,
        ) -> crate::BoxFuture<'a, Result<bool, BackendError>> {
            self.inner.defer(lease, payload, run_at)
        }
        fn kill<'a>(
            &'a self,
            lease: &'a crate::Lease,
            payload: String,
        ) -> crate::BoxFuture<'a, Result<bool, BackendError>> {
            self.inner.kill(lease, payload)
        }
        fn put_back<'a>(&'a self, leases: &'a [crate::Lease]) -> crate::BoxFuture<'a, Result<usize, BackendError>> {
            self.inner.put_back(leases)
        }
        fn extend<'a>(
            &'a self,
            leases: &'a [crate::Lease],
            lease: std::time::Duration,
        ) -> crate::BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            self.inner.extend(leases, lease)
        }
        fn rescue<'a>(
            &'a self,
            worker: &'a crate::WorkerId,
            lease: std::time::Duration,
            max: usize,
        ) -> crate::BoxFuture<'a, Result<Vec<crate::Fetched>, BackendError>> {
            self.inner.rescue(worker, lease, max)
        }
        fn promote_due(&self, until: Option<u64>) -> crate::BoxFuture<'_, Result<usize, BackendError>> {
            self.inner.promote_due(until)
        }
        fn list<'a>(
            &'a self,
            set: &'a JobSet,
            offset: usize,
            limit: usize,
        ) -> crate::BoxFuture<'a, Result<Vec<crate::StoredJob>, BackendError>> {
            self.limits.lock().unwrap().push(limit);
            self.inner.list(set, offset, limit)
        }
        fn count<'a>(&'a self, set: &'a JobSet) -> crate::BoxFuture<'a, Result<usize, BackendError>> {
            self.inner.count(set)
        }
        fn queues(&self) -> crate::BoxFuture<'_, Result<Vec<String>, BackendError>> {
            self.inner.queues()
        }
        fn record<'a>(
            &'a self,
            outcomes: &'a [crate::OutcomeRecord],
            events: &'a [crate::EventRecord],
        ) -> crate::BoxFuture<'a, Result<(), BackendError>> {
            self.inner.record(outcomes, events)
        }
        fn outcome<'a>(&'a self, jid: &'a crate::JobId) -> crate::BoxFuture<'a, Result<Option<String>, BackendError>> {
            self.inner.outcome(jid)
        }
        fn wait_outcome<'a>(
            &'a self,
            jid: &'a crate::JobId,
            timeout: std::time::Duration,
        ) -> crate::BoxFuture<'a, Result<Option<String>, BackendError>> {
            self.inner.wait_outcome(jid, timeout)
        }
        fn cancel<'a>(&'a self, jid: &'a crate::JobId, until: u64) -> crate::BoxFuture<'a, Result<(), BackendError>> {
            self.inner.cancel(jid, until)
        }
        fn cancel_requested<'a>(
            &'a self,
            jids: &'a [crate::JobId],
        ) -> crate::BoxFuture<'a, Result<Vec<bool>, BackendError>> {
            self.inner.cancel_requested(jids)
        }
        fn read_events<'a>(
            &'a self,
            after: Option<&'a str>,
            max: usize,
            block: std::time::Duration,
        ) -> crate::BoxFuture<'a, Result<crate::EventBatch, BackendError>> {
            self.inner.read_events(after, max, block)
        }
    }

    #[tokio::test]
    async fn census_never_lists_more_than_a_batch_at_once() {
        let backend = Recording { inner: crate::MemoryBackend::new(), limits: Default::default() };
        let jobs = (0..1_001)
            .map(|i| crate::PushJob {
                jid: crate::JobId::new(),
                queue: "default".into(),
                payload: format!(r#"{{"jid":"j{i}","job":"greet"}}"#),
                run_at: None,
                unique: None,
            })
            .collect();
        backend.push(jobs).await.unwrap();
        let found = census(&backend).await.unwrap();
        assert_eq!(
            found.rows,
            [CensusRow { job: "greet".into(), version: 1, counts: counts(&[("default", 1_001)], [0; 4]) }]
        );
        let limits = backend.limits.lock().unwrap().clone();
        // 3 pages of `default` (500, 500, 1) and an empty one; one empty page per other set.
        assert_eq!(limits.len(), 4 + 4, "{limits:?}");
        assert!(limits.iter().all(|limit| *limit == DEFAULT_CENSUS_BATCH), "{limits:?}");
    }

    #[test]
    fn census_serializes_as_plain_data() {
        let census = Census {
            rows: vec![CensusRow { job: "greet".into(), version: 2, counts: counts(&[("default", 1)], [0, 0, 0, 0]) }],
            unreadable: CensusCounts::default(),
        };
        let json = serde_json::to_value(&census).unwrap();
        assert_eq!(json["rows"][0]["counts"]["queues"]["default"], 1);
        assert_eq!(serde_json::from_value::<Census>(json).unwrap(), census);
    }
}
