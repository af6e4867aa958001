//! The tests' Hugging Face Hub mirror (`taimatsu_tests::hub_mirror`) speaks the Hub's
//! protocol: the official `huggingface_hub` client (PyPI), pointed at it with `HF_ENDPOINT`
//! over https, downloads MiniLM and SmolLM2 with `snapshot_download` exactly as the files
//! are, resolves `main` to the mirror's commit, names LFS blobs by their sha256 (the ETag
//! the Hub gives them) and raises its own RevisionNotFoundError for an unknown revision.
//! What the worker's hf:// fetch is tested against is therefore what real mirrors serve.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{manifest_of, minilm_dir, models_dir, python, smollm2_dir};
use taimatsu_tests::hub_mirror::{HubMirror, Listen, MINILM, SMOLLM2};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_hub_snapshot_download_gets_the_mirrored_models() {
    let mirror = HubMirror::models(&models_dir(), Listen::TlsLoopback).await.expect("hub mirror");
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, mirror.ca_pem.as_deref().unwrap()).unwrap();

    for (repo, dir, format) in [(MINILM, minilm_dir(), "safetensors"), (SMOLLM2, smollm2_dir(), "gguf")] {
        let cache = work.path().join(repo.dir);
        let (endpoint, ca) = (mirror.url.clone(), ca.clone());
        let got = tokio::task::spawn_blocking(move || snapshot(&endpoint, &ca, repo.id, &cache)).await.unwrap();

        assert_eq!(got["commit"], repo.commit, "main resolves to the mirror's commit (X-Repo-Commit)");
        let expected: BTreeMap<String, String> =
            manifest_of(&dir, repo.id, format).files.into_iter().map(|f| (f.path, f.sha256)).collect();
        let files: BTreeMap<String, String> = serde_json::from_value(got["files"].clone()).unwrap();
        assert_eq!(files, expected, "{}: the downloaded bytes", repo.id);
        // LFS files are stored under their sha256: the client took X-Linked-Etag.
        let blobs: Vec<String> = serde_json::from_value(got["blobs"].clone()).unwrap();
        let weights = expected.iter().find(|(p, _)| p.ends_with(".safetensors") || p.ends_with(".gguf")).unwrap();
        assert!(blobs.contains(weights.1), "{}: blobs {blobs:?} lack {}", repo.id, weights.1);
        assert_eq!(got["revision_error"], "RevisionNotFoundError", "{}", repo.id);
    }
}

/// Runs tests/clients/hub_checks.py against `endpoint`; its JSON report.
fn snapshot(endpoint: &str, ca: &Path, repo: &str, cache: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/hub_checks.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .args([repo, cache.to_str().unwrap()])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", cache.join("home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        // The client's HTTP stack trusts the mirror's private CA as any TLS client would.
        .env("SSL_CERT_FILE", ca)
        .env("REQUESTS_CA_BUNDLE", ca)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "hub_checks.py failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}
