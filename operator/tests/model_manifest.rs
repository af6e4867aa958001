//! `kubectl taimatsu model manifest` against the tests' Hub mirror over https: its Models
//! list exactly the files, sizes and sha256 of the hand-written examples
//! (examples/quickstart/model.yaml, examples/embeddings/minilm.yaml), pinned to the
//! mirror's commit although `main` was asked for.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use taimatsu_tests::hub_mirror::{HubMirror, HubRepoName, Listen, MINILM, SMOLLM2};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-taimatsu");

fn models_dir() -> PathBuf {
    match std::env::var_os("TAIMATSU_MODELS_DIR") {
        Some(dir) => dir.into(),
        None => {
            let script = taimatsu_tests::repo_root().join("hack/models.sh");
            let out = Command::new("bash").arg(script).output().expect("hack/models.sh");
            assert!(out.status.success(), "hack/models.sh failed");
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
    }
}

/// The Model document of an example file.
fn example_model(example: &str) -> Value {
    let text = std::fs::read_to_string(taimatsu_tests::repo_root().join(example)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "Model")
        .unwrap()
}

/// Runs the plugin for `repo` at `main`: the Model it prints, and its stderr.
fn manifest(mirror: &str, ca: &Path, repo: HubRepoName, extra: &[&str]) -> (Value, String) {
    let out = Command::new(PLUGIN)
        .args(["model", "manifest", &format!("hf://{}@main", repo.id), "--mirror", mirror])
        .arg(format!("--ca={}", ca.display()))
        .args(extra)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_yaml::from_slice(&out.stdout).unwrap(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_from_the_mirror_equal_the_examples() {
    let mirror = HubMirror::models(&models_dir(), Listen::TlsLoopback).await.expect("hub mirror");
    let work = tempfile::tempdir().unwrap();
    let ca = work.path().join("ca.pem");
    std::fs::write(&ca, mirror.ca_pem.as_deref().unwrap()).unwrap();
    let cases = [
        (
            SMOLLM2,
            "examples/quickstart/model.yaml",
            vec![
                "--name=smollm2-135m-instruct",
                "--architecture=llama",
                "--parameters=135M",
                "--context-length=8192",
                "--license=Apache-2.0",
            ],
        ),
        (
            MINILM,
            "examples/embeddings/minilm.yaml",
            vec!["--parameters=22.7M", "--context-length=512", "--license=Apache-2.0"],
        ),
    ];
    for (repo, example, flags) in cases {
        let (url, ca) = (mirror.url.clone(), ca.clone());
        let (generated, stderr) = tokio::task::spawn_blocking(move || manifest(&url, &ca, repo, &flags)).await.unwrap();
        let expected = example_model(example);
        assert_eq!(generated["spec"]["files"], expected["spec"]["files"], "{example}");
        assert_eq!(generated["spec"]["source"]["uri"], repo.source(), "pinned to the commit main resolved to");
        for field in ["format", "architecture", "parameters", "contextLength", "license"] {
            assert_eq!(generated["spec"][field], expected["spec"][field], "{example}: spec.{field}");
        }
        assert!(stderr.is_empty(), "nothing left to fill in: {stderr}");
    }
}
