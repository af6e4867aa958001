//! `inference-worker serve`: listens at once (health answers, readiness says no), then
//! verifies every model file against the manifest, loads the backend, warms it up, and
//! only then reports ready. A model that fails verification is never loaded: the process
//! exits with the reason in its termination message.

pub mod admission;
pub mod args;
pub mod auth;
pub mod builtin;
pub mod metrics;
pub mod router;
pub mod scope;
pub mod state;
pub mod upstream;

pub use args::ServeArgs;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use taimatsu_core::ModelManifest;

use crate::api::validate::RequestLimits;
use crate::audit::{AuditLevel, AuditLog, AuditSinks, FsyncPolicy};
use crate::backend::builtin::{Builtin, BuiltinConfig};
use crate::backend::supervisor::{self, UpstreamConfig};
use crate::backend::upstream::Upstream;
use crate::backend::{Backend, Readiness};
use crate::termination::Failure;
use args::{Engine, Fsync};
use state::{AppState, unix_now};

/// `telemetry`: which OpenTelemetry signals are exported (request spans, audit log records).
pub async fn run(args: ServeArgs, telemetry: &taimatsu_telemetry::Telemetry) -> Result<(), Failure> {
    let export_audit_logs = telemetry.logs_enabled();
    let manifest = read_manifest(&args.manifest)?;
    if let Ok(expected) = std::env::var("TAIMATSU_MODEL_DIGEST")
        && !expected.is_empty()
        && expected != manifest.digest
    {
        return Err(Failure::new(
            "InvalidManifest",
            format!(
                "the manifest's digest {} is not the revision's {expected}: the pod mounts the wrong manifest",
                manifest.digest
            ),
        ));
    }
    let metrics = Arc::new(metrics::Metrics::new());
    let auth = match &args.api_keys {
        Some(path) => auth::Auth::from_file(path, args.rate_limit_rpm)
            .map_err(|e| Failure::new("InvalidConfig", e.to_string()))?,
        None => auth::Auth::disabled(),
    };
    let redact = args
        .audit_redact
        .iter()
        .map(|p| regex::Regex::new(p).map_err(|e| Failure::new("InvalidConfig", format!("--audit-redact {p:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let audit = if args.audit_level == AuditLevel::None {
        AuditLog::off()
    } else {
        let fsync = match args.audit_fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => FsyncPolicy::Interval(Duration::from_millis(args.audit_fsync_interval_ms.max(1))),
            Fsync::Never => FsyncPolicy::Never,
        };
        let sinks = AuditSinks {
            file: args.audit_log.clone(),
            stdout: args.audit_stdout,
            otel_logs: export_audit_logs,
            fsync,
            failure: args.audit_failure,
        };
        AuditLog::start(sinks, metrics.audit_counters()).map_err(|e| Failure::new("AuditUnavailable", e.to_string()))?
    };
    let upstream_base = args.upstream_url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{}", args.upstream_port));
    let backend = match args.engine {
        Engine::Builtin => Backend::Builtin(Builtin::default()),
        Engine::Vllm => Backend::Upstream(Arc::new(
            Upstream::new(&upstream_base).map_err(|e| Failure::new("InvalidConfig", e.to_string()))?,
        )),
    };
    let readiness = Readiness::new(metrics.ready.clone());
    let default_concurrency = if args.engine == Engine::Builtin { args.parallel } else { 256 };
    let state = Arc::new(AppState {
        served_model: args.served_model_name.clone(),
        model_digest: manifest.digest.clone(),
        revision: std::env::var("TAIMATSU_REVISION").unwrap_or_default(),
        pod: std::env::var("POD_NAME").unwrap_or_default(),
        created: unix_now(),
        backend,
        auth,
        admission: admission::Admission::new(
            args.max_concurrent.unwrap_or(default_concurrency),
            args.max_queued,
            Duration::from_secs(args.queue_timeout_secs),
        ),
        limits: RequestLimits { max_tokens: args.max_tokens, max_stop: 4 },
        body_limit: args.max_body_bytes,
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        audit,
        audit_level: args.audit_level,
        refused: Default::default(),
        redact,
        metrics,
        trace_requests: telemetry.traces_enabled(),
        readiness,
    });

    let api = bind(args.listen).await?;
    let metrics_listener = bind(args.metrics_listen).await?;
    tracing::info!(api = %args.listen, metrics = %args.metrics_listen, "listening; not ready until the model is verified and loaded");
    let shutdown = shutdown_signal();
    let api_server = axum::serve(api, router::api(state.clone())).with_graceful_shutdown(shutdown.clone().wait());
    let metrics_server =
        axum::serve(metrics_listener, router::metrics(state.clone())).with_graceful_shutdown(shutdown.clone().wait());
    let loading = load(state.clone(), &args, manifest);
    let keys_reload = reload_keys(state.clone());
    let refusals = record_refusals(state.clone(), Duration::from_secs(args.audit_refusal_interval_secs.max(1)));

    let result = tokio::select! {
        r = api_server.into_future() => r.map_err(|e| Failure::new("ServeFailed", e.to_string())),
        r = metrics_server.into_future() => r.map_err(|e| Failure::new("ServeFailed", e.to_string())),
        r = async { loading.await?; std::future::pending::<Result<(), Failure>>().await } => r,
        _ = keys_reload => Ok(()),
        _ = refusals => Ok(()),
    };
    state.readiness.set(false);
    submit_refusals(&state);
    state.audit.flush().await;
    result
}

/// Every `interval`, the refused requests counted since the last one become their records.
async fn record_refusals(state: Arc<AppState>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        submit_refusals(&state);
    }
}

fn submit_refusals(state: &AppState) {
    for record in state.refused.take(&state.pod) {
        // Not awaited: no response waits for it.
        let _ = state.audit.submit(record);
    }
}

/// Verifies, loads and warms up, then marks ready. For vLLM it keeps supervising.
async fn load(state: Arc<AppState>, args: &ServeArgs, manifest: ModelManifest) -> Result<(), Failure> {
    let dir = args.model_dir.clone();
    let threads = args.verify_threads.unwrap_or_else(taimatsu_core::file_verify::default_threads);
    let started = std::time::Instant::now();
    let verified_manifest = manifest.clone();
    let verified =
        tokio::task::spawn_blocking(move || taimatsu_core::file_verify::verify_dir(&dir, &verified_manifest, threads))
            .await
            .map_err(|e| Failure::new("VerifyFailed", e.to_string()))?;
    if let Err(e) = verified {
        return Err(Failure::new(e.reason(), e.to_string()));
    }
    tracing::info!(digest = %manifest.digest, files = manifest.files.len(), elapsed_ms = started.elapsed().as_millis() as u64, "model verified");
    match &state.backend {
        Backend::Builtin(builtin) => {
            let cfg = BuiltinConfig {
                model_dir: args.model_dir.clone(),
                threads: args.threads,
                parallel: args.parallel,
                context_len: args.context_len,
                gguf_type: args.gguf_type.clone(),
            };
            builtin.load(&cfg, &manifest).await.map_err(|e| Failure::new("LoadFailed", e.to_string()))?;
            state.readiness.set(true);
            tracing::info!("built-in engine loaded and warmed up; ready");
            Ok(())
        }
        Backend::Upstream(upstream) => {
            let command = args.upstream_url.is_none().then(|| upstream_command(args));
            let cfg = UpstreamConfig {
                served_model: args.served_model_name.clone(),
                command,
                health_path: args.upstream_health_path.clone(),
                metrics_path: Some(args.upstream_metrics_path.clone()).filter(|p| !p.is_empty()),
                startup_timeout: Duration::from_secs(args.upstream_startup_timeout_secs),
                max_restarts: args.upstream_max_restarts,
                max_waiting: args.upstream_max_waiting,
                check_interval: Duration::from_millis(args.upstream_check_interval_ms.max(100)),
            };
            supervisor::supervise(upstream.clone(), cfg, &state.readiness, &state.metrics.upstream_metrics())
                .await
                .map_err(|e| Failure::new("UpstreamFailed", e.to_string()))
        }
    }
}

fn upstream_command(args: &ServeArgs) -> Vec<String> {
    let dir = args.model_dir.display().to_string();
    let port = args.upstream_port.to_string();
    let mut cmd: Vec<String> = args
        .upstream_command
        .split_whitespace()
        .map(|part| part.replace("{model_dir}", &dir).replace("{port}", &port))
        .collect();
    cmd.extend(args.engine_args.iter().cloned());
    cmd
}

pub fn read_manifest(path: &Path) -> Result<ModelManifest, Failure> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read the manifest {}", path.display()))
        .map_err(|e| Failure::new("InvalidManifest", format!("{e:#}")))?;
    let manifest: ModelManifest = serde_json::from_slice(&text)
        .map_err(|e| Failure::new("InvalidManifest", format!("{}: {e}", path.display())))?;
    manifest.validate().map_err(|e| Failure::new("InvalidManifest", format!("{}: {e}", path.display())))?;
    Ok(manifest)
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, Failure> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new("InvalidConfig", format!("cannot listen on {addr}: {e}")))
}

/// Re-reads the API keys every 10 s, so a rotated Secret takes effect without a restart.
async fn reload_keys(state: Arc<AppState>) {
    if !state.auth.enabled() {
        return std::future::pending().await;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        ticker.tick().await;
        match state.auth.reload() {
            Ok(true) => tracing::info!("API keys reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "API keys file is invalid; keeping the previous keys"),
        }
    }
}

/// SIGTERM or Ctrl-C, shared by both servers.
#[derive(Clone)]
struct ShutdownSignal(tokio::sync::watch::Receiver<bool>);

impl ShutdownSignal {
    async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

fn shutdown_signal() -> ShutdownSignal {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
        tracing::info!("shutting down: finishing requests in flight");
        let _ = tx.send(true);
    });
    ShutdownSignal(rx)
}
