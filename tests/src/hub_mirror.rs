//! An in-house Hugging Face Hub mirror on loopback: the Hub's own HTTP protocol (what
//! Artifactory's and Nexus's Hugging Face repositories and olah serve) over the real model
//! files, so `hf://` sources are tested against the protocol rather than a stand-in.
//!
//! What it serves, as huggingface.co does:
//! - `GET|HEAD /{org}/{name}/resolve/{revision}/{path}`: `X-Repo-Commit` with the commit the
//!   revision resolves to; small (git) files answered directly with their git blob id as
//!   `ETag`; LFS files (weights) answered `302` to a content-addressed storage path on the
//!   same host (the Hub's CDN redirect), with `X-Linked-Etag` (their sha256) and
//!   `X-Linked-Size`. The storage answer carries `X-Repo-Commit` and the sha256 as `ETag`
//!   too: unlike the Hub's CDN it is on the mirror's host, so the Hub's client follows the
//!   redirect even for a HEAD and reads the file's metadata there.
//! - `GET /api/models/{org}/{name}/revision/{revision}`: `sha` and `siblings`, with
//!   `lfs: {sha256, size}` for LFS files; `GET /api/models/{org}/{name}/tree/{revision}`:
//!   the files with `oid`, `size` and `lfs: {oid, size}` (what `snapshot_download` lists).
//! - Unknown repositories, revisions and files: `404` with the Hub's `X-Error-Code`
//!   (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) and `X-Error-Message`.
//!
//! Each repository has one commit, which `main` resolves to. Faults a real mirror can show
//! are switched on per test: a required token, storage redirected to a foreign host, a
//! tampered file.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// SmolLM2 (the quickstart's GGUF) as a Hub repository.
pub const SMOLLM2: HubRepoName = HubRepoName {
    id: "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
    commit: "6a1b2c3d4e5f60718293a4b5c6d7e8f901234567",
    dir: "smollm2",
};
/// all-MiniLM-L6-v2 (the embeddings example) as a Hub repository.
pub const MINILM: HubRepoName = HubRepoName {
    id: "sentence-transformers/all-MiniLM-L6-v2",
    commit: "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
    dir: "minilm",
};

/// A repository the mirror holds: its id, its one commit, its directory under the models dir.
#[derive(Clone, Copy, Debug)]
pub struct HubRepoName {
    pub id: &'static str,
    pub commit: &'static str,
    pub dir: &'static str,
}

impl HubRepoName {
    /// `hf://<id>@<commit>`: the pinned source of this repository.
    pub fn source(&self) -> String {
        format!("hf://{}@{}", self.id, self.commit)
    }
}

/// A repository to serve: `dir`'s files at `commit`.
#[derive(Clone, Debug)]
pub struct HubRepo {
    pub id: String,
    pub commit: String,
    pub dir: PathBuf,
}

/// Files the Hub stores in LFS: the patterns of the `.gitattributes` a new Hub repository
/// starts with that model files match (weights), everything else is a plain git file.
const LFS_EXTENSIONS: [&str; 7] = ["safetensors", "gguf", "bin", "onnx", "pt", "h5", "msgpack"];

struct IndexedFile {
    path: String,
    size: u64,
    sha256: String,
    /// The git blob id (`sha1("blob <len>\0" + content)`): the ETag of a git file.
    git_oid: String,
    lfs: bool,
    on_disk: PathBuf,
}

struct IndexedRepo {
    id: String,
    commit: String,
    files: Vec<IndexedFile>,
}

/// Faults switched on by tests.
#[derive(Default)]
struct Faults {
    /// Requests must carry `Authorization: Bearer <token>`.
    token: Option<String>,
    /// LFS redirects go to this base URL instead of the mirror's own storage.
    foreign_storage: Option<String>,
    /// (repository, path) served with their first byte flipped.
    tampered: HashSet<(String, String)>,
    /// `X-Repo-Commit` names this commit instead of the repository's.
    reported_commit: Option<String>,
}

struct Shared {
    repos: Vec<IndexedRepo>,
    /// The mirror's own base URL, known once it listens.
    url: OnceLock<String>,
    faults: Mutex<Faults>,
}

/// A running mirror; it stops when dropped.
pub struct HubMirror {
    /// The endpoint, e.g. `https://127.0.0.1:41000` (what `HF_ENDPOINT` is set to).
    pub url: String,
    /// PEM of the CA that signs its certificate; `None` when it serves plain http.
    pub ca_pem: Option<String>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HubMirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the mirror listens.
#[derive(Clone, Copy, Debug)]
pub enum Listen {
    /// Plain http on 127.0.0.1.
    PlainLoopback,
    /// https on 127.0.0.1, with a private CA.
    TlsLoopback,
    /// https on every address, the URL and the certificate naming this one (pods on a
    /// real node reach the host at its bridge address).
    TlsAt(IpAddr),
}

impl HubMirror {
    /// [`SMOLLM2`] and [`MINILM`] from `models_dir` (`hack/models.sh`'s output).
    pub async fn models(models_dir: &Path, listen: Listen) -> anyhow::Result<HubMirror> {
        let repos = [SMOLLM2, MINILM].map(|r| HubRepo {
            id: r.id.into(),
            commit: r.commit.into(),
            dir: models_dir.join(r.dir),
        });
        HubMirror::serve(repos.to_vec(), listen).await
    }

    /// Serves `repos`; every file is hashed first, as the Hub knows its LFS files' sha256.
    pub async fn serve(repos: Vec<HubRepo>, listen: Listen) -> anyhow::Result<HubMirror> {
        let repos =
            tokio::task::spawn_blocking(move || repos.iter().map(index).collect::<anyhow::Result<Vec<_>>>()).await??;
        let shared = Arc::new(Shared { repos, url: OnceLock::new(), faults: Mutex::default() });
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{revision}", get(model_info))
            .route("/{org}/{name}/resolve/{revision}/{*path}", get(resolve).head(resolve))
            .route("/api/models/{org}/{name}/tree/{revision}", get(tree))
            .route("/lfs-storage/{org}/{name}/{commit}/{sha256}", get(storage).head(storage))
            .with_state(shared.clone());
        let (url, ca_pem, task) = match listen {
            Listen::PlainLoopback => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                let url = format!("http://{}", listener.local_addr()?);
                let task = tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                });
                (url, None, task)
            }
            Listen::TlsLoopback => {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                let url = format!("https://{}", listener.local_addr()?);
                let (ca, config) = crate::tls::loopback_server_config()?;
                (url, Some(ca), crate::tls::serve(listener, config, app))
            }
            Listen::TlsAt(ip) => {
                let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
                let url = format!("https://{}", std::net::SocketAddr::new(ip, listener.local_addr()?.port()));
                let (ca, config) = crate::tls::server_config(&[ip.to_string()])?;
                (url, Some(ca), crate::tls::serve(listener, config, app))
            }
        };
        let _ = shared.url.set(url.clone());
        Ok(HubMirror { url, ca_pem, shared, task })
    }

    /// The Model of the example file `example` (a path under the repository root) with its
    /// source set to `repo` pinned at its commit, fetched from this mirror (the operator's
    /// `--hf-mirror`), and the Secret with this mirror's CA it names, created in `namespace`.
    pub async fn example_model(
        &self,
        client: &Client,
        namespace: &str,
        example: &str,
        repo: HubRepoName,
    ) -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(crate::repo_root().join(example))?;
        let mut model = serde_yaml::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|doc| doc["kind"] == "Model")
            .ok_or_else(|| anyhow::anyhow!("{example} has no Model"))?;
        model["spec"]["source"]["uri"] = json!(repo.source());
        let ca = &model["spec"]["source"]["caBundleRef"];
        let (secret, key) = (ca["name"].as_str().unwrap_or_default(), ca["key"].as_str().unwrap_or_default());
        anyhow::ensure!(!secret.is_empty() && !key.is_empty(), "{example}: spec.source.caBundleRef is missing");
        let pem = self.ca_pem.as_deref().ok_or_else(|| anyhow::anyhow!("the mirror serves plain http"))?;
        let object =
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": secret }, "stringData": { key: pem } });
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
        secrets.patch(secret, &PatchParams::apply(crate::apply::FIELD_MANAGER).force(), &Patch::Apply(object)).await?;
        Ok(model)
    }

    /// Every request must carry `Authorization: Bearer <token>` (401 without, 403 with another).
    pub fn require_token(&self, token: &str) {
        self.faults().token = Some(token.to_owned());
    }

    /// LFS files are redirected to `base` (another host) instead of the mirror's storage.
    pub fn redirect_storage_to(&self, base: &str) {
        self.faults().foreign_storage = Some(base.to_owned());
    }

    /// `path` of `repo` is served with its first byte flipped (same size, other sha256);
    /// the model API still reports the original hash, as a compromised mirror would.
    pub fn tamper(&self, repo: &str, path: &str) {
        self.faults().tampered.insert((repo.to_owned(), path.to_owned()));
    }

    /// `X-Repo-Commit` names `commit`, whatever the revision asked for: a mirror that serves
    /// another history than it claims to.
    pub fn report_commit(&self, commit: &str) {
        self.faults().reported_commit = Some(commit.to_owned());
    }

    /// Serves every file as it is again.
    pub fn clear_faults(&self) {
        *self.faults() = Faults::default();
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.shared.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn index(repo: &HubRepo) -> anyhow::Result<IndexedRepo> {
    let mut paths = Vec::new();
    walk(&repo.dir, &repo.dir, &mut paths)?;
    paths.sort();
    let files = paths
        .into_iter()
        .map(|path| {
            let on_disk = repo.dir.join(&path);
            let bytes = std::fs::read(&on_disk)?;
            let mut git = Sha1::new();
            git.update(format!("blob {}\0", bytes.len()).as_bytes());
            git.update(&bytes);
            let extension = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            Ok(IndexedFile {
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
                git_oid: hex::encode(git.finalize()),
                lfs: LFS_EXTENSIONS.contains(&extension),
                on_disk,
                path,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!files.is_empty(), "{}: no files to serve (run hack/models.sh)", repo.dir.display());
    Ok(IndexedRepo { id: repo.id.clone(), commit: repo.commit.clone(), files })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else {
            let relative = path.strip_prefix(root)?.to_string_lossy().replace('\\', "/");
            out.push(relative);
        }
    }
    Ok(())
}

/// A Hub error: the status, `X-Error-Code` and `X-Error-Message`, and the JSON body the Hub sends.
fn hub_error(status: StatusCode, code: Option<&str>, message: &str) -> Response {
    let mut response = (status, axum::Json(json!({ "error": message }))).into_response();
    let headers = response.headers_mut();
    if let Some(code) = code {
        headers.insert("x-error-code", HeaderValue::from_str(code).expect("ascii code"));
    }
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert("x-error-message", value);
    }
    response
}

impl Shared {
    /// The repository `revision` of which is asked for (and whether LFS redirects go to a
    /// foreign host), or the Hub's error for them.
    fn lookup(
        &self,
        headers: &HeaderMap,
        org: &str,
        name: &str,
        revision: &str,
    ) -> Result<(&IndexedRepo, bool), Box<Response>> {
        let faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = &faults.token {
            match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
                None => {
                    return Err(Box::new(hub_error(StatusCode::UNAUTHORIZED, None, "Invalid username or password.")));
                }
                Some(auth) if auth != format!("Bearer {token}") => {
                    return Err(Box::new(hub_error(
                        StatusCode::FORBIDDEN,
                        None,
                        "Access to this resource is forbidden.",
                    )));
                }
                Some(_) => {}
            }
        }
        let id = format!("{org}/{name}");
        let Some(repo) = self.repos.iter().find(|r| r.id == id) else {
            return Err(Box::new(hub_error(StatusCode::NOT_FOUND, Some("RepoNotFound"), "Repository not found")));
        };
        if revision != "main" && revision != repo.commit {
            let message = format!("Invalid rev id: {revision}");
            return Err(Box::new(hub_error(StatusCode::NOT_FOUND, Some("RevisionNotFound"), &message)));
        }
        Ok((repo, faults.foreign_storage.is_some()))
    }

    fn bytes(&self, repo: &str, file: &IndexedFile) -> std::io::Result<Vec<u8>> {
        let mut bytes = std::fs::read(&file.on_disk)?;
        let tampered = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tampered
            .contains(&(repo.to_owned(), file.path.clone()));
        if tampered && let Some(first) = bytes.first_mut() {
            *first ^= 0xff;
        }
        Ok(bytes)
    }
}

async fn model_info(
    State(shared): State<Arc<Shared>>,
    UrlPath((org, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = match shared.lookup(&headers, &org, &name, &revision) {
        Ok((repo, _)) => repo,
        Err(response) => return *response,
    };
    let siblings: Vec<Value> = repo
        .files
        .iter()
        .map(|f| {
            let mut sibling = json!({ "rfilename": f.path, "size": f.size, "blobId": f.git_oid });
            if f.lfs {
                sibling["lfs"] = json!({ "sha256": f.sha256, "size": f.size, "pointerSize": 134 });
            }
            sibling
        })
        .collect();
    let author = repo.id.split_once('/').map_or("", |(org, _)| org);
    axum::Json(json!({
        "_id": &repo.commit[..24], "id": repo.id, "modelId": repo.id, "author": author, "sha": repo.commit,
        "lastModified": "2024-11-01T00:00:00.000Z", "createdAt": "2024-10-01T00:00:00.000Z",
        "private": false, "disabled": false, "gated": false, "downloads": 0, "likes": 0,
        "tags": [], "siblings": siblings,
    }))
    .into_response()
}

/// The repository's files at a revision, as `GET /api/models/{repo}/tree/{revision}?recursive=true`
/// lists them (directories are left out: clients list files).
async fn tree(
    State(shared): State<Arc<Shared>>,
    UrlPath((org, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = match shared.lookup(&headers, &org, &name, &revision) {
        Ok((repo, _)) => repo,
        Err(response) => return *response,
    };
    let entries: Vec<Value> = repo
        .files
        .iter()
        .map(|f| {
            let mut entry = json!({ "type": "file", "oid": f.git_oid, "size": f.size, "path": f.path });
            if f.lfs {
                entry["lfs"] = json!({ "oid": f.sha256, "size": f.size, "pointerSize": 134 });
            }
            entry
        })
        .collect();
    axum::Json(entries).into_response()
}

async fn resolve(
    State(shared): State<Arc<Shared>>,
    UrlPath((org, name, revision, path)): UrlPath<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (repo, foreign) = match shared.lookup(&headers, &org, &name, &revision) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let Some(file) = repo.files.iter().find(|f| f.path == path) else {
        return hub_error(StatusCode::NOT_FOUND, Some("EntryNotFound"), "Entry not found");
    };
    let reported = shared.faults.lock().unwrap_or_else(|p| p.into_inner()).reported_commit.clone();
    let mut out = HeaderMap::new();
    out.insert("x-repo-commit", HeaderValue::from_str(reported.as_ref().unwrap_or(&repo.commit)).expect("hex"));
    if file.lfs {
        let storage = if foreign {
            shared.faults.lock().unwrap_or_else(|p| p.into_inner()).foreign_storage.clone().unwrap_or_default()
        } else {
            shared.url.get().cloned().unwrap_or_default()
        };
        let location = format!("{storage}/lfs-storage/{}/{}/{}", repo.id, repo.commit, file.sha256);
        out.insert(header::LOCATION, HeaderValue::from_str(&location).expect("url"));
        out.insert(header::ETAG, quoted(&file.sha256));
        out.insert("x-linked-etag", quoted(&file.sha256));
        out.insert("x-linked-size", HeaderValue::from(file.size));
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        return (StatusCode::FOUND, out).into_response();
    }
    out.insert(header::ETAG, quoted(&file.git_oid));
    file_response(&shared, &repo.id, file, &method, out)
}

/// The storage the LFS redirects point to: no token needed (as a signed CDN URL).
async fn storage(
    State(shared): State<Arc<Shared>>,
    UrlPath((org, name, commit, sha256)): UrlPath<(String, String, String, String)>,
    method: Method,
) -> Response {
    let id = format!("{org}/{name}");
    let repo = shared.repos.iter().find(|r| r.id == id && r.commit == commit);
    let Some((repo, file)) = repo.and_then(|r| r.files.iter().find(|f| f.lfs && f.sha256 == sha256).map(|f| (r, f)))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut out = HeaderMap::new();
    out.insert("x-repo-commit", HeaderValue::from_str(&repo.commit).expect("hex"));
    out.insert(header::ETAG, quoted(&file.sha256));
    file_response(&shared, &repo.id, file, &method, out)
}

/// The file's bytes (or, for HEAD, its length alone) with `headers`.
fn file_response(shared: &Shared, repo: &str, file: &IndexedFile, method: &Method, mut headers: HeaderMap) -> Response {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size));
    if method == Method::HEAD {
        return (StatusCode::OK, headers, Body::empty()).into_response();
    }
    match shared.bytes(repo, file) {
        Ok(bytes) => (StatusCode::OK, headers, bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn quoted(value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{value}\"")).expect("hex")
}
