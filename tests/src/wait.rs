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

/// [`poll_until`] for code without a runtime (tests driving a process with blocking
/// calls): `check` every `every` until it returns `Some`, for at most `timeout`; then panics
/// with what `on_timeout` says (the process's logs, what did arrive).
pub fn poll_blocking<T>(
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
    on_timeout: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?}: {}", on_timeout());
        }
        std::thread::sleep(every);
    }
}

/// Waits until the Deployment `ns`/`name` has rolled out its current spec and every
/// replica is available, or fails with its status (the ReplicaSet's failure, a Pod Security
/// violation say, is in its conditions) when it does not within `timeout`.
pub async fn deployment_rolled_out(
    client: &kube::Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(client.clone(), ns);
    let found =
        poll_until(&format!("Deployment {ns}/{name} to be Available with every replica updated"), timeout, || async {
            let Some(d) = api.get_opt(name).await? else { return Ok(None) };
            let (spec, status) = (d.spec.as_ref(), d.status.as_ref());
            let wanted = spec.and_then(|s| s.replicas).unwrap_or(1);
            let done = status.is_some_and(|s| {
                s.observed_generation == d.metadata.generation
                    && s.updated_replicas == Some(wanted)
                    && s.available_replicas == Some(wanted)
                    && s.replicas == Some(wanted)
                    && s.conditions.iter().flatten().any(|c| c.type_ == "Available" && c.status == "True")
            });
            Ok(done.then_some(d))
        })
        .await;
    match found {
        Ok(d) => Ok(d),
        Err(e) => {
            let status = api.get_opt(name).await.ok().flatten().and_then(|d| d.status);
            bail!("{e:#}; status: {}", serde_json::to_string_pretty(&status).unwrap_or_default())
        }
    }
}

/// Whether a ModelDeployment's status has its `Ready` condition true.
pub fn is_ready(status: &taimatsu_crds::v1alpha1::ModelDeploymentStatus) -> bool {
    status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}
