//! How soon a broken watch is retried.
//!
//! kube-runtime's `DefaultBackoff` doubles from 0.8 s up to 30 s and resets only after two
//! quiet minutes. After an API server or etcd restart a watch needs at least two failed
//! steps to recover (the reconnect, then the `410 Gone` of a resource version the new API
//! server no longer has, which forces a relist), each waiting out a grown delay. Seen in
//! tests/leader_restart.rs: caches stale for over a minute after an API server restart. The
//! leader runs a handful of watches, so retrying every few seconds during an outage costs
//! the API server nothing; the cap is 5 s. (What else kept caches stale there, requests the
//! API server never answered, is bounded in [`crate::api_client`].)

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};

const FIRST: Duration = Duration::from_millis(250);
const CAP: Duration = Duration::from_secs(5);
/// A watch that has worked this long starts again from [`FIRST`] on its next failure.
const RESET_AFTER: Duration = Duration::from_secs(30);

/// Exponential with jitter from [`FIRST`] to [`CAP`], reset after [`RESET_AFTER`] without errors.
pub fn watch_backoff() -> ResetTimerBackoff<Exponential> {
    ResetTimerBackoff::new(Exponential::new(), RESET_AFTER)
}

/// backon's exponential backoff, restartable (kube's own is not constructible outside it).
pub struct Exponential(ExponentialBackoff);

impl Exponential {
    fn new() -> Self {
        Exponential(builder().build())
    }
}

fn builder() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(FIRST)
        .with_max_delay(CAP)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

impl Iterator for Exponential {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.0 = builder().build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_never_wait_longer_than_the_cap_and_start_over_after_a_reset() {
        let mut backoff = Exponential::new();
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next().unwrap()).collect();
        // Jitter adds up to one delay on top.
        assert!(delays.iter().all(|d| *d <= CAP * 2), "{delays:?}");
        assert!(delays[0] < Duration::from_secs(1), "{delays:?}");
        backoff.reset();
        assert!(backoff.next().unwrap() < Duration::from_secs(1));
    }
}
