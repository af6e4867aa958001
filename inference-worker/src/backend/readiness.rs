//! Whether the worker takes requests: set once the model is verified and the backend
//! answered its warm-up, cleared while the backend is down or saturated and at shutdown.
//! Both the flag (read by `/readyz` and the request gate) and the `ready` gauge follow it.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::gauge::Gauge;

pub struct Readiness {
    ready: AtomicBool,
    gauge: Gauge,
}

impl Readiness {
    /// Starts not ready. `gauge` is the worker's `ready` metric, shared with its registry.
    pub fn new(gauge: Gauge) -> Self {
        Self { ready: AtomicBool::new(false), gauge }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        self.gauge.set(i64::from(ready));
    }
}
