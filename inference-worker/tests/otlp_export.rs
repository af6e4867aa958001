//! OpenTelemetry export, configured only by the standard environment variables: a request
//! becomes a trace span (a child of the caller's `traceparent`) and its audit record an
//! OTLP log record. The receiver is a real OTLP/HTTP endpoint (taimatsu_tests::otlp). The
//! request forwarded to vLLM carries the trace context.

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

/// An OpenAI-compatible stand-in for vLLM that answers every completion with "Paris" and
/// keeps the `traceparent` header of each request it gets (None when a request had none).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

fn recording_upstream() -> (u16, Seen) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let (mut length, mut traceparent) = (0, None);
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "traceparent" => traceparent = Some(value.trim().to_owned()),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    record.lock().unwrap().push((path.clone(), traceparent));
                    let answer = if path.ends_with("/chat/completions") {
                        json!({ "id": "c", "object": "chat.completion", "model": "smollm2",
                                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Paris" }, "finish_reason": "stop" }],
                                "usage": { "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4 } })
                    } else {
                        json!({ "id": "c", "object": "text_completion", "model": "smollm2",
                                "choices": [{ "index": 0, "text": "Paris", "finish_reason": "stop" }],
                                "usage": { "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4 } })
                    }
                    .to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if out.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn the_request_to_vllm_carries_the_trace_context() {
    let receiver = OtlpReceiver::start();
    let env = receiver.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (port, seen) = recording_upstream();
    let mut worker = Worker::start_env(
        WorkerSpec::smollm2(
            "vllm",
            vec![
                format!("--upstream-url=http://127.0.0.1:{port}"),
                "--upstream-metrics-path=".into(),
                "--upstream-check-interval-ms=200".into(),
            ],
        ),
        &env,
    );
    worker.wait_ready(Duration::from_secs(60));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::blocking::Client::new()
        .post(worker.url("/v1/chat/completions"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "Capital of France?" }], "max_tokens": 3 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = seen.lock().unwrap().clone();
    let (_, traceparent) = seen.iter().rev().find(|(path, _)| path == "/v1/chat/completions").expect("forwarded");
    let traceparent = traceparent.as_deref().expect("the forwarded request has a traceparent");
    // The caller's trace, with the worker's span (not the caller's) as the parent.
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!((parts.len(), parts[1]), (4, trace_id), "{traceparent}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "{traceparent}");
}
