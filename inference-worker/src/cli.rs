//! Command line of `inference-worker`. The operator renders these flags into the pod
//! (operator/src/build/workload.rs); defaults suit running it by hand. The flags of
//! `serve` are declared beside the server that reads them (`serve::ServeArgs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::serve::ServeArgs;

#[derive(Parser, Debug)]
#[command(
    name = "inference-worker",
    version,
    about = "Taimatsu's inference worker: verified models behind an OpenAI-compatible API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json, env = "TAIMATSU_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch the model's files from its source and verify each one (the pod's init step).
    Fetch(FetchArgs),
    /// Verify the model and serve it over the OpenAI API.
    Serve(Box<ServeArgs>),
    /// Verify a model directory against a manifest (what `serve` does before loading).
    Verify {
        #[arg(long)]
        model_dir: PathBuf,
        #[arg(long)]
        manifest: PathBuf,
        /// Threads hashing files (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Verify a hash-chained audit log (request or control-plane audit); names the first bad record.
    AuditVerify {
        /// The JSON-lines audit log.
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// `https://mirror/prefix/`, `s3://bucket/prefix/`, `pvc:///mounted/path` or
    /// `hf://<org>/<name>@<commit>` (fetched from `--hf-mirror`).
    #[arg(long)]
    pub source: String,
    /// The manifest JSON rendered by the operator.
    #[arg(long)]
    pub manifest: PathBuf,
    /// The model cache volume.
    #[arg(long)]
    pub dest: PathBuf,
    /// Extra CA certificates (PEM) for an https source.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// The in-house Hugging Face Hub mirror hf:// sources are fetched from (never the public hub).
    #[arg(long)]
    pub hf_mirror: Option<String>,
    /// Accept an hf:// revision that is a branch or tag, not a commit id (set by the operator
    /// only in namespaces that allow unpinned models). Without it such a revision is refused,
    /// naming the commit it resolves to.
    #[arg(long)]
    pub allow_branch_revision: bool,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Where the failure reason goes, for the operator's condition.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}
