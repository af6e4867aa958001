//! Bad manifests, unsupported sources and unusable CA bundles fail before anything is fetched.

mod support;

use support::{Model, no_env};
use taimatsu_model_fetch::fetch_with_env;

#[tokio::test]
async fn an_edited_manifest_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let mut manifest = model.manifest.clone();
    manifest.files[0].size += 1;
    std::fs::write(&model.manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let options = model.options(work.path().join("source/m").display().to_string(), &work.path().join("dest"));
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidManifest");
    assert!(err.to_string().contains("manifest digest"), "{err}");

    std::fs::write(&model.manifest_path, b"{}").unwrap();
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidManifest");
    assert!(err.to_string().contains("not a manifest document"), "{err}");
}

#[tokio::test]
async fn oci_sources_pinned_by_a_tag_only_are_unsupported() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let source = "oci://registry.example/model:1";
    let err = fetch_with_env(&model.options(source.into(), &work.path().join("dest")), &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "SourceUnsupported", "{source}");
    assert!(err.to_string().starts_with(&format!("source {source}: ")), "{err}");
    assert!(err.to_string().contains("not pinned by @sha256:<digest>"), "{err}");
}

#[tokio::test]
async fn hf_sources_need_a_mirror() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let source = "hf://org/model@main";
    let err = fetch_with_env(&model.options(source.into(), &work.path().join("dest")), &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains("--hf-mirror"), "{err}");
    assert!(!work.path().join("dest").exists() || std::fs::read_dir(work.path().join("dest")).unwrap().count() == 0);
}

#[tokio::test]
async fn an_unusable_ca_bundle_is_named() {
    let work = tempfile::tempdir().unwrap();
    let model = Model::standard(work.path(), "m");
    let bundle = work.path().join("ca.pem");
    std::fs::write(&bundle, b"not a certificate").unwrap();
    let mut options = model.options("https://mirror.invalid/m/".into(), &work.path().join("dest"));
    options.ca_bundle = Some(bundle.clone());
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(err.to_string().starts_with(&format!("CA bundle {}: ", bundle.display())), "{err}");
}
