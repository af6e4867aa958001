//! `inference-worker fetch`: the pod's init step. Fetches a Model's files from its one
//! configured source into the cache volume and verifies every file's size and sha256
//! against the manifest. Nothing is served unless this succeeds.
//!
//! API CONTRACT (fixed; the worker binary depends on it):
//! - `fetch(&FetchOptions)` returns a `FetchReport` or a `FetchError`.
//! - `FetchError::reason()` is one word from a fixed set (`DigestMismatch`, `FetchFailed`,
//!   `UnexpectedFile`, `MissingFile`, `InvalidManifest`, `SourceUnsupported`); the
//!   binary writes `"<reason>: <error>"` to the container's termination message, which
//!   the operator turns into a condition.
//!
//! How a fetch goes, and why:
//! 1. The manifest is validated, the source parsed. `hf://` is fetched from the configured
//!    Hub mirror (`hub.rs`), its revision resolved to a commit only when a file has to be
//!    downloaded; `oci://` from its registry (`oci.rs`), its artifact manifest fetched by
//!    digest and verified, likewise only when a file has to be downloaded.
//! 2. A file in `dest` that the manifest does not list fails the fetch (`UnexpectedFile`)
//!    before anything is downloaded: it may be user data, so it is not deleted.
//! 3. Files already at their final path are re-hashed, never trusted by name. A file that
//!    does not match (tampered, or cut by a crash) is logged as a warning, deleted and
//!    fetched again: the source is the authority, and the fresh copy must match.
//! 4. Missing files are fetched `parallel` at a time into `<dest>/.taimatsu/partial/<path>`
//!    (the reserved [`STATE_DIR`]), hashed while they stream, and renamed into place only
//!    when size and sha256 match. A mismatch fails with `DigestMismatch` and leaves
//!    nothing at the final path. An interrupted download resumes from the partial's
//!    length with `Range: bytes=<len>-` (in this run after a retry, or in the next run).
//! 5. `taimatsu_core::file_verify::verify_dir` re-checks the whole directory as the final
//!    gate; the report carries the manifest digest it verified.
//!
//! Network: only the source's host is contacted. Proxy variables (`HTTPS_PROXY`, …) are
//! ignored and redirects to another scheme, host or port are refused, so an egress path
//! cannot be added by the environment; mirror the files inside the network instead.

mod cache;
mod download;
mod hub;
mod local;
mod oci;
mod progress;
mod s3;
pub mod sigv4;
mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use taimatsu_core::file_verify::{self, STATE_DIR, VerifyError};
use taimatsu_core::{ManifestEntry, ModelManifest};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::download::Remote;
pub use crate::oci::{OCI_PASSWORD, OCI_USERNAME};
use crate::progress::Progress;
pub use crate::source::{PVC_MOUNT_ROOT, Source};

/// What `inference-worker fetch` was asked to do.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// `https://mirror/prefix/`, `http://…` (tests, sandbox), `s3://bucket/prefix/`, `pvc:///mounted/path`,
    /// `pvc://<claim>/<path>` (read from [`PVC_MOUNT_ROOT`]`/<claim>/<path>`) or a plain directory path.
    pub source: String,
    /// The manifest JSON (`taimatsu_core::ModelManifest`).
    pub manifest: PathBuf,
    /// The cache volume the files land in (`<dest>/<path>`).
    pub dest: PathBuf,
    /// Extra CA certificates (PEM) trusted for an https source (and an https Hub mirror).
    pub ca_bundle: Option<PathBuf>,
    /// Files downloaded at once.
    pub parallel: usize,
    /// The in-house Hugging Face Hub mirror `hf://` sources are fetched from.
    pub hf_mirror: Option<String>,
    /// Accept an `hf://` revision that is a branch or tag rather than a commit id (the
    /// operator sets it only in namespaces that allow unpinned models).
    pub allow_branch_revision: bool,
}

/// What was done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// The manifest digest that was verified.
    pub digest: String,
    pub files: usize,
    pub bytes: u64,
    /// Files already present and re-verified (cache hits).
    pub cached_files: usize,
    /// Bytes downloaded this run.
    pub downloaded_bytes: u64,
}

/// The key (and so, through `envFrom`, the variable) of an https source's bearer token in
/// the Secret named by `spec.source.credentialsSecretRef`.
pub const HTTP_TOKEN: &str = "token";

/// The source's credentials and endpoint settings (`AWS_*`, `HF_TOKEN`, `token`, `OCI_*`), read from the
/// process environment by [`fetch`], or given explicitly to [`fetch_with_env`].
#[derive(Clone, Default)]
pub struct SourceEnv {
    vars: BTreeMap<String, String>,
}

impl SourceEnv {
    /// The `AWS_*` variables, `HF_TOKEN`, `token`, `OCI_USERNAME` and `OCI_PASSWORD` of this process (the pod gets them
    /// from the credentials Secret).
    pub fn from_process() -> SourceEnv {
        SourceEnv::from_pairs(std::env::vars().filter(|(k, _)| {
            k.starts_with("AWS_") || k == "HF_TOKEN" || k == HTTP_TOKEN || k == OCI_USERNAME || k == OCI_PASSWORD
        }))
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> SourceEnv {
        SourceEnv { vars: pairs.into_iter().collect() }
    }

    /// The variable's value; an empty value counts as unset, as in the AWS tools.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

// Values are secrets: only the names reach a log.
impl std::fmt::Debug for SourceEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("manifest {}: {message}", path.display())]
    InvalidManifest { path: PathBuf, message: String },
    #[error("source {uri}: {reason}")]
    SourceUnsupported { uri: String, reason: String },
    /// A setting the fetch needs is missing or unusable (credentials, CA bundle, source directory).
    #[error("{what}: {message}")]
    Config { what: String, message: String },
    #[error("{path}: {url} answered HTTP {status}; {hint}")]
    Http { path: String, url: String, status: u16, hint: String },
    #[error(
        "{path}: fetching {url} failed {attempts} times in a row, last: {message}; check that the source is reachable from the pod and, for https, that its certificate is trusted (spec.source.caBundleRef)"
    )]
    Transfer { path: String, url: String, attempts: u32, message: String },
    #[error("{path}: not in the source (no {location}): upload the file there or fix spec.source.uri and spec.files")]
    SourceMissing { path: String, location: String },
    #[error(
        "{path}: {location} has {actual} bytes but the manifest pins {expected}; the source holds a different file — fix the file at the source or spec.files"
    )]
    SizeMismatch { path: String, location: String, expected: u64, actual: String },
    #[error(
        "{path}: sha256 is {actual} but the manifest pins {expected} (fetched from {location}); the source holds a different file or it was corrupted on the way — fix the file at the source or spec.files"
    )]
    DigestMismatch { path: String, location: String, expected: String, actual: String },
    /// A Hub mirror refused or could not resolve the revision, or resolved it to a moving one.
    #[error("source {uri}: {message}")]
    Hub { uri: String, message: String },
    /// An OCI registry refused the pull (credentials, unknown manifest) or serves no usable artifact.
    #[error("source {uri}: {message}")]
    Registry { uri: String, message: String },
    /// The registry served, for the pinned manifest digest, bytes that hash to another one.
    #[error(
        "source {uri}: the registry answered manifest {expected} with content whose digest is {actual}: it serves another artifact under the pinned digest (tampered or broken storage); nothing was fetched — fix the registry, never the digest"
    )]
    ManifestDigest { uri: String, expected: String, actual: String },
    /// The artifact's layer for a file is not the file the Model pins.
    #[error(
        "{path}: the layer titled {path:?} in {uri} is {layer} but the Model pins sha256 {expected}; the artifact holds another file, or packs it (a tar, an ORAS directory archive): push the file itself as a layer (oras push <ref> {path}), or fix spec.files"
    )]
    LayerMismatch { path: String, uri: String, layer: String, expected: String },
    #[error("{error} (in {})", dir.display())]
    Verify { dir: PathBuf, error: VerifyError },
    #[error("{}: {error}; check that the volume is mounted, writable and has room", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

impl FetchError {
    /// The fixed reason word for the termination message and the operator's condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidManifest { .. } => "InvalidManifest",
            Self::SourceUnsupported { .. } => "SourceUnsupported",
            Self::SizeMismatch { .. }
            | Self::DigestMismatch { .. }
            | Self::ManifestDigest { .. }
            | Self::LayerMismatch { .. } => "DigestMismatch",
            Self::Verify { error, .. } => error.reason(),
            Self::Config { .. }
            | Self::Http { .. }
            | Self::Transfer { .. }
            | Self::SourceMissing { .. }
            | Self::Hub { .. }
            | Self::Registry { .. }
            | Self::Io { .. } => "FetchFailed",
        }
    }

    pub(crate) fn io(path: &Path, error: std::io::Error) -> FetchError {
        FetchError::Io { path: path.to_owned(), error }
    }
}

/// Fetches and verifies with the source settings of this process's environment.
pub async fn fetch(options: &FetchOptions) -> Result<FetchReport, FetchError> {
    fetch_with_env(options, &SourceEnv::from_process()).await
}

/// [`fetch`] with explicit source settings (tests; callers that hold credentials elsewhere).
pub async fn fetch_with_env(options: &FetchOptions, env: &SourceEnv) -> Result<FetchReport, FetchError> {
    let manifest = read_manifest(&options.manifest).await?;
    let mut transport = Transport::new(options, env)?;
    let dest = options.dest.clone();
    tokio::fs::create_dir_all(&dest).await.map_err(|e| FetchError::io(&dest, e))?;

    // Stray files fail the fetch before any download, and are left alone.
    let unexpected = blocking({
        let (dest, manifest) = (dest.clone(), manifest.clone());
        move || file_verify::unexpected_files(&dest, &manifest)
    })
    .await
    .map_err(|error| FetchError::Verify { dir: dest.clone(), error })?;
    if !unexpected.is_empty() {
        let error = VerifyError::Unexpected { paths: unexpected };
        return Err(FetchError::Verify { dir: dest, error });
    }

    let threads = file_verify::default_threads();
    let plan = cache::check(&dest, &manifest, threads).await?;
    let started = Instant::now();
    info!(
        files = manifest.files.len(),
        cached = plan.cached,
        to_fetch = plan.missing.len(),
        source = %options.source,
        "fetch starting"
    );

    if let Transport::Remote(remote) = &mut transport
        && !plan.missing.is_empty()
    {
        remote.resolve(&plan.missing, options.ca_bundle.as_deref()).await?;
    }
    let progress = Arc::new(Progress::new(plan.missing.iter().map(|e| e.size).sum(), plan.missing.len()));
    let _reporter = progress.report_every(progress::INTERVAL);
    let downloaded_bytes = fetch_all(Arc::new(transport), &dest, plan.missing, options.parallel, &progress).await?;

    let verified = blocking({
        let (dest, manifest) = (dest.clone(), manifest.clone());
        move || file_verify::verify_dir(&dest, &manifest, threads)
    })
    .await
    .map_err(|error| FetchError::Verify { dir: dest.clone(), error })?;
    // Partials left by older revisions are useless now; a failed removal only costs space.
    if let Err(e) = tokio::fs::remove_dir_all(dest.join(STATE_DIR).join(download::PARTIAL_DIR)).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(error = %e, "could not remove leftover partial downloads");
    }
    info!(
        digest = %verified.digest,
        files = verified.files,
        bytes = verified.bytes,
        cached_files = plan.cached,
        downloaded_bytes,
        secs = started.elapsed().as_secs_f64(),
        "model fetched and verified"
    );
    Ok(FetchReport {
        digest: verified.digest,
        files: verified.files,
        bytes: verified.bytes,
        cached_files: plan.cached,
        downloaded_bytes,
    })
}

async fn read_manifest(path: &Path) -> Result<ModelManifest, FetchError> {
    let invalid = |message: String| FetchError::InvalidManifest { path: path.to_owned(), message };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| invalid(format!("cannot read it ({e}); check that the revision's ConfigMap is mounted there")))?;
    let manifest: ModelManifest = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("not a manifest document ({e}); the operator renders it from spec.files")))?;
    file_verify::check_manifest(&manifest).map_err(|e| invalid(e.to_string()))?;
    Ok(manifest)
}

/// How files come from the source.
enum Transport {
    Remote(Remote),
    Local(PathBuf),
}

impl Transport {
    fn new(options: &FetchOptions, env: &SourceEnv) -> Result<Transport, FetchError> {
        match Source::parse(&options.source)? {
            Source::Local(root) => {
                if !root.is_dir() {
                    return Err(FetchError::Config {
                        what: format!("source {}", options.source),
                        message: format!(
                            "{} is not a directory: check that the volume is mounted there (pvc://<claim>/<path> \
                             is read from {PVC_MOUNT_ROOT}/<claim>/<path>)",
                            root.display()
                        ),
                    });
                }
                Ok(Transport::Local(root))
            }
            Source::Hf(hf) => {
                let hub = hub::Hub::new(
                    &options.source,
                    hf,
                    options.hf_mirror.as_deref(),
                    env,
                    options.allow_branch_revision,
                )?;
                Ok(Transport::Remote(Remote::hub(hub, options.ca_bundle.as_deref())?))
            }
            Source::Oci(oci) => {
                let oci = oci::Oci::new(&options.source, oci, env)?;
                Ok(Transport::Remote(Remote::oci(oci, options.ca_bundle.as_deref())?))
            }
            source => Ok(Transport::Remote(Remote::new(&options.source, &source, options.ca_bundle.as_deref(), env)?)),
        }
    }
}

/// Fetches `entries`, `parallel` at a time; returns the bytes transferred. The first
/// failure aborts the other files (their partials stay for the next attempt).
async fn fetch_all(
    transport: Arc<Transport>,
    dest: &Path,
    entries: Vec<ManifestEntry>,
    parallel: usize,
    progress: &Arc<Progress>,
) -> Result<u64, FetchError> {
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for entry in entries {
        let (transport, dest, progress, permits) =
            (transport.clone(), dest.to_owned(), progress.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            fetch_file(&transport, &dest, &entry, &progress).await
        });
    }
    let mut bytes = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => bytes += n,
            Ok(Err(e)) => return Err(e),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {}
        }
    }
    Ok(bytes)
}

/// One file: transfer into its partial, check size and sha256, rename into place.
async fn fetch_file(
    transport: &Transport,
    dest: &Path,
    entry: &ManifestEntry,
    progress: &Arc<Progress>,
) -> Result<u64, FetchError> {
    let partial = download::partial_path(dest, &entry.path);
    let started = Instant::now();
    info!(file = %entry.path, size = entry.size, "fetching file");
    let mut result = transfer(transport, entry, &partial, true, progress).await?;
    let mut network_bytes = result.network_bytes;
    if result.sha256 != entry.sha256 && result.resumed_from > 0 {
        // The prefix may come from an older version of the file at the source: start over once.
        warn!(
            file = %entry.path,
            resumed_from = result.resumed_from,
            "file does not match after resuming; fetching it again from the start"
        );
        result = transfer(transport, entry, &partial, false, progress).await?;
        network_bytes += result.network_bytes;
    }
    if result.sha256 != entry.sha256 {
        remove_quietly(&partial).await;
        return Err(FetchError::DigestMismatch {
            path: entry.path.clone(),
            location: result.location,
            expected: entry.sha256.clone(),
            actual: result.sha256,
        });
    }
    let target = dest.join(&entry.path);
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(|e| FetchError::io(parent, e))?;
    }
    tokio::fs::rename(&partial, &target).await.map_err(|e| FetchError::io(&target, e))?;
    progress.file_done();
    let secs = started.elapsed().as_secs_f64();
    info!(
        file = %entry.path,
        bytes = entry.size,
        network_bytes,
        secs,
        mb_per_s = network_bytes as f64 / secs.max(1e-9) / 1e6,
        "file fetched and verified"
    );
    Ok(network_bytes)
}

/// A finished transfer into the partial file, not yet checked against the manifest's hash.
pub(crate) struct Transferred {
    pub sha256: String,
    /// Where it came from (URL or source path), for error messages.
    pub location: String,
    /// Length of the partial kept from an earlier attempt (0: from scratch).
    pub resumed_from: u64,
    pub network_bytes: u64,
}

async fn transfer(
    transport: &Transport,
    entry: &ManifestEntry,
    partial: &Path,
    resume: bool,
    progress: &Arc<Progress>,
) -> Result<Transferred, FetchError> {
    let result = match transport {
        Transport::Remote(remote) => remote.download(entry, partial, resume, progress).await,
        Transport::Local(root) => local::copy(root, entry, partial, progress).await,
    };
    if matches!(result, Err(FetchError::SizeMismatch { .. })) {
        remove_quietly(partial).await;
    }
    result
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove a rejected partial download");
    }
}

/// Runs blocking file work (hashing, walking) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking file work was cancelled: {e}"),
    }
}
