//! The control-plane audit trail: one hash chain (`taimatsu_core::audit_chain`) of every
//! decision the operator takes — revision created, rollout started, succeeded or failed,
//! rollback automatic or manual, history pruned.
//!
//! One chain, whichever replica leads: its head (sequence, hash and the last sealed line)
//! lives in a ConfigMap in the operator's namespace and every append is a compare-and-swap
//! on it (resourceVersion). A record exists once that swap succeeds; only then is it
//! written to this replica's file and to stdout. So two replicas can never seal two
//! different records with one sequence number (the chain cannot fork), a crash between the
//! swap and the file write is repaired from the head's copy of the line on the next append,
//! and a torn last line is dropped (it was never acknowledged). Each replica that has led
//! keeps its own file, a segment of the chain; `kubectl taimatsu audit verify` merges them.
//!
//! Exactly once: a decision is audited before it is acted on, so a crash in between makes
//! the retry audit it again. A record that carries a `decision` id is therefore appended
//! only if the head's list of recent decision ids (swapped together with the head) does
//! not hold it yet.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use taimatsu_core::audit_chain::{ChainState, GENESIS};
use tokio::sync::Mutex;
use tracing::warn;

/// Where the trail goes.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// JSON-lines file (on a persistent volume in production); none: stdout only.
    pub file: Option<PathBuf>,
    /// Also print each record to stdout, for the cluster's log pipeline.
    pub stdout: bool,
    /// Namespace and name of the ConfigMap holding the chain's head.
    pub head_namespace: String,
    pub head_name: String,
    /// This replica, recorded in every record.
    pub identity: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit head ConfigMap: {0}")]
    Head(#[from] kube::Error),
    #[error("audit file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("audit file {path} does not verify, refusing to extend a broken chain: {problem}")]
    Broken { path: String, problem: String },
    #[error("audit head ConfigMap {0} is malformed: {1}")]
    MalformedHead(String, String),
    #[error("the audit head kept changing under this replica (another leader?)")]
    Contended,
    #[error(
        "audit file {path} ends at record {file_seq} but the chain's head in the API server is at record {head_seq}: the head was reset (an etcd restore, or a new cluster); appending would fork the chain. Keep the file as evidence, move it aside, and restart the operator to start a new chain"
    )]
    Diverged { path: String, file_seq: u64, head_seq: u64 },
}

pub struct ControlPlaneAudit {
    client: Client,
    config: AuditConfig,
    /// The file and where its chain stands; one append at a time.
    file: Mutex<Option<(std::fs::File, ChainState)>>,
}

/// The head as stored: the last sealed line, from which sequence and hash are read.
struct Head {
    state: ChainState,
    line: Option<String>,
    /// Decision ids of the latest records, oldest first.
    recent: Vec<String>,
    resource_version: Option<String>,
}

const LINE_KEY: &str = "last-record";
const RECENT_KEY: &str = "recent-decisions";
/// Decision ids remembered by the head: far more than one reconcile's retries can need.
const RECENT_LIMIT: usize = 512;

impl ControlPlaneAudit {
    /// Opens (creating) the file and checks it, dropping a torn last line.
    pub fn open(client: Client, config: AuditConfig) -> Result<Self, AuditError> {
        let file = match &config.file {
            Some(path) => Some(open_segment(path)?),
            None => None,
        };
        Ok(ControlPlaneAudit { client, config, file: Mutex::new(file) })
    }

    /// Seals `record` (an object; `time`, `operator` are added) as the next link of the
    /// chain and writes it to every sink, and returns its sequence number. A record whose
    /// `decision` id is already in the chain is not appended again (the head's sequence
    /// number is returned). An error means the decision was not recorded: callers fail the
    /// reconcile and retry rather than act unaudited.
    pub async fn append(&self, mut record: Value) -> Result<u64, AuditError> {
        let decision = record.get("decision").and_then(Value::as_str).map(str::to_owned);
        if let Some(obj) = record.as_object_mut() {
            obj.insert("time".into(), Value::String(now_rfc3339()));
            obj.insert("operator".into(), Value::String(self.config.identity.clone()));
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.head_namespace);
        let mut file = self.file.lock().await;
        for _ in 0..5 {
            let head = self.read_head(&api).await?;
            // Every record reaches the head before any file, so a file ahead of the head (or
            // level with it on another record) belongs to a chain the head no longer knows.
            if let Some((_, file_state)) = file.as_ref()
                && file_state.last_seq > 0
                && (file_state.last_seq > head.state.last_seq
                    || (file_state.last_seq == head.state.last_seq && file_state.last_hash != head.state.last_hash))
            {
                return Err(AuditError::Diverged {
                    path: self.config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    file_seq: file_state.last_seq,
                    head_seq: head.state.last_seq,
                });
            }
            if let Some(d) = &decision
                && head.recent.contains(d)
            {
                return Ok(head.state.last_seq);
            }
            let mut state = head.state.clone();
            let line = state.seal(&record).map_err(|e| AuditError::MalformedHead("record".into(), e.to_string()))?;
            let mut recent = head.recent.clone();
            recent.extend(decision.clone());
            let excess = recent.len().saturating_sub(RECENT_LIMIT);
            recent.drain(..excess);
            let map = self.head_map(&line, &recent, head.resource_version.clone());
            let swapped = match head.resource_version {
                Some(_) => api.replace(&self.config.head_name, &PostParams::default(), &map).await,
                None => api.create(&PostParams::default(), &map).await,
            };
            match swapped {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some((f, file_state)) = file.as_mut() {
                let path = self.config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                let io = |source| AuditError::File { path: path.clone(), source };
                // A record sealed by the previous leader (or by this replica just before a
                // crash) that this file lacks: copy it from the head first.
                if let Some(previous) = head.line.as_deref()
                    && file_state.last_seq + 1 == head.state.last_seq
                    && previous_links_to(previous, &file_state.last_hash)
                {
                    f.write_all(previous.as_bytes()).map_err(io)?;
                }
                f.write_all(line.as_bytes()).and_then(|()| f.sync_data()).map_err(io)?;
                *file_state = state.clone();
            }
            if self.config.stdout {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
            }
            tracing::info!(target: taimatsu_telemetry::EXPORTED_LOG_TARGET, { audit.record = line.trim_end() }, "control-plane audit record");
            return Ok(state.last_seq);
        }
        Err(AuditError::Contended)
    }

    async fn read_head(&self, api: &Api<ConfigMap>) -> Result<Head, AuditError> {
        let Some(map) = api.get_opt(&self.config.head_name).await? else {
            return Ok(Head { state: ChainState::default(), line: None, recent: Vec::new(), resource_version: None });
        };
        let malformed = |why: String| AuditError::MalformedHead(self.config.head_name.clone(), why);
        let line = map.data.as_ref().and_then(|d| d.get(LINE_KEY)).cloned();
        let state = match &line {
            None => ChainState::default(),
            Some(l) => {
                let v: Value = serde_json::from_str(l).map_err(|e| malformed(e.to_string()))?;
                let seq = v["seq"].as_u64().ok_or_else(|| malformed("no seq".into()))?;
                let hash = v["hash"].as_str().ok_or_else(|| malformed("no hash".into()))?;
                ChainState { last_seq: seq, last_hash: hash.to_owned() }
            }
        };
        let recent = map
            .data
            .as_ref()
            .and_then(|d| d.get(RECENT_KEY))
            .map(|r| r.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Head { state, line, recent, resource_version: map.metadata.resource_version })
    }

    fn head_map(&self, line: &str, recent: &[String], resource_version: Option<String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.config.head_name.clone()),
                namespace: Some(self.config.head_namespace.clone()),
                resource_version,
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".to_owned(),
                    "taimatsu-control-plane-audit".to_owned(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (LINE_KEY.to_owned(), line.to_owned()),
                (RECENT_KEY.to_owned(), recent.join("\n")),
            ])),
            ..Default::default()
        }
    }
}

fn previous_links_to(line: &str, hash: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["prev"].as_str() == Some(hash))
}

/// Opens this replica's segment for appending, after checking it and cutting a torn tail.
fn open_segment(path: &std::path::Path) -> Result<(std::fs::File, ChainState), AuditError> {
    let shown = path.display().to_string();
    let io = |source| AuditError::File { path: shown.clone(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let existing = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    // A segment may start anywhere in the chain (a later leader's file starts mid-chain),
    // so it is checked link by link from its own first record.
    let (state, keep) =
        resume_segment(&existing).map_err(|problem| AuditError::Broken { path: shown.clone(), problem })?;
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    if keep < existing.len() as u64 {
        warn!(path = %shown, "dropping a torn last audit line left by a crash");
        file.set_len(keep).map_err(io)?;
    }
    Ok((file, state))
}

/// Where a segment's chain stands and the length of its complete lines.
fn resume_segment(bytes: &[u8]) -> Result<(ChainState, u64), String> {
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let Some(first) = bytes[..complete].split(|b| *b == b'\n').next().filter(|l| !l.is_empty()) else {
        return Ok((ChainState::default(), complete as u64));
    };
    let v: Value = serde_json::from_slice(first).map_err(|e| format!("line 1: {e}"))?;
    let start = ChainState {
        last_seq: v["seq"].as_u64().unwrap_or(1).saturating_sub(1),
        last_hash: v["prev"].as_str().unwrap_or(GENESIS).to_owned(),
    };
    let state = taimatsu_core::audit_chain::verify_from(&start, &bytes[..complete]).map_err(|e| e.to_string())?;
    Ok((state, complete as u64))
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
