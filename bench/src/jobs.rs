//! The benchmark's jobs and the process-global collectors they report to.
//!
//! `#[job]` arguments must be simple values, so a job cannot carry a handle
//! to a collector: the handlers write into statics instead, which each
//! scenario resets before it starts.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::probe::now_us;

/// The queue of the peer protocol's no-op and latency jobs.
pub const QUEUE: &str = "bench";
/// The urgent queue of the priority-under-flood scenario.
pub const CRITICAL: &str = "critical";
/// The flooded queue of the priority-under-flood scenario.
pub const BULK: &str = "bulk";

/// A no-op job with the tiny payload `{"n": i}`.
#[jobs_core::job(queue = "bench")]
pub async fn noop(n: u64) {
    let _ = n;
    NOOPS.hit();
}

/// A job carrying its enqueue time (`t`, µs since the epoch); records `now − t`.
#[jobs_core::job(queue = "bench")]
pub async fn lat(t: f64) {
    LATENCIES.record(t);
}

/// The flood of the priority scenario: a no-op on `bulk`.
#[jobs_core::job(queue = "bulk")]
pub async fn flood(n: u64) {
    let _ = n;
    FLOODED.hit();
}

/// The urgent job of the priority scenario: records its latency like [`lat`].
#[jobs_core::job(queue = "critical")]
pub async fn critical(t: f64) {
    CRITICALS.record(t);
}

/// Finished [`noop`] jobs.
pub static NOOPS: Counter = Counter::new();
/// Finished [`flood`] jobs.
pub static FLOODED: Counter = Counter::new();
/// Latencies of [`lat`] jobs.
pub static LATENCIES: Latencies = Latencies::new();
/// Latencies of [`critical`] jobs.
pub static CRITICALS: Latencies = Latencies::new();

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Counts finished jobs and wakes the waiter when a target is reached.
pub struct Counter {
    done: AtomicU64,
    target: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    notify: Notify,
}

impl Counter {
    const fn new() -> Self {
        Self {
            done: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            notify: Notify::const_new(),
        }
    }

    /// Starts over: nothing done, waiting for `target` jobs (`u64::MAX`: count only).
    pub fn reset(&self, target: u64) {
        let _ = epoch();
        self.done.store(0, Ordering::SeqCst);
        self.first_ns.store(u64::MAX, Ordering::SeqCst);
        self.last_ns.store(0, Ordering::SeqCst);
        self.target.store(target, Ordering::SeqCst);
    }

    fn hit(&self) {
        let now = since_epoch_ns();
        self.first_ns.fetch_min(now, Ordering::Relaxed);
        let done = self.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done == self.target.load(Ordering::Acquire) {
            self.last_ns.store(now, Ordering::Release);
            self.notify.notify_one();
        }
    }

    /// Jobs finished since the reset.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the target is reached.
    pub async fn reached(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done() >= self.target.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// When the first job of this round started.
    pub fn first(&self) -> Option<Instant> {
        let ns = self.first_ns.load(Ordering::Acquire);
        (ns != u64::MAX).then(|| epoch() + Duration::from_nanos(ns))
    }

    /// When the target-th job returned.
    pub fn last(&self) -> Option<Instant> {
        let ns = self.last_ns.load(Ordering::Acquire);
        (ns != 0).then(|| epoch() + Duration::from_nanos(ns))
    }
}

/// Collects `now − t` (µs) of latency jobs and wakes the waiter at a target count.
pub struct Latencies {
    samples: Mutex<Vec<f64>>,
    target: AtomicU64,
    notify: Notify,
}

impl Latencies {
    const fn new() -> Self {
        Self { samples: Mutex::new(Vec::new()), target: AtomicU64::new(u64::MAX), notify: Notify::const_new() }
    }

    fn samples(&self) -> MutexGuard<'_, Vec<f64>> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, t_us: f64) {
        let latency = now_us() - t_us;
        let len = {
            let mut samples = self.samples();
            samples.push(latency);
            samples.len() as u64
        };
        if len >= self.target.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }

    /// Starts over, waiting for `target` samples (`u64::MAX`: until told with [`Self::set_target`]).
    pub fn reset(&self, target: u64) {
        self.samples().clear();
        self.target.store(target, Ordering::SeqCst);
    }

    /// Waits for `target` samples in all.
    pub fn set_target(&self, target: u64) {
        self.target.store(target, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Samples recorded since the reset.
    pub fn count(&self) -> u64 {
        self.samples().len() as u64
    }

    /// Resolves once the target count is reached.
    pub async fn reached(&self) {
        loop {
            let notified = self.notify.notified();
            if self.count() >= self.target.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The samples, in µs, in the order they were recorded.
    pub fn take(&self) -> Vec<f64> {
        std::mem::take(&mut *self.samples())
    }
}

/// Resolves when `reached` does, or when `count` has not moved for `stall`
/// (a lost or stuck job): the caller then finds the count short and reports it.
pub async fn until_done(reached: impl Future<Output = ()>, count: impl Fn() -> u64, stall: Duration) {
    let watchdog = async {
        let mut last = count();
        loop {
            tokio::time::sleep(stall).await;
            let now = count();
            if now == last {
                return;
            }
            last = now;
        }
    };
    tokio::select! {
        () = reached => {}
        () = watchdog => {}
    }
}
