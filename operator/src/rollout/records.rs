//! The audit records of rollout decisions: what each says about a revision, and the
//! decision id that makes a retry after a crash record nothing twice.

use kube::ResourceExt;
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::ModelDeployment;

use crate::context::Context;
use crate::error::Error;
use crate::revision::Snapshot;

/// The audit fields describing a revision.
pub fn revision_fields(snapshot: &Snapshot, number: i64) -> Value {
    json!({
        "revision": number,
        "revisionHash": snapshot.hash,
        "model": snapshot.model_name,
        "modelDigest": snapshot.model_digest,
        // Redacted (user info) with every other string of the record, when appended.
        "source": snapshot.model.source.uri,
        "quantization": snapshot.quantization,
        "engine": snapshot.engine.kind,
        "requestedBy": snapshot.requested_by,
        "changeCause": snapshot.change_cause,
        "generation": snapshot.generation,
    })
}

/// A revision in one line, for Events.
pub fn describe(snapshot: &Snapshot) -> String {
    format!("{} {} {}", snapshot.model_name, snapshot.quantization, snapshot.model_digest)
}

/// Appends one control-plane decision about `md` to the audit trail.
pub async fn audit(ctx: &Context, md: &ModelDeployment, event: &str, fields: Value) -> Result<(), Error> {
    audit_all(ctx, md, vec![(event, fields)]).await
}

/// Appends decisions about `md` that belong together, as consecutive records.
pub async fn audit_all(ctx: &Context, md: &ModelDeployment, decisions: Vec<(&str, Value)>) -> Result<(), Error> {
    let records = decisions.into_iter().map(|(event, fields)| decision_record(md, event, fields)).collect();
    ctx.audit.append_all(records).await?;
    Ok(())
}

fn decision_record(md: &ModelDeployment, event: &str, mut fields: Value) -> Value {
    // One decision per (object, generation, event, revision): what a retry after a crash
    // between auditing and acting repeats, and the audit trail records once.
    let subject = [&fields["revision"], &fields["from"], &fields["revisions"]]
        .into_iter()
        .find(|v| !v.is_null())
        .map(|v| v.to_string())
        .unwrap_or_default();
    let decision =
        format!("{}:{}:{event}:{subject}", md.uid().unwrap_or_default(), md.metadata.generation.unwrap_or_default());
    if let Some(obj) = fields.as_object_mut() {
        obj.insert("decision".into(), json!(decision));
        obj.insert("event".into(), json!(event));
        obj.insert("namespace".into(), json!(md.namespace()));
        obj.insert("modelDeployment".into(), json!(md.name_any()));
        obj.insert("uid".into(), json!(md.uid()));
    }
    fields
}
