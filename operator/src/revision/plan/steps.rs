//! The pieces [`super::decide`] is made of, each a pure function of what was observed:
//! which revision is stable, how many pods each revision gets at this step, whether a
//! rollout failed, and which records the history limit prunes.

use k8s_openapi::api::core::v1::Pod;
use taimatsu_crds::v1alpha1::{RolloutSpec, RolloutStrategy};

use crate::revision::record::{Outcome, RevisionRecord};
use crate::status::Reason;

/// The last stable revision: the active one (the highest, should there ever be two).
pub fn stable(records: &[RevisionRecord]) -> Option<&RevisionRecord> {
    records.iter().filter(|r| r.outcome == Outcome::Active).max_by_key(|r| r.number)
}

/// The most recently recorded revision.
pub fn latest(records: &[RevisionRecord]) -> Option<&RevisionRecord> {
    records.iter().max_by_key(|r| r.number)
}

/// Whether a failed desired revision stays failed. Unpinned, it does until the spec asks for
/// something else (a new revision); pinned with `spec.rollback.toRevision`, a later edit of
/// the ModelDeployment (a new generation) retries it once.
pub fn stays_failed(record: &RevisionRecord, pinned: bool, generation: i64) -> bool {
    record.outcome == Outcome::Failed && !(pinned && record.failed_generation.is_some_and(|g| generation > g))
}

/// One revision's worker Deployment as observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pods {
    /// `spec.replicas` (0 when the Deployment does not exist).
    pub wanted: i32,
    /// Pods that exist (`status.replicas`).
    pub existing: i32,
    /// Pods available (`status.availableReplicas`).
    pub available: i32,
}

/// Replicas for the revision being rolled out and the stable one at this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub desired: i32,
    pub stable: i32,
}

/// The next step of a rollout from `stable` to `desired`, in the manner of the Deployment
/// controller: the new revision grows while the total stays within `replicas + maxSurge`,
/// the stable one shrinks while at least `replicas - maxUnavailable` pods stay available,
/// not counting new pods that are not available yet. With `maxSurge: 0` the stable
/// revision gives up a pod first, so a cluster without spare GPUs never deadlocks.
/// `Recreate` empties the stable revision before the new one starts.
pub fn step(rollout: &RolloutSpec, replicas: i32, desired: Pods, stable: Pods) -> Step {
    if rollout.strategy == RolloutStrategy::Recreate {
        let desired_replicas = if stable.existing == 0 && stable.wanted == 0 { replicas } else { 0 };
        return Step { desired: desired_replicas, stable: 0 };
    }
    if desired.available >= replicas {
        return Step { desired: replicas, stable: 0 };
    }
    let total = desired.wanted + stable.wanted;
    let grow = (replicas + rollout.max_surge - total).max(0);
    let new_desired = (desired.wanted + grow).min(replicas);
    let min_available = replicas - rollout.max_unavailable;
    let desired_unavailable = (desired.wanted - desired.available).max(0);
    let can_remove = (total - min_available - desired_unavailable).clamp(0, stable.wanted);
    Step { desired: new_desired, stable: stable.wanted - can_remove }
}

/// Why a rollout failed, if it did: a digest mismatch at once; a fetch that failed three
/// times, or a worker in a crash loop; or the progress deadline passing, with whatever
/// the pods say.
pub fn failure(pods: &[Pod], elapsed_seconds: i64, deadline_seconds: i32) -> Option<(Reason, String)> {
    for pod in pods {
        let Some(status) = &pod.status else { continue };
        for init in status.init_container_statuses.iter().flatten() {
            let Some(t) = crate::status::failed_init(init) else { continue };
            // The worker's termination message is "<Reason>: <detail>".
            let message = t.message.clone().unwrap_or_default().trim().to_owned();
            if let Some(detail) = message.strip_prefix("DigestMismatch:") {
                return Some((Reason::DigestMismatch, detail.trim().to_owned()));
            }
            let message = message.strip_prefix("FetchFailed:").map_or(message.clone(), |d| d.trim().to_owned());
            if init.restart_count >= 2 {
                return Some((Reason::FetchFailed, message));
            }
        }
        for c in status.container_statuses.iter().flatten() {
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
            if waiting.and_then(|w| w.reason.as_deref()) == Some("CrashLoopBackOff") {
                let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                let detail = last.and_then(|t| t.message.clone()).unwrap_or_default();
                return Some((
                    Reason::CrashLoop,
                    format!("container {} restarted {} times: {}", c.name, c.restart_count, detail.trim()),
                ));
            }
        }
    }
    if elapsed_seconds > i64::from(deadline_seconds) {
        let why = crate::status::pod_problem(pods).map(|(_, m)| format!(": {m}")).unwrap_or_default();
        return Some((
            Reason::ProgressDeadlineExceeded,
            format!("not ready within spec.rollout.progressDeadlineSeconds ({deadline_seconds} s){why}"),
        ));
    }
    None
}

/// Records the history limit removes: the oldest finished ones (superseded, failed, rolled
/// back) beyond `limit`. The stable revision and the desired one are never among them.
pub fn pruned(records: &[RevisionRecord], limit: i32, desired: i64) -> Vec<&RevisionRecord> {
    let mut finished: Vec<&RevisionRecord> = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Superseded | Outcome::Failed | Outcome::RolledBack))
        .filter(|r| r.number != desired)
        .collect();
    finished.sort_by_key(|r| r.number);
    let excess = finished.len().saturating_sub(usize::try_from(limit).unwrap_or(0));
    finished.truncate(excess);
    finished
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rolling(max_surge: i32, max_unavailable: i32) -> RolloutSpec {
        RolloutSpec { max_surge, max_unavailable, ..RolloutSpec::default() }
    }

    /// Runs a rollout to completion, with every pod the step asks for becoming available
    /// before the next step, and returns the (desired, stable) sizes of each step.
    fn simulate(rollout: &RolloutSpec, replicas: i32) -> Vec<(i32, i32)> {
        let (mut desired, mut stable) =
            (Pods::default(), Pods { wanted: replicas, existing: replicas, available: replicas });
        let mut steps = Vec::new();
        for _ in 0..50 {
            let s = step(rollout, replicas, desired, stable);
            steps.push((s.desired, s.stable));
            // The GPU budget: never more pods than replicas + maxSurge.
            assert!(s.desired + s.stable <= replicas + rollout.max_surge.max(0), "{steps:?}");
            desired = Pods { wanted: s.desired, existing: s.desired, available: s.desired };
            stable = Pods { wanted: s.stable, existing: s.stable, available: s.stable };
            if s == (Step { desired: replicas, stable: 0 }) {
                return steps;
            }
        }
        panic!("the rollout never finished: {steps:?}");
    }

    #[test]
    fn without_spare_gpus_pods_are_replaced_one_at_a_time() {
        assert_eq!(simulate(&rolling(0, 1), 3), vec![(0, 2), (1, 2), (1, 1), (2, 1), (2, 0), (3, 0)]);
    }

    #[test]
    fn with_surge_the_stable_revision_stays_until_new_pods_are_available() {
        assert_eq!(simulate(&rolling(1, 0), 2), vec![(1, 2), (1, 1), (2, 1), (2, 0)]);
    }

    #[test]
    fn unavailable_new_pods_do_not_let_the_stable_revision_shrink() {
        let rollout = rolling(1, 0);
        let desired = Pods { wanted: 1, existing: 1, available: 0 };
        let stable = Pods { wanted: 2, existing: 2, available: 2 };
        assert_eq!(step(&rollout, 2, desired, stable), Step { desired: 1, stable: 2 });
    }

    #[test]
    fn recreate_empties_the_stable_revision_first() {
        let rollout = RolloutSpec { strategy: RolloutStrategy::Recreate, max_surge: 0, ..RolloutSpec::default() };
        let full = Pods { wanted: 2, existing: 2, available: 2 };
        assert_eq!(step(&rollout, 2, Pods::default(), full), Step { desired: 0, stable: 0 });
        let draining = Pods { wanted: 0, existing: 1, available: 0 };
        assert_eq!(step(&rollout, 2, Pods::default(), draining), Step { desired: 0, stable: 0 });
        assert_eq!(step(&rollout, 2, Pods::default(), Pods::default()), Step { desired: 2, stable: 0 });
    }
}
