//! Fetching from an http mirror: a real server on 127.0.0.1 with injected faults.

mod support;

use support::{Fault, FileServer, Model, content, init_tracing, no_env, sha256_hex};
use taimatsu_model_fetch::{FetchError, fetch_with_env};

const SHARD: &str = "weights/model-00002.safetensors";

struct Setup {
    work: tempfile::TempDir,
    server: FileServer,
    model: Model,
}

impl Setup {
    async fn new() -> Setup {
        init_tracing();
        let work = tempfile::tempdir().unwrap();
        let model = Model::standard(work.path(), "");
        let server = FileServer::start(&work.path().join("source")).await;
        Setup { work, server, model }
    }

    fn dest(&self) -> std::path::PathBuf {
        self.work.path().join("models")
    }

    async fn fetch(&self) -> Result<taimatsu_model_fetch::FetchReport, FetchError> {
        fetch_with_env(&self.model.options(self.server.url(""), &self.dest()), &no_env()).await
    }
}

#[tokio::test]
async fn good_manifest_fetches_and_verifies_every_file() {
    let s = Setup::new().await;
    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    assert_eq!((report.cached_files, report.downloaded_bytes), (0, s.model.total_bytes()));
    // Each file once; path segments percent-encoded, '/' kept.
    assert_eq!(s.server.requests().len(), 3);
    let spaced = s.server.requests_for("weights/model 00001.safetensors");
    assert_eq!(spaced[0].raw_path, "/weights/model%2000001.safetensors");
}

#[tokio::test]
async fn wrong_bytes_at_the_source_fail_with_both_digests_and_leave_nothing_in_place() {
    let s = Setup::new().await;
    s.server.fault(SHARD, Fault::Corrupt);
    let err = s.fetch().await.unwrap_err();

    let mut served = content(1_000_000, 2);
    served[0] ^= 0xff;
    let (expected, actual) = (sha256_hex(&content(1_000_000, 2)), sha256_hex(&served));
    assert_eq!(err.reason(), "DigestMismatch");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{SHARD}: sha256 is {actual} but the manifest pins {expected}")), "{msg}");
    assert!(msg.contains(&s.server.url("weights/model-00002.safetensors")), "{msg}");
    assert!(!s.dest().join(SHARD).exists(), "a mismatching file was left at its final path");
    assert!(!s.dest().join(".taimatsu/partial").join(SHARD).exists(), "the rejected download was kept");
}

#[tokio::test]
async fn a_file_missing_at_the_source_fails_naming_the_url() {
    let s = Setup::new().await;
    std::fs::remove_file(s.work.path().join("source/config.json")).unwrap();
    let err = s.fetch().await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("config.json: {} answered HTTP 404", s.server.url("config.json"))), "{msg}");
    assert!(!s.dest().join("config.json").exists());
}

#[tokio::test]
async fn an_extra_file_in_dest_fails_before_any_download_and_is_kept() {
    let s = Setup::new().await;
    std::fs::create_dir_all(s.dest().join("weights")).unwrap();
    std::fs::write(s.dest().join("weights/notes.txt"), b"mine").unwrap();
    let err = s.fetch().await.unwrap_err();
    assert_eq!(err.reason(), "UnexpectedFile");
    assert!(err.to_string().contains("weights/notes.txt"), "{err}");
    assert_eq!(std::fs::read(s.dest().join("weights/notes.txt")).unwrap(), b"mine");
    assert!(s.server.requests().is_empty());
}

#[tokio::test]
async fn a_cut_download_resumes_with_a_range_request() {
    let s = Setup::new().await;
    s.server.fault(SHARD, Fault::CutAfter(400_000));
    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);

    let requests = s.server.requests_for(SHARD);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].headers.get("range").is_none());
    assert_eq!(requests[1].headers["range"], "bytes=400000-");
    // 400 000 bytes before the cut plus the remaining 600 000: nothing downloaded twice.
    assert_eq!(report.downloaded_bytes, s.model.total_bytes());
}

#[tokio::test]
async fn a_partial_from_an_earlier_run_is_resumed() {
    let s = Setup::new().await;
    let partial = s.dest().join(".taimatsu/partial").join(SHARD);
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &content(1_000_000, 2)[..250_000]).unwrap();

    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    assert_eq!(s.server.requests_for(SHARD)[0].headers["range"], "bytes=250000-");
    assert_eq!(report.downloaded_bytes, s.model.total_bytes() - 250_000);
}

#[tokio::test]
async fn a_stale_partial_is_downloaded_again_from_the_start() {
    let s = Setup::new().await;
    let partial = s.dest().join(".taimatsu/partial").join(SHARD);
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, vec![0u8; 250_000]).unwrap();

    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    let requests = s.server.requests_for(SHARD);
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].headers["range"], "bytes=250000-");
    assert!(requests[1].headers.get("range").is_none());
}

#[tokio::test]
async fn a_server_without_ranges_sends_the_whole_file_again() {
    let s = Setup::new().await;
    s.server.fault(SHARD, Fault::IgnoreRange);
    let partial = s.dest().join(".taimatsu/partial").join(SHARD);
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &content(1_000_000, 2)[..100_000]).unwrap();

    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    assert_eq!(s.server.requests_for(SHARD)[0].headers["range"], "bytes=100000-");
    // The 200 answer's whole body was taken, not appended to the partial.
    assert_eq!(report.downloaded_bytes, s.model.total_bytes());
}

#[tokio::test]
async fn a_tampered_cache_is_caught_and_fetched_again() {
    let s = Setup::new().await;
    s.fetch().await.unwrap();
    let target = s.dest().join(SHARD);
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[500_000] ^= 1;
    std::fs::write(&target, &bytes).unwrap();

    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    assert_eq!(report.cached_files, 2);
    assert_eq!(report.downloaded_bytes, 1_000_000);
    assert_eq!(s.server.requests_for(SHARD).len(), 2);

    // Tampered again, and now the source is wrong too: the fresh copy must match, so it fails.
    std::fs::write(&target, &bytes).unwrap();
    s.server.fault(SHARD, Fault::Corrupt);
    let err = s.fetch().await.unwrap_err();
    assert_eq!(err.reason(), "DigestMismatch");
    assert!(err.to_string().starts_with(SHARD), "{err}");
    assert!(!target.exists());
}

#[tokio::test]
async fn a_cache_hit_is_verified_without_downloading() {
    let s = Setup::new().await;
    s.fetch().await.unwrap();
    let before = s.server.requests().len();
    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    assert_eq!((report.cached_files, report.downloaded_bytes), (3, 0));
    assert_eq!(s.server.requests().len(), before);
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let s = Setup::new().await;
    s.server.fault("config.json", Fault::StatusOnce(503));
    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);
    assert_eq!(s.server.requests_for("config.json").len(), 2);
}

#[tokio::test]
async fn redirects_stay_on_the_source_host() {
    let s = Setup::new().await;
    // Same host and port: followed.
    std::fs::write(
        s.work.path().join("source/elsewhere.json"),
        std::fs::read(s.work.path().join("source/config.json")).unwrap(),
    )
    .unwrap();
    s.server.fault("config.json", Fault::Redirect(s.server.url("elsewhere.json")));
    let report = s.fetch().await.unwrap();
    s.model.assert_fetched(&s.dest(), &report);

    // Another host (localhost is not 127.0.0.1 by name): refused, and never contacted.
    let s = Setup::new().await;
    let other = format!("http://localhost:{}/config.json", s.server.addr.port());
    s.server.fault("config.json", Fault::Redirect(other.clone()));
    let err = s.fetch().await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(
        err.to_string().contains(&format!("refused the redirect from {} to {other}", s.server.url("config.json"))),
        "{err}"
    );
    assert_eq!(s.server.requests_for("config.json").len(), 1);
}

#[tokio::test]
async fn persistent_server_errors_fail_after_retries() {
    let s = Setup::new().await;
    s.server.fault("config.json", Fault::Status(403));
    let err = s.fetch().await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(err.to_string().contains("HTTP 403"), "{err}");
    assert!(err.to_string().contains("credentialsSecretRef"), "{err}");
    assert_eq!(s.server.requests_for("config.json").len(), 1, "a 403 is not retried");
}
