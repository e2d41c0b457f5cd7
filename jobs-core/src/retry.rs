//! [`RetryPolicy`]: how often and how soon a failed job runs again.

use std::time::Duration;

/// Exponential backoff with jitter: the n-th retry (0-based) waits
/// `base × 2ⁿ`, capped at `max_delay`, plus up to a quarter more at random so
/// that jobs failing together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use jobs_core::RetryPolicy;
///
/// let policy = RetryPolicy::default();
/// assert_eq!(policy.retries, 20);
/// let first = policy.delay(0);
/// assert!(first >= Duration::from_secs(15) && first <= Duration::from_millis(18_750));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first failure, for jobs that set no `retries` of their own.
    pub retries: u32,
    /// The first retry's delay.
    pub base: Duration,
    /// No delay grows beyond this (before jitter).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 20 retries from 15 s, doubling up to a day: about 8 days in all,
    /// time to ship a fix before a job dies.
    fn default() -> Self {
        Self { retries: 20, base: Duration::from_secs(15), max_delay: Duration::from_secs(24 * 3600) }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        let delay = self.base.saturating_mul(factor).min(self.max_delay);
        // `mul_f64` and `+` would panic past `Duration::MAX` (a `max_delay` of "for ever").
        let jitter = Duration::try_from_secs_f64(delay.as_secs_f64() * fastrand::f64() / 4.0).unwrap_or(Duration::ZERO);
        delay.saturating_add(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delay_of_for_ever_does_not_overflow() {
        let policy = RetryPolicy { retries: 3, base: Duration::MAX, max_delay: Duration::MAX };
        assert_eq!(policy.delay(2), Duration::MAX);
    }

    #[test]
    fn delays_grow_until_the_cap_and_jitter_stays_within_a_quarter() {
        let policy = RetryPolicy { retries: 10, base: Duration::from_millis(100), max_delay: Duration::from_secs(10) };
        let mut previous = Duration::ZERO;
        for retry in 0..7 {
            let d = policy.delay(retry);
            let nominal = Duration::from_millis(100 << retry);
            assert!(d >= nominal && d <= nominal.mul_f64(1.25), "retry {retry}: {d:?}");
            assert!(d > previous);
            previous = d;
        }
        assert!(policy.delay(40) <= Duration::from_millis(12_500));
    }

    /// Jitter spreads the jobs that failed together (an outage) over a
    /// quarter of the delay, so their retries do not land at once.
    #[test]
    fn jitter_spreads_retries_of_jobs_that_failed_together() {
        let policy = RetryPolicy { retries: 10, base: Duration::from_secs(60), max_delay: Duration::from_secs(600) };
        let delays: std::collections::BTreeSet<Duration> = (0..100).map(|_| policy.delay(0)).collect();
        assert!(delays.len() > 90, "100 draws gave {} distinct delays", delays.len());
        let (first, last) = (delays.first().unwrap(), delays.last().unwrap());
        assert!(*last - *first > Duration::from_secs(5), "spread over {:?} only", *last - *first);
    }
}
