//! OpenTelemetry export, configured only by the standard environment variables: a request
//! becomes a trace span (a child of the caller's `traceparent`) and its audit record an
//! OTLP log record. The receiver is a real OTLP/HTTP endpoint (taimatsu_tests::otlp).

mod common;

use std::time::Duration;

use common::{Worker, WorkerSpec, smollm2_dir};
use serde_json::json;
use taimatsu_tests::otlp::OtlpReceiver;

#[test]
fn requests_are_traced_and_audit_records_exported_over_otlp() {
    let receiver = OtlpReceiver::start();
    let mut env = receiver.env();
    env.push(("OTEL_SERVICE_NAME", "smollm2-chat".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut worker = Worker::start_env(
        WorkerSpec { engine: "builtin", model_dir: smollm2_dir(), format: "gguf", name: "smollm2", extra: vec![] },
        &env,
    );
    worker.wait_ready(Duration::from_secs(120));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::blocking::Client::new()
        .post(worker.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 3 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    // The request's span: in the caller's trace, under the caller's span, named by route.
    receiver.wait_for(
        "traces",
        &[trace_id, "00f067aa0ba902b7", "POST /v1/chat/completions", "smollm2-chat"],
        Duration::from_secs(20),
    );
    // Its audit record as an OTLP log record, and not repeated in the stderr log.
    receiver.wait_for("logs", &["prompt_sha256", r#"\"endpoint\":\"chat\""#], Duration::from_secs(20));
    assert!(!worker.logs().contains("prompt_sha256"));
}
