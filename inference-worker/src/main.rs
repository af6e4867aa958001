//! `inference-worker`: `fetch` (the pod's init step: fetch and verify the model),
//! `serve` (verify again, load, serve the OpenAI API) and `audit-verify`.

use std::process::ExitCode;

use clap::Parser;
use taimatsu_inference_worker::cli::{self, Cli, Command, LogFormat};
use taimatsu_inference_worker::serve;
use taimatsu_inference_worker::termination::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Json => taimatsu_telemetry::LogFormat::Json,
        LogFormat::Text => taimatsu_telemetry::LogFormat::Text,
    };
    // Logs to stderr (stdout carries audit records); OTLP traces and audit log records when
    // the standard OTEL_EXPORTER_OTLP_* variables are set. Flushed when dropped at the end.
    let telemetry = taimatsu_telemetry::init("taimatsu-inference-worker", format, "info,llama-cpp-2=warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (result, termination_log) = match cli.command {
        Command::Fetch(args) => {
            let log = args.termination_log.clone();
            (runtime.block_on(fetch(args)), Some(log))
        }
        Command::Serve(args) => {
            let log = args.termination_log.clone();
            (runtime.block_on(serve::run(*args, &telemetry)), Some(log))
        }
        Command::AuditVerify { file } => (audit_verify(&file), None),
        Command::Verify { model_dir, manifest, threads } => (verify(&model_dir, &manifest, threads), None),
    };
    drop(runtime);
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tracing::error!(reason = failure.reason, message = %failure.message, "failed");
            eprintln!("{failure}");
            if let Some(path) = termination_log {
                failure.write_termination_log(&path);
            }
            ExitCode::FAILURE
        }
    };
    drop(telemetry);
    code
}

async fn fetch(args: cli::FetchArgs) -> Result<(), Failure> {
    let options = taimatsu_model_fetch::FetchOptions {
        source: args.source,
        manifest: args.manifest,
        dest: args.dest,
        ca_bundle: args.ca_bundle,
        parallel: args.parallel.max(1),
        hf_mirror: args.hf_mirror,
        allow_branch_revision: args.allow_branch_revision,
    };
    match taimatsu_model_fetch::fetch(&options).await {
        Ok(report) => {
            tracing::info!(
                digest = %report.digest,
                files = report.files,
                bytes = report.bytes,
                cached_files = report.cached_files,
                downloaded_bytes = report.downloaded_bytes,
                "model fetched and verified"
            );
            Ok(())
        }
        Err(e) => Err(Failure::new(e.reason(), e.to_string())),
    }
}

fn verify(dir: &std::path::Path, manifest: &std::path::Path, threads: Option<usize>) -> Result<(), Failure> {
    let manifest = serve::read_manifest(manifest)?;
    let threads = threads.unwrap_or_else(taimatsu_core::file_verify::default_threads);
    let started = std::time::Instant::now();
    taimatsu_core::file_verify::verify_dir(dir, &manifest, threads)
        .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!(
        "{}: {} files, {bytes} bytes verified against {} in {:.3} s",
        dir.display(),
        manifest.files.len(),
        manifest.digest,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn audit_verify(file: &std::path::Path) -> Result<(), Failure> {
    let log = std::fs::read(file).map_err(|e| Failure::new("AuditUnreadable", format!("{}: {e}", file.display())))?;
    let report = taimatsu_core::audit_chain::verify(&log)
        .map_err(|e| Failure::new("AuditBroken", format!("{}: {e}", file.display())))?;
    println!(
        "{}: {} records verified, last hash {}{}",
        file.display(),
        report.records,
        report.last_hash,
        if report.incomplete_tail { " (a final half-written line, cut by a crash, was ignored)" } else { "" }
    );
    Ok(())
}
