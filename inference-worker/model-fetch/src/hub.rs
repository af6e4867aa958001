//! `hf://<org>/<name>@<revision>` sources, fetched from an in-house Hugging Face Hub mirror
//! (Artifactory's or Nexus's Hugging Face repositories, olah, …) with the Hub's own HTTP
//! protocol, never from the public hub:
//!
//! 1. The revision is resolved once: `HEAD {mirror}/{org}/{name}/resolve/{revision}/{file}`
//!    without following redirects, whose `X-Repo-Commit` names the commit. A revision that is
//!    not a commit id (a branch or tag, which can move) is refused unless the fetch was told
//!    the namespace allows it (`--allow-branch-revision`); the message names the commit to
//!    pin. A commit id must come back as itself.
//! 2. Every file is then downloaded from `…/resolve/{commit}/{path}`, so a branch that moves
//!    during the fetch cannot mix two revisions, through the same resumable, hashed download
//!    as https sources (`download.rs`): redirects (the Hub's redirect of LFS files to its
//!    storage) are followed only to the mirror's own scheme, host and port, and every file
//!    is checked against the Model's manifest, whatever the mirror says its hash is.
//! 3. `HF_TOKEN`, when set (from the Secret named by `spec.source.credentialsSecretRef`), is
//!    sent as a bearer token, as the Hub's clients do.
//!
//! Why no Hub client crate: `hf-hub` (the one kept by Hugging Face) takes a custom endpoint,
//! but downloads into the Hub's cache layout (`blobs/` named by the mirror's ETags,
//! `snapshots/<commit>/` symlinks, `refs/`) and knows nothing of a manifest of our own, while
//! the worker's volume must hold exactly the manifest's paths, each verified against the
//! Model's sha256 list, with partials resumed and redirects kept to the mirror's host (the
//! existing `download.rs` does all three, for https and S3 already). What the Hub protocol
//! adds to a plain mirror is one revision lookup and a URL layout, so this module adds only
//! that.

use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use taimatsu_core::HfSource;
use taimatsu_core::hf::is_commit;
use tracing::{info, warn};

use crate::sigv4::uri_encode;
use crate::source::join_url;
use crate::{FetchError, SourceEnv};

/// Attempts at the revision lookup when the mirror is unreachable or answers 5xx/429.
const RESOLVE_ATTEMPTS: u32 = 3;

/// A Hub repository at a mirror; its files' URLs are known once the revision is resolved.
pub(crate) struct Hub {
    uri: String,
    source: HfSource,
    /// The mirror's base URL, ending with `/` (a prefix such as Artifactory's
    /// `/api/huggingfaceml/<repo>/` is kept).
    mirror: Url,
    token: Option<String>,
    allow_branch_revision: bool,
    /// `{mirror}/{org}/{name}/resolve/{commit}/`, once resolved.
    files: Option<Url>,
}

impl Hub {
    pub fn new(
        uri: &str,
        source: HfSource,
        mirror: Option<&str>,
        env: &SourceEnv,
        allow_branch_revision: bool,
    ) -> Result<Hub, FetchError> {
        let config = |message: String| FetchError::Config { what: format!("source {uri}"), message };
        let mirror = mirror.ok_or_else(|| {
            config(
                "hf:// sources are fetched from an in-house Hugging Face mirror, never the public hub, and none is \
                 configured: set the operator's --hf-mirror or spec.source.hfMirror"
                    .into(),
            )
        })?;
        let mut url = Url::parse(mirror).map_err(|e| config(format!("the mirror {mirror:?} is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(config(format!(
                "the mirror {mirror:?} is not an http(s) URL: give it as https://host[/prefix]"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(config(format!("the mirror {mirror:?} carries a query or fragment: give its base URL only")));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let token = env.get("HF_TOKEN").map(str::to_owned);
        Ok(Hub { uri: uri.to_owned(), source, mirror: url, token, allow_branch_revision, files: None })
    }

    /// `{mirror}/{org}/{name}/resolve/{revision}/`; the revision is one path segment
    /// (`refs/pr/1` → `refs%2Fpr%2F1`), as the Hub's clients send it.
    fn resolve_base(&self, revision: &str) -> Result<Url, FetchError> {
        let base = format!(
            "{}{}/{}/resolve/{}/",
            self.mirror,
            uri_encode(&self.source.org),
            uri_encode(&self.source.name),
            uri_encode(revision)
        );
        Url::parse(&base).map_err(|e| FetchError::SourceUnsupported {
            uri: self.uri.clone(),
            reason: format!("cannot form the mirror's URL ({e})"),
        })
    }

    /// The URL of a manifest file at the resolved commit.
    pub fn url(&self, path: &str) -> Result<Url, FetchError> {
        let files = self.files.as_ref().ok_or_else(|| FetchError::Config {
            what: format!("source {}", self.uri),
            message: "the revision was not resolved before downloading (a bug in the fetch step)".into(),
        })?;
        join_url(files, path)
    }

    /// Adds the bearer token, when one is set.
    pub fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }

    /// Resolves the revision to a commit with a HEAD of `probe` (a manifest file), by
    /// `client`, which must not follow redirects: the answer for an LFS file is the
    /// redirect, and it carries the commit.
    pub async fn resolve(&mut self, client: &Client, probe: &str) -> Result<String, FetchError> {
        let url = join_url(&self.resolve_base(&self.source.revision)?, probe)?;
        let response = self.head(client, &url).await?;
        let status = response.status();
        let headers = response.headers();
        if !(status.is_success() || status.is_redirection()) {
            return Err(self.refusal(probe, &url, status, headers));
        }
        let commit = headers.get("x-repo-commit").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        if !is_commit(&commit) {
            return Err(self.hub_error(format!(
                "{url} answered HTTP {status} without a commit id in X-Repo-Commit ({commit:?}): the mirror does not \
                 speak the Hugging Face Hub protocol; check the operator's --hf-mirror or spec.source.hfMirror"
            )));
        }
        if self.source.is_pinned() && commit != self.source.revision {
            return Err(self.hub_error(format!(
                "the mirror resolved commit {} to {commit}: it serves another repository's history; check the mirror",
                self.source.revision
            )));
        }
        if !self.source.is_pinned() {
            let pinned = self.source.at(&commit);
            if !self.allow_branch_revision {
                return Err(self.hub_error(format!(
                    "revision {:?} is a branch or tag, which can move, and this namespace requires models pinned to \
                     a commit; the mirror resolves it to {commit} now: set spec.source.uri to {pinned}",
                    self.source.revision
                )));
            }
            warn!(revision = %self.source.revision, %commit, pinned = %pinned, "fetching a moving revision (allowed in this namespace); pin it to a commit");
        }
        info!(repo = %self.source.repo_id(), revision = %self.source.revision, %commit, "revision resolved");
        self.files = Some(self.resolve_base(&commit)?);
        Ok(commit)
    }

    async fn head(&self, client: &Client, url: &Url) -> Result<reqwest::Response, FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= RESOLVE_ATTEMPTS;
            let retry = match self.authorize(client.head(url.clone())).send().await {
                Ok(r) if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    format!("HTTP {}", r.status())
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    let message = crate::download::error_chain(&e);
                    // An untrusted certificate or a malformed request will not get better by retrying.
                    if last || crate::download::certificate_error(&e).is_some() || e.is_builder() {
                        return Err(FetchError::Transfer {
                            path: "(revision lookup)".into(),
                            url: url.to_string(),
                            attempts: attempt,
                            message,
                        });
                    }
                    message
                }
            };
            if last {
                return Err(self.hub_error(format!(
                    "the revision lookup {url} failed {attempt} times, last: {retry}; check the mirror"
                )));
            }
            let delay = std::time::Duration::from_millis(500 << attempt);
            warn!(%url, error = %retry, retry_in_ms = delay.as_millis() as u64, "revision lookup failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The error for a refused revision lookup, from the Hub's `X-Error-Code`.
    fn refusal(&self, probe: &str, url: &Url, status: StatusCode, headers: &HeaderMap) -> FetchError {
        let code = headers.get("x-error-code").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let said = headers.get("x-error-message").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (repo, revision, mirror) = (self.source.repo_id(), &self.source.revision, self.mirror.as_str());
        let message = match (status.as_u16(), code) {
            (401 | 403, _) => {
                let token = if self.token.is_some() { "the HF_TOKEN given was refused" } else { "no HF_TOKEN is set" };
                format!(
                    "the mirror {mirror} refused access to {repo} (HTTP {status}; {token}): put a token the mirror \
                     accepts as HF_TOKEN in the Secret named by spec.source.credentialsSecretRef"
                )
            }
            (_, "RevisionNotFound") => format!(
                "revision {revision:?} is not in {repo} at the mirror {mirror} (RevisionNotFound: {said}): fix the \
                 revision in spec.source.uri, or mirror that revision"
            ),
            (_, "RepoNotFound") => format!(
                "repository {repo} is not at the mirror {mirror} (RepoNotFound): mirror it there or fix spec.source.uri"
            ),
            (_, "EntryNotFound") => format!(
                "{probe} is not in {repo} at revision {revision:?} (EntryNotFound): fix spec.files or the revision"
            ),
            _ => format!("the revision lookup {url} answered HTTP {status} {said}: check the mirror"),
        };
        self.hub_error(message)
    }

    fn hub_error(&self, message: String) -> FetchError {
        FetchError::Hub { uri: self.uri.clone(), message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(uri: &str, mirror: &str) -> Hub {
        Hub::new(uri, HfSource::parse(uri).unwrap(), Some(mirror), &SourceEnv::default(), false).unwrap()
    }

    #[test]
    fn urls_keep_the_mirror_prefix_and_encode_the_revision() {
        let h = hub("hf://org/m@refs/pr/1", "https://art.example/api/huggingfaceml/hf-remote");
        assert_eq!(
            h.resolve_base("refs/pr/1").unwrap().as_str(),
            "https://art.example/api/huggingfaceml/hf-remote/org/m/resolve/refs%2Fpr%2F1/"
        );
        let mut h = hub("hf://org/m@main", "http://127.0.0.1:9/");
        assert!(h.url("config.json").is_err(), "no file URL before the revision is resolved");
        h.files = Some(h.resolve_base(&"a".repeat(40)).unwrap());
        assert_eq!(
            h.url("1_Pooling/config.json").unwrap().as_str(),
            format!("http://127.0.0.1:9/org/m/resolve/{}/1_Pooling/config.json", "a".repeat(40))
        );
    }

    #[test]
    fn a_mirror_is_required_and_must_be_a_base_url() {
        let source = HfSource::parse("hf://org/m@main").unwrap();
        let env = SourceEnv::default();
        for mirror in [None, Some("ftp://x/"), Some("https://x/?a=1"), Some("not a url")] {
            let err = Hub::new("hf://org/m@main", source.clone(), mirror, &env, false).err().expect("refused");
            assert_eq!(err.reason(), "FetchFailed", "{err}");
        }
        let err = Hub::new("hf://org/m@main", source, None, &env, false).err().unwrap();
        assert!(err.to_string().contains("--hf-mirror"), "{err}");
    }
}
