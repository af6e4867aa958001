//! What a reconcile tells the world: the ModelDeployment's status (typed, patched only
//! where it changed), one Event per condition transition, and the Events of decisions.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{ModelDeployment, ModelDeploymentStatus};
use tracing::{info, warn};

use crate::context::Context;
use crate::error::Error;
use crate::field_manager::FIELD_MANAGER;
use crate::status::{self, Observed, Reason};
use crate::validate::Blocked;

/// Reports why nothing is rolled out, and changes nothing else.
pub async fn block(md: &ModelDeployment, ctx: &Context, blocked: &Blocked) -> Result<Action, Error> {
    info!(name = %md.name_any(), reason = blocked.reason.as_str(), message = %blocked.message, "not rolled out");
    write_status(md, ctx, &status::blocked(blocked.reason, &blocked.message), |_| {}).await?;
    Ok(Action::requeue(retry_after(blocked.reason)))
}

/// When a blocked deployment is looked at again if nothing triggers it sooner. A missing
/// Model or AcceleratorProfile is usually one that is being created (GitOps applies the
/// ModelDeployment first as often as not): its watch event triggers the reconcile at once,
/// and the short requeue bounds the wait if that event is missed (a fresh-clone CI run once
/// left a deployment on ModelNotFound across an API-server restart, its Model long created).
/// Everything else needs someone to change the spec, which triggers by itself.
fn retry_after(reason: Reason) -> Duration {
    match reason {
        Reason::ModelNotFound | Reason::ProfileNotFound => Duration::from_secs(30),
        _ => Duration::from_secs(300),
    }
}

/// Writes the status: `observed` as conditions, the rest as `fill` sets it on a copy of the
/// current status (fields it leaves alone keep their value). Nothing is written when the
/// result is what the cache and this replica's last write both show.
pub async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    observed: &[Observed],
    fill: impl FnOnce(&mut ModelDeploymentStatus),
) -> Result<(), Error> {
    let old: ModelDeploymentStatus = md.status.clone().unwrap_or_default();
    let mut new = old.clone();
    new.observed_generation = md.metadata.generation;
    new.conditions = status::to_conditions(observed, &old.conditions, md.metadata.generation, Time(now()));
    fill(&mut new);
    // As the API server stores it: condition times in whole seconds. Compared unrounded, a
    // status would never equal this replica's last write read back, and would be written
    // again at every reconcile.
    let new = as_stored(&new).map_err(|e| Error::Serialize(e.to_string()))?;
    publish_transitions(md, ctx, &old, observed).await;
    let key = (md.namespace().unwrap_or_default(), md.name_any());
    let patch = match status_patch(&old, &new) {
        Some(patch) => patch,
        None => {
            // The same status again (an idle reconcile). "The same" as both the cached object
            // and this replica's last write: the cache can lag that write, and a status equal
            // to the stale copy may differ from what the API server now holds.
            let mut statuses = ctx.statuses.lock().unwrap_or_else(|p| p.into_inner());
            match statuses.get(&key) {
                None => return Ok(()),
                // The cache shows this replica's last write: nothing left to remember (so the
                // map holds only writes the cache has not caught up with).
                Some(last) if *last == new => {
                    statuses.remove(&key);
                    return Ok(());
                }
                // The API server holds that last write: write what differs from it.
                Some(last) => status_patch(last, &new).unwrap_or_else(|| json!({})),
            }
        }
    };
    send(md, ctx, key, patch, new).await
}

async fn send(
    md: &ModelDeployment,
    ctx: &Context,
    key: (String, String),
    patch: Value,
    new: ModelDeploymentStatus,
) -> Result<(), Error> {
    // A merge patch, not an apply: the status is the operator's alone, and a server-side
    // apply to a custom resource costs the API server a typed merge of the whole object.
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &key.0);
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.patch_status(&md.name_any(), &params, &Patch::Merge(json!({ "status": patch }))).await?;
    ctx.statuses.lock().unwrap_or_else(|p| p.into_inner()).insert(key, new);
    Ok(())
}

/// `status` as the API server stores and returns it (times in whole seconds).
fn as_stored(status: &ModelDeploymentStatus) -> serde_json::Result<ModelDeploymentStatus> {
    serde_json::to_value(status).and_then(serde_json::from_value)
}

/// The JSON merge patch that turns status `old` into `new`, None when they are equal. It
/// carries every field of `new`, not only those that differ from `old`, and a field `new`
/// cleared as `null`: `old` is the watch cache's copy, which can lag this replica's own last
/// write, and a patch of only the differences from a stale copy would leave the fields that
/// write changed as it left them (then the next reconcile writes again, and again).
pub fn status_patch(old: &ModelDeploymentStatus, new: &ModelDeploymentStatus) -> Option<Value> {
    if old == new {
        return None;
    }
    let fields = |s: &ModelDeploymentStatus| match serde_json::to_value(s) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (old, mut patch) = (fields(old), fields(new));
    for key in old.keys() {
        patch.entry(key.clone()).or_insert(Value::Null);
    }
    Some(Value::Object(patch))
}

/// One Event per transition: the conditions whose reason changed, together, under the
/// reason of the first bad one (or of the first changed one). One per transition rather
/// than one per condition: conditions move together (Ready and Progressing), and every
/// Event is a write the API server and etcd must absorb.
async fn publish_transitions(md: &ModelDeployment, ctx: &Context, old: &ModelDeploymentStatus, observed: &[Observed]) {
    let changed: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            let before = old.conditions.iter().find(|c| c.type_ == o.type_).map(|c| c.reason.as_str());
            before != Some(o.reason.as_str()) && !(o.reason == Reason::AsExpected && before.is_none())
        })
        .collect();
    let bad = |o: &&Observed| {
        matches!(o.type_, "Degraded" | "RolledBack") && o.status
            || matches!(o.type_, "Ready") && !o.status && o.reason != Reason::RolloutInProgress
    };
    let Some(lead) = changed.iter().find(|o| bad(o)).or(changed.first()) else { return };
    let type_ = if bad(lead) { EventType::Warning } else { EventType::Normal };
    let note = changed.iter().map(|o| format!("{}: {}", o.type_, o.message)).collect::<Vec<_>>().join("; ");
    publish_event(ctx, type_, lead.reason, &note, &md.object_ref(&())).await;
}

/// An Event about a decision on `md`.
pub async fn event(ctx: &Context, md: &ModelDeployment, type_: EventType, reason: Reason, note: String) {
    publish_event(ctx, type_, reason, &note, &md.object_ref(&())).await;
}

/// Publishes one Event; a failure to publish is logged, never fatal to the reconcile.
pub async fn publish_event(
    ctx: &Context,
    type_: EventType,
    reason: Reason,
    note: &str,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
) {
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        // The Events API limits the note to 1 kB; redacted first, so that the cut cannot
        // leave half a credential the redaction no longer recognises.
        note: Some(taimatsu_core::redact::redact(note).chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        warn!(error = %e, "could not publish event");
    }
}

/// An object that does not decode: say so in its status and an Event, then wait for
/// it to change. Its children, if any, are left as they are.
pub async fn invalid(invalid: &InvalidObject, ctx: &Context) -> Result<Action, Error> {
    let meta = &invalid.metadata;
    let (ns, name) = (meta.namespace.clone().ok_or(Error::NoNamespace)?, meta.name.clone().unwrap_or_default());
    let message =
        format!("the object does not match the ModelDeployment schema: {}; fix and re-apply it", invalid.error);
    warn!(%name, namespace = %ns, %message, "invalid ModelDeployment");
    let observed = status::blocked(Reason::InvalidSpec, &message);
    let conditions = status::to_conditions(&observed, &[], meta.generation, Time(now()));
    let patch = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
                        "status": { "observedGeneration": meta.generation, "conditions": conditions } });
    // Untyped: the typed API would fail to decode the object the server returns.
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &ApiResource::erase::<ModelDeployment>(&()));
    api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("taimatsu.dev/v1alpha1".into()),
        kind: Some("ModelDeployment".into()),
        name: Some(name),
        namespace: Some(ns),
        uid: meta.uid.clone(),
        ..Default::default()
    };
    publish_event(ctx, EventType::Warning, Reason::InvalidSpec, &message, &reference).await;
    Ok(Action::await_change())
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(v: Value) -> ModelDeploymentStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_status_read_back_equals_the_write_that_stored_it() {
        let conditions = status::to_conditions(
            &status::blocked(Reason::ModelNotFound, "no model"),
            &[],
            Some(1),
            Time("2026-12-02T10:00:00.123456789Z".parse().unwrap()),
        );
        let written = ModelDeploymentStatus { conditions, ..Default::default() };
        let read_back: ModelDeploymentStatus = serde_json::from_str(&serde_json::to_string(&written).unwrap()).unwrap();
        assert_ne!(written, read_back, "the API server keeps whole seconds");
        assert_eq!(as_stored(&written).unwrap(), read_back);
        assert_eq!(status_patch(&read_back, &as_stored(&written).unwrap()), None);
    }

    #[test]
    fn an_unchanged_status_is_no_patch() {
        let s = status(json!({ "observedGeneration": 3, "servingRevision": 2, "replicas": 1 }));
        assert_eq!(status_patch(&s, &s.clone()), None);
    }

    #[test]
    fn the_patch_carries_the_whole_new_status_and_clears_removed_fields() {
        let old = status(json!({ "observedGeneration": 3, "servingRevision": 2, "failedRevision": 4, "replicas": 1 }));
        let new = status(json!({ "observedGeneration": 4, "servingRevision": 2, "replicas": 2, "readyReplicas": 1 }));
        assert_eq!(
            status_patch(&old, &new),
            Some(json!({ "observedGeneration": 4, "servingRevision": 2, "replicas": 2, "readyReplicas": 1,
                         "failedRevision": null }))
        );
    }
}
