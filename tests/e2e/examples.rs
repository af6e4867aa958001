//! Every manifest under examples/ applies cleanly to the real API server.

use std::path::{Path, PathBuf};

use taimatsu_tests::{apply::apply_yaml, crds, with_namespace};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn every_example_applies_cleanly() {
    with_namespace("examples", |client, ns| async move {
        crds::ensure_installed(&client).await.unwrap();
        let mut files = Vec::new();
        yaml_files(&taimatsu_tests::repo_root().join("examples"), &mut files);
        files.sort();
        assert!(files.len() >= 8, "expected the example set, found {files:?}");
        let mut applied = 0;
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let objects = apply_yaml(&client, &ns, &text)
                .await
                .unwrap_or_else(|e| panic!("{} does not apply: {e:#}", file.display()));
            applied += objects.len();
        }
        assert!(applied >= files.len());
    })
    .await;
}
