//! The official `openai` Python client against the worker serving real models on the
//! built-in CPU engine: SmolLM2 for chat/completions, MiniLM for embeddings. Then the
//! request audit those calls produced is verified with the worker's own verifier.

mod common;

use std::time::Duration;

use common::{Worker, WorkerSpec, minilm_dir, run_python, smollm2_dir};

const KEY: &str = "sk-taimatsu-test-0123456789abcdef";

#[test]
fn openai_client_chats_with_smollm2_and_every_request_is_audited() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), format!("# test key\n{KEY}\n")).unwrap();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_log = audit_dir.path().join("requests.jsonl");
    let mut worker = Worker::start(WorkerSpec {
        engine: "builtin",
        model_dir: smollm2_dir(),
        format: "gguf",
        name: "smollm2-chat",
        extra: vec![
            format!("--api-keys={}", keys.path().display()),
            format!("--audit-log={}", audit_log.display()),
            "--audit-fsync=always".into(),
            "--threads=2".into(),
            "--parallel=4".into(),
        ],
    });
    worker.wait_ready(Duration::from_secs(120));
    let out = run_python("openai_checks.py", &[&worker.base_url(), "smollm2-chat", KEY, "chat"]);
    assert!(out.contains("ALL OK"), "{out}");

    // Every call above left a sealed record; the log verifies and names callers by key id only.
    let log = std::fs::read_to_string(&audit_log).unwrap();
    let report = taimatsu_core::audit_chain::verify(log.as_bytes()).unwrap();
    assert!(report.records >= 8, "{report:?}");
    assert!(!log.contains(KEY), "an API key leaked into the audit log");
    let records: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first_chat =
        records.iter().map(|r| &r["record"]).find(|r| r["endpoint"] == "chat" && r["status"] == 200).unwrap();
    assert_eq!(first_chat["caller"], taimatsu_core_key_id(KEY));
    assert_eq!(first_chat["revision"], "7f3a9c2e1b");
    assert!(first_chat["model_digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(first_chat["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(first_chat["prompt_sha256"].as_str().unwrap().len(), 64);
    assert!(first_chat.get("prompt").is_none(), "metadata level must not store text");
    let statuses: Vec<u64> = records.iter().map(|r| r["record"]["status"].as_u64().unwrap()).collect();
    assert!(statuses.contains(&404) && statuses.contains(&400), "{statuses:?}");

    // The same check through the CLI operators use.
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_inference-worker"))
        .args(["audit-verify", audit_log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

fn taimatsu_core_key_id(key: &str) -> String {
    use sha2::Digest;
    format!("key-{}", &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..12])
}

#[test]
fn openai_client_embeds_with_minilm() {
    let mut worker = Worker::start(WorkerSpec {
        engine: "builtin",
        model_dir: minilm_dir(),
        format: "safetensors",
        name: "minilm",
        extra: vec!["--audit-level=none".into()],
    });
    worker.wait_ready(Duration::from_secs(120));
    let out = run_python("openai_checks.py", &[&worker.base_url(), "minilm", "unused", "embeddings"]);
    assert!(out.contains("ALL OK"), "{out}");
}
