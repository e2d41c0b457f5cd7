//! [`MemoryBackend`]: the embedded broker for demos, single-process apps and
//! tests, with the same semantics as Redis for one process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::{
    Backend, DeadLimits, EventBatch, EventRecord, FetchRequest, Fetched, JobSet, Lease, PushJob, PushOutcome,
    StoredJob, WorkerId,
};
use crate::envelope::{millis_after, now_millis, queue_and_jid};
use crate::error::BackendError;
use crate::job::{BoxFuture, JobId};
use crate::outcome::OutcomeRecord;

/// Whether an outcome record is final (succeeded, dead or cancelled).
fn is_final(json: &str) -> bool {
    serde_json::from_str::<crate::outcome::Outcome>(json).is_ok_and(|outcome| outcome.is_final())
}

/// Whether a JSON text is an outcome this version can read.
fn is_outcome(json: &str) -> bool {
    serde_json::from_str::<crate::outcome::Outcome>(json).is_ok()
}

/// An in-process broker. Clones share the same state.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use jobs_core::{Backend, JobSet, MemoryBackend};
///
/// let backend = MemoryBackend::new();
/// assert_eq!(backend.count(&JobSet::Dead).await.unwrap(), 0);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when a final outcome is recorded.
    outcomes: Notify,
    /// Woken when events are appended.
    events: Notify,
}

/// The most events kept by default, as on Redis.
const EVENTS_KEPT: usize = 10_000;

/// How long events are kept by default, as on Redis.
const EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The most stored outcomes kept by default, as on Redis.
const RESULTS_KEPT: usize = 100_000;

#[derive(Default)]
struct State {
    queues: HashMap<String, VecDeque<String>>,
    /// Every queue a push named, as Redis's queue-name set (even a push refused by its lock).
    named: BTreeSet<String>,
    scheduled: BTreeMap<(u64, u64), Delayed>,
    retry: BTreeMap<(u64, u64), Delayed>,
    dead: VecDeque<(u64, String)>,
    in_flight: HashMap<String, InFlight>,
    /// Uniqueness locks: until (ms) and the job that took each.
    unique: HashMap<String, (u64, JobId)>,
    seq: u64,
    dead_limits: DeadLimits,
    /// Outcome JSON, expiry (ms) and whether its writer called it final, by job id.
    outcomes: HashMap<String, (String, u64, bool)>,
    /// The same outcomes by expiry, to drop the expired and enforce the cap.
    outcomes_by_expiry: BTreeSet<(u64, String)>,
    /// The most outcomes kept (`None`: [`RESULTS_KEPT`]).
    results_max: Option<usize>,
    /// Cancellation requests: job id to the time they hold until (ms).
    cancels: HashMap<String, u64>,
    /// The event stream: sequence number, time appended (ms) and JSON, capped.
    events: VecDeque<(u64, u64, String)>,
    event_seq: u64,
    /// The most events kept (`None`: [`EVENTS_KEPT`]).
    events_max_len: Option<usize>,
    /// How long events are kept (`None`: [`EVENTS_MAX_AGE`]).
    events_max_age: Option<Duration>,
}

enum Later {
    Retry,
    Scheduled,
}

/// A job of the scheduled or retry set.
struct Delayed {
    /// The queue it goes to when due: the one its payload names (`default` when
    /// it names none or cannot be read), as on Redis.
    queue: String,
    payload: String,
}

impl Delayed {
    fn new(payload: String) -> Self {
        Delayed { queue: crate::envelope::queue_and_jid(&payload).0, payload }
    }
}

struct InFlight {
    queue: String,
    payload: String,
    token: Arc<str>,
    deadline: u64,
}

impl MemoryBackend {
    /// An empty broker with the default dead-set limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty broker that keeps at most `limits` in the dead set.
    pub fn with_dead_limits(limits: DeadLimits) -> Self {
        let backend = Self::default();
        backend.lock().dead_limits = limits;
        backend
    }

    /// Keeps at most `results` stored job outcomes (default 100,000, as on
    /// Redis): beyond it, the ones closest to expiring are dropped first.
    pub fn results_max(self, results: usize) -> Self {
        self.lock().results_max = Some(results.max(1));
        self
    }

    /// Keeps about `events` in the event stream (default 10,000, as on
    /// Redis): beyond it, the oldest are dropped as new ones come.
    pub fn events_max_len(self, events: usize) -> Self {
        self.lock().events_max_len = Some(events.max(1));
        self
    }

    /// Keeps events for `age` (default 24 h, as on Redis): older ones are
    /// dropped as new ones come.
    pub fn events_max_age(self, age: Duration) -> Self {
        self.lock().events_max_age = Some(age);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.shared.state)
    }

    /// Moves a leased job, as `payload`, to the retry or scheduled set; `false` when the lease was stale.
    fn later(&self, lease: &Lease, payload: String, run_at: u64, set: Later) -> bool {
        let mut state = self.lock();
        if state.release(lease).is_none() {
            return false;
        }
        let seq = state.next_seq();
        let delayed = Delayed::new(payload);
        match set {
            Later::Retry => state.retry.insert((run_at, seq), delayed),
            Later::Scheduled => state.scheduled.insert((run_at, seq), delayed),
        };
        drop(state);
        self.shared.notify.notify_waiters();
        true
    }

    fn take(&self, request: &FetchRequest<'_>) -> Vec<Fetched> {
        let now = now_millis();
        let mut state = self.lock();
        state.promote(now);
        let mut fetched = Vec::new();
        for take in request.queues {
            let room = take.max.min(request.max - fetched.len());
            for _ in 0..room {
                let Some(payload) = state.queues.get_mut(&take.queue).and_then(VecDeque::pop_front) else { break };
                let lease = state.lease(&take.queue, request.worker);
                state.in_flight.insert(
                    lease.id.clone(),
                    InFlight {
                        queue: take.queue.clone(),
                        payload: payload.clone(),
                        token: lease.token.clone(),
                        deadline: millis_after(now, request.lease),
                    },
                );
                let cancelled = state.is_cancelled(&payload, now);
                fetched.push(Fetched { payload, lease, cancelled, unreadable: None });
            }
            if fetched.len() == request.max {
                break;
            }
        }
        fetched
    }
}

impl State {
    /// Whether a cancellation request holds for the job in `payload`.
    fn is_cancelled(&self, payload: &str, now: u64) -> bool {
        if self.cancels.is_empty() {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Id {
            jid: String,
        }
        serde_json::from_str::<Id>(payload).is_ok_and(|id| self.cancels.get(&id.jid).is_some_and(|until| *until > now))
    }

    fn outcome(&mut self, jid: &str, now: u64) -> Option<String> {
        self.stored_outcome(jid, now).map(|(json, _)| json)
    }

    /// The outcome stored for `jid` and whether it is final: as on Redis, a final
    /// outcome this version can read says so itself; one it cannot read (a newer
    /// version's) is final when its writer said so.
    fn stored_outcome(&self, jid: &str, now: u64) -> Option<(String, bool)> {
        match self.outcomes.get(jid) {
            Some((json, expires, said_final)) if *expires > now => {
                let is_final = is_final(json) || (*said_final && !is_outcome(json));
                Some((json.clone(), is_final))
            }
            _ => None,
        }
    }

    /// Appends an event to the stream, dropping the oldest beyond the cap
    /// and those older than the age limit.
    fn append_event(&mut self, json: String, now: u64) {
        self.event_seq += 1;
        let seq = self.event_seq;
        self.events.push_back((seq, now, json));
        let cap = self.events_max_len.unwrap_or(EVENTS_KEPT);
        let age = u64::try_from(self.events_max_age.unwrap_or(EVENTS_MAX_AGE).as_millis()).unwrap_or(u64::MAX);
        let oldest = now.saturating_sub(age);
        while self.events.len() > cap || self.events.front().is_some_and(|(_, at, _)| *at < oldest) {
            self.events.pop_front();
        }
    }

    /// Drops expired outcomes, then the closest to expiring beyond the cap.
    fn trim_outcomes(&mut self, now: u64) {
        let cap = self.results_max.unwrap_or(RESULTS_KEPT);
        while let Some((expires, jid)) = self.outcomes_by_expiry.first().cloned() {
            if expires > now && self.outcomes.len() <= cap {
                break;
            }
            self.outcomes_by_expiry.pop_first();
            self.outcomes.remove(&jid);
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn lease(&mut self, queue: &str, worker: &WorkerId) -> Lease {
        let seq = self.next_seq();
        Lease { id: seq.to_string(), queue: queue.into(), token: format!("{worker}:{seq}").into() }
    }

    fn promote(&mut self, until: u64) -> usize {
        let mut moved = 0;
        for set in [&mut self.scheduled, &mut self.retry] {
            // Due at or before `until`: everything, when `until` is the end of time.
            let due = match until.checked_add(1) {
                Some(after) => {
                    let later = set.split_off(&(after, 0));
                    std::mem::replace(set, later)
                }
                None => std::mem::take(set),
            };
            for (_, job) in due {
                self.queues.entry(job.queue).or_default().push_back(job.payload);
                moved += 1;
            }
        }
        moved
    }

    /// Removes the in-flight entry if `lease` still holds it.
    fn release(&mut self, lease: &Lease) -> Option<InFlight> {
        match self.in_flight.get(&lease.id) {
            Some(entry) if *entry.token == *lease.token => self.in_flight.remove(&lease.id),
            _ => None,
        }
    }

    fn bury(&mut self, payload: String, now: u64) {
        self.dead.push_back((now, payload));
        let oldest_kept = now.saturating_sub(u64::try_from(self.dead_limits.max_age.as_millis()).unwrap_or(u64::MAX));
        while self.dead.front().is_some_and(|(at, _)| *at < oldest_kept) || self.dead.len() > self.dead_limits.max_jobs
        {
            self.dead.pop_front();
        }
    }
}

/// Takes the entry of a scheduled or retry set that holds `payload`.
fn take_delayed(set: &mut BTreeMap<(u64, u64), Delayed>, payload: &str) -> Option<Delayed> {
    let key = *set.iter().find(|(_, job)| job.payload == payload)?.0;
    set.remove(&key)
}

/// Takes `payload` out of the dead set.
fn take_dead(dead: &mut VecDeque<(u64, String)>, payload: &str) -> Option<String> {
    let at = dead.iter().position(|(_, p)| p == payload)?;
    dead.remove(at).map(|(_, payload)| payload)
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

impl Backend for MemoryBackend {
    fn push(&self, jobs: Vec<PushJob>) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
        self.push_with_events(jobs, Vec::new())
    }

    /// The jobs and their events under one lock: a fetch sees both or neither.
    fn push_with_events(
        &self,
        jobs: Vec<PushJob>,
        events: Vec<Option<EventRecord>>,
    ) -> BoxFuture<'_, Result<PushOutcome, BackendError>> {
        let now = now_millis();
        let mut outcome = PushOutcome::default();
        let mut events = events.into_iter();
        let mut evented = false;
        {
            let mut state = self.lock();
            state.unique.retain(|_, (until, _)| *until > now);
            for (index, job) in jobs.into_iter().enumerate() {
                let event = events.next().flatten();
                if !state.named.contains(&job.queue) {
                    state.named.insert(job.queue.clone());
                }
                if let Some(lock) = &job.unique {
                    if state.unique.contains_key(&lock.key) {
                        outcome.duplicates.push(index);
                        continue;
                    }
                    state.unique.insert(lock.key.clone(), (millis_after(now, lock.ttl), job.jid.clone()));
                }
                match job.run_at.filter(|at| *at > now) {
                    Some(at) => {
                        let seq = state.next_seq();
                        state.scheduled.insert((at, seq), Delayed::new(job.payload));
                    }
                    None => state.queues.entry(job.queue).or_default().push_back(job.payload),
                }
                if let Some(event) = event {
                    state.append_event(event.json, now);
                    evented = true;
                }
            }
        }
        self.shared.notify.notify_waiters();
        if evented {
            self.shared.events.notify_waiters();
        }
        ready(Ok(outcome))
    }

    fn fetch<'a>(&'a self, request: FetchRequest<'a>) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        ready(Ok(self.take(&request)))
    }

    fn wait_for_jobs<'a>(&'a self, queues: &'a [String], timeout: Duration) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let deadline = crate::backend::deadline_after(timeout);
            // Register for wake-ups before looking, so a push in between is not missed.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = self.lock();
                state.promote(now_millis());
                if queues.iter().any(|q| state.queues.get(q).is_some_and(|q| !q.is_empty())) {
                    return Ok(());
                }
                state.scheduled.keys().chain(state.retry.keys()).map(|(at, _)| *at).min()
            };
            let until_due = next_due.map(|at| Duration::from_millis(at.saturating_sub(now_millis())));
            let wake_at = until_due.map_or(deadline, |due| deadline.min(crate::backend::deadline_after(due)));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
            Ok(())
        })
    }

    fn end_waits(&self) -> BoxFuture<'_, ()> {
        // Waiters wake and look again: a spurious wake-up, which waits allow.
        self.shared.notify.notify_waiters();
        ready(())
    }

    fn complete<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
        let mut state = self.lock();
        ready(Ok(leases.iter().map(|lease| state.release(lease).is_some()).collect()))
    }

    fn retry<'a>(
        &'a self,
        lease: &'a Lease,
        payload: String,
        run_at: u64,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        ready(Ok(self.later(lease, payload, run_at, Later::Retry)))
    }

    fn defer<'a>(
        &'a self,
        lease: &'a Lease,
        payload: String,
        run_at: u64,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        ready(Ok(self.later(lease, payload, run_at, Later::Scheduled)))
    }

    fn kill<'a>(&'a self, lease: &'a Lease, payload: String) -> BoxFuture<'a, Result<bool, BackendError>> {
        let mut state = self.lock();
        if state.release(lease).is_none() {
            return ready(Ok(false));
        }
        state.bury(payload, now_millis());
        ready(Ok(true))
    }

    fn put_back<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<usize, BackendError>> {
        let mut stale = 0;
        {
            let mut state = self.lock();
            // Pushing the last first keeps the batch's order at the head of the queue.
            for lease in leases.iter().rev() {
                match state.release(lease) {
                    Some(entry) => state.queues.entry(entry.queue).or_default().push_front(entry.payload),
                    None => stale += 1,
                }
            }
        }
        self.shared.notify.notify_waiters();
        ready(Ok(stale))
    }

    fn extend<'a>(&'a self, leases: &'a [Lease], lease: Duration) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
        let deadline = millis_after(now_millis(), lease);
        let mut state = self.lock();
        let held = leases
            .iter()
            .map(|l| match state.in_flight.get_mut(&l.id) {
                Some(entry) if *entry.token == *l.token => {
                    entry.deadline = deadline;
                    true
                }
                _ => false,
            })
            .collect();
        ready(Ok(held))
    }

    fn rescue<'a>(
        &'a self,
        worker: &'a WorkerId,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Fetched>, BackendError>> {
        let now = now_millis();
        let mut state = self.lock();
        let expired: Vec<String> =
            state.in_flight.iter().filter(|(_, e)| e.deadline <= now).map(|(id, _)| id.clone()).take(max).collect();
        let mut rescued = Vec::with_capacity(expired.len());
        for id in expired {
            let Some(old) = state.in_flight.remove(&id) else { continue };
            let new = state.lease(&old.queue, worker);
            state.in_flight.insert(
                new.id.clone(),
                InFlight {
                    queue: old.queue,
                    payload: old.payload.clone(),
                    token: new.token.clone(),
                    deadline: millis_after(now, lease),
                },
            );
            let cancelled = state.is_cancelled(&old.payload, now);
            rescued.push(Fetched { payload: old.payload, lease: new, cancelled, unreadable: None });
        }
        ready(Ok(rescued))
    }

    fn record<'a>(
        &'a self,
        outcomes: &'a [OutcomeRecord],
        events: &'a [EventRecord],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let now = now_millis();
        let mut state = self.lock();
        let mut wake = false;
        for record in outcomes {
            let jid = record.jid.as_str().to_owned();
            let expires = millis_after(now, record.ttl);
            if let Some((_, before, _)) = state.outcomes.remove(&jid) {
                state.outcomes_by_expiry.remove(&(before, jid.clone()));
            }
            if !record.ttl.is_zero() {
                state.outcomes_by_expiry.insert((expires, jid.clone()));
                state.outcomes.insert(jid, (record.outcome.clone(), expires, record.is_final));
            }
            wake |= record.is_final;
        }
        state.trim_outcomes(now);
        for event in events {
            state.append_event(event.json.clone(), now);
        }
        drop(state);
        if wake {
            self.shared.outcomes.notify_waiters();
        }
        if !events.is_empty() {
            self.shared.events.notify_waiters();
        }
        ready(Ok(()))
    }

    fn outcome<'a>(&'a self, jid: &'a JobId) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        ready(Ok(self.lock().outcome(jid.as_str(), now_millis())))
    }

    fn wait_outcome<'a>(
        &'a self,
        jid: &'a JobId,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            let deadline = crate::backend::deadline_after(timeout);
            loop {
                let notified = self.shared.outcomes.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let stored = self.lock().stored_outcome(jid.as_str(), now_millis());
                if let Some((json, true)) = stored {
                    return Ok(Some(json));
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(None);
                }
            }
        })
    }

    fn cancel<'a>(&'a self, jid: &'a JobId, until: u64) -> BoxFuture<'a, Result<(), BackendError>> {
        let now = now_millis();
        let mut state = self.lock();
        state.cancels.retain(|_, held| *held > now);
        state.cancels.insert(jid.as_str().to_owned(), until);
        if state.cancels.len() > crate::outcome::CANCELS_KEPT {
            let mut by_expiry: Vec<(u64, String)> =
                state.cancels.iter().map(|(jid, until)| (*until, jid.clone())).collect();
            by_expiry.sort_unstable();
            let over = state.cancels.len() - crate::outcome::CANCELS_KEPT;
            for (_, jid) in by_expiry.into_iter().take(over) {
                state.cancels.remove(&jid);
            }
        }
        ready(Ok(()))
    }

    fn cancel_requested<'a>(&'a self, jids: &'a [JobId]) -> BoxFuture<'a, Result<Vec<bool>, BackendError>> {
        let now = now_millis();
        let state = self.lock();
        ready(Ok(jids.iter().map(|jid| state.cancels.get(jid.as_str()).is_some_and(|until| *until > now)).collect()))
    }

    fn read_events<'a>(
        &'a self,
        after: Option<&'a str>,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'a, Result<EventBatch, BackendError>> {
        Box::pin(async move {
            let mut cursor = match after {
                Some(id) => id.parse::<u64>().map_err(|_| {
                    BackendError::permanent(format!("`{id}` is not an event id of the embedded backend"))
                })?,
                None => self.lock().event_seq,
            };
            let deadline = crate::backend::deadline_after(block);
            loop {
                let notified = self.shared.events.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let events: Vec<(String, String)> = self
                    .lock()
                    .events
                    .iter()
                    .filter(|(seq, _, _)| *seq > cursor)
                    .take(max)
                    .map(|(seq, _, json)| (seq.to_string(), json.clone()))
                    .collect();
                if let Some((last, _)) = events.last() {
                    cursor = last.parse().unwrap_or(cursor);
                }
                if !events.is_empty() || max == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return Ok(EventBatch { cursor: cursor.to_string(), events });
                }
            }
        })
    }

    /// The same store: its state sits behind a lock, not on a runtime.
    fn detached(&self) -> Option<Arc<dyn Backend>> {
        Some(Arc::new(self.clone()))
    }

    fn promote_due(&self, until: Option<u64>) -> BoxFuture<'_, Result<usize, BackendError>> {
        let moved = self.lock().promote(until.unwrap_or_else(now_millis));
        if moved > 0 {
            self.shared.notify.notify_waiters();
        }
        ready(Ok(moved))
    }

    fn list<'a>(
        &'a self,
        set: &'a JobSet,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredJob>, BackendError>> {
        let state = self.lock();
        let delayed = |map: &BTreeMap<(u64, u64), Delayed>| -> Vec<StoredJob> {
            map.iter()
                .skip(offset)
                .take(limit)
                .map(|((at, _), d)| StoredJob { payload: d.payload.clone(), at: *at })
                .collect()
        };
        let jobs = match set {
            JobSet::Queue(name) => state
                .queues
                .get(name)
                .map(|q| q.iter().skip(offset).take(limit).map(|p| StoredJob { payload: p.clone(), at: 0 }).collect())
                .unwrap_or_default(),
            JobSet::Scheduled => delayed(&state.scheduled),
            JobSet::Retry => delayed(&state.retry),
            JobSet::Dead => state
                .dead
                .iter()
                .skip(offset)
                .take(limit)
                .map(|(at, p)| StoredJob { payload: p.clone(), at: *at })
                .collect(),
            JobSet::InFlight => {
                let mut all: Vec<_> = state
                    .in_flight
                    .values()
                    .map(|e| StoredJob { payload: e.payload.clone(), at: e.deadline })
                    .collect();
                all.sort_by_key(|job| job.at);
                all.into_iter().skip(offset).take(limit).collect()
            }
        };
        ready(Ok(jobs))
    }

    fn requeue<'a>(&'a self, set: &'a JobSet, payloads: &'a [String]) -> BoxFuture<'a, Result<usize, BackendError>> {
        if matches!(set, JobSet::Queue(_) | JobSet::InFlight) {
            return ready(Err(set.refuse("requeue")));
        }
        let moved = {
            let mut state = self.lock();
            let mut moved = 0;
            for payload in payloads {
                let found = match set {
                    JobSet::Scheduled => take_delayed(&mut state.scheduled, payload),
                    JobSet::Retry => take_delayed(&mut state.retry, payload),
                    JobSet::Dead => take_dead(&mut state.dead, payload).map(|payload| {
                        let (queue, jid) = queue_and_jid(&payload);
                        // Its stored outcome (dead) goes: waiters wait for the new run.
                        if let Some(jid) = jid
                            && let Some((_, expiry, _)) = state.outcomes.remove(&jid)
                        {
                            state.outcomes_by_expiry.remove(&(expiry, jid));
                        }
                        Delayed { queue, payload }
                    }),
                    JobSet::Queue(_) | JobSet::InFlight => None,
                };
                if let Some(job) = found {
                    state.queues.entry(job.queue).or_default().push_back(job.payload);
                    moved += 1;
                }
            }
            moved
        };
        if moved > 0 {
            self.shared.notify.notify_waiters();
        }
        ready(Ok(moved))
    }

    fn remove<'a>(&'a self, set: &'a JobSet, payloads: &'a [String]) -> BoxFuture<'a, Result<usize, BackendError>> {
        if *set == JobSet::InFlight {
            return ready(Err(set.refuse("remove")));
        }
        let mut state = self.lock();
        let mut removed = 0;
        for payload in payloads {
            let found = match set {
                JobSet::Queue(name) => state.queues.get_mut(name).is_some_and(|queue| {
                    let at = queue.iter().position(|p| p == payload);
                    at.and_then(|at| queue.remove(at)).is_some()
                }),
                JobSet::Scheduled => take_delayed(&mut state.scheduled, payload).is_some(),
                JobSet::Retry => take_delayed(&mut state.retry, payload).is_some(),
                JobSet::Dead => take_dead(&mut state.dead, payload).is_some(),
                JobSet::InFlight => false,
            };
            removed += usize::from(found);
        }
        ready(Ok(removed))
    }

    fn release_unique<'a>(&'a self, key: &'a str, jid: &'a JobId) -> BoxFuture<'a, Result<bool, BackendError>> {
        let mut state = self.lock();
        let now = now_millis();
        let held = state.unique.get(key).is_some_and(|(until, holder)| *until > now && holder == jid);
        if held {
            state.unique.remove(key);
        }
        ready(Ok(held))
    }

    fn count<'a>(&'a self, set: &'a JobSet) -> BoxFuture<'a, Result<usize, BackendError>> {
        let state = self.lock();
        let count = match set {
            JobSet::Queue(name) => state.queues.get(name).map_or(0, VecDeque::len),
            JobSet::Scheduled => state.scheduled.len(),
            JobSet::Retry => state.retry.len(),
            JobSet::Dead => state.dead.len(),
            JobSet::InFlight => state.in_flight.len(),
        };
        ready(Ok(count))
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, BackendError>> {
        let state = self.lock();
        // Like Redis, a queue is named by any push to it, including one scheduled for later.
        let named = state.scheduled.values().chain(state.retry.values()).map(|d| &d.queue);
        let leased = state.in_flight.values().map(|e| &e.queue);
        let names: BTreeSet<String> =
            state.queues.keys().chain(named).chain(leased).chain(&state.named).cloned().collect();
        ready(Ok(names.into_iter().collect()))
    }
}
