//! A real OTLP/HTTP receiver for tests of OpenTelemetry export: it accepts `/v1/traces` and
//! `/v1/logs` (the JSON encoding, `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) and keeps every
//! export request body, so a test can wait for the span or log record it expects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use serde_json::Value;

#[derive(Clone, Default)]
pub struct OtlpReceiver {
    pub port: u16,
    received: Arc<Mutex<Vec<(String, Value)>>>,
}

impl OtlpReceiver {
    /// Starts on a free loopback port, on a thread of its own (usable from sync and async tests).
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let receiver = OtlpReceiver { port, received: Arc::default() };
        let store = receiver.received.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let route = |signal: &'static str, store: Arc<Mutex<Vec<(String, Value)>>>| {
                    post(move |body: axum::body::Bytes| async move {
                        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        store.lock().unwrap_or_else(|p| p.into_inner()).push((signal.to_owned(), value));
                        axum::Json(serde_json::json!({}))
                    })
                };
                let app = Router::new()
                    .route("/v1/traces", route("traces", store.clone()))
                    .route("/v1/logs", route("logs", store));
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        receiver
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment that points an OpenTelemetry SDK here, exporting quickly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("OTEL_BLRP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    /// Waits (polling, up to `timeout`) for an export of `signal` ("traces" or "logs") whose
    /// JSON contains every one of `needles`; panics with what arrived otherwise.
    pub fn wait_for(&self, signal: &str, needles: &[&str], timeout: Duration) -> String {
        let received = || self.received.lock().unwrap_or_else(|p| p.into_inner());
        let found = || {
            received().iter().find_map(|(s, v)| {
                let text = v.to_string();
                (s == signal && needles.iter().all(|n| text.contains(n))).then_some(text)
            })
        };
        crate::wait::poll_blocking(timeout, Duration::from_millis(100), found, || {
            format!("no OTLP {signal} export containing {needles:?}; received {:?}", received())
        })
    }
}
