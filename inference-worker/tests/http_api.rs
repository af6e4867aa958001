//! The worker's HTTP contract with real requests against SmolLM2 on the built-in engine:
//! authentication, per-key rate limits, body and token limits, malformed input, the
//! concurrency queue, client disconnects, metrics and readiness.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Worker, WorkerSpec, smollm2_dir};
use reqwest::blocking::Client;
use serde_json::{Value, json};

const KEY: &str = "sk-unlimited-0123456789abcdef";
const LIMITED: &str = "sk-limited-0123456789abcdef";

fn worker() -> Worker {
    let keys = tempfile::NamedTempFile::new().unwrap().into_temp_path();
    std::fs::write(&keys, format!("{KEY}\n{LIMITED} rpm=2\n")).unwrap();
    let mut w = Worker::start(WorkerSpec {
        engine: "builtin",
        model_dir: smollm2_dir(),
        format: "gguf",
        name: "smollm2",
        extra: vec![
            format!("--api-keys={}", keys.display()),
            "--max-concurrent=1".into(),
            "--max-queued=0".into(),
            "--parallel=1".into(),
            "--max-body-bytes=65536".into(),
            "--max-tokens=256".into(),
            "--audit-level=none".into(),
        ],
    });
    // Keep the key file alive as long as the worker.
    std::mem::forget(keys);
    w.wait_ready(Duration::from_secs(120));
    w
}

fn chat(client: &Client, w: &Worker, key: &str, body: Value) -> (u16, Value, Option<String>) {
    let r = client.post(w.url("/v1/chat/completions")).bearer_auth(key).json(&body).send().unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().unwrap_or(Value::Null), retry)
}

fn hello(max_tokens: u32) -> Value {
    json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "Say hello." }], "max_tokens": max_tokens, "temperature": 0 })
}

fn metric(w: &Worker, line_prefix: &str) -> f64 {
    w.metric(line_prefix).unwrap_or_else(|| panic!("no metric {line_prefix}"))
}

#[test]
fn http_contract() {
    let w = worker();
    let client = Client::new();

    // Authentication: OpenAI's 401 body, with or without a key.
    let r = client.post(w.url("/v1/chat/completions")).json(&hello(2)).send().unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, body, _) = chat(&client, &w, "sk-wrong-key-0123456789", hello(2));
    assert_eq!((status, body["error"]["type"].as_str()), (401, Some("invalid_request_error")));

    // Per-key rate limit: rpm=2 lets two through, then 429 with Retry-After.
    assert_eq!(chat(&client, &w, LIMITED, hello(1)).0, 200);
    assert_eq!(chat(&client, &w, LIMITED, hello(1)).0, 200);
    let (status, body, retry) = chat(&client, &w, LIMITED, hello(1));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    // The other key is not limited by it.
    assert_eq!(chat(&client, &w, KEY, hello(1)).0, 200);

    // Malformed input: 400s naming the field, never a crash.
    for (body, param) in [
        (json!({ "model": "smollm2", "messages": [{ "role": "user", "content": 5 }] }), "messages[0].content"),
        (json!({ "model": "smollm2", "messages": "hi" }), "messages"),
        (
            json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "x" }], "max_tokens": 100000 }),
            "max_tokens",
        ),
        (json!({ "model": "smollm2", "messages": [{ "role": "wizard", "content": "x" }] }), "messages[0].role"),
        (json!({ "model": "smollm2", "messages": [] }), "messages"),
    ] {
        let (status, got, _) = chat(&client, &w, KEY, body.clone());
        assert_eq!(status, 400, "{body} -> {got}");
        assert_eq!(got["error"]["param"], param, "{body} -> {got}");
    }
    let r = client
        .post(w.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"model\": \"smollm2\", \"messages\": [")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().unwrap()["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    let (status, body, _) =
        chat(&client, &w, KEY, json!({ "model": "llama-3", "messages": [{ "role": "user", "content": "x" }] }));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("model_not_found")));

    // Body size limit.
    let big = json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "a".repeat(100_000) }] });
    assert_eq!(chat(&client, &w, KEY, big).0, 413);

    // Concurrency 1, queue 0: while a stream runs, another request is refused with 503 + Retry-After.
    let mut stream = open_stream(&w, 200);
    let (status, body, retry) = chat(&client, &w, KEY, hello(1));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded");
    assert!(retry.is_some());

    // Client disconnect mid-stream cancels generation and frees the slot at once
    // (200 tokens would take seconds; the next request must get through quickly).
    let mut first = [0u8; 64];
    stream.read_exact(&mut first).unwrap();
    drop(stream);
    let started = Instant::now();
    loop {
        let (status, _, _) = chat(&client, &w, KEY, hello(1));
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the slot was not freed after the client left");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(&w, "taimatsu_worker_requests_in_flight"), 0.0);

    // Metrics: bounded labels, latency and token counters.
    assert!(metric(&w, "taimatsu_worker_requests_total{endpoint=\"chat\",status_class=\"2xx\"}") >= 4.0);
    assert!(metric(&w, "taimatsu_worker_requests_total{endpoint=\"chat\",status_class=\"4xx\"}") >= 8.0);
    assert!(metric(&w, "taimatsu_worker_generated_tokens_total") >= 4.0);
    assert!(metric(&w, "taimatsu_worker_request_duration_seconds_count{endpoint=\"chat\"}") >= 10.0);
    assert_eq!(metric(&w, "taimatsu_worker_ready"), 1.0);
}

/// Opens a streaming chat request on a raw socket and returns it after the response head,
/// so the test controls exactly when the client goes away.
fn open_stream(w: &Worker, max_tokens: u32) -> BufReader<TcpStream> {
    let body = json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "Write a long story about a lighthouse." }],
        "max_tokens": max_tokens, "stream": true, "temperature": 0 })
    .to_string();
    let mut s = TcpStream::connect(("127.0.0.1", w.port)).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    reader
}

#[test]
fn a_tampered_model_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let src = smollm2_dir().join(common::SMOLLM2_FILE);
    std::fs::copy(&src, model.join(common::SMOLLM2_FILE)).unwrap();
    let manifest = common::manifest_of(&model, "smollm2", "gguf");
    // Flip one byte after the manifest was made.
    let path = model.join(common::SMOLLM2_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4_000_000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let spec = WorkerSpec { engine: "builtin", model_dir: model, format: "gguf", name: "smollm2", extra: vec![] };
    let mut w = Worker::start_with_manifest(spec, &manifest, tempfile::tempdir().unwrap());
    let status = w.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let reason = std::fs::read_to_string(&w.termination_log).unwrap();
    assert!(reason.starts_with("DigestMismatch: "), "{reason}");
    assert!(reason.contains(common::SMOLLM2_FILE) && reason.contains(&manifest.files[0].sha256), "{reason}");
}
