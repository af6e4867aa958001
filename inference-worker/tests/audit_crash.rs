//! Request audit under crashes and failures, with the real worker and model:
//! what a SIGKILL can lose under each fsync policy, a half-written record, the chain
//! continuing across restarts, fail-closed refusal, and full-text redaction.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Worker, WorkerSpec, smollm2_dir};
use serde_json::{Value, json};
use taimatsu_tests::wait::poll_blocking;

fn start(audit_log: &Path, extra: &[&str]) -> Worker {
    let mut args = vec![format!("--audit-log={}", audit_log.display()), "--parallel=2".to_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut w = Worker::start(WorkerSpec {
        engine: "builtin",
        model_dir: smollm2_dir(),
        format: "gguf",
        name: "smollm2",
        extra: args,
    });
    w.wait_ready(Duration::from_secs(120));
    w
}

fn ask(w: &Worker, content: &str) -> u16 {
    let body = json!({ "model": "smollm2", "messages": [{ "role": "user", "content": content }], "max_tokens": 2, "temperature": 0 });
    reqwest::blocking::Client::new().post(w.url("/v1/chat/completions")).json(&body).send().unwrap().status().as_u16()
}

fn records(log: &Path) -> (u64, Vec<Value>) {
    let text = std::fs::read(log).unwrap();
    let report = taimatsu_core::audit_chain::verify(&text).unwrap_or_else(|e| panic!("audit log broken: {e}"));
    let lines = String::from_utf8(text).unwrap();
    (report.records, lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

fn sigkill(w: &mut Worker) {
    w.child.kill().unwrap(); // SIGKILL: no shutdown path runs
    w.child.wait().unwrap();
}

#[test]
fn sigkill_under_fsync_always_loses_no_answered_request_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit/requests.jsonl");
    let mut w = start(&log, &["--audit-fsync=always"]);
    for i in 0..5 {
        assert_eq!(ask(&w, &format!("question {i}")), 200);
    }
    sigkill(&mut w);
    // Every answered request is in the log: under `always` the answer waits for its record.
    assert_eq!(records(&log).0, 5);

    // A crash in the middle of a write leaves a line without its newline.
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(br#"{"seq":6,"prev":"abc","hash":"de"#);
    std::fs::write(&log, bytes).unwrap();
    assert!(taimatsu_core::audit_chain::verify(&std::fs::read(&log).unwrap()).unwrap().incomplete_tail);

    // Restarted on the same volume, the worker drops the torn tail and continues the chain.
    let w = start(&log, &["--audit-fsync=always"]);
    for i in 0..3 {
        assert_eq!(ask(&w, &format!("after restart {i}")), 200);
    }
    let (count, lines) = records(&log);
    assert_eq!(count, 8);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
}

#[test]
fn sigkill_under_fsync_interval_loses_only_records_not_yet_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let mut w = start(&log, &["--audit-fsync=interval", "--audit-fsync-interval-ms=60000"]);
    for i in 0..4 {
        assert_eq!(ask(&w, &format!("question {i}")), 200);
    }
    // Records are written (write(2)) as soon as the writer takes them, fsync or not; the
    // kernel keeps them across a process kill. The metric says when the writer has them.
    let caught_up = || (w.metric("taimatsu_worker_audit_records_total").unwrap_or(0.0) >= 4.0).then_some(());
    poll_blocking(Duration::from_secs(5), Duration::from_millis(20), caught_up, || {
        "audit writer did not catch up".into()
    });
    sigkill(&mut w);
    assert_eq!(records(&log).0, 4);
}

#[test]
fn fail_closed_refuses_requests_the_audit_cannot_record() {
    // /dev/full accepts the open and fails every write with ENOSPC.
    let w = start(Path::new("/dev/full"), &["--audit-fsync=always", "--audit-failure=fail-closed"]);
    let r = reqwest::blocking::Client::new()
        .post(w.url("/v1/chat/completions"))
        .json(&json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 2 }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(ask(&w, "again"), 503);
    let w_open = start(Path::new("/dev/full"), &["--audit-fsync=always", "--audit-failure=fail-open"]);
    assert_eq!(ask(&w_open, "served unaudited, counted"), 200);
    assert!(w_open.metric("taimatsu_worker_audit_write_failures_total").unwrap_or(0.0) >= 1.0);
}

#[test]
fn full_audit_keeps_redacted_text_and_hashes_of_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let w = start(&log, &["--audit-fsync=always", "--audit-level=full", r"--audit-redact=\b\d{3}-\d{2}-\d{4}\b"]);
    assert_eq!(ask(&w, "My SSN is 123-45-6789."), 200);
    let (_, lines) = records(&log);
    let record = &lines[0]["record"];
    let prompt = record["prompt"].as_str().unwrap();
    assert_eq!(prompt, "user: My SSN is [REDACTED].\n");
    use sha2::Digest;
    let original = hex::encode(sha2::Sha256::digest(b"user: My SSN is 123-45-6789.\n"));
    assert_eq!(record["prompt_sha256"], original);
    assert!(record["response"].is_string());
    assert!(!std::fs::read_to_string(&log).unwrap().contains("123-45-6789"));
}

/// Attack: 10,000 requests without a valid API key. One record each would let anyone who
/// reaches the port write as many records as they send, and push real ones out of any
/// retention window; they are counted per interval instead, so the records they add are
/// bounded by time, not by their number, and still say how many there were.
#[test]
fn unauthenticated_requests_add_a_bounded_number_of_records() {
    const FLOOD: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "sk-real-0123456789abcdef\n").unwrap();
    let w = start(&log, &[&format!("--api-keys={}", keys.display()), "--audit-refusal-interval-secs=1"]);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let url = w.url("/v1/chat/completions");
            s.spawn(move || {
                let client = reqwest::blocking::Client::new();
                let body = json!({ "model": "smollm2", "messages": [{ "role": "user", "content": "hi" }] });
                for n in 0..FLOOD / 4 {
                    let key = if n % 2 == 0 { format!("sk-guess-{t}-{n}") } else { String::new() };
                    let status = client.post(&url).bearer_auth(key).json(&body).send().unwrap().status().as_u16();
                    assert_eq!(status, 401);
                }
            });
        }
    });
    let refused = |records: &[Value]| -> u64 {
        let records = records.iter().map(|r| &r["record"]);
        records.filter(|r| r["kind"] == "refused-requests").map(|r| r["count"].as_u64().unwrap()).sum()
    };
    poll_blocking(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || std::fs::metadata(&log).ok().and_then(|_| (refused(&records(&log).1) == FLOOD).then_some(())),
        || format!("the refused-requests records do not add up to {FLOOD}: {:?}", records(&log).1),
    );
    let elapsed = started.elapsed().as_secs();
    let (count, all) = records(&log);
    // One record per interval of 1 s with refusals (one endpoint, one status), plus the
    // interval in progress at either end.
    assert!(count <= elapsed + 2, "{count} records for {FLOOD} refused requests in {elapsed} s");
    let all: Vec<&Value> = all.iter().map(|r| &r["record"]).collect();
    assert!(all.iter().all(|r| r["kind"] == "refused-requests" && r["status"] == 401 && r["since"].is_string()));
}
