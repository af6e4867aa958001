//! The rollout state machine as data: [`decide`] looks at what was observed of one
//! ModelDeployment — what its spec resolves to, its revision records, their workloads and
//! what this reconcile has done so far — and returns the one next thing to do. It is pure:
//! the executor (crate::rollout) carries a [`Decision`] out, records what it did in
//! [`Done`], and asks again, until a decision ends the reconcile.

mod steps;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use taimatsu_crds::v1alpha1::RolloutSpec;

pub use self::steps::{Pods, Step, failure, latest, pruned, stable, stays_failed, step};
use crate::revision::record::{Outcome, RevisionRecord};
use crate::status::{Reason, RevisionState};
use crate::validate::Blocked;

/// What the spec resolves to, before any record is consulted.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// `spec.rollback.toRevision`: serve this recorded revision.
    Pinned(i64),
    /// The spec does not dereference or validate.
    Blocked(Blocked),
    /// The spec's revision, by content hash.
    Spec(String),
}

/// One revision's worker Deployment and pods, as the watches last saw them.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub pods: Pods,
    pub pod_list: Vec<Pod>,
}

/// Where [`decide`] reads a revision's workload.
pub trait Workloads {
    /// The worker Deployment and pods of the revision with `hash` (default: none exist).
    fn of(&self, hash: &str) -> Workload;
}

/// Everything [`decide`] looks at.
pub struct Observed<'a> {
    /// The ModelDeployment's name, for messages.
    pub name: &'a str,
    pub target: &'a Target,
    pub generation: i64,
    pub records: &'a [RevisionRecord],
    pub rollout: &'a RolloutSpec,
    pub replicas: i32,
    pub automatic_rollback: bool,
    pub history_limit: i32,
    /// The status's `failedRevision`: a rollback is announced once.
    pub reported_failed: Option<i64>,
    /// The workloads of the revisions.
    pub workloads: &'a dyn Workloads,
    pub done: &'a Done,
}

/// What this reconcile has done so far: the executor's side of the conversation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Done {
    /// The revisions were scaled to this step.
    pub applied: Option<Applied>,
    /// The analysis of the desired revision, once asked for.
    pub analysis: Option<Verdict>,
    /// The history limit was applied.
    pub pruned: bool,
}

/// A [`Decision::Scale`] carried out.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The desired revision, read from its Deployment as the apply returned it.
    pub state: RevisionState,
    /// The stable revision beside it and its pods before this step.
    pub stable: Option<(i64, Pods)>,
}

/// Where an analysis stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every check passed (what was seen, for the audit record; empty without analysis).
    Passed(String),
    /// A check failed: why.
    Failed(String),
    /// The window is still open: look again after this long.
    Waiting(Duration),
}

/// Why a recorded revision rolls out again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// `spec.rollback.toRevision` names it.
    ManualRollback,
    /// It failed, and a later generation asks for it again.
    Retry,
    /// It was replaced, and the spec (a pin removed) asks for it again.
    RollForward,
}

impl Restart {
    /// The audit event of the restart.
    pub fn event(self) -> &'static str {
        match self {
            Restart::ManualRollback => "rollback-manual",
            Restart::Retry => "rollout-retried",
            Restart::RollForward => "rollout-started",
        }
    }
}

/// The status a reconcile ends with, while revisions serve.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub desired: i64,
    pub state: RevisionState,
    /// The desired revision serves with every replica available.
    pub complete: bool,
    /// The stable revision beside it, and whether it has available pods.
    pub stable: Option<(i64, bool)>,
    /// The analysis window is open for this much longer.
    pub analysing: Option<Duration>,
    pub requeue: Duration,
}

/// The one next thing to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing rolls out; say why. Ends the reconcile.
    Block(Blocked),
    /// Record the spec as revision `number`, its rollout starting from `from`.
    CreateRevision { number: i64, from: Option<i64> },
    /// Roll a recorded revision out again.
    Restart { revision: i64, kind: Restart, previous: Outcome, from: Option<i64> },
    /// The desired revision failed and stays failed: serve `rollback_to` at full size (the
    /// stable revision, when automatic rollback is on) or leave everything as it is. Ends
    /// the reconcile.
    Hold { failed: i64, rollback_to: Option<i64>, stable: Option<i64>, announce: bool },
    /// Scale the desired revision (with every shared child) and the stable one to `step`,
    /// removing the workloads of every other revision.
    Scale { desired: i64, stable: Option<i64>, step: Step },
    /// The desired revision failed: record it, with the rollback to `rollback_to`. Ends
    /// the reconcile (the next one holds).
    Fail { revision: i64, reason: Reason, message: String, rollback_to: Option<i64> },
    /// Start or continue the analysis of the desired revision.
    Analyse { revision: i64 },
    /// The desired revision serves: mark it active and `replaced` as what they became.
    Succeed { revision: i64, replaced: Vec<(i64, Outcome)>, analysis: String },
    /// Remove these records, past the history limit.
    Prune { revisions: Vec<i64> },
    /// Write the status and look again later. Ends the reconcile.
    Report(Report),
}

/// The next step for `observed` at time `now`.
pub fn decide(observed: &Observed<'_>, now: Timestamp) -> Decision {
    let records = observed.records;
    let pinned = matches!(observed.target, Target::Pinned(_));
    let desired = match observed.target {
        Target::Blocked(blocked) => return Decision::Block(blocked.clone()),
        Target::Pinned(n) => match records.iter().find(|r| r.number == *n) {
            Some(r) => r,
            None => return Decision::Block(revision_not_found(observed.name, *n)),
        },
        Target::Spec(hash) => match latest(records) {
            Some(latest) if latest.snapshot.hash == *hash => latest,
            _ => {
                let number = latest(records).map_or(1, |r| r.number + 1);
                return Decision::CreateRevision { number, from: stable(records).map(|r| r.number) };
            }
        },
    };
    // Two records may share content (A → B → A); a stable revision with the desired
    // content is the desired one's own Deployment.
    let stable = stable(records).filter(|s| s.number != desired.number && s.snapshot.hash != desired.snapshot.hash);
    let stable_number = stable.map(|s| s.number);

    if stays_failed(desired, pinned, observed.generation) {
        let rollback_to = stable_number.filter(|_| observed.automatic_rollback);
        let announce = rollback_to.is_some() && observed.reported_failed != Some(desired.number);
        return Decision::Hold { failed: desired.number, rollback_to, stable: stable_number, announce };
    }
    if !matches!(desired.outcome, Outcome::Progressing | Outcome::Active) {
        let kind = match (pinned, desired.outcome) {
            (true, _) => Restart::ManualRollback,
            (false, Outcome::Failed) => Restart::Retry,
            _ => Restart::RollForward,
        };
        return Decision::Restart { revision: desired.number, kind, previous: desired.outcome, from: stable_number };
    }

    let done = observed.done;
    let Some(applied) = &done.applied else {
        let desired_pods = observed.workloads.of(&desired.snapshot.hash).pods;
        let step = match stable {
            None => Step { desired: observed.replicas, stable: 0 },
            Some(s) => {
                step(observed.rollout, observed.replicas, desired_pods, observed.workloads.of(&s.snapshot.hash).pods)
            }
        };
        return Decision::Scale { desired: desired.number, stable: stable_number, step };
    };

    let mut analysing = None;
    if desired.outcome == Outcome::Progressing {
        let elapsed = elapsed_seconds(desired.rollout_started.as_deref(), now);
        let pods = observed.workloads.of(&desired.snapshot.hash).pod_list;
        let rollback_to = stable_number.filter(|_| observed.automatic_rollback);
        if let Some((reason, message)) = failure(&pods, elapsed, observed.rollout.progress_deadline_seconds) {
            return Decision::Fail { revision: desired.number, reason, message, rollback_to };
        }
        let stable_drained = applied.stable.is_none_or(|(_, pods)| pods == Pods::default());
        if applied.state.available && stable_drained {
            match &done.analysis {
                None => return Decision::Analyse { revision: desired.number },
                Some(Verdict::Passed(seen)) => {
                    let replaced = records
                        .iter()
                        .filter(|r| r.number != desired.number)
                        .filter(|r| matches!(r.outcome, Outcome::Active | Outcome::Progressing))
                        // Replaced by an older revision: that was a rollback.
                        .map(|r| {
                            (
                                r.number,
                                if desired.number < r.number { Outcome::RolledBack } else { Outcome::Superseded },
                            )
                        })
                        .collect();
                    return Decision::Succeed { revision: desired.number, replaced, analysis: seen.clone() };
                }
                Some(Verdict::Failed(why)) => {
                    let message = why.clone();
                    return Decision::Fail {
                        revision: desired.number,
                        reason: Reason::AnalysisFailed,
                        message,
                        rollback_to,
                    };
                }
                Some(Verdict::Waiting(remaining)) => analysing = Some(*remaining),
            }
        }
    }
    if !done.pruned {
        let revisions: Vec<i64> =
            pruned(records, observed.history_limit, desired.number).iter().map(|r| r.number).collect();
        if !revisions.is_empty() {
            return Decision::Prune { revisions };
        }
    }
    let complete = desired.outcome == Outcome::Active && applied.state.available;
    let requeue = match (complete, analysing) {
        (true, _) => Duration::from_secs(600),
        (false, Some(remaining)) => remaining.max(Duration::from_secs(1)),
        (false, None) => Duration::from_secs(15),
    };
    Decision::Report(Report {
        desired: desired.number,
        state: applied.state.clone(),
        complete,
        stable: applied.stable.map(|(n, pods)| (n, pods.available > 0)),
        analysing,
        requeue,
    })
}

fn revision_not_found(name: &str, n: i64) -> Blocked {
    Blocked {
        reason: Reason::RevisionNotFound,
        message: format!(
            "spec.rollback.toRevision: revision {n} is not recorded (never created, or pruned by revisionHistoryLimit): `kubectl taimatsu history {name}` lists the revisions; pick one or remove toRevision"
        ),
    }
}

fn elapsed_seconds(started: Option<&str>, now: Timestamp) -> i64 {
    started.and_then(|s| s.parse::<Timestamp>().ok()).map_or(0, |t| now.duration_since(t).as_secs())
}
