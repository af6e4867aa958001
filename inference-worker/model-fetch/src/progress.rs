//! Progress of a fetch: counters the transfers bump, and a periodic log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::info;

/// How often the progress line is logged while files transfer.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct Progress {
    total_bytes: u64,
    total_files: usize,
    bytes: AtomicU64,
    files: AtomicUsize,
    started: Instant,
}

impl Progress {
    pub fn new(total_bytes: u64, total_files: usize) -> Progress {
        Progress {
            total_bytes,
            total_files,
            bytes: AtomicU64::new(0),
            files: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }

    /// Logs the progress every `every` until the returned guard is dropped.
    pub fn report_every(self: &Arc<Self>, every: Duration) -> Reporter {
        let progress = self.clone();
        Reporter(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticks.tick().await;
                progress.log();
            }
        }))
    }

    fn log(&self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        info!(
            bytes,
            total_bytes = self.total_bytes,
            percent = (bytes as f64 * 100.0 / self.total_bytes.max(1) as f64).min(100.0).round(),
            files = self.files.load(Ordering::Relaxed),
            total_files = self.total_files,
            mb_per_s = bytes as f64 / secs.max(1e-9) / 1e6,
            "fetch progress"
        );
    }
}

/// Stops the progress log when dropped.
pub(crate) struct Reporter(tokio::task::JoinHandle<()>);

impl Drop for Reporter {
    fn drop(&mut self) {
        self.0.abort();
    }
}
