//! Flags of `inference-worker serve`, parsed by clap straight into this struct (the
//! `serve` subcommand in `cli.rs`). The operator renders them into the pod
//! (operator/src/build/workload.rs); defaults suit running it by hand.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::audit::{AuditLevel, FailurePolicy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// vLLM on GPUs, started and supervised as a child process (or `--upstream-url`).
    Vllm,
    /// The built-in CPU engine, in-process.
    Builtin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    Always,
    Interval,
    Never,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, value_enum)]
    pub engine: Engine,
    /// The verified model files.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// The manifest the files are verified against before anything is loaded.
    #[arg(long)]
    pub manifest: PathBuf,
    /// The model name clients send (`model` in requests).
    #[arg(long)]
    pub served_model_name: String,
    #[arg(long, default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// Request audit level.
    #[arg(long, value_enum, default_value_t = AuditLevel::Metadata)]
    pub audit_level: AuditLevel,
    /// Regular expression whose matches are replaced by [REDACTED] in full-text audit records (repeatable).
    #[arg(long = "audit-redact")]
    pub audit_redact: Vec<String>,
    /// JSON-lines audit log file, on a persistent volume.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Also write audit records to stdout (logs go to stderr).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub audit_stdout: bool,
    /// Seconds between the records of refused (unauthenticated) requests, which are counted
    /// per interval rather than recorded one by one.
    #[arg(long, default_value_t = 60)]
    pub audit_refusal_interval_secs: u64,
    /// When audit records are fsynced (see the README for what a crash can lose).
    #[arg(long, value_enum, default_value_t = Fsync::Interval)]
    pub audit_fsync: Fsync,
    #[arg(long, default_value_t = 1000)]
    pub audit_fsync_interval_ms: u64,
    /// What happens to requests when the audit log cannot be written.
    #[arg(long, value_enum, default_value_t = FailurePolicy::FailClosed)]
    pub audit_failure: FailurePolicy,

    /// API keys file (a mounted Secret): one key per line, optional ` rpm=N`. No file: no authentication.
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// Requests per minute per API key when its line sets none.
    #[arg(long)]
    pub rate_limit_rpm: Option<u32>,

    /// Largest `max_tokens` a request may ask for (and the default).
    #[arg(long, default_value_t = 2048)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    #[arg(long, default_value_t = 600)]
    pub request_timeout_secs: u64,
    /// Requests served at once (default: --parallel for builtin, 256 for vLLM).
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Requests that may wait for a slot; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queued: usize,
    #[arg(long, default_value_t = 30)]
    pub queue_timeout_secs: u64,
    /// Threads hashing model files at start.
    #[arg(long)]
    pub verify_threads: Option<usize>,

    /// Built-in engine: CPU threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Built-in engine: sequences decoded together.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Built-in engine: context per sequence (0 = the model's, capped at 8192).
    #[arg(long, default_value_t = 4096)]
    pub context_len: u32,
    /// Built-in engine: the GGUF quantization the deployment declares (checked in the logs).
    #[arg(long)]
    pub gguf_type: Option<String>,

    /// vLLM: an already running OpenAI-compatible server instead of starting one.
    #[arg(long)]
    pub upstream_url: Option<String>,
    /// vLLM: the command that starts the server; {model_dir} and {port} are substituted,
    /// the arguments after `--` appended. Split on spaces.
    #[arg(long, default_value = "vllm serve {model_dir} --host 127.0.0.1 --port {port}")]
    pub upstream_command: String,
    #[arg(long, default_value_t = 8001)]
    pub upstream_port: u16,
    #[arg(long, default_value = "/health")]
    pub upstream_health_path: String,
    /// Empty to not scrape.
    #[arg(long, default_value = "/metrics")]
    pub upstream_metrics_path: String,
    #[arg(long, default_value_t = 1800)]
    pub upstream_startup_timeout_secs: u64,
    #[arg(long, default_value_t = 5)]
    pub upstream_max_restarts: u32,
    /// Withdraw readiness while the upstream has more requests waiting than this.
    #[arg(long)]
    pub upstream_max_waiting: Option<f64>,
    #[arg(long, default_value_t = 5000)]
    pub upstream_check_interval_ms: u64,

    /// Where the failure reason goes, for the operator's condition.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,

    /// Arguments for vLLM (after `--`).
    #[arg(last = true)]
    pub engine_args: Vec<String>,
}
