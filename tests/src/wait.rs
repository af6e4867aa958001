//! Waiting on conditions with a deadline (never a fixed sleep).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Polls `check` until it returns `Some`, or fails after `timeout` naming `what`.
/// An `Err` from `check` ends the wait at once: map transient failures (connection
/// refused while a server starts) to `Ok(None)`. For conditions that cannot be watched (HTTP health endpoints,
/// process output); objects in the API are better waited on with
/// `kube::runtime::wait::await_condition`.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(50);
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}
