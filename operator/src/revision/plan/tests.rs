//! Table tests of [`decide`]: every decision and every failure reason, without a cluster.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use taimatsu_crds::v1alpha1::RolloutSpec;

use super::*;
use crate::revision::record::Snapshot;

const NOW: &str = "2026-12-02T10:00:00Z";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn snapshot(hash: &str) -> Snapshot {
    serde_json::from_value(json!({
        "hash": hash, "modelName": "qwen", "modelDigest": format!("sha256:{hash}"),
        "model": { "source": { "uri": "https://mirror.internal/qwen/" }, "format": "safetensors",
                   "architecture": "qwen2", "parameters": "7B", "contextLength": 8192, "license": "Apache-2.0" },
        "quantization": "bf16", "kvCacheDtype": "auto", "engine": { "type": "vllm" },
        "requestedBy": "alice", "generation": 1,
    }))
    .unwrap()
}

fn record(number: i64, hash: &str, outcome: Outcome) -> RevisionRecord {
    RevisionRecord {
        number,
        name: format!("chat-{number}"),
        outcome,
        outcome_reason: None,
        rollout_started: Some("2026-12-02T09:59:00Z".into()),
        failed_generation: None,
        analysis: None,
        created: None,
        snapshot: snapshot(hash),
    }
}

fn failed(number: i64, hash: &str, generation: i64) -> RevisionRecord {
    RevisionRecord {
        outcome_reason: Some("DigestMismatch: model.safetensors".into()),
        failed_generation: Some(generation),
        ..record(number, hash, Outcome::Failed)
    }
}

fn pods(wanted: i32, available: i32) -> Pods {
    Pods { wanted, existing: wanted, available }
}

fn ready(replicas: i32) -> RevisionState {
    RevisionState { available: true, ready_replicas: replicas, replicas, problem: None }
}

/// One case: the spec's target, the records, the workloads by hash and what was done.
struct Case {
    target: Target,
    generation: i64,
    records: Vec<RevisionRecord>,
    workloads: HashMap<&'static str, Workload>,
    automatic: bool,
    reported_failed: Option<i64>,
    rollout: RolloutSpec,
    done: Done,
}

impl Case {
    fn new(target: Target, records: Vec<RevisionRecord>) -> Self {
        Case {
            target,
            generation: 2,
            records,
            workloads: HashMap::new(),
            automatic: true,
            reported_failed: None,
            rollout: RolloutSpec { max_surge: 1, max_unavailable: 0, ..RolloutSpec::default() },
            done: Done::default(),
        }
    }

    fn workload(mut self, hash: &'static str, pods: Pods, pod_list: Vec<Pod>) -> Self {
        self.workloads.insert(hash, Workload { pods, pod_list });
        self
    }

    fn applied(mut self, state: RevisionState, stable: Option<(i64, Pods)>) -> Self {
        self.done.applied = Some(Applied { state, stable });
        self
    }

    fn verdict(mut self, verdict: Verdict) -> Self {
        self.done.analysis = Some(verdict);
        self
    }

    fn decide(&self) -> Decision {
        let observed = Observed {
            name: "chat",
            target: &self.target,
            generation: self.generation,
            records: &self.records,
            rollout: &self.rollout,
            replicas: 2,
            automatic_rollback: self.automatic,
            history_limit: 1,
            reported_failed: self.reported_failed,
            workloads: &self.workloads,
            done: &self.done,
        };
        decide(&observed, now())
    }
}

impl Workloads for HashMap<&'static str, Workload> {
    fn of(&self, hash: &str) -> Workload {
        self.get(hash).cloned().unwrap_or_default()
    }
}

fn spec(hash: &str) -> Target {
    Target::Spec(hash.into())
}

#[test]
fn a_blocked_spec_is_reported_and_nothing_else() {
    let blocked = Blocked { reason: Reason::ModelNotFound, message: "no model".into() };
    let case = Case::new(Target::Blocked(blocked.clone()), vec![record(1, "a", Outcome::Active)]);
    assert_eq!(case.decide(), Decision::Block(blocked));
}

#[test]
fn a_pin_to_an_unrecorded_revision_is_blocked_naming_the_history_command() {
    let Decision::Block(blocked) = Case::new(Target::Pinned(7), vec![record(1, "a", Outcome::Active)]).decide() else {
        panic!("not blocked")
    };
    assert_eq!(blocked.reason, Reason::RevisionNotFound);
    assert!(blocked.message.contains("revision 7 is not recorded") && blocked.message.contains("history chat"));
}

#[test]
fn a_new_spec_is_recorded_as_the_next_revision_from_the_stable_one() {
    let records = vec![record(1, "a", Outcome::Superseded), record(2, "b", Outcome::Active)];
    assert_eq!(Case::new(spec("c"), records).decide(), Decision::CreateRevision { number: 3, from: Some(2) });
    assert_eq!(Case::new(spec("a"), vec![]).decide(), Decision::CreateRevision { number: 1, from: None });
    // Content of an older revision again (A → B → A) is a new revision too.
    let records = vec![record(1, "a", Outcome::Superseded), record(2, "b", Outcome::Active)];
    assert_eq!(Case::new(spec("a"), records).decide(), Decision::CreateRevision { number: 3, from: Some(2) });
}

#[test]
fn a_failed_revision_holds_with_the_stable_one_serving_announced_once() {
    let records = vec![record(1, "a", Outcome::Active), failed(2, "b", 2)];
    let hold = Decision::Hold { failed: 2, rollback_to: Some(1), stable: Some(1), announce: true };
    assert_eq!(Case::new(spec("b"), records.clone()).decide(), hold);
    let mut again = Case::new(spec("b"), records.clone());
    again.reported_failed = Some(2);
    assert_eq!(again.decide(), Decision::Hold { failed: 2, rollback_to: Some(1), stable: Some(1), announce: false });
    let mut manual = Case::new(spec("b"), records);
    manual.automatic = false;
    assert_eq!(manual.decide(), Decision::Hold { failed: 2, rollback_to: None, stable: Some(1), announce: false });
}

#[test]
fn recorded_revisions_restart_as_rollback_retry_or_roll_forward() {
    // Pinned to a superseded revision: a manual rollback.
    let records = vec![record(1, "a", Outcome::Superseded), record(2, "b", Outcome::Active)];
    assert_eq!(
        Case::new(Target::Pinned(1), records).decide(),
        Decision::Restart { revision: 1, kind: Restart::ManualRollback, previous: Outcome::Superseded, from: Some(2) }
    );
    // A failed pinned revision is retried by a later generation, as a manual rollback.
    let records = vec![record(1, "a", Outcome::Active), failed(2, "b", 1)];
    assert_eq!(
        Case::new(Target::Pinned(2), records).decide(),
        Decision::Restart { revision: 2, kind: Restart::ManualRollback, previous: Outcome::Failed, from: Some(1) }
    );
    // The pin removed: the spec's own revision, rolled back from earlier, rolls forward.
    let records = vec![record(1, "a", Outcome::Active), record(2, "b", Outcome::RolledBack)];
    assert_eq!(
        Case::new(spec("b"), records).decide(),
        Decision::Restart { revision: 2, kind: Restart::RollForward, previous: Outcome::RolledBack, from: Some(1) }
    );
    assert_eq!(Restart::Retry.event(), "rollout-retried");
}

#[test]
fn a_progressing_revision_is_scaled_a_step_beside_the_stable_one() {
    let records = vec![record(1, "a", Outcome::Active), record(2, "b", Outcome::Progressing)];
    let case = Case::new(spec("b"), records).workload("a", pods(2, 2), vec![]);
    assert_eq!(case.decide(), Decision::Scale { desired: 2, stable: Some(1), step: Step { desired: 1, stable: 2 } });
    let first = Case::new(spec("a"), vec![record(1, "a", Outcome::Progressing)]);
    assert_eq!(first.decide(), Decision::Scale { desired: 1, stable: None, step: Step { desired: 2, stable: 0 } });
}

/// A pod of the desired revision whose fetch step or worker says `status`.
fn pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({ "metadata": { "name": "chat-b-0" }, "status": status })).unwrap()
}

fn fetch_failed(message: &str, restarts: i32) -> Pod {
    pod(json!({ "initContainerStatuses": [{ "name": "fetch", "image": "w", "imageID": "", "ready": false,
        "restartCount": restarts, "state": { "terminated": { "exitCode": 1, "message": message } } }] }))
}

#[test]
fn every_failure_reason_fails_the_revision_with_the_rollback() {
    let crash = pod(json!({ "containerStatuses": [{ "name": "worker", "image": "w", "imageID": "", "ready": false,
        "restartCount": 5, "state": { "waiting": { "reason": "CrashLoopBackOff" } },
        "lastState": { "terminated": { "exitCode": 1, "message": "out of memory" } } }] }));
    let unschedulable = pod(json!({ "conditions": [{ "type": "PodScheduled", "status": "False",
        "reason": "Unschedulable", "message": "0/5 nodes have nvidia.com/gpu" }] }));
    let cases = [
        (
            fetch_failed("DigestMismatch: model.safetensors: sha256 0f… ≠ 2a…", 0),
            10,
            Reason::DigestMismatch,
            "model.safetensors: sha256 0f… ≠ 2a…",
        ),
        (fetch_failed("FetchFailed: 404 Not Found", 2), 10, Reason::FetchFailed, "404 Not Found"),
        (crash, 10, Reason::CrashLoop, "container worker restarted 5 times: out of memory"),
        (
            unschedulable,
            3600,
            Reason::ProgressDeadlineExceeded,
            "not ready within spec.rollout.progressDeadlineSeconds (1800 s): 0/5 nodes have nvidia.com/gpu",
        ),
    ];
    for (pod, age, reason, message) in cases {
        let mut progressing = record(2, "b", Outcome::Progressing);
        progressing.rollout_started =
            Some(now().checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(age)).unwrap().to_string());
        let case = Case::new(spec("b"), vec![record(1, "a", Outcome::Active), progressing])
            .workload("b", pods(1, 0), vec![pod])
            .applied(RevisionState::default(), Some((1, pods(2, 2))));
        let expected = Decision::Fail { revision: 2, reason, message: message.into(), rollback_to: Some(1) };
        assert_eq!(case.decide(), expected, "{reason:?}");
    }
    // A first fetch failure is retried, not a failure yet.
    let case = Case::new(spec("b"), vec![record(1, "a", Outcome::Active), record(2, "b", Outcome::Progressing)])
        .workload("b", pods(1, 0), vec![fetch_failed("FetchFailed: connection reset", 0)])
        .applied(RevisionState::default(), Some((1, pods(2, 2))));
    assert!(matches!(case.decide(), Decision::Report(_)), "{:?}", case.decide());
}

#[test]
fn an_available_and_drained_rollout_is_analysed_then_judged() {
    let records = vec![record(1, "a", Outcome::Active), record(2, "b", Outcome::Progressing)];
    let drained = || Case::new(spec("b"), records.clone()).applied(ready(2), Some((1, Pods::default())));
    assert_eq!(drained().decide(), Decision::Analyse { revision: 2 });
    assert_eq!(
        drained().verdict(Verdict::Passed("error rate 0.0%".into())).decide(),
        Decision::Succeed { revision: 2, replaced: vec![(1, Outcome::Superseded)], analysis: "error rate 0.0%".into() }
    );
    assert_eq!(
        drained().verdict(Verdict::Failed("p95 900 ms > maxP95LatencyMs 1".into())).decide(),
        Decision::Fail {
            revision: 2,
            reason: Reason::AnalysisFailed,
            message: "p95 900 ms > maxP95LatencyMs 1".into(),
            rollback_to: Some(1)
        }
    );
    let Decision::Report(report) = drained().verdict(Verdict::Waiting(Duration::from_secs(40))).decide() else {
        panic!("no report")
    };
    assert_eq!(
        (report.analysing, report.requeue, report.complete),
        (Some(Duration::from_secs(40)), Duration::from_secs(40), false)
    );
    // Not drained yet: no analysis.
    let serving_beside = Case::new(spec("b"), records).applied(ready(2), Some((1, pods(1, 1))));
    assert!(matches!(serving_beside.decide(), Decision::Report(Report { analysing: None, .. })));
}

#[test]
fn a_rollback_that_succeeds_marks_the_newer_revision_rolled_back() {
    let records = vec![record(1, "a", Outcome::Progressing), record(2, "b", Outcome::Active)];
    let case = Case::new(Target::Pinned(1), records)
        .applied(ready(2), Some((2, Pods::default())))
        .verdict(Verdict::Passed(String::new()));
    assert_eq!(
        case.decide(),
        Decision::Succeed { revision: 1, replaced: vec![(2, Outcome::RolledBack)], analysis: String::new() }
    );
}

#[test]
fn finished_records_past_the_history_limit_are_pruned_then_the_status_is_reported() {
    let records = vec![
        record(1, "a", Outcome::Superseded),
        failed(2, "b", 1),
        record(3, "c", Outcome::Superseded),
        record(4, "d", Outcome::Active),
    ];
    let mut case = Case::new(spec("d"), records).applied(ready(2), None);
    assert_eq!(case.decide(), Decision::Prune { revisions: vec![1, 2] });
    case.done.pruned = true;
    assert_eq!(
        case.decide(),
        Decision::Report(Report {
            desired: 4,
            state: ready(2),
            complete: true,
            stable: None,
            analysing: None,
            requeue: Duration::from_secs(600)
        })
    );
}
