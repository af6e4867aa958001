//! The chain's head as the ConfigMap in the operator's namespace holds it: the lines of
//! the last swap, the recent decision ids and the recent admissions' requesters.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ObjectMeta;
use serde_json::Value;
use taimatsu_core::audit_chain::ChainState;

use super::{AuditConfig, AuditError};

/// The head as stored: the lines of the last swap, from whose last line sequence and
/// hash are read.
#[derive(Clone)]
pub struct Head {
    pub state: ChainState,
    /// Every line the last swap sealed, oldest first, each ending in a newline.
    pub batch: String,
    /// Digests of the decision ids of the latest records, oldest first.
    pub recent: Vec<String>,
    /// `namespace/name/generation "user"` of the latest ModelDeployment admissions, oldest first.
    pub requesters: Vec<String>,
    pub resource_version: Option<String>,
}

/// The last sealed line: what `kubectl taimatsu audit verify --against-cluster` compares.
const LINE_KEY: &str = "last-record";
const BATCH_KEY: &str = "last-batch";
const RECENT_KEY: &str = "recent-decisions";
const REQUESTERS_KEY: &str = "recent-requesters";
/// Admissions remembered by the head: the leader looks a generation up moments after its
/// admission, so this only has to outlast a burst of changes.
pub const REQUESTERS_LIMIT: usize = 256;
/// Decision ids remembered by the head: far more than one reconcile's retries can need.
pub const RECENT_LIMIT: usize = 512;

impl Head {
    /// Reads the head ConfigMap `name` (an empty chain's head when there is none).
    pub async fn read(api: &Api<ConfigMap>, name: &str) -> Result<Head, AuditError> {
        let Some(map) = api.get_opt(name).await? else {
            return Ok(Head {
                state: ChainState::default(),
                batch: String::new(),
                recent: Vec::new(),
                requesters: Vec::new(),
                resource_version: None,
            });
        };
        let malformed = |why: String| AuditError::MalformedHead(name.to_owned(), why);
        let data = map.data.unwrap_or_default();
        // A head written before batches has only its last line.
        let batch = data.get(BATCH_KEY).or(data.get(LINE_KEY)).cloned().unwrap_or_default();
        let state = match batch.lines().last() {
            None => ChainState::default(),
            Some(l) => {
                let v: Value = serde_json::from_str(l).map_err(|e| malformed(e.to_string()))?;
                let seq = v["seq"].as_u64().ok_or_else(|| malformed("no seq".into()))?;
                let hash = v["hash"].as_str().ok_or_else(|| malformed("no hash".into()))?;
                ChainState { last_seq: seq, last_hash: hash.to_owned() }
            }
        };
        let lines = |key| data.get(key).map(|r| r.lines().map(str::to_owned).collect()).unwrap_or_default();
        let (recent, requesters) = (lines(RECENT_KEY), lines(REQUESTERS_KEY));
        let batch = if batch.is_empty() || batch.ends_with('\n') { batch } else { batch + "\n" };
        Ok(Head { state, batch, recent, requesters, resource_version: map.metadata.resource_version })
    }
}

/// The head ConfigMap holding `lines` (the last swap's), as an apply or replace sends it.
pub fn config_map(
    config: &AuditConfig,
    lines: &str,
    recent: &[String],
    requesters: &[String],
    resource_version: Option<String>,
) -> ConfigMap {
    let last = lines.split_inclusive('\n').next_back().unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config.head_name.clone()),
            namespace: Some(config.head_namespace.clone()),
            resource_version,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_owned(),
                "taimatsu-control-plane-audit".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (LINE_KEY.to_owned(), last.to_owned()),
            (BATCH_KEY.to_owned(), lines.to_owned()),
            (RECENT_KEY.to_owned(), recent.join("\n")),
            (REQUESTERS_KEY.to_owned(), requesters.join("\n")),
        ])),
        ..Default::default()
    }
}

/// `namespace/name/generation "user"` for a webhook's admission record of a ModelDeployment
/// generation. Namespaces and names cannot hold `/` or spaces; the user is JSON-quoted.
pub fn requester_line(record: &Value) -> Option<String> {
    if record["event"] != "admission" || record["kind"] != "ModelDeployment" {
        return None;
    }
    let (ns, name, generation) =
        (record["namespace"].as_str()?, record["name"].as_str()?, record["generation"].as_i64()?);
    let user = serde_json::to_string(record["user"].as_str()?).ok()?;
    Some(format!("{ns}/{name}/{generation} {user}"))
}

/// What the head remembers of a decision id: a short digest, so that 512 of them stay a few
/// kilobytes of every swap.
pub fn decision_digest(decision: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(decision.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requester_lines_name_the_generation_and_quote_the_user() {
        let admission = json!({ "event": "admission", "kind": "ModelDeployment", "namespace": "clinic",
                                "name": "chat", "generation": 3, "user": "Dr. Alice \"on call\"" });
        assert_eq!(requester_line(&admission).as_deref(), Some(r#"clinic/chat/3 "Dr. Alice \"on call\"""#));
        for other in [
            json!({ "event": "admission", "kind": "Model", "namespace": "clinic", "name": "m", "generation": 1, "user": "a" }),
            json!({ "event": "revision-created", "modelDeployment": "chat", "namespace": "clinic", "revision": 1 }),
            // A delete carries no new generation.
            json!({ "event": "admission", "kind": "ModelDeployment", "namespace": "clinic", "name": "chat", "user": "a" }),
        ] {
            assert_eq!(requester_line(&other), None, "{other}");
        }
    }
}
