//! Revision records: one `apps/v1` ControllerRevision per revision of a ModelDeployment.
//!
//! A ControllerRevision's `data` and `revision` cannot change once created (the API server
//! enforces it), which is what an immutable history needs; its annotations carry the
//! outcome, the only part that changes over the revision's life. The data is a complete
//! snapshot of what is served — model spec and digest, quantization, engine, placement and
//! the accelerator profile — so a rollback rebuilds the revision exactly as it was, even
//! after its Model or profile changed.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use taimatsu_core::{KvCacheDtype, Quantization};
use taimatsu_crds::v1alpha1::{
    AcceleratorProfile, AcceleratorProfileSpec, EngineSpec, Model, ModelDeployment, ModelSpec, Placement,
};

use crate::build::labels;

/// Label with a revision's number, for listing and `kubectl get controllerrevisions -l`.
pub const NUMBER_LABEL: &str = "taimatsu.dev/revision-number";
/// Annotation with the revision's [`Outcome`].
pub const OUTCOME_ANNOTATION: &str = "taimatsu.dev/outcome";
/// Annotation with why the outcome is what it is (failure reason and message).
pub const OUTCOME_REASON_ANNOTATION: &str = "taimatsu.dev/outcome-reason";
/// Annotation with the RFC 3339 time the revision's latest rollout started.
pub const ROLLOUT_STARTED_ANNOTATION: &str = "taimatsu.dev/rollout-started";
/// Annotation with the ModelDeployment generation at which the revision failed: a pinned
/// failed revision is retried only by a later generation.
pub const FAILED_GENERATION_ANNOTATION: &str = "taimatsu.dev/failed-generation";
/// Annotation with the state of the rollout analysis in progress (start time and the
/// metrics baseline), cleared by every outcome change.
pub const ANALYSIS_ANNOTATION: &str = "taimatsu.dev/analysis";

/// Where a revision stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Being rolled out.
    Progressing,
    /// Serving: the last stable revision.
    Active,
    /// Replaced by a newer revision's successful rollout.
    Superseded,
    /// Its rollout failed; not retried until the spec changes.
    Failed,
    /// Replaced by a rollback to an earlier revision.
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Progressing => "progressing",
            Outcome::Active => "active",
            Outcome::Superseded => "superseded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        serde_json::from_value(json!(text)).ok()
    }
}

/// Everything that defines what a revision serves, and who asked for it and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The revision hash (`crate::build::revision_hash`) of this content.
    pub hash: String,
    pub model_name: String,
    /// Manifest digest of the model's files (`sha256:…`).
    pub model_digest: String,
    pub model: ModelSpec,
    pub quantization: Quantization,
    pub kv_cache_dtype: KvCacheDtype,
    pub engine: EngineSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<AcceleratorProfileSpec>,
    /// Who changed the spec: the field manager of the last spec change (kubectl,
    /// argocd-controller, kustomize-controller, …).
    pub requested_by: String,
    /// The `taimatsu.dev/change-cause` annotation at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
    /// The ModelDeployment generation that asked for it.
    pub generation: i64,
}

impl Snapshot {
    /// The snapshot of what `md` asks for now.
    pub fn of(
        md: &ModelDeployment,
        model: &Model,
        digest: &str,
        profile: Option<&AcceleratorProfile>,
        hash: &str,
    ) -> Self {
        Snapshot {
            hash: hash.to_owned(),
            model_name: model.name_any(),
            model_digest: digest.to_owned(),
            model: model.spec.clone(),
            quantization: md.spec.quantization,
            kv_cache_dtype: md.spec.kv_cache_dtype,
            engine: md.spec.engine.clone(),
            placement: md.spec.placement.clone(),
            profile_name: profile.map(|p| p.name_any()),
            profile: profile.map(|p| p.spec.clone()),
            requested_by: spec_manager(md),
            change_cause: md.annotations().get(taimatsu_crds::v1alpha1::CHANGE_CAUSE_ANNOTATION).cloned(),
            generation: md.metadata.generation.unwrap_or_default(),
        }
    }

    /// The ModelDeployment, Model and profile this snapshot describes, for the builders:
    /// `md` with the snapshot's serving fields, and the Model and profile as recorded.
    pub fn materialize(&self, md: &ModelDeployment) -> (ModelDeployment, Model, Option<AcceleratorProfile>) {
        let mut deployment = md.clone();
        deployment.spec.model_ref.name = self.model_name.clone();
        deployment.spec.quantization = self.quantization;
        deployment.spec.kv_cache_dtype = self.kv_cache_dtype;
        deployment.spec.engine = self.engine.clone();
        deployment.spec.placement = self.placement.clone();
        let mut model = Model::new(&self.model_name, self.model.clone());
        model.metadata.namespace = md.namespace();
        let profile = match (&self.profile_name, &self.profile) {
            (Some(name), Some(spec)) => Some(AcceleratorProfile::new(name, spec.clone())),
            _ => None,
        };
        (deployment, model, profile)
    }
}

/// The field manager that last wrote the spec: the closest thing to "who" the API server
/// records on the object itself.
pub fn spec_manager(md: &ModelDeployment) -> String {
    md.managed_fields()
        .iter()
        .filter(|m| m.subresource.is_none())
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()))
        .max_by(|a, b| a.time.as_ref().map(|t| t.0).cmp(&b.time.as_ref().map(|t| t.0)))
        .and_then(|m| m.manager.clone())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// One revision as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRecord {
    pub number: i64,
    /// Name of its ControllerRevision.
    pub name: String,
    pub outcome: Outcome,
    pub outcome_reason: Option<String>,
    pub rollout_started: Option<String>,
    pub failed_generation: Option<i64>,
    /// The analysis in progress, as stored in [`ANALYSIS_ANNOTATION`].
    pub analysis: Option<String>,
    pub created: Option<String>,
    pub snapshot: Snapshot,
}

/// Why a ControllerRevision is not a readable revision record.
#[derive(Debug, thiserror::Error)]
#[error("ControllerRevision {name}: {problem}")]
pub struct RecordError {
    pub name: String,
    pub problem: String,
}

impl RevisionRecord {
    /// Reads a record from its ControllerRevision.
    pub fn from_controller_revision(cr: &ControllerRevision) -> Result<Self, RecordError> {
        let name = cr.name_any();
        let bad = |problem: String| RecordError { name: name.clone(), problem };
        let data = cr.data.as_ref().ok_or_else(|| bad("has no data".into()))?;
        let snapshot: Snapshot =
            serde_json::from_value(data.0.clone()).map_err(|e| bad(format!("data is not a revision snapshot: {e}")))?;
        let annotations = cr.annotations();
        let outcome = annotations
            .get(OUTCOME_ANNOTATION)
            .and_then(|o| Outcome::parse(o))
            .ok_or_else(|| bad(format!("annotation {OUTCOME_ANNOTATION} is missing or unknown")))?;
        Ok(RevisionRecord {
            number: cr.revision,
            name: name.clone(),
            outcome,
            outcome_reason: annotations.get(OUTCOME_REASON_ANNOTATION).cloned(),
            rollout_started: annotations.get(ROLLOUT_STARTED_ANNOTATION).cloned(),
            failed_generation: annotations.get(FAILED_GENERATION_ANNOTATION).and_then(|g| g.parse().ok()),
            analysis: annotations.get(ANALYSIS_ANNOTATION).cloned(),
            created: cr.creation_timestamp().map(|t| t.0.to_string()),
            snapshot,
        })
    }
}

/// Name of revision `number`'s ControllerRevision.
pub fn record_name(deployment: &str, number: i64) -> String {
    format!("{deployment}-r{number}")
}

/// The ControllerRevision recording revision `number` of `md`, starting its rollout at `now`.
pub fn controller_revision(md: &ModelDeployment, number: i64, snapshot: &Snapshot, now: &str) -> ControllerRevision {
    let name = md.name_any();
    let mut labels: BTreeMap<String, String> = labels::common(&name);
    labels.insert(labels::REVISION_LABEL.to_owned(), snapshot.hash.clone());
    labels.insert(NUMBER_LABEL.to_owned(), number.to_string());
    let annotations = BTreeMap::from([
        (OUTCOME_ANNOTATION.to_owned(), Outcome::Progressing.as_str().to_owned()),
        (ROLLOUT_STARTED_ANNOTATION.to_owned(), now.to_owned()),
    ]);
    ControllerRevision {
        metadata: kube::api::ObjectMeta {
            name: Some(record_name(&name, number)),
            namespace: md.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            // Not a controller reference: the records outlive nothing but their deployment,
            // and the garbage collector removes them with it.
            owner_references: md.controller_owner_ref(&()).map(|mut o| {
                o.controller = Some(false);
                vec![o]
            }),
            ..Default::default()
        },
        data: Some(RawExtension(serde_json::to_value(snapshot).unwrap_or_default())),
        revision: number,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_annotation_text() {
        for o in [Outcome::Progressing, Outcome::Active, Outcome::Superseded, Outcome::Failed, Outcome::RolledBack] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("promoted"), None);
    }
}
