//! `oci://<registry>/<repository>@sha256:<digest>` sources: a model stored as an OCI
//! artifact in an in-house registry (Distribution, Harbor, …), pulled with the OCI
//! distribution API over https:
//!
//! 1. The manifest is fetched by its digest (`GET /v2/<repository>/manifests/sha256:…`)
//!    and its bytes must hash to that digest, so the registry cannot substitute another
//!    artifact. An image index is refused (it names no files; pin the manifest inside it).
//! 2. Each file of the Model's manifest is the layer whose `org.opencontainers.image.title`
//!    annotation (what `oras push` writes; ModelPack's `org.cncf.model.filepath` too) is its
//!    path. The layer must be the file itself: its digest must be `sha256:<the Model's sha256
//!    of that file>` and its size the Model's size. A packed layer (a tar, ORAS's directory
//!    archives) fails here, before any download, as does an artifact holding another file.
//!    Layers the Model does not list are not fetched.
//! 3. Each blob (`GET /v2/<repository>/blobs/sha256:…`) goes through the same resumable,
//!    hashed download as https sources (`download.rs`), so the bytes are checked against the
//!    layer digest and the Model's sha256 at once (they are equal by step 2), and nothing
//!    unverified reaches its final path.
//! 4. Auth: the registry's 401 challenge decides. `Bearer realm=…,service=…` is the Docker/OCI
//!    token flow (Distribution's token auth, Harbor): a pull token for the repository is asked
//!    from the realm, with `OCI_USERNAME`/`OCI_PASSWORD` from the Secret named by
//!    `spec.source.credentialsSecretRef` as basic credentials when set, and renewed when the
//!    registry answers 401 during a long download. The realm must be https on the
//!    registry's own host (the credentials go nowhere else). `Basic` challenges (htpasswd)
//!    get the same credentials directly.
//! 5. Only the registry's host is contacted, as for every source: no proxies, and redirects
//!    are followed only to the same scheme, host and port. A registry that redirects blob
//!    downloads to its storage on another host (S3, a CDN) is refused with a message naming
//!    the target: configure it to serve blobs itself (Distribution: `storage.redirect.disable:
//!    true`; Harbor: `storage_service.redirect.disable`), or mirror the files elsewhere.
//!
//! Why no OCI client crate: `oci-client` (the ORAS project's, v0.18) speaks this protocol,
//! but builds its own reqwest client with reqwest's default redirect policy (any host, up to
//! 10 hops) and the environment's proxy variables, and sends the basic credentials to
//! whichever realm the registry names; none of the three can be configured, and each breaks
//! the fetch step's rule that only the source's host is contacted. Its blob pulls also write
//! a whole blob (or an unverified range) rather than resuming into a hashed partial. What
//! the protocol adds to the https download is one manifest request and one token request,
//! so this module adds only those.

use std::collections::HashMap;
use std::sync::RwLock;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Client, RequestBuilder, StatusCode, Url};
use serde_json::Value;
use sha2::{Digest, Sha256};
use taimatsu_core::oci::is_sha256_hex;
use taimatsu_core::{ManifestEntry, OciSource};
use tracing::{info, warn};

use crate::download::{certificate_error, error_chain};
use crate::{FetchError, SourceEnv};

/// Secret keys (so, through `envFrom`, variables) with the registry's credentials.
pub const OCI_USERNAME: &str = "OCI_USERNAME";
pub const OCI_PASSWORD: &str = "OCI_PASSWORD";

/// The manifest kinds asked for: OCI's and Docker's image manifests (what `oras push` and
/// `crane` write), and the index, only to refuse it by name.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Distribution refuses manifests over 4 MiB; a larger answer is not a manifest.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// The annotations that name a layer's file: ORAS's (the OCI image spec's title) and ModelPack's.
const PATH_ANNOTATIONS: [&str; 2] = ["org.opencontainers.image.title", "org.cncf.model.filepath"];
/// Attempts at a manifest or token request when the registry is unreachable or answers 5xx/429.
const ATTEMPTS: u32 = 3;

/// A layer: one file of the artifact.
#[derive(Clone, Debug)]
struct Layer {
    sha256: String,
    size: u64,
}

/// How the registry asked to be authenticated.
#[derive(Clone, Debug)]
enum Challenge {
    Bearer { realm: Url, service: Option<String> },
    Basic,
}

/// An artifact at a registry; its files' blobs are known once the manifest is read.
pub(crate) struct Oci {
    uri: String,
    source: OciSource,
    /// `https://<registry>/v2/<repository>/`.
    base: Url,
    credentials: Option<(String, String)>,
    /// What the registry asked for at the last 401, to renew the token.
    challenge: RwLock<Option<Challenge>>,
    /// The `Authorization` value of registry requests, once authenticated.
    authorization: RwLock<Option<String>>,
    /// Manifest path → layer, once the manifest is read.
    layers: Option<HashMap<String, Layer>>,
}

impl Oci {
    pub fn new(uri: &str, source: OciSource, env: &SourceEnv) -> Result<Oci, FetchError> {
        let unsupported = |reason: String| FetchError::SourceUnsupported { uri: uri.to_owned(), reason };
        let base = Url::parse(&format!("https://{}/v2/{}/", source.registry, source.repository))
            .map_err(|e| unsupported(format!("cannot form the registry's URL ({e})")))?;
        let credentials = match (env.get(OCI_USERNAME), env.get(OCI_PASSWORD)) {
            (Some(user), Some(password)) => Some((user.to_owned(), password.to_owned())),
            (None, None) => None,
            _ => {
                return Err(FetchError::Config {
                    what: format!("source {uri}"),
                    message: format!(
                        "the Secret named by spec.source.credentialsSecretRef has only one of {OCI_USERNAME} and \
                         {OCI_PASSWORD}: give both"
                    ),
                });
            }
        };
        Ok(Oci {
            uri: uri.to_owned(),
            source,
            base,
            credentials,
            challenge: RwLock::new(None),
            authorization: RwLock::new(None),
            layers: None,
        })
    }

    /// The blob URL of a manifest file.
    pub fn url(&self, path: &str) -> Result<Url, FetchError> {
        let layer = self.layers.as_ref().and_then(|l| l.get(path)).ok_or_else(|| FetchError::Config {
            what: format!("source {}", self.uri),
            message: format!("{path} has no layer (the manifest was not read before downloading: a bug)"),
        })?;
        self.join(&format!("blobs/sha256:{}", layer.sha256))
    }

    fn join(&self, path: &str) -> Result<Url, FetchError> {
        self.base.join(path).map_err(|e| FetchError::SourceUnsupported {
            uri: self.uri.clone(),
            reason: format!("cannot form the registry's URL for {path} ({e})"),
        })
    }

    /// Adds the registry's `Authorization`, once there is one.
    pub fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match self.authorization.read().unwrap_or_else(|p| p.into_inner()).as_deref() {
            Some(value) => request.header(AUTHORIZATION, value),
            None => request,
        }
    }

    /// Fetches and checks the manifest, and maps every entry of `files` to its layer.
    pub async fn resolve(&mut self, client: &Client, files: &[ManifestEntry]) -> Result<(), FetchError> {
        let bytes = self.manifest(client).await?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != self.source.sha256 {
            return Err(FetchError::ManifestDigest {
                uri: self.uri.clone(),
                expected: self.source.digest(),
                actual: format!("sha256:{actual}"),
            });
        }
        let manifest: Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.registry_error(format!("the manifest {} is not JSON ({e})", self.source.digest())))?;
        let media_type = manifest["mediaType"].as_str().unwrap_or_default();
        if manifest.get("manifests").is_some() || media_type.contains("index") || media_type.contains("list") {
            return Err(self.registry_error(format!(
                "{} is an image index ({media_type}), which names no files: pin the digest of the artifact manifest \
                 it lists (oras manifest fetch --descriptor)",
                self.source.digest()
            )));
        }
        let layers = self.layers_by_path(&manifest)?;
        for entry in files {
            check_layer(&self.uri, entry, layers.get(&entry.path))?;
        }
        info!(
            uri = %self.uri,
            layers = layers.len(),
            files = files.len(),
            "artifact manifest verified; every file to fetch is a layer with the Model's sha256"
        );
        self.layers = Some(layers);
        Ok(())
    }

    /// Manifest path → layer, from the layers' path annotations.
    fn layers_by_path(&self, manifest: &Value) -> Result<HashMap<String, Layer>, FetchError> {
        let mut layers = HashMap::new();
        for layer in manifest["layers"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(path) = PATH_ANNOTATIONS.iter().find_map(|a| layer["annotations"][a].as_str()) else { continue };
            let digest = layer["digest"].as_str().unwrap_or_default();
            let sha256 = digest.strip_prefix("sha256:").filter(|h| is_sha256_hex(h)).ok_or_else(|| {
                self.registry_error(format!("the layer for {path} has digest {digest:?}, not sha256:<64 hex>"))
            })?;
            let size = layer["size"].as_u64().ok_or_else(|| {
                self.registry_error(format!("the layer for {path} has no size: the manifest is malformed"))
            })?;
            let previous = layers.insert(path.to_owned(), Layer { sha256: sha256.to_owned(), size });
            if previous.is_some() {
                return Err(self.registry_error(format!(
                    "two layers of {} are titled {path:?}: push each file once",
                    self.source.digest()
                )));
            }
        }
        Ok(layers)
    }

    /// The manifest's bytes, authenticating when the registry asks.
    async fn manifest(&self, client: &Client) -> Result<Vec<u8>, FetchError> {
        let url = self.join(&format!("manifests/{}", self.source.digest()))?;
        let mut authenticated = false;
        loop {
            let response = self
                .send("(artifact manifest)", &url, || {
                    self.authorize(client.get(url.clone()).header(ACCEPT, MANIFEST_TYPES))
                })
                .await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !authenticated {
                self.authenticate(client, response.headers()).await?;
                authenticated = true;
                continue;
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(self.refusal(status, &body));
            }
            if response.content_length().is_some_and(|l| l > MAX_MANIFEST_BYTES as u64) {
                return Err(self.registry_error("the manifest is larger than 4 MiB: it is not a model artifact".into()));
            }
            let bytes = response.bytes().await.map_err(|e| self.transfer("(artifact manifest)", &url, 1, &e))?;
            if bytes.len() > MAX_MANIFEST_BYTES {
                return Err(self.registry_error("the manifest is larger than 4 MiB: it is not a model artifact".into()));
            }
            return Ok(bytes.to_vec());
        }
    }

    /// Renews the registry token after a 401 during a download, with the challenge the
    /// manifest request got.
    pub async fn renew(&self, client: &Client) -> Result<(), FetchError> {
        let challenge = self.challenge.read().unwrap_or_else(|p| p.into_inner()).clone();
        match challenge {
            Some(challenge) => self.authorize_with(client, &challenge).await,
            None => Err(self.registry_error(
                "the registry answered a blob download with 401 though it asked for no credentials for the manifest"
                    .into(),
            )),
        }
    }

    /// Follows the registry's 401 challenge: a token from its realm, or basic credentials.
    async fn authenticate(&self, client: &Client, headers: &HeaderMap) -> Result<(), FetchError> {
        let header = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let challenge = parse_challenge(header).ok_or_else(|| {
            self.registry_error(format!(
                "the registry answered HTTP 401 with no usable WWW-Authenticate challenge ({header:?}): it does not \
                 speak the OCI distribution API's auth"
            ))
        })?;
        let challenge = match challenge {
            ParsedChallenge::Basic => Challenge::Basic,
            ParsedChallenge::Bearer { realm, service } => {
                let realm = Url::parse(&realm)
                    .map_err(|e| self.registry_error(format!("its token realm {realm:?} is not a URL ({e})")))?;
                if realm.scheme() != "https" || realm.host_str() != self.base.host_str() {
                    return Err(self.registry_error(format!(
                        "its token realm {realm} is not https on the registry's own host {}: the fetch step sends \
                         credentials to the registry's host only; serve the token service there (as Harbor does)",
                        self.source.registry
                    )));
                }
                Challenge::Bearer { realm, service }
            }
        };
        *self.challenge.write().unwrap_or_else(|p| p.into_inner()) = Some(challenge.clone());
        self.authorize_with(client, &challenge).await
    }

    async fn authorize_with(&self, client: &Client, challenge: &Challenge) -> Result<(), FetchError> {
        let value = match challenge {
            Challenge::Basic => {
                let Some((user, password)) = &self.credentials else { return Err(self.no_credentials()) };
                basic(user, password)
            }
            Challenge::Bearer { realm, service } => format!("Bearer {}", self.token(client, realm, service).await?),
        };
        *self.authorization.write().unwrap_or_else(|p| p.into_inner()) = Some(value);
        Ok(())
    }

    /// A pull token for the repository from the registry's token service.
    async fn token(&self, client: &Client, realm: &Url, service: &Option<String>) -> Result<String, FetchError> {
        let mut url = realm.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &format!("repository:{}:pull", self.source.repository));
        }
        let response = self
            .send("(registry token)", &url, || match &self.credentials {
                Some((user, password)) => client.get(url.clone()).header(AUTHORIZATION, basic(user, password)),
                None => client.get(url.clone()),
            })
            .await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(match &self.credentials {
                None => self.no_credentials(),
                Some(_) => self.registry_error(format!(
                    "the registry's token service {realm} refused the {OCI_USERNAME}/{OCI_PASSWORD} given (HTTP \
                     {status}): put credentials the registry accepts in the Secret named by \
                     spec.source.credentialsSecretRef"
                )),
            });
        }
        if !status.is_success() {
            return Err(self.registry_error(format!("the registry's token service {realm} answered HTTP {status}")));
        }
        let body: Value = response.json().await.map_err(|e| {
            self.registry_error(format!("the token service {realm} answered no token JSON ({})", error_chain(&e)))
        })?;
        // The Docker token spec's `token`, or OAuth2's `access_token`.
        let token = body["token"].as_str().or(body["access_token"].as_str()).filter(|t| !t.is_empty());
        token.map(str::to_owned).ok_or_else(|| {
            self.registry_error(format!("the token service {realm} answered without a token (no \"token\" field)"))
        })
    }

    /// Sends the request `build` makes, again when the registry is unreachable or answers
    /// 5xx/429, up to [`ATTEMPTS`] times.
    async fn send(
        &self,
        what: &str,
        url: &Url,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= ATTEMPTS;
            let retry = match build().send().await {
                Ok(r) if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    format!("HTTP {}", r.status())
                }
                Ok(r) => return Ok(r),
                Err(e) if last || e.is_redirect() || e.is_builder() || certificate_error(&e).is_some() => {
                    return Err(self.transfer(what, url, attempt, &e));
                }
                Err(e) => error_chain(&e),
            };
            if last {
                return Err(self.registry_error(format!("{url} failed {attempt} times, last: {retry}")));
            }
            let delay = std::time::Duration::from_millis(500 << attempt);
            warn!(%url, error = %retry, retry_in_ms = delay.as_millis() as u64, "registry request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The error for a refused manifest request, with the registry's error codes.
    fn refusal(&self, status: StatusCode, body: &str) -> FetchError {
        let codes = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["errors"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| format!("{} {}", e["code"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("; ");
        let (repository, registry, digest) = (&self.source.repository, &self.source.registry, self.source.digest());
        let message = match status.as_u16() {
            401 | 403 if self.credentials.is_none() => return self.no_credentials(),
            401 | 403 => format!(
                "the registry {registry} denied pull access to {repository} with the {OCI_USERNAME} given (HTTP \
                 {status}: {codes}): grant it pull access, or put other credentials in the Secret named by \
                 spec.source.credentialsSecretRef"
            ),
            404 => format!(
                "manifest {digest} is not in repository {repository} at the registry {registry} (HTTP 404: {codes}): \
                 push the artifact there, or fix the digest in spec.source.uri"
            ),
            _ => format!("the registry {registry} answered the manifest request with HTTP {status}: {codes}"),
        };
        self.registry_error(message)
    }

    fn no_credentials(&self) -> FetchError {
        self.registry_error(format!(
            "the registry {} requires credentials to pull {} and none are set: put {OCI_USERNAME} and {OCI_PASSWORD} \
             in the Secret named by spec.source.credentialsSecretRef",
            self.source.registry, self.source.repository
        ))
    }

    fn transfer(&self, path: &str, url: &Url, attempts: u32, e: &reqwest::Error) -> FetchError {
        FetchError::Transfer { path: path.into(), url: url.to_string(), attempts, message: error_chain(e) }
    }

    fn registry_error(&self, message: String) -> FetchError {
        FetchError::Registry { uri: self.uri.clone(), message }
    }
}

/// The entry's layer is the file itself: same sha256 and size.
fn check_layer(uri: &str, entry: &ManifestEntry, layer: Option<&Layer>) -> Result<(), FetchError> {
    let Some(layer) = layer else {
        return Err(FetchError::SourceMissing {
            path: entry.path.clone(),
            location: format!("layer titled {:?} in {uri}", entry.path),
        });
    };
    if layer.sha256 != entry.sha256 || layer.size != entry.size {
        return Err(FetchError::LayerMismatch {
            path: entry.path.clone(),
            uri: uri.to_owned(),
            layer: format!("sha256:{} ({} bytes)", layer.sha256, layer.size),
            expected: format!("{} ({} bytes)", entry.sha256, entry.size),
        });
    }
    Ok(())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[derive(Debug, PartialEq)]
enum ParsedChallenge {
    Bearer { realm: String, service: Option<String> },
    Basic,
}

/// `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"` (RFC 7235; one challenge,
/// as registries send).
fn parse_challenge(header: &str) -> Option<ParsedChallenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(ParsedChallenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut values = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                (&quoted[..end], &quoted[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, a)| (v, a)),
        };
        values.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        rest = after.trim_start_matches([',', ' ']);
    }
    Some(ParsedChallenge::Bearer { realm: values.remove("realm")?, service: values.remove("service") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://r.example/service/token",service="harbor-registry",scope="repository:m:pull""#
            ),
            Some(ParsedChallenge::Bearer {
                realm: "https://r.example/service/token".into(),
                service: Some("harbor-registry".into())
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=https://r.example/t"),
            Some(ParsedChallenge::Bearer { realm: "https://r.example/t".into(), service: None })
        );
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(ParsedChallenge::Basic));
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None, "a bearer challenge needs a realm");
    }

    #[test]
    fn a_layer_must_be_the_file_itself() {
        let entry = ManifestEntry { path: "w.gguf".into(), size: 3, sha256: "a".repeat(64) };
        let same = Layer { sha256: "a".repeat(64), size: 3 };
        assert!(check_layer("oci://r/m@sha256:x", &entry, Some(&same)).is_ok());
        let err = check_layer("oci://r/m@sha256:x", &entry, None).unwrap_err();
        assert!(err.to_string().contains("no layer titled \"w.gguf\""), "{err}");
        let tar = Layer { sha256: "b".repeat(64), size: 10240 };
        let err = check_layer("oci://r/m@sha256:x", &entry, Some(&tar)).unwrap_err();
        assert_eq!(err.reason(), "DigestMismatch");
    }
}
