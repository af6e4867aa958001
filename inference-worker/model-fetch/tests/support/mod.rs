//! Test support: a real HTTP file server on 127.0.0.1 with Range support and injected
//! faults, plus helpers that write a model's files and its manifest.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use taimatsu_core::{ManifestEntry, ModelManifest, manifest_digest};
use taimatsu_model_fetch::{FetchOptions, FetchReport, SourceEnv};

/// A fault the server injects for one path.
#[derive(Clone, Debug)]
pub enum Fault {
    /// The first response sends this many body bytes, then drops the connection.
    CutAfter(usize),
    /// Every response serves the file with its first byte flipped.
    Corrupt,
    /// Every response has this status and no body.
    Status(u16),
    /// The first response has this status; later ones serve the file.
    StatusOnce(u16),
    /// Range headers are ignored: always 200 with the whole file.
    IgnoreRange,
    /// Every response redirects (302) to this URL.
    Redirect(String),
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Decoded path, without the leading `/`.
    pub path: String,
    /// Raw request path, as sent.
    pub raw_path: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct ServerState {
    root: PathBuf,
    faults: Mutex<HashMap<String, Fault>>,
    log: Mutex<Vec<Logged>>,
}

/// Serves the files under `root` at `http://127.0.0.1:<port>/<path>`.
pub struct FileServer {
    pub addr: SocketAddr,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    pub async fn start(root: &Path) -> FileServer {
        let state = Arc::new(ServerState { root: root.to_owned(), ..Default::default() });
        let app = axum::Router::new().fallback(serve).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FileServer { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.state.faults.lock().unwrap().insert(path.to_owned(), fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn requests_for(&self, path: &str) -> Vec<Logged> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }
}

async fn serve(State(state): State<Arc<ServerState>>, request: Request) -> Response {
    let raw_path = request.uri().path().to_owned();
    let path = percent_decode(raw_path.trim_start_matches('/'));
    state.log.lock().unwrap().push(Logged {
        path: path.clone(),
        raw_path: raw_path.clone(),
        headers: request.headers().clone(),
    });
    let fault = {
        let mut faults = state.faults.lock().unwrap();
        let fault = faults.get(&path).cloned();
        // One-shot faults apply to the first response only.
        if matches!(fault, Some(Fault::CutAfter(_) | Fault::StatusOnce(_))) {
            faults.remove(&path);
        }
        fault
    };
    match &fault {
        Some(Fault::Status(code) | Fault::StatusOnce(code)) => {
            return StatusCode::from_u16(*code).unwrap().into_response();
        }
        Some(Fault::Redirect(to)) => return (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response(),
        _ => {}
    }
    let Ok(mut data) = std::fs::read(state.root.join(&path)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if matches!(fault, Some(Fault::Corrupt)) && !data.is_empty() {
        data[0] ^= 0xff;
    }
    let len = data.len();
    let range = request.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
    let (status, start) = match range {
        Some(_) if matches!(fault, Some(Fault::IgnoreRange)) => (StatusCode::OK, 0),
        Some(start) if start >= len => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            response.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{len}").parse().unwrap());
            return response;
        }
        Some(start) => (StatusCode::PARTIAL_CONTENT, start),
        None => (StatusCode::OK, 0),
    };
    let body = Bytes::from(data).slice(start..);
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1).parse().unwrap());
    }
    let body = match fault {
        Some(Fault::CutAfter(n)) => {
            let sent = body.slice(..n.min(body.len()));
            let stream = futures::stream::unfold(0, move |step| {
                let sent = sent.clone();
                async move {
                    match step {
                        0 => Some((Ok::<Bytes, std::io::Error>(sent), 1)),
                        1 => {
                            // Let the bytes reach the client before the connection drops.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Some((Err(std::io::Error::other("injected cut")), 2))
                        }
                        _ => None,
                    }
                }
            });
            Body::from_stream(stream)
        }
        _ => Body::from(body),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `bytes=<start>-` (the only form the fetcher sends).
fn parse_range(value: &str) -> Option<usize> {
    value.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Deterministic content of `len` bytes that differs per `seed`.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 32) as u8 ^ seed).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A model: its files written under `source_dir/<prefix>`, and its manifest written to disk.
pub struct Model {
    pub files: Vec<(String, Vec<u8>)>,
    pub manifest: ModelManifest,
    pub manifest_path: PathBuf,
}

impl Model {
    /// Writes each file under `source_dir/prefix` and the manifest next to `source_dir`.
    pub fn write(work: &Path, prefix: &str, files: &[(&str, Vec<u8>)]) -> Model {
        let root = work.join("source").join(prefix);
        let mut entries = Vec::new();
        for (path, data) in files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, data).unwrap();
            entries.push(ManifestEntry { path: (*path).into(), size: data.len() as u64, sha256: sha256_hex(data) });
        }
        let manifest = ModelManifest {
            model: "test-model".into(),
            source: "test".into(),
            format: "safetensors".into(),
            digest: manifest_digest(&entries),
            files: entries,
        };
        let manifest_path = work.join("manifest.json");
        std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        Model { files: files.iter().map(|(p, d)| ((*p).into(), d.clone())).collect(), manifest, manifest_path }
    }

    /// Three files: a small config, a nested shard with a space in its name, and a 1 MB shard.
    pub fn standard(work: &Path, prefix: &str) -> Model {
        Model::write(
            work,
            prefix,
            &[
                ("config.json", b"{\"architectures\":[\"LlamaForCausalLM\"]}".to_vec()),
                ("weights/model 00001.safetensors", content(300_000, 1)),
                ("weights/model-00002.safetensors", content(1_000_000, 2)),
            ],
        )
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, d)| d.len() as u64).sum()
    }

    pub fn options(&self, source: String, dest: &Path) -> FetchOptions {
        FetchOptions {
            source,
            manifest: self.manifest_path.clone(),
            dest: dest.to_owned(),
            ca_bundle: None,
            parallel: 2,
            hf_mirror: None,
            allow_branch_revision: false,
        }
    }

    /// Every file is in `dest` with its content, and no partial download is left.
    pub fn assert_fetched(&self, dest: &Path, report: &FetchReport) {
        for (path, data) in &self.files {
            assert_eq!(&std::fs::read(dest.join(path)).unwrap(), data, "{path}");
        }
        assert!(!dest.join(".taimatsu/partial").exists(), "partial downloads left behind");
        assert_eq!(report.digest, self.manifest.digest);
        assert_eq!(report.files, self.files.len());
        assert_eq!(report.bytes, self.total_bytes());
    }
}

/// Logs of the fetcher, shown for failing tests.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

pub fn no_env() -> SourceEnv {
    SourceEnv::default()
}
