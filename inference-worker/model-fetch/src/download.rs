//! http(s) and S3 downloads: one client that contacts only the source's host, and a
//! resumable, retried, hashed download of one file into its partial.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{Client, RequestBuilder, StatusCode, Url, redirect};
use sha2::{Digest, Sha256};
use taimatsu_core::ManifestEntry;
use taimatsu_core::file_verify::STATE_DIR;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};
use tracing::{info, warn};

use crate::hub::Hub;
use crate::oci::Oci;
use crate::progress::Progress;
use crate::s3::S3;
use crate::source::{Source, join_url};
use crate::{FetchError, HTTP_TOKEN, SourceEnv, Transferred, blocking};

/// Partial downloads live in `<dest>/.taimatsu/<PARTIAL_DIR>/<path>`: on the same
/// filesystem as their final path, so the rename into place is atomic.
pub(crate) const PARTIAL_DIR: &str = "partial";

/// Consecutive attempts that add no byte before a file fails. An attempt that gets further
/// than any before resets the count, so a flaky but moving transfer always completes.
const MAX_FAILURES: u32 = 5;
const WRITE_BUF: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// No byte for this long and the attempt is retried (resuming where it stopped).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;

pub(crate) fn partial_path(dest: &Path, path: &str) -> PathBuf {
    dest.join(STATE_DIR).join(PARTIAL_DIR).join(path)
}

/// A remote source and the client that reaches it.
pub(crate) struct Remote {
    client: Client,
    kind: RemoteKind,
}

enum RemoteKind {
    /// A plain file mirror, with the bearer token its Secret gives (`token`), if any.
    Http(Url, Option<String>),
    S3(Box<S3>),
    Hub(Box<Hub>),
    Oci(Box<Oci>),
}

impl Remote {
    pub fn new(uri: &str, source: &Source, ca_bundle: Option<&Path>, env: &SourceEnv) -> Result<Remote, FetchError> {
        let kind = match source {
            Source::Http(base) => RemoteKind::Http(base.clone(), http_token(uri, base, env)?),
            Source::S3 { bucket, prefix } => RemoteKind::S3(Box::new(S3::from_env(uri, bucket, prefix, env)?)),
            Source::Hf(_) | Source::Oci(_) | Source::Local(_) => {
                unreachable!("hub and registry sources are made by Remote::hub and Remote::oci, local ones copied")
            }
        };
        Ok(Remote { client: client(ca_bundle, same_origin_redirects())?, kind })
    }

    /// A Hub mirror's repository; its revision is resolved with [`Remote::resolve`].
    pub fn hub(hub: Hub, ca_bundle: Option<&Path>) -> Result<Remote, FetchError> {
        Ok(Remote { client: client(ca_bundle, same_origin_redirects())?, kind: RemoteKind::Hub(Box::new(hub)) })
    }

    /// A registry's artifact; its manifest is read with [`Remote::resolve`].
    pub fn oci(oci: Oci, ca_bundle: Option<&Path>) -> Result<Remote, FetchError> {
        Ok(Remote { client: client(ca_bundle, same_origin_redirects())?, kind: RemoteKind::Oci(Box::new(oci)) })
    }

    /// Before `missing` is downloaded: for a Hub source, resolves its revision to a commit
    /// with a lookup of the first file (without following redirects: the Hub's answer for
    /// an LFS file is a redirect that carries the commit); for a registry, reads and checks
    /// the artifact manifest and maps every file to its layer. Nothing to do for others.
    pub async fn resolve(&mut self, missing: &[ManifestEntry], ca_bundle: Option<&Path>) -> Result<(), FetchError> {
        match &mut self.kind {
            RemoteKind::Hub(hub) => {
                if let Some(first) = missing.first() {
                    hub.resolve(&client(ca_bundle, redirect::Policy::none())?, &first.path).await?;
                }
            }
            RemoteKind::Oci(oci) => oci.resolve(&self.client, missing).await?,
            RemoteKind::Http(..) | RemoteKind::S3(_) => {}
        }
        Ok(())
    }

    fn url(&self, path: &str) -> Result<Url, FetchError> {
        match &self.kind {
            RemoteKind::Http(base, _) => join_url(base, path),
            RemoteKind::S3(s3) => s3.url(path),
            RemoteKind::Hub(hub) => hub.url(path),
            RemoteKind::Oci(oci) => oci.url(path),
        }
    }

    /// A GET of `url` from byte `from` on (a Range request when `from > 0`).
    fn get(&self, url: &Url, from: u64) -> Result<RequestBuilder, FetchError> {
        let request = self.client.get(url.clone());
        Ok(match &self.kind {
            RemoteKind::Http(_, token) => {
                // Redirects are followed on the same origin only, so the token goes nowhere else.
                let request = match token {
                    Some(token) => request.bearer_auth(token),
                    None => request,
                };
                if from > 0 { request.header(RANGE, format!("bytes={from}-")) } else { request }
            }
            RemoteKind::S3(s3) => request.headers(s3.signed_headers(url, from, SystemTime::now())?),
            RemoteKind::Hub(hub) if from > 0 => hub.authorize(request).header(RANGE, format!("bytes={from}-")),
            RemoteKind::Hub(hub) => hub.authorize(request),
            RemoteKind::Oci(oci) if from > 0 => oci.authorize(request).header(RANGE, format!("bytes={from}-")),
            RemoteKind::Oci(oci) => oci.authorize(request),
        })
    }

    /// Downloads `entry` into `partial` and hashes it. With `resume`, bytes already in
    /// `partial` are kept and the rest is requested with a Range; the caller checks the hash.
    pub async fn download(
        &self,
        entry: &ManifestEntry,
        partial: &Path,
        resume: bool,
        progress: &Arc<Progress>,
    ) -> Result<Transferred, FetchError> {
        let url = self.url(&entry.path)?;
        let mut part = PartialFile::open(partial, entry.size, resume).await?;
        let resumed_from = part.len;
        if resumed_from > 0 {
            info!(file = %entry.path, resumed_from, size = entry.size, "resuming a partial download");
        }
        let mut network_bytes = 0;
        let (mut failures, mut furthest) = (0, part.len);
        while part.len < entry.size {
            match self.attempt(&url, entry, &mut part, progress, &mut network_bytes).await {
                Ok(()) => break,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(message)) => {
                    if part.len > furthest {
                        (furthest, failures) = (part.len, 0);
                    } else {
                        failures += 1;
                    }
                    if failures >= MAX_FAILURES {
                        let (path, url) = (entry.path.clone(), url.to_string());
                        return Err(FetchError::Transfer { path, url, attempts: failures, message });
                    }
                    // Hardly a wait after progress (the connection was cut, not refused), doubling otherwise.
                    let delay = Duration::from_millis(if failures == 0 { 100 } else { 500 << (failures - 1) });
                    let retry_in_ms = delay.as_millis() as u64;
                    warn!(
                        file = %entry.path,
                        %url,
                        error = %message,
                        have = part.len,
                        retry_in_ms,
                        "download interrupted; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        let sha256 = part.finish().await?;
        Ok(Transferred { sha256, location: url.to_string(), resumed_from, network_bytes })
    }

    /// One request: appends what arrives to `part`. A transient failure leaves `part`
    /// flushed and consistent with its hash, ready to resume.
    async fn attempt(
        &self,
        url: &Url,
        entry: &ManifestEntry,
        part: &mut PartialFile,
        progress: &Progress,
        network_bytes: &mut u64,
    ) -> Result<(), Failure> {
        let size_mismatch = |actual: String| {
            Failure::Fatal(FetchError::SizeMismatch {
                path: entry.path.clone(),
                location: url.to_string(),
                expected: entry.size,
                actual,
            })
        };
        let from = part.len;
        let mut response = self.get(url, from)?.send().await.map_err(send_failure)?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT if from > 0 => {
                let range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                let (start, total) = parse_content_range(range);
                if start != Some(from) {
                    part.reset().await?;
                    return Err(Failure::Retry(format!(
                        "asked for bytes={from}- but got Content-Range {range:?}; starting the file over"
                    )));
                }
                if let Some(total) = total.filter(|&t| t != entry.size) {
                    return Err(size_mismatch(total.to_string()));
                }
            }
            StatusCode::OK => {
                if from > 0 {
                    // The server ignores Range: the body is the whole file again.
                    info!(file = %entry.path, "source does not serve byte ranges; downloading the file from the start");
                    part.reset().await?;
                }
                if let Some(len) = response.content_length().filter(|&l| l != entry.size) {
                    return Err(size_mismatch(len.to_string()));
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                part.reset().await?;
                return Err(Failure::Retry(format!(
                    "the source refused bytes={from}- (the partial download is longer than the source's file); starting the file over"
                )));
            }
            s if s == StatusCode::REQUEST_TIMEOUT || s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                return Err(Failure::Retry(format!("HTTP {status}")));
            }
            // Registry tokens are short-lived (Distribution's default is a minute): a long
            // download outlives its token, so a 401 renews it and resumes.
            StatusCode::UNAUTHORIZED if matches!(self.kind, RemoteKind::Oci(_)) => {
                if let RemoteKind::Oci(oci) = &self.kind {
                    oci.renew(&self.client).await?;
                }
                return Err(Failure::Retry("HTTP 401 (registry token renewed)".into()));
            }
            _ => return Err(Failure::Fatal(http_error(entry, url, status, &self.kind))),
        }
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    part.flush().await?;
                    return Err(Failure::Retry(error_chain(&e)));
                }
            };
            if part.len + chunk.len() as u64 > entry.size {
                return Err(size_mismatch(format!("more than {}", part.len + chunk.len() as u64 - 1)));
            }
            part.write(&chunk).await?;
            *network_bytes += chunk.len() as u64;
            progress.add_bytes(chunk.len() as u64);
        }
        part.flush().await?;
        if part.len < entry.size {
            return Err(Failure::Retry(format!("the connection ended after {} of {} bytes", part.len, entry.size)));
        }
        Ok(())
    }
}

/// How an attempt ended, when it did not complete the file.
enum Failure {
    /// Worth another attempt (network, 5xx, 429): resumes from what arrived.
    Retry(String),
    Fatal(FetchError),
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Failure {
        Failure::Fatal(e)
    }
}

fn send_failure(e: reqwest::Error) -> Failure {
    // A refused redirect, an untrusted certificate or a malformed request will not get better by retrying.
    if e.is_redirect() || e.is_builder() {
        Failure::Fatal(FetchError::Config { what: "source request".into(), message: error_chain(&e) })
    } else if let Some(tls) = certificate_error(&e) {
        Failure::Fatal(FetchError::Config {
            what: format!("source {}", e.url().map(Url::as_str).unwrap_or("?")),
            message: format!(
                "its TLS certificate is not trusted ({tls}): give the CA that signed it in spec.source.caBundleRef"
            ),
        })
    } else {
        Failure::Retry(error_chain(&e))
    }
}

/// The rustls certificate error among `e`'s causes, looking inside `io::Error`s too
/// (whose `source()` skips the error they wrap, and which rustls errors arrive nested in).
pub(crate) fn certificate_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut pending = vec![e];
    while let Some(cause) = pending.pop() {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = cause.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            pending.push(inner);
        }
        pending.extend(cause.source());
    }
    None
}

/// The `token` of the source's Secret, to send as a bearer token: over https only, where
/// nobody on the way can read it.
fn http_token(uri: &str, base: &Url, env: &SourceEnv) -> Result<Option<String>, FetchError> {
    let Some(token) = env.get(HTTP_TOKEN) else { return Ok(None) };
    if base.scheme() != "https" {
        return Err(FetchError::SourceUnsupported {
            uri: uri.to_owned(),
            reason: format!(
                "the Secret named by spec.source.credentialsSecretRef has a `{HTTP_TOKEN}`, and a token is sent only over https: use the mirror's https:// address, or remove `{HTTP_TOKEN}` from the Secret"
            ),
        });
    }
    Ok(Some(token.to_owned()))
}

fn http_error(entry: &ManifestEntry, url: &Url, status: StatusCode, kind: &RemoteKind) -> FetchError {
    let (s3, hub, oci) =
        (matches!(kind, RemoteKind::S3(_)), matches!(kind, RemoteKind::Hub(_)), matches!(kind, RemoteKind::Oci(_)));
    let hint = match status.as_u16() {
        404 | 410 if hub => "the file is not in the repository at the resolved commit: fix spec.files or the revision",
        401 | 403 if hub => {
            "the mirror refused the token: put one it accepts as HF_TOKEN in the Secret named by spec.source.credentialsSecretRef"
        }
        404 | 410 if oci => {
            "the registry does not have the layer's blob though the manifest names it: push the artifact again"
        }
        401 | 403 if oci => {
            "the registry refused the blob: grant pull access to OCI_USERNAME, or fix the credentials in the Secret named by spec.source.credentialsSecretRef"
        }
        // S3 answers a request to the wrong region with 301 PermanentRedirect and no Location.
        301 | 307 if s3 => "the bucket is in another region: set AWS_REGION to the bucket's region",
        404 | 410 => "the file is not at the source: upload it there or fix spec.source.uri and spec.files",
        401 | 403 => "the source refused the credentials: check the Secret named by spec.source.credentialsSecretRef",
        300..=399 => {
            "the source redirects, and redirects are followed only on the same scheme, host and port: point spec.source.uri at the final location"
        }
        _ => "the source does not serve the file: check the mirror",
    };
    FetchError::Http { path: entry.path.clone(), url: url.to_string(), status: status.as_u16(), hint: hint.into() }
}

/// `bytes <start>-<end>/<total|*>` → (start, total).
fn parse_content_range(value: &str) -> (Option<u64>, Option<u64>) {
    let Some(rest) = value.strip_prefix("bytes ") else { return (None, None) };
    let (range, total) = rest.split_once('/').unwrap_or((rest, "*"));
    let start = range.split_once('-').and_then(|(s, _)| s.trim().parse().ok());
    (start, total.trim().parse().ok())
}

/// An error and its causes, `a: b: c` (reqwest's own message omits the cause).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The HTTP client: the source's host only (no proxies; `redirects` are same-origin or
/// none), no content decoding (Range offsets are raw bytes), the extra CA bundle trusted.
fn client(ca_bundle: Option<&Path>, redirects: redirect::Policy) -> Result<Client, FetchError> {
    let mut builder = Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(redirects)
        .user_agent(concat!("taimatsu-model-fetch/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_bundle {
        let config = |message: String| FetchError::Config { what: format!("CA bundle {}", path.display()), message };
        let pem = std::fs::read(path)
            .map_err(|e| config(format!("cannot read it ({e}); check the Secret named by spec.source.caBundleRef")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| config(format!("not PEM certificates ({}); give the CA as PEM", error_chain(&e))))?;
        if certs.is_empty() {
            return Err(config("holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA as PEM".into()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| FetchError::Config { what: "HTTP client".into(), message: error_chain(&e) })
}

/// Follows a redirect only to the same scheme, host and port as the source URL: the
/// worker never contacts another host, and never downgrades https.
fn same_origin_redirects() -> redirect::Policy {
    redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first().cloned() else { return attempt.follow() };
        let next = attempt.url();
        if attempt.previous().len() > MAX_REDIRECTS {
            let message = format!("more than {MAX_REDIRECTS} redirects from {first}");
            return attempt.error(message);
        }
        let same = next.scheme() == first.scheme()
            && next.host_str() == first.host_str()
            && next.port_or_known_default() == first.port_or_known_default();
        if same {
            attempt.follow()
        } else {
            let message = format!(
                "refused the redirect from {first} to {next}: the worker contacts only the source's host (for hf://, the mirror's; for oci://, the registry's); point spec.source.uri at the files' real location, or have the mirror or registry serve its storage on its own host (Distribution: storage.redirect.disable: true)"
            );
            attempt.error(message)
        }
    })
}

/// A partial download on disk, and the sha256 of what it holds so far.
struct PartialFile {
    path: PathBuf,
    file: BufWriter<tokio::fs::File>,
    hasher: Sha256,
    len: u64,
}

impl PartialFile {
    /// Opens (creates) the partial. With `resume`, its bytes are kept and hashed, unless
    /// it is longer than the file can be; otherwise it is emptied.
    async fn open(path: &Path, size: u64, resume: bool) -> Result<PartialFile, FetchError> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| FetchError::io(parent, e))?;
        }
        let io = |e| FetchError::io(path, e);
        let file =
            tokio::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).await.map_err(io)?;
        let existing = file.metadata().await.map_err(io)?.len();
        let (hasher, len) = if resume && existing > 0 && existing <= size {
            let owned = path.to_owned();
            blocking(move || hash_prefix(&owned, existing)).await.map_err(io)?
        } else {
            (Sha256::new(), 0)
        };
        file.set_len(len).await.map_err(io)?;
        let mut file = BufWriter::with_capacity(WRITE_BUF, file);
        file.seek(std::io::SeekFrom::Start(len)).await.map_err(io)?;
        Ok(PartialFile { path: path.to_owned(), file, hasher, len })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), FetchError> {
        self.hasher.update(bytes);
        self.file.write_all(bytes).await.map_err(|e| FetchError::io(&self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), FetchError> {
        self.file.flush().await.map_err(|e| FetchError::io(&self.path, e))
    }

    /// Empties the partial, to download the file from its start.
    async fn reset(&mut self) -> Result<(), FetchError> {
        let io = |e| FetchError::io(&self.path, e);
        self.file.flush().await.map_err(io)?;
        self.file.get_mut().set_len(0).await.map_err(io)?;
        self.file.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        (self.hasher, self.len) = (Sha256::new(), 0);
        Ok(())
    }

    /// Flushes and returns the hex sha256 of the content.
    async fn finish(mut self) -> Result<String, FetchError> {
        self.flush().await?;
        Ok(hex::encode(self.hasher.finalize()))
    }
}

/// The hasher state over the first `len` bytes of `path`, and `len`.
fn hash_prefix(path: &Path, len: u64) -> std::io::Result<(Sha256, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?.take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WRITE_BUF];
    let mut read = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        read += n as u64;
    }
    Ok((hasher, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(parse_content_range("bytes 100-199/200"), (Some(100), Some(200)));
        assert_eq!(parse_content_range("bytes 100-199/*"), (Some(100), None));
        assert_eq!(parse_content_range("items 1-2/3"), (None, None));
    }

    #[tokio::test]
    async fn partial_resumes_with_the_hash_of_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b.bin");
        let mut part = PartialFile::open(&path, 10, true).await.unwrap();
        part.write(b"hello").await.unwrap();
        part.flush().await.unwrap();
        drop(part);

        let mut part = PartialFile::open(&path, 10, true).await.unwrap();
        assert_eq!(part.len, 5);
        part.write(b"world").await.unwrap();
        assert_eq!(part.finish().await.unwrap(), hex::encode(Sha256::digest(b"helloworld")));
        assert_eq!(std::fs::read(&path).unwrap(), b"helloworld");

        // Longer than the file can be, or not resuming: emptied.
        let part = PartialFile::open(&path, 4, true).await.unwrap();
        assert_eq!(part.len, 0);
        drop(part);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
