//! Conditions with a small fixed set of reasons, derived from what was observed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Every reason a condition can carry. Bounded, so it can label metrics and Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Available,
    RolloutInProgress,
    RolloutComplete,
    ScaledToZero,
    AsExpected,
    ModelNotFound,
    ProfileNotFound,
    IncompatibleModel,
    UnpinnedModel,
    DoesNotFit,
    Unschedulable,
    FetchFailed,
    DigestMismatch,
    InvalidSpec,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Available => "Available",
            Reason::RolloutInProgress => "RolloutInProgress",
            Reason::RolloutComplete => "RolloutComplete",
            Reason::ScaledToZero => "ScaledToZero",
            Reason::AsExpected => "AsExpected",
            Reason::ModelNotFound => "ModelNotFound",
            Reason::ProfileNotFound => "ProfileNotFound",
            Reason::IncompatibleModel => "IncompatibleModel",
            Reason::UnpinnedModel => "UnpinnedModel",
            Reason::DoesNotFit => "DoesNotFit",
            Reason::Unschedulable => "Unschedulable",
            Reason::FetchFailed => "FetchFailed",
            Reason::DigestMismatch => "DigestMismatch",
            Reason::InvalidSpec => "InvalidSpec",
        }
    }
}

/// One condition as computed, before timestamps.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

fn cond(type_: &'static str, status: bool, reason: Reason, message: impl Into<String>) -> Observed {
    Observed { type_, status, reason, message: message.into() }
}

/// Conditions of a deployment that cannot be rolled out.
pub fn blocked(reason: Reason, message: &str) -> Vec<Observed> {
    vec![
        cond("Ready", false, reason, message),
        cond("Progressing", false, reason, message),
        cond("Degraded", true, reason, message),
    ]
}

/// What one worker Deployment and its pods say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionState {
    pub available: bool,
    pub ready_replicas: i32,
    pub replicas: i32,
    /// A pod failure worth reporting: reason and message.
    pub problem: Option<(Reason, String)>,
}

/// Reads a worker Deployment and the pods of its revision.
pub fn revision_state(deployment: Option<&Deployment>, pods: &[Pod], desired_replicas: i32) -> RevisionState {
    let Some(deployment) = deployment else { return RevisionState::default() };
    let status = deployment.status.clone().unwrap_or_default();
    let generation_seen = status.observed_generation >= deployment.metadata.generation;
    let ready = status.ready_replicas.unwrap_or(0);
    let available = generation_seen
        && status.updated_replicas.unwrap_or(0) >= desired_replicas
        && status.available_replicas.unwrap_or(0) >= desired_replicas;
    RevisionState {
        available,
        ready_replicas: ready,
        replicas: status.replicas.unwrap_or(0),
        problem: pod_problem(pods),
    }
}

/// The first scheduling or fetch failure among the pods.
fn pod_problem(pods: &[Pod]) -> Option<(Reason, String)> {
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        for c in status.conditions.iter().flatten() {
            if c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable") {
                return Some((Reason::Unschedulable, c.message.clone().unwrap_or_default()));
            }
        }
        for init in status.init_container_statuses.iter().flatten() {
            let terminated = init
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| init.last_state.as_ref().and_then(|s| s.terminated.as_ref()));
            if let Some(t) = terminated.filter(|t| t.exit_code != 0) {
                let message = t.message.clone().unwrap_or_default();
                let reason =
                    if message.starts_with("DigestMismatch") { Reason::DigestMismatch } else { Reason::FetchFailed };
                return Some((reason, message.trim().to_owned()));
            }
        }
    }
    None
}

/// Conditions of a deployment being served: `desired` is the revision the spec asks
/// for, `serving_desired` whether the Service already sends traffic to it.
pub fn serving(desired: &RevisionState, serving_desired: bool, replicas: i32) -> Vec<Observed> {
    let mut out = Vec::new();
    if replicas == 0 {
        out.push(cond("Ready", true, Reason::ScaledToZero, "spec.replicas is 0"));
    } else if desired.available && serving_desired {
        out.push(cond(
            "Ready",
            true,
            Reason::Available,
            format!("{} of {replicas} replicas ready", desired.ready_replicas),
        ));
    } else {
        out.push(cond(
            "Ready",
            false,
            Reason::RolloutInProgress,
            format!("{} of {replicas} replicas ready", desired.ready_replicas),
        ));
    }
    if desired.available && serving_desired {
        out.push(cond("Progressing", false, Reason::RolloutComplete, "the desired revision is serving"));
    } else {
        out.push(cond(
            "Progressing",
            true,
            Reason::RolloutInProgress,
            "waiting for the desired revision's pods to become ready",
        ));
    }
    match &desired.problem {
        Some((reason, message)) => out.push(cond("Degraded", true, *reason, message.clone())),
        None => out.push(cond("Degraded", false, Reason::AsExpected, "")),
    }
    out
}

/// Turns observed conditions into API conditions, keeping `lastTransitionTime` of
/// those whose status did not change, so an unchanged reconcile writes nothing new.
pub fn to_conditions(
    observed: &[Observed],
    existing: &[Condition],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    observed
        .iter()
        .map(|o| {
            let status = if o.status { "True" } else { "False" }.to_owned();
            let since = existing
                .iter()
                .find(|c| c.type_ == o.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: o.type_.to_owned(),
                status,
                reason: o.reason.as_str().to_owned(),
                message: o.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}
