//! The chain's head as the ConfigMap in the operator's namespace holds it: the lines of
//! the last swap and the recent admissions' requesters.
//!
//! Anyone with `edit` in that namespace (or the operator's own ConfigMap right) can write
//! it, so its lines are verified as they are read: every hash recomputed and every link
//! checked (`taimatsu_core::audit_tail`), and `last-record` must be the batch's last line.
//! A head that fails is refused (`AuditError::TamperedHead`), never extended.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ObjectMeta;
use serde_json::Value;
use taimatsu_core::audit_chain::ChainState;
use taimatsu_core::audit_tail::{VerifiedTail, verify_tail};

use super::{AuditConfig, AuditError};

/// The head as stored: the lines of the last swap, verified, whose last line is where the
/// chain stands.
#[derive(Clone)]
pub struct Head {
    pub state: ChainState,
    /// Every line the last swap sealed, oldest first, each verified as a link.
    pub tail: VerifiedTail,
    /// `namespace/name/generation "user"` of the latest ModelDeployment admissions, oldest first.
    pub requesters: Vec<String>,
    pub resource_version: Option<String>,
}

/// The last sealed line: what `kubectl taimatsu audit verify --against-cluster` compares.
const LINE_KEY: &str = "last-record";
const BATCH_KEY: &str = "last-batch";
// Earlier versions also kept `recent-decisions` (digests of recent decision ids, which a
// writer of the head could plant to silence a decision). It is never read; a swap
// replaces the whole ConfigMap, so it is gone after the first.
const REQUESTERS_KEY: &str = "recent-requesters";
/// Admissions remembered by the head: the leader looks a generation up moments after its
/// admission, so this only has to outlast a burst of changes.
pub const REQUESTERS_LIMIT: usize = 256;

impl Head {
    /// Reads the head ConfigMap `name` (an empty chain's head when there is none).
    pub async fn read(api: &Api<ConfigMap>, name: &str) -> Result<Head, AuditError> {
        let Some(map) = api.get_opt(name).await? else {
            let tail = verify_tail("").map_err(|e| AuditError::MalformedHead(name.to_owned(), e.to_string()))?;
            return Ok(Head { state: ChainState::default(), tail, requesters: Vec::new(), resource_version: None });
        };
        let data = map.data.unwrap_or_default();
        // A head written before batches has only its last line.
        let batch = data.get(BATCH_KEY).or(data.get(LINE_KEY)).cloned().unwrap_or_default();
        let batch = if batch.is_empty() || batch.ends_with('\n') { batch } else { batch + "\n" };
        let tampered = |problem: String| {
            tracing::error!(head = name, %problem, "the audit head was altered outside the operator; refusing to extend it");
            AuditError::TamperedHead { name: name.to_owned(), problem }
        };
        let tail = verify_tail(&batch).map_err(|e| tampered(format!("{BATCH_KEY} {e}")))?;
        // What `kubectl taimatsu audit verify --against-cluster` compares: the same line.
        if let Some(last) = data.get(LINE_KEY)
            && last.trim_end() != batch.lines().last().unwrap_or_default()
        {
            return Err(tampered(format!("{LINE_KEY} is not the last line of {BATCH_KEY}")));
        }
        let requesters = data.get(REQUESTERS_KEY).map(|r| r.lines().map(str::to_owned).collect()).unwrap_or_default();
        Ok(Head { state: tail.last.clone(), tail, requesters, resource_version: map.metadata.resource_version })
    }
}

/// The head ConfigMap holding `lines` (the last swap's), as an apply or replace sends it.
pub fn config_map(
    config: &AuditConfig,
    lines: &str,
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

/// What this replica remembers of a decision id: a short digest.
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
