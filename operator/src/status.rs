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
    /// The spec asks for what the operator's policy does not allow.
    PolicyViolation,
    /// A child's name is taken by an object this ModelDeployment does not control.
    Conflict,
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
            Reason::PolicyViolation => "PolicyViolation",
            Reason::Conflict => "Conflict",
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
                // Readable by everyone who may read the object: no credential an error
                // text echoed (a URL with user info or a pre-signed query) is kept.
                message: taimatsu_core::redact::redact(&o.message).into_owned(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn state(ready: i32, available: bool) -> RevisionState {
        RevisionState { available, ready_replicas: ready, replicas: ready, problem: None }
    }

    fn progress(desired: &RevisionState) -> Progress<'_> {
        Progress {
            replicas: 2,
            desired_number: 3,
            desired,
            complete: false,
            failed: None,
            serving: None,
            rolled_back: false,
            analysing: None,
        }
    }

    /// (type, status, reason, message) of each condition.
    fn summary(observed: &[Observed]) -> Vec<(&str, bool, &str, String)> {
        observed.iter().map(|o| (o.type_, o.status, o.reason.as_str(), o.message.clone())).collect()
    }

    #[test]
    fn a_complete_rollout_is_ready_and_no_longer_progressing() {
        let desired = state(2, true);
        let conditions = serving(&Progress { complete: true, ..progress(&desired) });
        assert_eq!(
            summary(&conditions),
            [
                ("Ready", true, "Available", "2 of 2 replicas of revision 3 ready".to_owned()),
                ("Progressing", false, "RolloutComplete", "revision 3 is serving".to_owned()),
                ("Degraded", false, "AsExpected", String::new()),
                ("RolledBack", false, "AsExpected", String::new()),
            ]
        );
    }

    #[test]
    fn the_stable_revision_keeps_it_ready_while_the_new_one_rolls_out_or_is_analysed() {
        let desired = state(1, false);
        let rolling = serving(&Progress { serving: Some((2, true)), ..progress(&desired) });
        assert_eq!(
            summary(&rolling)[0],
            ("Ready", true, "Available", "revision 2 is serving while revision 3 rolls out".into())
        );
        assert_eq!(summary(&rolling)[1].3, "rolling out revision 3: 1 of 2 replicas of revision 3 ready");
        let analysing = serving(&Progress { analysing: Some(Duration::from_secs(42)), ..progress(&desired) });
        assert_eq!(
            summary(&analysing)[1],
            (
                "Progressing",
                true,
                "RolloutInProgress",
                "analysing revision 3: smoke prompts answered; judging its metrics for 42 s more".into()
            )
        );
    }

    #[test]
    fn a_failed_revision_rolled_back_is_degraded_and_says_what_serves() {
        let desired = state(0, false);
        let failure = (Reason::DigestMismatch, "model.gguf: sha256 differs".to_owned());
        let held =
            Progress { failed: Some(&failure), serving: Some((2, true)), rolled_back: true, ..progress(&desired) };
        assert_eq!(
            summary(&serving(&held)),
            [
                ("Ready", true, "Available", "revision 2 is serving while revision 3 failed".to_owned()),
                ("Progressing", false, "DigestMismatch", "revision 3 failed: model.gguf: sha256 differs".to_owned()),
                ("Degraded", true, "DigestMismatch", "model.gguf: sha256 differs".to_owned()),
                (
                    "RolledBack",
                    true,
                    "DigestMismatch",
                    "desired revision 3 failed (DigestMismatch: model.gguf: sha256 differs): serving revision 2"
                        .to_owned()
                ),
            ]
        );
        // Nothing to return to: not ready, with the failure.
        let alone = Progress { failed: Some(&failure), ..progress(&desired) };
        assert_eq!(summary(&serving(&alone))[0].2, "DigestMismatch");
        assert!(!serving(&alone)[0].status);
    }

    #[test]
    fn scaled_to_zero_is_ready() {
        let desired = state(0, true);
        let conditions = serving(&Progress { replicas: 0, ..progress(&desired) });
        assert_eq!(summary(&conditions)[0], ("Ready", true, "ScaledToZero", "spec.replicas is 0".into()));
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let then = Time("2026-12-01T00:00:00Z".parse().unwrap());
        let now = Time("2026-12-02T00:00:00Z".parse().unwrap());
        let first = to_conditions(&blocked(Reason::ModelNotFound, "no model"), &[], Some(1), then.clone());
        assert!(first.iter().all(|c| c.last_transition_time == then && c.observed_generation == Some(1)));
        // Same status, other reason: the time stays; a flipped status takes `now`.
        let desired = state(2, true);
        let next =
            to_conditions(&serving(&Progress { complete: true, ..progress(&desired) }), &first, Some(2), now.clone());
        let time = |type_: &str| next.iter().find(|c| c.type_ == type_).unwrap().last_transition_time.clone();
        assert_eq!(time("Ready"), now, "Ready went False → True");
        assert_eq!(time("Progressing"), then, "Progressing stayed False");
        assert_eq!(time("Degraded"), now, "Degraded went True → False");
        assert_eq!(next[0].reason, "Available");
    }

    #[test]
    fn a_pod_problem_names_the_scheduler_or_the_fetch_step() {
        let pod: Pod = serde_json::from_value(serde_json::json!({ "status": { "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/5 nodes are available" }] } }))
        .unwrap();
        assert_eq!(pod_problem(&[pod]), Some((Reason::Unschedulable, "0/5 nodes are available".into())));
        assert_eq!(Reason::parse_failure("CrashLoop: worker exited"), (Reason::CrashLoop, "worker exited".into()));
    }
}
