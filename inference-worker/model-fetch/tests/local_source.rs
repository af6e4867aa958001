//! Fetching from a mounted volume (`pvc:///path`, or a plain directory path).

mod support;

use support::{Model, init_tracing, no_env};
use taimatsu_model_fetch::fetch_with_env;

#[tokio::test]
async fn pvc_and_path_sources_are_copied_and_verified() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "org/model");
    let root = work.path().join("source/org/model");
    for source in [format!("pvc://{}", root.display()), root.display().to_string()] {
        let dest = work.path().join(format!("models-{}", source.len()));
        let report = fetch_with_env(&model.options(source.clone(), &dest), &no_env()).await.unwrap();
        model.assert_fetched(&dest, &report);
        assert_eq!(report.downloaded_bytes, model.total_bytes(), "{source}");

        // Second run: everything cached.
        let report = fetch_with_env(&model.options(source, &dest), &no_env()).await.unwrap();
        assert_eq!((report.cached_files, report.downloaded_bytes), (3, 0));
    }
}

#[tokio::test]
async fn a_file_missing_from_the_volume_is_named() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let root = work.path().join("source/m");
    std::fs::remove_file(root.join("weights/model-00002.safetensors")).unwrap();
    let dest = work.path().join("models");
    let err = fetch_with_env(&model.options(root.display().to_string(), &dest), &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    let expected = format!(
        "weights/model-00002.safetensors: not in the source (no {})",
        root.join("weights/model-00002.safetensors").display()
    );
    assert!(err.to_string().starts_with(&expected), "{err}");
}

#[tokio::test]
async fn a_changed_file_on_the_volume_is_a_digest_mismatch() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let root = work.path().join("source/m");
    std::fs::write(root.join("config.json"), b"{\"architectures\":[\"LlamaForCausalLX\"]}").unwrap();
    let dest = work.path().join("models");
    let err = fetch_with_env(&model.options(root.display().to_string(), &dest), &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch");
    assert!(err.to_string().starts_with("config.json: sha256 is "), "{err}");
    assert!(!dest.join("config.json").exists());
}

#[tokio::test]
async fn an_unmounted_volume_says_where_it_was_looked_for() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let dest = work.path().join("models");
    let err =
        fetch_with_env(&model.options("pvc://claim-that-is-not-mounted/m".into(), &dest), &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(err.to_string().contains("/mnt/taimatsu/pvc/claim-that-is-not-mounted/m is not a directory"), "{err}");
}
