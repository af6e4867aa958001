//! An in-house OCI registry on loopback: the CNCF Distribution registry (`registry`, built
//! by `hack/oci-bins.sh` from its Go module) over https with a private CA, behind the
//! Docker/OCI token auth that Harbor and Distribution deployments use, and models pushed to
//! it as OCI artifacts with the real ORAS client (`oras push`: one layer per file, named by
//! its `org.opencontainers.image.title` annotation).
//!
//! The token service is ours (Distribution ships none): on `GET /token?service=…&scope=…`
//! with the right basic credentials it issues a JWT (ES256, its certificate in the `x5c`
//! header, the registry's `rootcertbundle`) granting the scopes asked; anonymously, a token
//! granting nothing, as Harbor does, so the registry itself refuses the pull. It listens on
//! the registry's host (another port), with the same certificate.
//!
//! Faults a real registry can show are made on the registry's own storage (a blob or
//! manifest file changed on disk: Distribution serves it as it is) or with its own
//! configuration (the `redirect` storage middleware sends blob downloads to another host,
//! as a registry on S3 or behind a CDN does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rcgen::{CertificateParams, DnType, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::process::{log_tail, spawn_supervised};
use crate::tls::ServerCert;
use crate::wait::poll_until;

/// The `service` the registry names in its challenge and expects as the token's audience.
const SERVICE: &str = "taimatsu-test-registry";
const ISSUER: &str = "taimatsu-test-token-service";

/// How the registry is started.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Blob downloads are redirected (307) to this base URL, another host.
    pub redirect_blobs_to: Option<String>,
}

/// A running registry and its token service; both stop when dropped.
pub struct OciRegistry {
    /// `127.0.0.1:<port>`: the registry part of `oci://` references.
    pub host: String,
    /// PEM of the CA that signs both servers' certificate.
    pub ca_pem: String,
    /// The user the token service accepts (with [`OciRegistry::password`]).
    pub username: String,
    pub password: String,
    dir: PathBuf,
    log: PathBuf,
    child: Child,
    tokens: Arc<TokenService>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.task.abort();
    }
}

/// An artifact pushed with ORAS.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `sha256:<hex>` of the manifest, as the registry names it.
    pub digest: String,
    /// The manifest ORAS wrote.
    pub manifest: Value,
}

struct TokenService {
    username: String,
    password: String,
    /// Signs the tokens; its self-signed certificate is the registry's `rootcertbundle`.
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    /// Each token request's (authenticated, scopes asked), for tests.
    requests: Mutex<Vec<(bool, Vec<String>)>>,
}

impl OciRegistry {
    /// Starts the registry on a free port of 127.0.0.1, its files under `dir`.
    pub async fn start(dir: &Path, options: RegistryOptions) -> anyhow::Result<OciRegistry> {
        let bins = crate::bins::oci_bin_dir()?;
        std::fs::create_dir_all(dir)?;
        let cert = ServerCert::issue(&[])?;
        std::fs::write(dir.join("tls.crt"), &cert.chain_pem)?;
        std::fs::write(dir.join("tls.key"), &cert.key_pem)?;

        let tokens = Arc::new(TokenService::new("model-puller", "in-house-registry-password")?);
        std::fs::write(dir.join("token-signer.pem"), pem("CERTIFICATE", &tokens.cert_der))?;
        let token_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let token_addr = token_listener.local_addr()?;
        let app = axum::Router::new().route("/token", get(issue_token)).with_state(tokens.clone());
        let task = crate::tls::serve(token_listener, cert.rustls_config()?, app);

        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let mut config = json!({
            "version": 0.1,
            "log": { "level": "info", "accesslog": { "disabled": false } },
            "storage": { "filesystem": { "rootdirectory": dir.join("store") }, "maintenance": { "uploadpurging": { "enabled": false } } },
            "http": { "addr": host, "tls": { "certificate": dir.join("tls.crt"), "key": dir.join("tls.key") } },
            "auth": { "token": {
                "realm": format!("https://{token_addr}/token"),
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": dir.join("token-signer.pem"),
            } },
        });
        if let Some(base) = &options.redirect_blobs_to {
            config["middleware"] = json!({ "storage": [ { "name": "redirect", "options": { "baseurl": base } } ] });
        }
        // YAML is a superset of JSON: the registry reads this as its configuration file.
        std::fs::write(dir.join("config.yml"), serde_json::to_vec_pretty(&config)?)?;
        let log = dir.join("registry.log");
        let mut command = Command::new(bins.join("registry"));
        command.arg("serve").arg(dir.join("config.yml"));
        let child = spawn_supervised(command, &log).with_context(|| format!("starting {}", bins.display()))?;
        let mut registry = OciRegistry {
            host,
            ca_pem: cert.ca_pem,
            username: tokens.username.clone(),
            password: tokens.password.clone(),
            dir: dir.to_owned(),
            log,
            child,
            tokens,
            task,
        };
        let addr: SocketAddr = registry.host.parse()?;
        let child = &mut registry.child;
        let log = registry.log.clone();
        poll_until("the OCI registry to listen", Duration::from_secs(30), || {
            let exited = child.try_wait().map(|s| s.is_some()).unwrap_or(true);
            let log = log.clone();
            async move {
                if exited {
                    bail!("the registry exited: {}", log_tail(&log, 20));
                }
                Ok(tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()))
            }
        })
        .await?;
        Ok(registry)
    }

    /// `oci://<host>/<repository>@<digest>`.
    pub fn uri(&self, repository: &str, digest: &str) -> String {
        format!("oci://{}/{repository}@{digest}", self.host)
    }

    /// The CA file, for clients.
    pub fn ca_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// Pushes `files` (paths relative to `root`, `/`-separated) as an artifact to
    /// `<repository>:<tag>` with `oras push`, logged in as the registry's user. Async: the
    /// token service answers ORAS from this process's runtime.
    pub async fn push(&self, root: &Path, files: &[&str], repository: &str, tag: &str) -> anyhow::Result<Pushed> {
        let oras = crate::bins::oci_bin_dir()?.join("oras");
        let exported = self.dir.join(format!("manifest-{}-{tag}.json", repository.replace('/', "_")));
        let output = tokio::process::Command::new(&oras)
            .current_dir(root)
            // No credentials file of the machine's user is read or written.
            .env("HOME", &self.dir)
            .env("DOCKER_CONFIG", self.dir.join("docker"))
            .args(["push", "--no-tty", "--ca-file"])
            .arg(self.ca_file()?)
            .args(["--registry-config"])
            .arg(self.dir.join("oras-auth.json"))
            .args(["--username", &self.username, "--password", &self.password, "--export-manifest"])
            .arg(&exported)
            .arg(format!("{}/{repository}:{tag}", self.host))
            .args(files)
            .output()
            .await
            .with_context(|| format!("running {}", oras.display()))?;
        ensure!(
            output.status.success(),
            "oras push failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let bytes = std::fs::read(&exported)?;
        Ok(Pushed {
            digest: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
            manifest: serde_json::from_slice(&bytes)?,
        })
    }

    /// Flips the first byte of the blob `digest` in the registry's storage (same size,
    /// another sha256): what a tampered or rotting disk under a registry serves.
    pub fn tamper_blob(&self, digest: &str) -> anyhow::Result<()> {
        let path = self.blob_file(digest)?;
        let mut bytes = std::fs::read(&path)?;
        ensure!(!bytes.is_empty(), "{digest} is empty");
        bytes[0] ^= 0xff;
        std::fs::write(&path, bytes)?;
        Ok(())
    }

    /// Replaces the stored content of manifest `digest` with `content`, which the registry
    /// then serves under the old digest.
    pub fn replace_blob(&self, digest: &str, content: &[u8]) -> anyhow::Result<()> {
        Ok(std::fs::write(self.blob_file(digest)?, content)?)
    }

    fn blob_file(&self, digest: &str) -> anyhow::Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
        let path = self.dir.join(format!("store/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
        ensure!(path.is_file(), "{} is not in the registry's storage", path.display());
        Ok(path)
    }

    /// The token requests so far: (with valid credentials, scopes asked).
    pub fn token_requests(&self) -> Vec<(bool, Vec<String>)> {
        self.tokens.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The registry's log, for failing tests.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }
}

impl TokenService {
    fn new(username: &str, password: &str) -> anyhow::Result<TokenService> {
        let signer = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, ISSUER);
        let cert = params.self_signed(&signer)?;
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signer.serialize_der(),
            &rng,
        )
        .map_err(|e| anyhow::anyhow!("token signing key: {e}"))?;
        Ok(TokenService {
            username: username.into(),
            password: password.into(),
            key,
            cert_der: cert.der().to_vec(),
            requests: Mutex::default(),
        })
    }

    /// A JWT as Distribution's token auth verifies it: ES256, `x5c` chaining to its
    /// `rootcertbundle`, its issuer and service as audience, and `access` per scope.
    fn token(&self, subject: &str, access: Vec<Value>) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let header = json!({ "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)] });
        let claims = json!({
            "iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": hex::encode(&Sha256::digest(format!("{now}-{subject}-{access:?}").as_bytes())[..16]),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}

/// `GET /token?service=…&scope=repository:<name>:<actions>` (the scope repeated for several).
async fn issue_token(
    State(tokens): State<Arc<TokenService>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let scopes: Vec<String> = query.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.clone()).collect();
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let valid = credentials.as_deref() == Some(&format!("{}:{}", tokens.username, tokens.password));
    tokens.requests.lock().unwrap_or_else(|p| p.into_inner()).push((valid, scopes.clone()));
    if credentials.is_some() && !valid {
        let body = json!({ "errors": [{ "code": "UNAUTHORIZED", "message": "invalid username or password" }] });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    // Anonymous: a token that grants nothing (the registry then refuses the pull).
    let access: Vec<Value> = if valid {
        scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
            })
            .collect()
    } else {
        Vec::new()
    };
    let subject = if valid { tokens.username.as_str() } else { "anonymous" };
    match tokens.token(subject, access) {
        Ok(token) => axum::Json(json!({ "token": token, "access_token": token, "expires_in": 300 })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A port nobody listens on now (the registry binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}
