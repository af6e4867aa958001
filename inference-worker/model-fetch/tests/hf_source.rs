//! `hf://` sources from a Hub-protocol mirror (`taimatsu_tests::hub_mirror`, the one the
//! official `huggingface_hub` client downloads from in tests/e2e): the revision resolved
//! once, LFS redirects followed on the mirror's host only, every file verified against the
//! manifest, and each way it goes wrong named.

mod support;

use std::path::Path;

use support::{FileServer, Model, init_tracing, no_env};
use taimatsu_model_fetch::{FetchOptions, SourceEnv, fetch_with_env};
use taimatsu_tests::hub_mirror::{HubMirror, HubRepo, Listen};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The standard test model as repository `org/m` at [`COMMIT`].
async fn mirrored(work: &Path, listen: Listen) -> (Model, HubMirror) {
    let model = Model::standard(work, "m");
    let repo = HubRepo { id: "org/m".into(), commit: COMMIT.into(), dir: work.join("source/m") };
    (model, HubMirror::serve(vec![repo], listen).await.unwrap())
}

fn options(work: &Path, model: &Model, hub: &HubMirror, uri: &str) -> FetchOptions {
    let mut options = model.options(uri.into(), &work.join("dest"));
    options.hf_mirror = Some(hub.url.clone());
    if let Some(ca) = &hub.ca_pem {
        std::fs::write(work.join("ca.pem"), ca).unwrap();
        options.ca_bundle = Some(work.join("ca.pem"));
    }
    options
}

/// Files at their final paths in `dest` (the state directory aside).
fn fetched_files(dest: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dest) else { return 0 };
    entries.filter(|e| e.as_ref().unwrap().file_name() != ".taimatsu").count()
}

#[tokio::test]
async fn a_pinned_commit_is_fetched_over_https_and_verified() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::TlsLoopback).await;
    let options = options(work.path(), &model, &hub, &format!("hf://org/m@{COMMIT}"));
    let report = fetch_with_env(&options, &no_env()).await.expect("fetched");
    model.assert_fetched(&work.path().join("dest"), &report);
    assert_eq!(report.downloaded_bytes, model.total_bytes());

    // Everything cached: verified again without asking the mirror (here: gone).
    drop(hub);
    let report = fetch_with_env(&options, &no_env()).await.expect("verified from the cache");
    assert_eq!((report.cached_files, report.downloaded_bytes), (3, 0));
}

#[tokio::test]
async fn a_branch_is_refused_with_the_commit_to_pin_unless_the_namespace_allows_it() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::PlainLoopback).await;
    let mut options = options(work.path(), &model, &hub, "hf://org/m@main");
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    let message = err.to_string();
    assert!(message.contains("is a branch or tag"), "{message}");
    assert!(message.contains(&format!("set spec.source.uri to hf://org/m@{COMMIT}")), "{message}");
    assert_eq!(fetched_files(&work.path().join("dest")), 0, "nothing is fetched from a moving revision");

    options.allow_branch_revision = true;
    let report = fetch_with_env(&options, &no_env()).await.expect("allowed");
    model.assert_fetched(&work.path().join("dest"), &report);
}

#[tokio::test]
async fn unknown_revisions_repositories_and_files_are_named() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::PlainLoopback).await;
    let other_commit = "f".repeat(40);
    let cases = [
        ("hf://org/m@v9.9".to_owned(), "revision \"v9.9\" is not in org/m"),
        (format!("hf://org/m@{other_commit}"), "RevisionNotFound"),
        (format!("hf://org/gone@{COMMIT}"), "repository org/gone is not at the mirror"),
    ];
    for (uri, expected) in cases {
        let err = fetch_with_env(&options(work.path(), &model, &hub, &uri), &no_env()).await.unwrap_err();
        assert_eq!(err.reason(), "FetchFailed", "{err}");
        assert!(err.to_string().contains(expected), "{uri}: {err}");
    }

    // A manifest file the repository does not have: named when the lookup asks for it.
    let mut manifest = model.manifest.clone();
    manifest.files[0].path = "absent.json".into();
    manifest.digest = taimatsu_core::manifest_digest(&manifest.files);
    std::fs::write(&model.manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let uri = format!("hf://org/m@{COMMIT}");
    let err = fetch_with_env(&options(work.path(), &model, &hub, &uri), &no_env()).await.unwrap_err();
    assert!(err.to_string().contains("absent.json is not in org/m"), "{err}");
}

#[tokio::test]
async fn hf_token_is_sent_as_a_bearer_and_a_refusal_is_named() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::PlainLoopback).await;
    hub.require_token("hf_in_house");
    let options = options(work.path(), &model, &hub, &format!("hf://org/m@{COMMIT}"));
    let token = |t: &str| SourceEnv::from_pairs([("HF_TOKEN".to_owned(), t.to_owned())]);

    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 401 Unauthorized; no HF_TOKEN is set"), "{err}");
    let err = fetch_with_env(&options, &token("hf_wrong")).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 403 Forbidden; the HF_TOKEN given was refused"), "{err}");
    assert!(!err.to_string().contains("hf_wrong"), "the token is not in the message: {err}");

    let report = fetch_with_env(&options, &token("hf_in_house")).await.expect("fetched with the token");
    model.assert_fetched(&work.path().join("dest"), &report);
}

#[tokio::test]
async fn a_redirect_to_another_host_is_refused_and_named() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::PlainLoopback).await;
    let elsewhere = FileServer::start(&work.path().join("source")).await;
    let foreign = format!("http://{}", elsewhere.addr);
    hub.redirect_storage_to(&foreign);
    let options = options(work.path(), &model, &hub, &format!("hf://org/m@{COMMIT}"));
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    let message = err.to_string();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(message.contains("refused the redirect"), "{message}");
    assert!(message.contains(&format!("to {foreign}/lfs-storage/")), "names where it was sent: {message}");
    assert!(elsewhere.requests().is_empty(), "the other host was contacted: {:?}", elsewhere.requests());
}

#[tokio::test]
async fn a_tampered_file_fails_with_digest_mismatch() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::PlainLoopback).await;
    hub.tamper("org/m", "weights/model-00002.safetensors");
    let options = options(work.path(), &model, &hub, &format!("hf://org/m@{COMMIT}"));
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    assert!(err.to_string().contains("weights/model-00002.safetensors"), "{err}");
    assert!(!work.path().join("dest/weights/model-00002.safetensors").exists());
}

#[tokio::test]
async fn a_mirror_answering_another_commit_is_refused() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, hub) = mirrored(work.path(), Listen::PlainLoopback).await;
    hub.report_commit(&"e".repeat(40));
    let options = options(work.path(), &model, &hub, &format!("hf://org/m@{COMMIT}"));
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert!(err.to_string().contains(&format!("resolved commit {COMMIT} to {}", "e".repeat(40))), "{err}");
    assert_eq!(fetched_files(&work.path().join("dest")), 0);
}

#[tokio::test]
async fn a_plain_file_server_is_not_taken_for_a_hub_mirror() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    // The files at the Hub's URL layout, but no Hub headers.
    let model = Model::standard(work.path(), "m");
    let layout = work.path().join("plain/org/m/resolve");
    std::fs::create_dir_all(&layout).unwrap();
    std::os::unix::fs::symlink(work.path().join("source/m"), layout.join(COMMIT)).unwrap();
    let server = FileServer::start(&work.path().join("plain")).await;
    let mut options = model.options(format!("hf://org/m@{COMMIT}"), &work.path().join("dest"));
    options.hf_mirror = Some(format!("http://{}/", server.addr));
    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert!(err.to_string().contains("does not speak the Hugging Face Hub protocol"), "{err}");
}
