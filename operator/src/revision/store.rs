//! Reading and writing revision records in the API server.

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use taimatsu_crds::v1alpha1::ModelDeployment;
use tracing::warn;

use super::record::{self, Outcome, RevisionRecord, Snapshot};
use crate::build::labels;

/// The records of the ModelDeployment `name`, oldest first. A record that does not read
/// (edited by hand, say) is skipped with a warning rather than blocking the deployment.
pub async fn list(client: &Client, ns: &str, name: &str) -> Result<Vec<RevisionRecord>, kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let selector = format!("{}={name}", labels::DEPLOYMENT_LABEL);
    let mut records: Vec<RevisionRecord> = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter_map(|cr| {
            RevisionRecord::from_controller_revision(cr)
                .inspect_err(|e| warn!(error = %e, "unreadable revision record"))
                .ok()
        })
        .collect();
    records.sort_by_key(|r| r.number);
    Ok(records)
}

/// Creates revision `number` from `snapshot`, its rollout starting `now`.
pub async fn create(
    client: &Client,
    md: &ModelDeployment,
    number: i64,
    snapshot: &Snapshot,
    now: &str,
) -> Result<RevisionRecord, kube::Error> {
    let ns = md.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let created = api.create(&PostParams::default(), &record::controller_revision(md, number, snapshot, now)).await?;
    RevisionRecord::from_controller_revision(&created)
        .map_err(|e| kube::Error::Service(Box::new(std::io::Error::other(e.to_string()))))
}

/// Changes a record's outcome (its data never changes). `rollout_started` restarts the
/// progress deadline; `failed_generation` remembers when it failed.
pub async fn set_outcome(
    client: &Client,
    ns: &str,
    record: &RevisionRecord,
    outcome: Outcome,
    reason: Option<&str>,
    rollout_started: Option<&str>,
    failed_generation: Option<i64>,
) -> Result<(), kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let mut annotations = json!({
        record::OUTCOME_ANNOTATION: outcome.as_str(),
        // The failure text (a pod's termination message) as `kubectl taimatsu history` shows it.
        record::OUTCOME_REASON_ANNOTATION: reason.map(|r| taimatsu_core::redact::redact(r).into_owned()),
        // An analysis belongs to one rollout attempt.
        record::ANALYSIS_ANNOTATION: null,
    });
    if let Some(started) = rollout_started {
        annotations[record::ROLLOUT_STARTED_ANNOTATION] = json!(started);
    }
    if let Some(generation) = failed_generation {
        annotations[record::FAILED_GENERATION_ANNOTATION] = json!(generation.to_string());
    }
    let patch = json!({ "metadata": { "annotations": annotations } });
    api.patch(&record.name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Stores the state of the analysis in progress on the record.
pub async fn set_analysis(client: &Client, ns: &str, record: &RevisionRecord, state: &str) -> Result<(), kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let patch = json!({ "metadata": { "annotations": { record::ANALYSIS_ANNOTATION: state } } });
    api.patch(&record.name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Deletes a record (history pruning).
pub async fn delete(client: &Client, ns: &str, record: &RevisionRecord) -> Result<(), kube::Error> {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    crate::apply::delete_if_present(&api, &record.name, &DeleteParams::default()).await
}
