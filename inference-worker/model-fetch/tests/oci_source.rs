//! `oci://` sources from the real CNCF Distribution registry (`taimatsu_tests::oci_registry`:
//! https with a private CA, token auth), the model pushed with the real ORAS client: the
//! manifest fetched by digest and verified, every file its own verified layer, and each way
//! it goes wrong named with its reason.

mod support;

use std::path::Path;

use support::{FileServer, Model, init_tracing, no_env};
use taimatsu_model_fetch::{FetchOptions, OCI_PASSWORD, OCI_USERNAME, SourceEnv, fetch_with_env};
use taimatsu_tests::oci_registry::{OciRegistry, Pushed, RegistryOptions};

const REPOSITORY: &str = "models/m";
const FILES: [&str; 3] = ["config.json", "weights/model 00001.safetensors", "weights/model-00002.safetensors"];

/// A registry holding the standard test model as an artifact pushed with ORAS.
async fn registry(work: &Path, options: RegistryOptions) -> (Model, OciRegistry, Pushed) {
    let model = Model::standard(work, "m");
    let registry = OciRegistry::start(&work.join("registry"), options).await.expect("registry");
    let pushed = registry.push(&work.join("source/m"), &FILES, REPOSITORY, "v1").await.expect("oras push");
    (model, registry, pushed)
}

fn options(work: &Path, model: &Model, registry: &OciRegistry, digest: &str) -> FetchOptions {
    let mut options = model.options(registry.uri(REPOSITORY, digest), &work.join("dest"));
    options.ca_bundle = Some(registry.ca_file().unwrap());
    options
}

fn credentials(user: &str, password: &str) -> SourceEnv {
    SourceEnv::from_pairs([(OCI_USERNAME.to_owned(), user.to_owned()), (OCI_PASSWORD.to_owned(), password.to_owned())])
}

fn valid(registry: &OciRegistry) -> SourceEnv {
    credentials(&registry.username, &registry.password)
}

/// The layer digest ORAS gave `path`.
fn layer_digest(pushed: &Pushed, path: &str) -> String {
    let layers = pushed.manifest["layers"].as_array().unwrap();
    let layer = layers.iter().find(|l| l["annotations"]["org.opencontainers.image.title"] == path).unwrap();
    layer["digest"].as_str().unwrap().to_owned()
}

/// Files at their final paths in `dest` (the state directory aside).
fn fetched_files(dest: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dest) else { return 0 };
    entries.filter(|e| e.as_ref().unwrap().file_name() != ".taimatsu").count()
}

#[tokio::test]
async fn an_artifact_pushed_with_oras_is_pulled_with_a_token_and_verified() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, registry, pushed) = registry(work.path(), RegistryOptions::default()).await;
    let options = options(work.path(), &model, &registry, &pushed.digest);
    let report =
        fetch_with_env(&options, &valid(&registry)).await.unwrap_or_else(|e| panic!("{e}\n{}", registry.log_tail()));
    model.assert_fetched(&work.path().join("dest"), &report);
    assert_eq!(report.downloaded_bytes, model.total_bytes());
    let pulls: Vec<_> = registry
        .token_requests()
        .into_iter()
        .filter(|(_, s)| s == &[format!("repository:{REPOSITORY}:pull")])
        .collect();
    assert_eq!(
        pulls,
        vec![(true, vec![format!("repository:{REPOSITORY}:pull")])],
        "one pull token, with the credentials"
    );

    // Everything cached: verified again without asking the registry (here: gone).
    drop(registry);
    let report = fetch_with_env(&options, &no_env()).await.expect("verified from the cache");
    assert_eq!((report.cached_files, report.downloaded_bytes), (3, 0));
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_named() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, registry, pushed) = registry(work.path(), RegistryOptions::default()).await;
    let options = options(work.path(), &model, &registry, &pushed.digest);

    let err = fetch_with_env(&options, &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains("requires credentials to pull models/m and none are set"), "{err}");
    assert!(err.to_string().contains("OCI_USERNAME and OCI_PASSWORD"), "{err}");

    let err = fetch_with_env(&options, &credentials(&registry.username, "guessed")).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains("refused the OCI_USERNAME/OCI_PASSWORD given (HTTP 401"), "{err}");
    assert!(!err.to_string().contains("guessed"), "the password is not in the message: {err}");

    let only_user = SourceEnv::from_pairs([(OCI_USERNAME.to_owned(), "u".to_owned())]);
    let err = fetch_with_env(&options, &only_user).await.unwrap_err();
    assert!(err.to_string().contains("only one of OCI_USERNAME and OCI_PASSWORD"), "{err}");
    assert_eq!(fetched_files(&work.path().join("dest")), 0);
}

#[tokio::test]
async fn a_tampered_layer_fails_with_digest_mismatch() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, registry, pushed) = registry(work.path(), RegistryOptions::default()).await;
    registry.tamper_blob(&layer_digest(&pushed, "weights/model-00002.safetensors")).unwrap();
    let options = options(work.path(), &model, &registry, &pushed.digest);
    let err = fetch_with_env(&options, &valid(&registry)).await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    let message = err.to_string();
    assert!(message.starts_with("weights/model-00002.safetensors: sha256 is "), "{message}");
    assert!(
        message.contains(&format!("/v2/models/m/blobs/{}", layer_digest(&pushed, "weights/model-00002.safetensors"))),
        "{message}"
    );
    assert!(!work.path().join("dest/weights/model-00002.safetensors").exists(), "nothing unverified is in place");
}

#[tokio::test]
async fn a_wrong_manifest_digest_is_refused() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, registry, pushed) = registry(work.path(), RegistryOptions::default()).await;

    // A digest the registry does not hold.
    let absent = format!("sha256:{}", "0".repeat(64));
    let err = fetch_with_env(&options(work.path(), &model, &registry, &absent), &valid(&registry)).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains(&format!("manifest {absent} is not in repository models/m")), "{err}");
    assert!(err.to_string().contains("MANIFEST_UNKNOWN"), "{err}");

    // The registry's storage holds other bytes under the pinned digest (one more space):
    // served as they are, refused by their hash.
    let bytes = serde_json::to_vec_pretty(&pushed.manifest).unwrap();
    registry.replace_blob(&pushed.digest, &bytes).unwrap();
    let err =
        fetch_with_env(&options(work.path(), &model, &registry, &pushed.digest), &valid(&registry)).await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    assert!(
        err.to_string().contains(&format!("answered manifest {} with content whose digest is sha256:", pushed.digest)),
        "{err}"
    );
    assert_eq!(fetched_files(&work.path().join("dest")), 0, "nothing is fetched from an unverified manifest");
}

#[tokio::test]
async fn an_artifact_that_is_not_the_models_files_is_refused_before_any_download() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let (model, registry, _) = registry(work.path(), RegistryOptions::default()).await;
    // Another version of one shard, pushed under the same names.
    let other = work.path().join("other");
    for path in FILES {
        std::fs::create_dir_all(other.join(path).parent().unwrap()).unwrap();
        std::fs::copy(work.path().join("source/m").join(path), other.join(path)).unwrap();
    }
    std::fs::write(other.join("weights/model-00002.safetensors"), support::content(1_000_000, 9)).unwrap();
    let changed = registry.push(&other, &FILES, REPOSITORY, "v2").await.unwrap();
    let err =
        fetch_with_env(&options(work.path(), &model, &registry, &changed.digest), &valid(&registry)).await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch", "{err}");
    let message = err.to_string();
    assert!(message.contains("weights/model-00002.safetensors: the layer titled"), "{message}");
    assert!(message.contains(&format!("but the Model pins sha256 {}", model.manifest.files[2].sha256)), "{message}");

    // An artifact without one of the files.
    let partial = registry.push(&other, &FILES[..2], REPOSITORY, "v3").await.unwrap();
    let err =
        fetch_with_env(&options(work.path(), &model, &registry, &partial.digest), &valid(&registry)).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains("weights/model-00002.safetensors: not in the source (no layer titled"), "{err}");
    assert_eq!(fetched_files(&work.path().join("dest")), 0);
}

#[tokio::test]
async fn a_blob_redirect_to_another_host_is_refused_and_named() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let elsewhere = FileServer::start(&work.path().join("source")).await;
    let foreign = format!("http://{}", elsewhere.addr);
    let redirecting = RegistryOptions { redirect_blobs_to: Some(foreign.clone()) };
    let (model, registry, pushed) = registry(work.path(), redirecting).await;
    let options = options(work.path(), &model, &registry, &pushed.digest);
    let err = fetch_with_env(&options, &valid(&registry)).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    let message = err.to_string();
    assert!(message.contains("refused the redirect"), "{message}");
    assert!(
        message.contains(&format!("to {foreign}/docker/registry/v2/blobs/sha256/")),
        "names where it was sent: {message}"
    );
    assert!(message.contains("storage.redirect.disable"), "{message}");
    assert!(elsewhere.requests().is_empty(), "the other host was contacted: {:?}", elsewhere.requests());
}
