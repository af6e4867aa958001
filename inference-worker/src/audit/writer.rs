//! The audit writer: one thread that seals records into the hash chain and appends them
//! to the sinks (a JSON-lines file on a volume, stdout), in batches.
//!
//! What a crash can lose, by `--audit-fsync` policy (tested in tests/audit_crash.rs):
//! - `always`: a batch is written and fsynced before any of its requests is answered
//!   (the response's last bytes wait for it). A SIGKILL or power loss loses only records of
//!   requests that were not yet answered.
//! - `interval` (default, every 1 s): records are written with write(2) as they arrive and
//!   fsynced at most once per interval. A SIGKILL loses only records still in the writer's
//!   queue (requests answered microseconds earlier); a power loss also loses up to one
//!   interval of written but unsynced records.
//! - `never`: like interval without fsync; a power loss loses what the OS had not flushed.
//!
//! A write cut short leaves a final line without its newline; on start the writer drops it
//! (`ChainState::resume`), so the chain always verifies and continues across restarts.
//! A log that does not verify is moved aside (`<file>.broken-<unix time>`), never deleted,
//! and a new chain starts with a record naming it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use taimatsu_core::audit_chain::ChainState;

use super::record::RequestRecord;
use crate::api::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval(Duration),
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse requests with 503 while the audit sink fails: nothing is served unaudited.
    FailClosed,
    /// Keep serving, count the failures in `taimatsu_worker_audit_write_failures_total`.
    FailOpen,
}

#[derive(Clone, Debug)]
pub struct AuditSinks {
    pub file: Option<PathBuf>,
    pub stdout: bool,
    /// Each sealed record also becomes an OpenTelemetry log record (OTLP logs export).
    pub otel_logs: bool,
    pub fsync: FsyncPolicy,
    pub failure: FailurePolicy,
}

/// The worker's audit metrics the writer counts into (handles to counters registered by
/// the caller, so the writer needs no metrics registry of its own).
#[derive(Clone, Debug)]
pub struct AuditCounters {
    /// Records written (`taimatsu_worker_audit_records_total`).
    pub records: Counter,
    /// Writes that failed (`taimatsu_worker_audit_write_failures_total`).
    pub write_failures: Counter,
}

type Ack = tokio::sync::oneshot::Sender<Result<(), String>>;

struct Job {
    /// `None`: a flush barrier (shutdown), acknowledged after everything before it is synced.
    record: Option<RequestRecord>,
    ack: Option<Ack>,
}

/// Handle to the writer thread.
pub struct AuditLog {
    tx: Option<mpsc::Sender<Job>>,
    healthy: Arc<AtomicBool>,
    sinks: AuditSinks,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditStartError {
    #[error("cannot open the audit log {path}: {source}; mount a writable volume there or change --audit-log")]
    Open { path: PathBuf, source: std::io::Error },
}

impl AuditLog {
    /// No sinks: nothing is recorded (audit level `none`).
    pub fn off() -> Self {
        Self {
            tx: None,
            healthy: Arc::new(AtomicBool::new(true)),
            sinks: AuditSinks {
                file: None,
                stdout: false,
                otel_logs: false,
                fsync: FsyncPolicy::Never,
                failure: FailurePolicy::FailOpen,
            },
        }
    }

    pub fn start(sinks: AuditSinks, counters: AuditCounters) -> Result<Self, AuditStartError> {
        let (file, chain, restarted_from) = match &sinks.file {
            Some(path) => {
                let (file, chain, restarted) =
                    open_log(path).map_err(|source| AuditStartError::Open { path: path.clone(), source })?;
                (Some(file), chain, restarted)
            }
            None => (None, ChainState::default(), None),
        };
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel::<Job>();
        let file_len = file.as_ref().and_then(|f| f.metadata().ok()).map_or(0, |m| m.len());
        let mut writer = Writer {
            file_len,
            file,
            stdout: sinks.stdout,
            otel_logs: sinks.otel_logs,
            chain,
            fsync: sinks.fsync,
            counters,
            healthy: healthy.clone(),
        };
        if let Some(broken) = restarted_from {
            tracing::error!(moved_to = %broken.display(), "the existing audit log did not verify; it was moved aside and a new chain starts");
            writer.write_batch(vec![Job { record: Some(chain_restart_record(&broken)), ack: None }]);
        }
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| AuditStartError::Open { path: PathBuf::from("<thread>"), source })?;
        Ok(Self { tx: Some(tx), healthy, sinks })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Fail-closed gate, checked before a request is served.
    pub fn check_available(&self) -> Result<(), ApiError> {
        if self.sinks.failure == FailurePolicy::FailClosed && !self.healthy.load(Ordering::Acquire) {
            return Err(ApiError::unavailable(
                "The audit log cannot be written and the audit policy is fail-closed: requests are refused rather than served unaudited.",
            ));
        }
        Ok(())
    }

    /// Waits until every record submitted so far is written and synced (graceful shutdown).
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack, rx) = tokio::sync::oneshot::channel();
        if tx.send(Job { record: None, ack: Some(ack) }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Hands a record to the writer. Under `--audit-fsync=always` the returned receiver
    /// resolves once the record is durable; the response waits for it.
    pub fn submit(&self, record: RequestRecord) -> Option<tokio::sync::oneshot::Receiver<Result<(), String>>> {
        let tx = self.tx.as_ref()?;
        let (ack, rx) = if self.sinks.fsync == FsyncPolicy::Always {
            let (a, r) = tokio::sync::oneshot::channel();
            (Some(a), Some(r))
        } else {
            (None, None)
        };
        if tx.send(Job { record: Some(record), ack }).is_err() {
            self.healthy.store(false, Ordering::Release);
            return None;
        }
        rx
    }
}

fn chain_restart_record(broken: &Path) -> RequestRecord {
    RequestRecord {
        kind: "chain-restarted",
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        pod: std::env::var("POD_NAME").unwrap_or_default(),
        response: Some(format!("previous log did not verify and was moved to {}", broken.display())),
        ..RequestRecord::empty()
    }
}

/// Opens (or creates) the log, drops a half-written tail and resumes its chain. A log that
/// does not verify is renamed aside and a fresh one started.
fn open_log(path: &Path) -> std::io::Result<(File, ChainState, Option<PathBuf>)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut existing = Vec::new();
    // Only a regular file holds a previous chain (not e.g. a device or a pipe).
    if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        File::open(path)?.read_to_end(&mut existing)?;
    }
    match ChainState::resume(&existing) {
        Ok((chain, keep)) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            if keep < existing.len() as u64 {
                file.set_len(keep)?;
            }
            Ok((file, chain, None))
        }
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            let broken = PathBuf::from(format!("{}.broken-{now}", path.display()));
            std::fs::rename(path, &broken)?;
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            Ok((file, ChainState::default(), Some(broken)))
        }
    }
}

struct Writer {
    file: Option<File>,
    /// The file's length after the last whole record (kept here: no stat per append).
    file_len: u64,
    stdout: bool,
    otel_logs: bool,
    chain: ChainState,
    fsync: FsyncPolicy,
    counters: AuditCounters,
    healthy: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            let wait = match self.fsync {
                FsyncPolicy::Interval(d) if dirty => d.saturating_sub(last_sync.elapsed()),
                _ => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < 512 {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                self.write_batch(batch);
                dirty = true;
            }
            if let FsyncPolicy::Interval(d) = self.fsync
                && dirty
                && last_sync.elapsed() >= d
            {
                self.sync();
                last_sync = Instant::now();
                dirty = false;
            }
        }
        self.sync();
    }

    fn sync(&mut self) {
        if let Some(f) = &self.file
            && let Err(e) = f.sync_data()
        {
            self.fail(&format!("fsync: {e}"));
        }
    }

    fn fail(&self, why: &str) {
        tracing::error!(error = why, "request audit write failed");
        self.counters.write_failures.inc();
        self.healthy.store(false, Ordering::Release);
    }

    fn write_batch(&mut self, batch: Vec<Job>) {
        let saved = self.chain.clone();
        let mut buf = String::with_capacity(batch.len() * 512);
        let flush = batch.iter().any(|j| j.record.is_none());
        for record in batch.iter().filter_map(|j| j.record.as_ref()) {
            match self.chain.seal(record) {
                Ok(line) => buf.push_str(&line),
                Err(e) => tracing::error!(error = %e, "cannot serialise an audit record"),
            }
        }
        let mut result = self.append(buf.as_bytes());
        if flush && result.is_ok() {
            result = self.file.as_ref().map_or(Ok(()), |f| f.sync_data().map_err(|e| format!("fsync: {e}")));
        }
        match &result {
            Ok(()) => {
                self.counters.records.inc_by(batch.iter().filter(|j| j.record.is_some()).count() as u64);
                self.healthy.store(true, Ordering::Release);
            }
            Err(e) => {
                // The lines are not in the file: rewind the chain so the next batch links to
                // the last record that is.
                self.chain = saved;
                self.fail(e);
            }
        }
        for job in batch {
            if let Some(ack) = job.ack {
                let _ = ack.send(result.clone());
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(bytes) {
                // Cut a partial write back so the file still ends with a whole record.
                let _ = f.set_len(self.file_len);
                return Err(format!("write: {e}"));
            }
            self.file_len += bytes.len() as u64;
            if self.fsync == FsyncPolicy::Always {
                f.sync_data().map_err(|e| format!("fsync: {e}"))?;
            }
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))?;
        }
        if self.otel_logs {
            // Best effort, batched by the OpenTelemetry SDK; the file is the record of truth.
            for line in String::from_utf8_lossy(bytes).lines() {
                tracing::info!(target: taimatsu_telemetry::EXPORTED_LOG_TARGET, { audit.record = line }, "request audit record");
            }
        }
        Ok(())
    }
}
