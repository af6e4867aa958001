//! The vLLM backend path — start, supervise and forward to an OpenAI-compatible server —
//! against a real third-party one: llama-cpp-python's server (vLLM itself needs a GPU).
//! Streaming pass-through, upstream errors passed through, and upstream death.

mod common;

use std::time::Duration;

use common::{SMOLLM2_FILE, Worker, WorkerSpec, python, run_python, smollm2_dir};
use serde_json::json;
use taimatsu_tests::wait::poll_blocking;

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

/// The worker's model server process, once it has one.
fn upstream_pid(w: &Worker) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.child.id())).ok()?;
    children.split_whitespace().next().and_then(|pid| pid.parse().ok())
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    poll_blocking(timeout, Duration::from_millis(100), || check().then_some(()), || format!("waiting for {what}"));
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

    // Streamed requests through the upstream are audited with the response hash. The last
    // record is written after its response has gone out: wait for it rather than race it.
    let report = poll_blocking(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let log = std::fs::read(&audit_log).ok()?;
            taimatsu_core::audit_chain::verify(&log).ok().filter(|r| r.records >= 5)
        },
        || format!("fewer than 5 verified audit records in {}", audit_log.display()),
    );
    assert!(report.records >= 5, "{report:?}");

    // The upstream dies: readiness goes, requests are refused, the worker restarts it.
    let pid = upstream_pid(&w).expect("the worker has no child process");
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
    assert_ne!(upstream_pid(&w).expect("the worker has no child process"), pid);
    let r = client
        .post(w.url("/v1/completions"))
        .json(&json!({ "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Whether `pid` has exited (gone, or a zombie waiting for its new parent to reap it).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

#[test]
fn a_restart_stops_the_whole_model_server_process_group() {
    // A model server that starts a helper process (as vLLM starts its engine workers) and
    // never becomes healthy: after the startup timeout the worker stops it and starts again.
    // PATH is empty, as in the worker images, which hold no `kill` program.
    let dir = tempfile::tempdir().unwrap();
    let helper_pid = dir.path().join("helper.pid");
    let script = dir.path().join("model-server.sh");
    std::fs::write(&script, format!("/bin/sleep 60 &\necho $! > {}\nexec /bin/sleep 60\n", helper_pid.display()))
        .unwrap();
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let _w = Worker::start_env(
        WorkerSpec::smollm2(
            "vllm",
            vec![
                format!("--upstream-command=/bin/sh {}", script.display()),
                format!("--upstream-port={}", common::free_port()),
                "--upstream-startup-timeout-secs=2".into(),
                "--upstream-check-interval-ms=200".into(),
            ],
        ),
        &[("PATH", empty.to_str().unwrap())],
    );
    let mut first = None;
    wait_until("the model server to start its helper", Duration::from_secs(60), || {
        first = std::fs::read_to_string(&helper_pid).ok().and_then(|p| p.trim().parse::<u32>().ok());
        first.is_some()
    });
    let first = first.unwrap();
    // Stopped with its group at the first restart: SIGTERM reaches the helper at once.
    wait_until("the first server's helper to be stopped with it", Duration::from_secs(8), || exited(first));
}

#[test]
fn a_killed_worker_takes_its_model_server_with_it() {
    // The worker is SIGKILLed (the OOM killer, say): it runs no code on the way out, so the
    // kernel must stop the model server, or it lives on, orphaned, holding its port.
    let mut w = Worker::start(WorkerSpec::smollm2(
        "vllm",
        vec![
            "--upstream-command=/bin/sleep 120".into(),
            format!("--upstream-port={}", common::free_port()),
            "--upstream-startup-timeout-secs=600".into(),
        ],
    ));
    let mut server = None;
    wait_until("the worker to start its model server", Duration::from_secs(60), || {
        server = upstream_pid(&w);
        server.is_some()
    });
    let server = server.unwrap();
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    wait_until("the model server to die with its worker", Duration::from_secs(1), || exited(server));
}

#[test]
fn a_stopped_worker_stops_its_model_servers_helpers() {
    // The worker is stopped (SIGTERM: a pod deleted, Ctrl-C on a host) while its model server
    // runs a helper process, as vLLM runs its engine core and workers (which hold the GPU
    // memory) beside its API server. Stopping only the API server orphans them.
    let dir = tempfile::tempdir().unwrap();
    let helper_pid = dir.path().join("helper.pid");
    let script = dir.path().join("model-server.sh");
    std::fs::write(&script, format!("/bin/sleep 120 &\necho $! > {}\nexec /bin/sleep 120\n", helper_pid.display()))
        .unwrap();
    let mut w = Worker::start(WorkerSpec::smollm2(
        "vllm",
        vec![
            format!("--upstream-command=/bin/sh {}", script.display()),
            format!("--upstream-port={}", common::free_port()),
            "--upstream-startup-timeout-secs=600".into(),
        ],
    ));
    let mut helper = None;
    wait_until("the model server to start its helper", Duration::from_secs(60), || {
        helper = std::fs::read_to_string(&helper_pid).ok().and_then(|p| p.trim().parse::<u32>().ok());
        helper.is_some()
    });
    let helper = helper.unwrap();
    std::process::Command::new("kill").args(["-TERM", &w.child.id().to_string()]).status().unwrap();
    w.wait_exit(Duration::from_secs(30));
    wait_until("the helper to be stopped with the worker", Duration::from_secs(5), || exited(helper));
}

#[test]
fn a_model_server_that_dies_takes_its_helpers_along_before_the_restart() {
    // vLLM's API server dies (OOM-killed, say) while its engine core, a child in its process
    // group, lives on holding the model's memory. The restart must not start a second engine
    // beside the orphaned one: the whole group goes first. The model server here is a few
    // lines of Python that answer /health and the warm-up, after starting a helper.
    let dir = tempfile::tempdir().unwrap();
    let helper_pid = dir.path().join("helper.pid");
    let server = dir.path().join("model_server.py");
    std::fs::write(
        &server,
        format!(
            r#"import http.server, subprocess, sys
helper = subprocess.Popen(["/bin/sleep", "300"])
open({pid:?}, "a").write(f"{{helper.pid}}\n")
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"{{}}")
    do_GET = do_POST = answer
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
            pid = helper_pid.display().to_string()
        ),
    )
    .unwrap();
    let mut w = Worker::start(WorkerSpec::smollm2(
        "vllm",
        vec![
            format!("--upstream-command={} {} {{port}}", python().display(), server.display()),
            format!("--upstream-port={}", common::free_port()),
            "--upstream-metrics-path=".into(),
            "--upstream-check-interval-ms=200".into(),
        ],
    ));
    w.wait_ready(Duration::from_secs(60));
    let first: u32 = std::fs::read_to_string(&helper_pid).unwrap().trim().parse().unwrap();
    let pid = upstream_pid(&w).expect("the worker has no child process");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    wait_until("a second model server", Duration::from_secs(60), || {
        std::fs::read_to_string(&helper_pid).unwrap().lines().count() == 2
    });
    assert!(exited(first), "the first model server's helper (pid {first}) outlived it into the restart");
    // Stopped, the worker takes the second server's group along too.
    let second: u32 = std::fs::read_to_string(&helper_pid).unwrap().lines().nth(1).unwrap().parse().unwrap();
    std::process::Command::new("kill").args(["-TERM", &w.child.id().to_string()]).status().unwrap();
    w.wait_exit(Duration::from_secs(30));
    wait_until("the second helper to be stopped with the worker", Duration::from_secs(5), || exited(second));
}
