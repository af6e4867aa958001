//! The vLLM backend path — start, supervise and forward to an OpenAI-compatible server —
//! against a real third-party one: llama-cpp-python's server (vLLM itself needs a GPU).
//! Streaming pass-through, upstream errors passed through, and upstream death.

mod common;

use std::time::{Duration, Instant};

use common::{SMOLLM2_FILE, Worker, WorkerSpec, python, run_python, smollm2_dir};
use serde_json::json;

fn start(audit_log: &std::path::Path, upstream_port: u16) -> Worker {
    let command = format!(
        "{} -m llama_cpp.server --model {{model_dir}}/{SMOLLM2_FILE} --host 127.0.0.1 --port {{port}} \
         --chat_format chatml --model_alias smollm2 --n_threads 2 --n_ctx 2048 --interrupt_requests False",
        python().display()
    );
    let mut w = Worker::start(WorkerSpec {
        engine: "vllm",
        model_dir: smollm2_dir(),
        format: "gguf",
        name: "smollm2",
        extra: vec![
            format!("--upstream-command={command}"),
            format!("--upstream-port={upstream_port}"),
            // llama-cpp-python has no /health or /metrics (vLLM has both). By default it aborts a
            // running stream when any other request (even a health check) arrives: turned off above.
            "--upstream-health-path=/v1/models".into(),
            "--upstream-metrics-path=".into(),
            "--upstream-check-interval-ms=200".into(),
            format!("--audit-log={}", audit_log.display()),
            "--audit-fsync=always".into(),
        ],
    });
    w.wait_ready(Duration::from_secs(180));
    w
}

fn upstream_pid(w: &Worker) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.child.id())).unwrap();
    children.split_whitespace().next().expect("the worker has no child process").parse().unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn forwards_streams_errors_and_survives_upstream_death() {
    let dir = tempfile::tempdir().unwrap();
    let audit_log = dir.path().join("requests.jsonl");
    let upstream_port = common::free_port();
    let w = start(&audit_log, upstream_port);

    let out = run_python("upstream_checks.py", &[&w.base_url(), "smollm2"]);
    assert!(out.contains("ALL OK"), "{out}");

    // An error from the upstream reaches the client as the upstream said it: the same
    // status and body as asking the upstream directly.
    let client = reqwest::blocking::Client::new();
    let bad =
        json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "hi" }], "logit_bias": "not-a-map" });
    let direct =
        client.post(format!("http://127.0.0.1:{upstream_port}/v1/chat/completions")).json(&bad).send().unwrap();
    let (direct_status, direct_body) = (direct.status(), direct.text().unwrap());
    assert!(direct_status.as_u16() >= 400, "{direct_status}");
    let r = client.post(w.url("/v1/chat/completions")).json(&bad).send().unwrap();
    assert_eq!(r.status(), direct_status);
    assert_eq!(r.text().unwrap(), direct_body);

    // Streamed requests through the upstream are audited with the response hash.
    let log = std::fs::read(&audit_log).unwrap();
    let report = taimatsu_core::audit_chain::verify(&log).unwrap();
    assert!(report.records >= 5, "{report:?}");

    // The upstream dies: readiness goes, requests are refused, the worker restarts it.
    let pid = upstream_pid(&w);
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    wait_until("readiness to drop", Duration::from_secs(10), || {
        client.get(w.url("/readyz")).send().map(|r| r.status() == 503).unwrap_or(false)
    });
    let r = client
        .post(w.url("/v1/completions"))
        .json(&json!({ "model": "smollm2", "prompt": "x", "max_tokens": 1 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    wait_until("the upstream to be restarted and ready", Duration::from_secs(120), || {
        client.get(w.url("/readyz")).send().map(|r| r.status() == 200).unwrap_or(false)
    });
    assert_eq!(w.metric("taimatsu_worker_upstream_restarts_total").unwrap_or(0.0), 1.0);
    assert_ne!(upstream_pid(&w), pid);
    let r = client
        .post(w.url("/v1/completions"))
        .json(&json!({ "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}
