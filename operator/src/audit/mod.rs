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
//! The head is not trusted: whoever can write the ConfigMap could otherwise plant lines or
//! edit the head's sequence number and hash. Its lines are verified as they are read (every
//! hash recomputed, `head.rs`), then against the chain this replica verified itself (its
//! file, and the head it saw last): a head that rewrites a record this replica knows, or
//! stands behind it, is refused, and lines are copied into the file only when they continue
//! the file's chain link by link. A refused head stops this replica's audit, loudly (an
//! error log, reconcile errors of category `audit-head-tampered`, admissions denied with
//! the reason): acting unaudited, or sealing on a forged state, would be worse. The way
//! back is in docs/security.md.
//!
//! Exactly once: a decision is audited before it is acted on, so a crash in between makes
//! the retry audit it again. A record that carries a `decision` id is therefore appended
//! only if its record is already in the chain this replica verified (`decisions.rs`): its
//! file, its own swaps, the head lines it checked. The head's word alone (a list of ids)
//! never suffices.
//!
//! Group commit: records appended while a swap is in flight wait together and are sealed
//! by the next swap, up to `MAX_BATCH` at a time, so a thousand concurrent reconciles cost
//! tens of head swaps rather than a thousand serial ones. The head keeps every line of the
//! last swap (`last-batch`) so a crash gap of a whole batch can be repaired. The replica
//! also remembers the head as it last swapped it: a stale copy costs one conflict and a
//! re-read, never a fork, since the swap is conditional on its resourceVersion.
//!
//! Who asked: the head also keeps the requesting user of the latest ModelDeployment
//! generations the admission webhook recorded (`recent-requesters`), so the leader can name
//! the user on a revision even when another replica's webhook admitted the change.

mod decisions;
mod head;
mod segment;

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::Value;
use taimatsu_core::audit_chain::ChainState;
use taimatsu_core::audit_tail::Contradiction;
use tokio::sync::{Mutex, oneshot};

use self::decisions::Decisions;
use self::head::{Head, REQUESTERS_LIMIT, decision_digest, requester_line};
use self::segment::open_segment;

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
    #[error(
        "audit head ConfigMap {name} was altered outside the operator ({problem}); refusing to extend it: compare it with the replicas' files (kubectl taimatsu audit verify --against-cluster) and restore it from the leader's file (docs/security.md)"
    )]
    TamperedHead { name: String, problem: String },
    #[error("the audit head kept changing under this replica (another leader?)")]
    Contended,
    #[error(
        "audit chain of this replica ({path}) reaches record {file_seq} but the chain's head in the API server is at record {head_seq}: the head was reset (an etcd restore, or a new cluster); appending would fork the chain. Keep the file as evidence, move it aside, and restart the operator to start a new chain"
    )]
    Diverged { path: String, file_seq: u64, head_seq: u64 },
    /// The swap that was to seal this record together with others failed.
    #[error("{0}")]
    Batch(String),
}

pub struct ControlPlaneAudit {
    client: Client,
    config: AuditConfig,
    /// Records waiting for the next swap, oldest first.
    pending: std::sync::Mutex<Vec<Pending>>,
    /// One swap at a time: this replica's file and the head as it last swapped it.
    committer: Mutex<Committer>,
}

/// Records appended together: sealed in one swap, consecutively.
struct Pending {
    records: Vec<(Value, Option<String>)>,
    sealed: oneshot::Sender<Result<Vec<u64>, AuditError>>,
}

struct Committer {
    file: Option<(std::fs::File, ChainState)>,
    /// The head this replica last swapped in; `None`: read it from the API server.
    head: Option<Head>,
    /// The last head this replica verified: a later head must continue it.
    known: Option<ChainState>,
    /// Decisions whose records are in the chain this replica verified.
    decisions: Decisions,
}

/// Records sealed by one swap: keeps the head ConfigMap far below its 1 MiB limit.
const MAX_BATCH: usize = 64;
/// How long a swap waits for more records to join it: a fraction of one API round trip,
/// which turns a burst of reconciles' decisions into a few swaps instead of one each.
const GATHER: std::time::Duration = std::time::Duration::from_millis(3);

impl ControlPlaneAudit {
    /// Opens (creating) the file and checks it, dropping a torn last line.
    pub fn open(client: Client, config: AuditConfig) -> Result<Self, AuditError> {
        let mut decisions = Decisions::default();
        let file = match &config.file {
            Some(path) => Some(open_segment(path, &mut decisions)?),
            None => None,
        };
        Ok(ControlPlaneAudit {
            client,
            config,
            pending: std::sync::Mutex::default(),
            committer: Mutex::new(Committer { file, head: None, known: None, decisions }),
        })
    }

    /// Seals `record` (an object; `time`, `operator` are added) as the next link of the
    /// chain and writes it to every sink, and returns its sequence number. A record whose
    /// `decision` id is already in the chain this replica verified is not appended again
    /// (the head's sequence number is returned). An error means the decision was not recorded: callers fail the
    /// reconcile and retry rather than act unaudited.
    pub async fn append(&self, record: Value) -> Result<u64, AuditError> {
        let seqs = self.append_all(vec![record]).await?;
        Ok(seqs.first().copied().unwrap_or_default())
    }

    /// Appends `records` as consecutive links, sealed by one swap of the head: one
    /// decision's records (a failure and the rollback it causes) are recorded together or
    /// not at all.
    pub async fn append_all(&self, records: Vec<Value>) -> Result<Vec<u64>, AuditError> {
        let records: Vec<(Value, Option<String>)> = records
            .into_iter()
            .map(|mut record| {
                // A chained record cannot be erased: no credential an error text echoed
                // (URL user info, a pre-signed query, an Authorization value) enters it.
                taimatsu_core::redact::redact_json(&mut record);
                let decision = record.get("decision").and_then(Value::as_str).map(decision_digest);
                if let Some(obj) = record.as_object_mut() {
                    obj.insert("time".into(), Value::String(now_rfc3339()));
                    obj.insert("operator".into(), Value::String(self.config.identity.clone()));
                }
                (record, decision)
            })
            .collect();
        let (sealed, mut outcome) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(Pending { records: records.clone(), sealed });
        loop {
            let mut committer = self.committer.lock().await;
            match outcome.try_recv() {
                // Sealed (or failed) by the swap this call waited for.
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Empty) => {}
                // Taken by a swap that was abandoned (its caller's future dropped): queue again.
                Err(oneshot::error::TryRecvError::Closed) => {
                    let (sealed, again) = oneshot::channel();
                    outcome = again;
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Pending { records: records.clone(), sealed });
                }
            }
            tokio::time::sleep(GATHER).await;
            let batch: Vec<Pending> = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let mut count = 0;
                let take = pending
                    .iter()
                    .take_while(|p| {
                        count += p.records.len();
                        count <= MAX_BATCH
                    })
                    .count()
                    .max(1);
                let take = take.min(pending.len());
                pending.drain(..take).collect()
            };
            let records: Vec<(&Value, Option<&str>)> =
                batch.iter().flat_map(|p| p.records.iter().map(|(r, d)| (r, d.as_deref()))).collect();
            let result = self.commit(&mut committer, &records).await;
            // Answered while the lock is held: a waiter that takes it next finds its result.
            match result {
                Ok(seqs) => {
                    let mut seqs = seqs.into_iter();
                    for p in batch {
                        let own: Vec<u64> = seqs.by_ref().take(p.records.len()).collect();
                        let _ = p.sealed.send(Ok(own));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    for p in batch {
                        let _ = p.sealed.send(Err(AuditError::Batch(text.clone())));
                    }
                    // This call's own records, when they were in the batch, fail with the error itself.
                    if outcome.try_recv().is_ok() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Seals `records` in one swap of the head and writes them to this replica's sinks;
    /// returns each record's sequence number.
    async fn commit(
        &self,
        committer: &mut Committer,
        records: &[(&Value, Option<&str>)],
    ) -> Result<Vec<u64>, AuditError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.head_namespace);
        for _ in 0..5 {
            let head = match committer.head.take() {
                Some(head) => head,
                None => Head::read(&api, &self.config.head_name).await?,
            };
            let copy = self.check_head(committer, &head)?;
            // Verified and continued by this replica: these records are in its chain.
            for line in head.tail.lines() {
                committer.decisions.note_line(line);
            }
            committer.known = Some(head.state.clone());
            let mut state = head.state.clone();
            let mut requesters = head.requesters.clone();
            let mut lines = String::new();
            let mut seqs = Vec::with_capacity(records.len());
            let mut sealed: Vec<&str> = Vec::new();
            for (record, decision) in records {
                if let Some(d) = decision
                    && (committer.decisions.contains(d) || sealed.contains(d))
                {
                    seqs.push(state.last_seq);
                    continue;
                }
                let line = state.seal(record).map_err(|e| AuditError::MalformedHead("record".into(), e.to_string()))?;
                lines.push_str(&line);
                sealed.extend(*decision);
                requesters.extend(requester_line(record));
                seqs.push(state.last_seq);
            }
            if lines.is_empty() {
                committer.head = Some(head);
                return Ok(seqs);
            }
            let excess = requesters.len().saturating_sub(REQUESTERS_LIMIT);
            requesters.drain(..excess);
            let map = head::config_map(&self.config, &lines, &requesters, head.resource_version.clone());
            let swapped = match head.resource_version {
                Some(_) => api.replace(&self.config.head_name, &PostParams::default(), &map).await,
                None => api.create(&PostParams::default(), &map).await,
            };
            let swapped = match swapped {
                Ok(swapped) => swapped,
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some((f, file_state)) = committer.file.as_mut() {
                let path = self.config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                let io = |source| AuditError::File { path: path.clone(), source };
                // Records sealed by the previous swap (this replica's, just before a crash, or
                // the previous leader's) that this file lacks, verified as its continuation.
                f.write_all(copy.as_bytes()).map_err(io)?;
                f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()).map_err(io)?;
                *file_state = state.clone();
            }
            for line in lines.split_inclusive('\n') {
                if self.config.stdout {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
                }
                tracing::info!(target: taimatsu_telemetry::EXPORTED_LOG_TARGET, { audit.record = line.trim_end() }, "control-plane audit record");
            }
            for d in sealed {
                committer.decisions.note(d.to_owned());
            }
            let tail = taimatsu_core::audit_tail::verify_tail(&lines)
                .map_err(|e| AuditError::MalformedHead("record".into(), e.to_string()))?;
            committer.known = Some(state.clone());
            let resource_version = swapped.metadata.resource_version;
            committer.head = Some(Head { state, tail, requesters, resource_version });
            return Ok(seqs);
        }
        Err(AuditError::Contended)
    }

    /// Checks a verified head against the chain this replica verified itself (the head it
    /// saw last, its file) and returns the head's lines its file lacks, when they continue
    /// the file link by link. Every record reaches the head before any file, so a head
    /// behind either belongs to a chain reset under this replica (an etcd restore, a new
    /// cluster, a deleted ConfigMap); a head with another hash at a record this replica
    /// knows is a rewritten history.
    fn check_head(&self, committer: &Committer, head: &Head) -> Result<String, AuditError> {
        let path = self.config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let refuse = |c: Contradiction| match c {
            Contradiction::Behind { known_seq, tail_seq } => {
                AuditError::Diverged { path: path.clone(), file_seq: known_seq, head_seq: tail_seq }
            }
            forked @ Contradiction::Forked { .. } => {
                tracing::error!(head = %self.config.head_name, problem = %forked, "the audit head rewrites a record this replica verified; refusing to extend it");
                AuditError::TamperedHead { name: self.config.head_name.clone(), problem: forked.to_string() }
            }
        };
        if let Some(known) = &committer.known {
            head.tail.after(known).map_err(refuse)?;
        }
        match &committer.file {
            Some((_, file)) => Ok(head.tail.after(file).map_err(refuse)?.unwrap_or_default()),
            None => Ok(String::new()),
        }
    }

    /// The user whose request the admission webhook recorded for `generation` of the
    /// ModelDeployment `namespace/name`, as the head holds it now (any replica's webhook).
    /// None when the head does not remember it: no webhook, or too long ago.
    pub async fn requester(&self, namespace: &str, name: &str, generation: i64) -> Result<Option<String>, AuditError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.head_namespace);
        let head = Head::read(&api, &self.config.head_name).await?;
        let key = format!("{namespace}/{name}/{generation} ");
        // The latest admission of that generation, as this replica's own cache keeps it.
        Ok(head
            .requesters
            .iter()
            .rev()
            .find_map(|line| line.strip_prefix(&key))
            .and_then(|user| serde_json::from_str::<String>(user).ok()))
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}
