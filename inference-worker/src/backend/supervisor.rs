//! Starts the upstream model server (vLLM) as a child process, waits for its health
//! endpoint, warms it up, and watches it: readiness follows its health, its load is folded
//! into the worker's metrics, and when it dies or stops answering it is restarted with
//! backoff — up to a limit, after which the worker exits non-zero so the kubelet restarts
//! the container and the operator sees the crash loop.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::upstream::Upstream;
use super::vllm_metrics;
use crate::serve::state::AppState;

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Program and arguments; `None` when the upstream runs on its own (`--upstream-url`).
    pub command: Option<Vec<String>>,
    pub health_path: String,
    pub metrics_path: Option<String>,
    pub startup_timeout: Duration,
    pub max_restarts: u32,
    /// Readiness is withdrawn while the upstream has more requests waiting than this, and
    /// given back below half of it, so the Service sends new work to other replicas.
    pub max_waiting: Option<f64>,
    pub check_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("the model server failed {0} times in a row; giving up so the container restarts")]
    TooManyRestarts(u32),
    #[error("cannot start the model server {program:?}: {source}")]
    Spawn { program: String, source: std::io::Error },
}

pub async fn supervise(
    state: Arc<AppState>,
    upstream: Arc<Upstream>,
    cfg: UpstreamConfig,
) -> Result<(), SupervisorError> {
    let mut failures = 0u32;
    loop {
        let mut child = match &cfg.command {
            Some(cmd) => Some(spawn(cmd)?),
            None => None,
        };
        let healthy = wait_healthy(&upstream, &cfg, child.as_mut()).await && warm_up(&state, &upstream).await;
        if healthy {
            tracing::info!(upstream = %upstream.base, "model server is healthy and warmed up; ready");
            state.set_ready(true);
            state.metrics.upstream_up.set(1);
            failures = 0;
            monitor(&state, &upstream, &cfg, child.as_mut()).await;
        }
        state.set_ready(false);
        state.metrics.upstream_up.set(0);
        if let Some(child) = child.as_mut() {
            stop(child).await;
        }
        failures += 1;
        if failures > cfg.max_restarts {
            return Err(SupervisorError::TooManyRestarts(failures));
        }
        state.metrics.upstream_restarts.inc();
        let backoff = Duration::from_secs(1u64 << failures.min(5));
        tracing::warn!(attempt = failures, backoff_s = backoff.as_secs(), "restarting the model server");
        tokio::time::sleep(backoff).await;
    }
}

fn spawn(cmd: &[String]) -> Result<Child, SupervisorError> {
    let program = cmd.first().cloned().unwrap_or_default();
    tracing::info!(command = %cmd.join(" "), "starting the model server");
    Command::new(&program)
        .args(&cmd[1..])
        .stdin(Stdio::null())
        // Its own process group, so a restart stops the engine's helper processes too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SupervisorError::Spawn { program, source })
}

/// Stops the model server and every process of its group (vLLM's engine and tokenizer
/// workers): SIGTERM, and SIGKILL after 10 s. Signalled in-process: the worker images hold
/// no `kill` binary.
async fn stop(child: &mut Child) {
    let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(Pid::from_raw);
    if let Some(group) = group
        && killpg(group, Signal::SIGTERM).is_ok()
        && tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok()
    {
        // The leader is gone; helpers that ignored SIGTERM are not left behind.
        let _ = killpg(group, Signal::SIGKILL);
        return;
    }
    if let Some(group) = group {
        let _ = killpg(group, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

async fn health(upstream: &Upstream, path: &str) -> bool {
    let request = upstream.client.get(format!("{}{path}", upstream.base)).timeout(Duration::from_secs(5));
    matches!(request.send().await, Ok(r) if r.status().is_success())
}

/// Polls the health endpoint until it answers, the child exits, or the startup timeout.
async fn wait_healthy(upstream: &Upstream, cfg: &UpstreamConfig, mut child: Option<&mut Child>) -> bool {
    let deadline = tokio::time::Instant::now() + cfg.startup_timeout;
    while tokio::time::Instant::now() < deadline {
        if let Some(child) = child.as_deref_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::error!(%status, "the model server exited while starting");
            return false;
        }
        if health(upstream, &cfg.health_path).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tracing::error!(timeout_s = cfg.startup_timeout.as_secs(), "the model server did not become healthy in time");
    false
}

/// One tiny completion, so the first user request does not pay for lazy initialisation,
/// and readiness means the model really answers.
async fn warm_up(state: &AppState, upstream: &Upstream) -> bool {
    let body = serde_json::json!({ "model": state.served_model, "prompt": "Hello", "max_tokens": 1 });
    let request =
        upstream.client.post(format!("{}/v1/completions", upstream.base)).json(&body).timeout(Duration::from_secs(300));
    match request.send().await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::error!(status = %r.status(), "the model server refused the warm-up request");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "the warm-up request failed");
            false
        }
    }
}

async fn monitor(state: &AppState, upstream: &Upstream, cfg: &UpstreamConfig, mut child: Option<&mut Child>) {
    let mut misses = 0;
    let mut ticker = tokio::time::interval(cfg.check_interval);
    loop {
        let exited = async {
            match child.as_deref_mut() {
                Some(c) => c.wait().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = exited => {
                tracing::error!(status = ?status, "the model server exited");
                return;
            }
            _ = ticker.tick() => {}
        }
        if health(upstream, &cfg.health_path).await {
            misses = 0;
        } else {
            misses += 1;
            tracing::warn!(misses, "the model server failed a health check");
            if misses >= 3 {
                tracing::error!("the model server stopped answering its health checks");
                return;
            }
            continue;
        }
        if let Some(path) = &cfg.metrics_path {
            fold_load(state, upstream, path, cfg.max_waiting).await;
        }
    }
}

async fn fold_load(state: &AppState, upstream: &Upstream, path: &str, max_waiting: Option<f64>) {
    let request = upstream.client.get(format!("{}{path}", upstream.base)).timeout(Duration::from_secs(5));
    let Ok(response) = request.send().await else { return };
    let Ok(text) = response.text().await else { return };
    let load = vllm_metrics::parse(&text);
    let m = &state.metrics;
    m.upstream_running.set(load.running);
    m.upstream_waiting.set(load.waiting);
    if let Some(kv) = load.kv_cache_usage {
        m.upstream_kv_cache_usage.set(kv);
    }
    if let Some(limit) = max_waiting {
        if state.is_ready() && load.waiting > limit {
            tracing::warn!(waiting = load.waiting, limit, "model server saturated: withdrawing readiness");
            state.set_ready(false);
        } else if !state.is_ready() && load.waiting <= limit / 2.0 {
            state.set_ready(true);
        }
    }
}
