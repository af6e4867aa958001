//! Conditions with a small fixed set of reasons, derived from what was observed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
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
    CrashLoop,
    ProgressDeadlineExceeded,
    AnalysisFailed,
    RevisionNotFound,
    InvalidSpec,
    // Reasons of Events only.
    RevisionCreated,
    RolloutStarted,
    RolloutSucceeded,
    RolledBack,
    HistoryPruned,
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
            Reason::CrashLoop => "CrashLoop",
            Reason::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Reason::AnalysisFailed => "AnalysisFailed",
            Reason::RevisionNotFound => "RevisionNotFound",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::RevisionCreated => "RevisionCreated",
            Reason::RolloutStarted => "RolloutStarted",
            Reason::RolloutSucceeded => "RolloutSucceeded",
            Reason::RolledBack => "RolledBack",
            Reason::HistoryPruned => "HistoryPruned",
        }
    }
}

impl Reason {
    /// The failure reason a revision record stores as `<Reason>: <message>`.
    pub fn parse_failure(text: &str) -> (Reason, String) {
        let (head, message) = text.split_once(": ").unwrap_or((text, ""));
        let reason = [
            Reason::DigestMismatch,
            Reason::FetchFailed,
            Reason::CrashLoop,
            Reason::ProgressDeadlineExceeded,
            Reason::AnalysisFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == head)
        .unwrap_or(Reason::FetchFailed);
        (reason, message.to_owned())
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

/// How an init container (the fetch step) last failed: its current or, while it is being
/// restarted, its previous termination with a non-zero exit code.
pub fn failed_init(init: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    let current = init.state.as_ref().and_then(|s| s.terminated.as_ref());
    current.or_else(|| init.last_state.as_ref().and_then(|s| s.terminated.as_ref())).filter(|t| t.exit_code != 0)
}

/// The first scheduling or fetch failure among the pods.
pub fn pod_problem(pods: &[Pod]) -> Option<(Reason, String)> {
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        for c in status.conditions.iter().flatten() {
            if c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable") {
                return Some((Reason::Unschedulable, c.message.clone().unwrap_or_default()));
            }
        }
        for init in status.init_container_statuses.iter().flatten() {
            if let Some(t) = failed_init(init) {
                let message = t.message.clone().unwrap_or_default();
                let reason =
                    if message.starts_with("DigestMismatch") { Reason::DigestMismatch } else { Reason::FetchFailed };
                return Some((reason, message.trim().to_owned()));
            }
        }
    }
    None
}

/// Where the rollout of the desired revision stands.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    pub replicas: i32,
    pub desired_number: i64,
    pub desired: &'a RevisionState,
    /// The desired revision is the stable one, with every replica available.
    pub complete: bool,
    /// Why the desired revision failed, when it did.
    pub failed: Option<&'a (Reason, String)>,
    /// The last stable revision, while it serves beside or instead of the desired one,
    /// and whether it has available pods.
    pub serving: Option<(i64, bool)>,
    /// Serving was returned to the stable revision after the desired one failed.
    pub rolled_back: bool,
    /// The analysis window is open for this much longer.
    pub analysing: Option<std::time::Duration>,
}

/// Conditions of a deployment whose revisions are being served.
pub fn serving(p: &Progress<'_>) -> Vec<Observed> {
    let (d, replicas) = (p.desired_number, p.replicas);
    let ready = format!("{} of {replicas} replicas of revision {d} ready", p.desired.ready_replicas);
    let serving_stable = p.serving.filter(|(_, available)| *available).map(|(n, _)| n);
    let mut out = Vec::new();
    out.push(if replicas == 0 {
        cond("Ready", true, Reason::ScaledToZero, "spec.replicas is 0")
    } else if p.complete {
        cond("Ready", true, Reason::Available, ready.clone())
    } else if let Some(s) = serving_stable {
        cond(
            "Ready",
            true,
            Reason::Available,
            format!(
                "revision {s} is serving while revision {d} {}",
                if p.failed.is_some() { "failed" } else { "rolls out" }
            ),
        )
    } else if let Some((reason, message)) = p.failed {
        cond("Ready", false, *reason, format!("revision {d} failed: {message}"))
    } else {
        cond("Ready", false, Reason::RolloutInProgress, ready.clone())
    });
    out.push(if p.complete {
        cond("Progressing", false, Reason::RolloutComplete, format!("revision {d} is serving"))
    } else if let Some((reason, message)) = p.failed {
        cond("Progressing", false, *reason, format!("revision {d} failed: {message}"))
    } else if let Some(left) = p.analysing {
        let message = format!(
            "analysing revision {d}: smoke prompts answered; judging its metrics for {} s more",
            left.as_secs()
        );
        cond("Progressing", true, Reason::RolloutInProgress, message)
    } else {
        cond("Progressing", true, Reason::RolloutInProgress, format!("rolling out revision {d}: {ready}"))
    });
    out.push(match (p.failed, &p.desired.problem) {
        (Some((reason, message)), _) | (None, Some((reason, message))) => {
            cond("Degraded", true, *reason, message.clone())
        }
        (None, None) => cond("Degraded", false, Reason::AsExpected, ""),
    });
    out.push(match (p.rolled_back, p.failed, p.serving) {
        (true, Some((reason, message)), Some((s, _))) => cond(
            "RolledBack",
            true,
            *reason,
            format!("desired revision {d} failed ({}: {message}): serving revision {s}", reason.as_str()),
        ),
        _ => cond("RolledBack", false, Reason::AsExpected, ""),
    });
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
