//! Revisions, rollout, automatic and manual rollback, history pruning and the
//! control-plane audit trail, against the real control plane (controller-manager,
//! scheduler, kwok GPU nodes). Failures are real pod states: a new revision is held
//! Pending by a node selector no node matches, and a fetch failure is the init container
//! status a kubelet would write, set through the pods' status subresource.

mod common;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_core::audit_chain;
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_operator::revision::{Outcome, RevisionRecord, store};
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, with_namespace};

use common::*;

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-taimatsu");
/// A node selector no node matches: keeps a revision's pods Pending.
const HOLD: &str = "taimatsu.test/hold";

async fn apply_spec(client: &Client, ns: &str, name: &str, spec: Value) {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let md = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": name }, "spec": spec });
    mds.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(md)).await.expect("apply deployment");
}

fn l4_spec(quantization: &str, extra_placement: Value) -> Value {
    let mut placement = json!({ "acceleratorProfileRef": { "name": "l4-24gb" } });
    placement.as_object_mut().unwrap().extend(extra_placement.as_object().cloned().unwrap_or_default());
    json!({ "modelRef": { "name": "qwen" }, "quantization": quantization, "engine": { "type": "vllm" }, "placement": placement })
}

async fn history(client: &Client, ns: &str, name: &str) -> Vec<RevisionRecord> {
    store::list(client, ns, name).await.expect("revision records")
}

fn outcomes(records: &[RevisionRecord]) -> Vec<(i64, Outcome)> {
    records.iter().map(|r| (r.number, r.outcome)).collect()
}

/// Waits until the ModelDeployment satisfies `check`.
async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&ModelDeployment) -> bool,
) -> ModelDeployment {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let found = poll_until(what, Duration::from_secs(120), || {
        let mds = mds.clone();
        let check = &check;
        async move { Ok(mds.get_opt(name).await?.filter(|md| check(md))) }
    })
    .await;
    match found {
        Ok(md) => md,
        Err(e) => panic!("{ns}/{name}: {e:#}; status now: {:#?}", mds.get(name).await.ok().and_then(|m| m.status)),
    }
}

/// Waits until the revision records have `expected` outcomes.
async fn wait_history(client: &Client, ns: &str, name: &str, expected: Vec<(i64, Outcome)>) -> Vec<RevisionRecord> {
    let found = poll_until("the revision history", Duration::from_secs(60), || {
        let expected = expected.clone();
        async move {
            let records = history(client, ns, name).await;
            Ok((outcomes(&records) == expected).then_some(records))
        }
    })
    .await;
    match found {
        Ok(records) => records,
        Err(e) => panic!("{e:#}: {:?} instead of {expected:?}", outcomes(&history(client, ns, name).await)),
    }
}

fn revisions(md: &ModelDeployment) -> (Option<i64>, Option<i64>, Option<i64>) {
    let s = md.status.clone().unwrap_or_default();
    (s.desired_revision, s.serving_revision, s.failed_revision)
}

fn condition(md: &ModelDeployment, type_: &str) -> Option<(String, String, String)> {
    let c = md.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The control-plane audit records about one ModelDeployment, after checking the whole
/// chain verifies.
fn audit_events(cp: &ControlPlane, ns: &str, name: &str) -> Vec<Value> {
    let (_, records) = audit_records(cp, "operator-0");
    records.into_iter().filter(|r| r["namespace"] == ns && r["modelDeployment"] == name).collect()
}

fn event_names(records: &[Value]) -> Vec<String> {
    records.iter().map(|r| r["event"].as_str().unwrap_or_default().to_owned()).collect()
}

async fn worker_args(client: &Client, ns: &str, name: &str) -> Vec<Vec<String>> {
    let mut all: Vec<Vec<String>> = worker_deployments(client, ns, name)
        .await
        .iter()
        .map(|d: &Deployment| {
            d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
        })
        .collect();
    all.sort();
    all
}

fn plugin(cp: &ControlPlane, args: &[&str]) -> (bool, String) {
    let out =
        Command::new(PLUGIN).env("KUBECONFIG", cp.kubeconfig("taimatsu-admin")).args(args).output().expect("plugin");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn every_change_to_what_is_served_is_a_numbered_revision_and_replicas_are_not() {
    let (cp, _, _) = setup().await;
    with_namespace("revisions", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let mut spec = l4_spec("awq", json!({}));
        spec["rollback"] = json!({ "revisionHistoryLimit": 1 });
        apply_spec(&client, &ns, "chat", spec.clone()).await;
        wait_status(&client, &ns, "chat", "revision 1 serving", |md| revisions(md) == (Some(1), Some(1), None)).await;

        spec["replicas"] = json!(2);
        apply_spec(&client, &ns, "chat", spec.clone()).await;
        wait_status(&client, &ns, "chat", "2 ready replicas", |md| {
            md.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
        })
        .await;
        assert_eq!(
            outcomes(&history(&client, &ns, "chat").await),
            vec![(1, Outcome::Active)],
            "replicas-only changes are not revisions"
        );

        for (quantization, number) in [("fp8", 2), ("gptq", 3)] {
            spec["quantization"] = json!(quantization);
            apply_spec(&client, &ns, "chat", spec.clone()).await;
            wait_status(&client, &ns, "chat", "the new revision serving", |md| {
                revisions(md) == (Some(number), Some(number), None)
                    && condition(md, "Ready").is_some_and(|c| c.0 == "True")
            })
            .await;
        }
        // History limit 1: revision 1 (superseded) was pruned; 2 is kept, 3 serves.
        let records = wait_history(&client, &ns, "chat", vec![(2, Outcome::Superseded), (3, Outcome::Active)]).await;
        assert_eq!(records[1].snapshot.quantization.to_string(), "gptq");
        assert_eq!(records[1].snapshot.requested_by, "tests");
        let args = worker_args(&client, &ns, "chat").await;
        assert_eq!(args.len(), 1, "only the serving revision keeps a Deployment: {args:?}");
        assert!(args[0].windows(2).any(|w| w == ["--quantization", "gptq_marlin"]), "{args:?}");

        let events = audit_events(cp, &ns, "chat");
        assert_eq!(
            event_names(&events),
            [
                "revision-created",
                "rollout-started",
                "rollout-succeeded",
                "revision-created",
                "rollout-started",
                "rollout-succeeded",
                "revision-created",
                "rollout-started",
                "rollout-succeeded",
                "history-pruned",
            ]
        );
        assert_eq!(events.last().unwrap()["revisions"], json!([1]));
    })
    .await;
}

/// Sets the status a kubelet writes when the fetch init container exits with the
/// worker's termination message.
async fn fail_fetch(client: &Client, ns: &str, pod: &str, message: &str, restarts: i32) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = json!({ "status": {
        "phase": "Pending",
        "initContainerStatuses": [{
            "name": "fetch", "image": "registry.local/taimatsu/inference-worker:0.1.0", "imageID": "", "ready": false,
            "restartCount": restarts,
            "state": { "terminated": { "exitCode": 1, "reason": "Error", "message": message } },
        }],
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(status)).await.expect("pod status");
}

async fn held_pod(client: &Client, ns: &str, name: &str, revision_hash: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("taimatsu.dev/model-deployment={name},taimatsu.dev/revision={revision_hash}");
    poll_until("a pod of the new revision", Duration::from_secs(60), || {
        let (pods, selector) = (pods.clone(), selector.clone());
        async move {
            Ok(pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .into_iter()
                .next()
                .and_then(|p| p.metadata.name))
        }
    })
    .await
    .expect("pod")
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_digest_mismatch_rolls_back_to_the_last_stable_revision_and_is_not_retried() {
    let (cp, _, _) = setup().await;
    with_namespace("digest-mismatch", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_spec(&client, &ns, "chat", l4_spec("awq", json!({}))).await;
        wait_status(&client, &ns, "chat", "revision 1 serving", |md| revisions(md) == (Some(1), Some(1), None)).await;

        apply_spec(&client, &ns, "chat", l4_spec("awq", json!({ "nodeSelector": { HOLD: "true" } }))).await;
        wait_status(&client, &ns, "chat", "revision 2 rolling out", |md| revisions(md).0 == Some(2)).await;
        let new_hash = history(&client, &ns, "chat").await[1].snapshot.hash.clone();
        let pod = held_pod(&client, &ns, "chat", &new_hash).await;
        let message = "DigestMismatch: model.safetensors: sha256 is 9f2c… but the manifest says 2222…";
        fail_fetch(&client, &ns, &pod, message, 0).await;

        let md = wait_status(&client, &ns, "chat", "an automatic rollback", |md| {
            condition(md, "RolledBack").is_some_and(|c| c.0 == "True")
        })
        .await;
        assert_eq!(revisions(&md), (Some(2), Some(1), Some(2)));
        let (_, reason, text) = condition(&md, "RolledBack").unwrap();
        assert_eq!(reason, "DigestMismatch");
        assert!(text.starts_with("desired revision 2 failed (DigestMismatch: model.safetensors"), "{text}");
        assert_eq!(condition(&md, "Ready").unwrap().0, "True", "revision 1 still serves");
        assert_eq!(condition(&md, "Degraded").unwrap().1, "DigestMismatch");
        assert_eq!(
            md.spec.placement.unwrap().node_selector.get(HOLD).map(String::as_str),
            Some("true"),
            "the spec is left as written"
        );
        poll_until("the failed revision's Deployment to go", Duration::from_secs(30), || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { Ok((worker_deployments(&client, &ns, "chat").await.len() == 1).then_some(())) }
        })
        .await
        .unwrap();
        assert_eq!(outcomes(&history(&client, &ns, "chat").await), vec![(1, Outcome::Active), (2, Outcome::Failed)]);
        // The Warning Event of the rollback, as `kubectl describe` shows it.
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
        let rolled_back = poll_until("the RolledBack Event", Duration::from_secs(30), || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await?.items;
                Ok(list.into_iter().find(|e| e.reason.as_deref() == Some("RolledBack")))
            }
        })
        .await
        .unwrap();
        assert_eq!(rolled_back.type_.as_deref(), Some("Warning"));
        assert!(
            rolled_back.note.unwrap_or_default().contains("revision 2 failed (DigestMismatch): serving revision 1")
        );
        // Argo CD's health check (run by Debian's Lua) reads the live object as Degraded.
        let live = cp.dir().join(format!("{ns}-chat.json"));
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        std::fs::write(&live, serde_json::to_vec(&mds.get("chat").await.unwrap()).unwrap()).unwrap();
        let health = Command::new("bash")
            .arg(taimatsu_tests::repo_root().join("gitops/test/argocd-health.sh"))
            .arg("--object")
            .arg(&live)
            .output()
            .expect("argocd-health.sh");
        let health = String::from_utf8_lossy(&health.stdout).to_string();
        assert!(health.starts_with("Degraded\tdesired revision 2 failed (DigestMismatch"), "{health:?}");

        // Nothing retries it: another reconcile (an annotation change) leaves it failed.
        let before = event_names(&audit_events(cp, &ns, "chat")).len();
        mds.patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "poke": "1" } } })),
        )
        .await
        .unwrap();
        wait_status(&client, &ns, "chat", "the poke observed", |md| {
            md.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("poke"))
        })
        .await;
        let events = audit_events(cp, &ns, "chat");
        assert_eq!(
            event_names(&events)[..],
            [
                "revision-created",
                "rollout-started",
                "rollout-succeeded",
                "revision-created",
                "rollout-started",
                "rollout-failed",
                "model-verification-failed",
                "rollback-automatic",
            ]
        );
        assert_eq!(events.len(), before);
        assert_eq!(events[5]["reason"], "DigestMismatch");
        assert_eq!(events[7]["from"], 2);
        assert_eq!(events[7]["to"], 1);

        // A spec change is a new revision, rolled out again.
        apply_spec(&client, &ns, "chat", l4_spec("fp8", json!({}))).await;
        let md =
            wait_status(&client, &ns, "chat", "revision 3 serving", |md| revisions(md) == (Some(3), Some(3), None))
                .await;
        assert_eq!(condition(&md, "RolledBack").unwrap().0, "False");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_rollout_past_its_progress_deadline_is_rolled_back() {
    setup().await;
    with_namespace("deadline", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let mut spec = l4_spec("awq", json!({}));
        spec["rollout"] = json!({ "progressDeadlineSeconds": 30, "maxSurge": 0, "maxUnavailable": 1 });
        apply_spec(&client, &ns, "slow", spec.clone()).await;
        wait_status(&client, &ns, "slow", "revision 1 serving", |md| revisions(md) == (Some(1), Some(1), None)).await;
        spec["placement"]["nodeSelector"] = json!({ HOLD: "true" });
        apply_spec(&client, &ns, "slow", spec).await;
        let md = wait_status(&client, &ns, "slow", "the deadline to pass", |md| {
            condition(md, "RolledBack").is_some_and(|c| c.0 == "True")
        })
        .await;
        let (_, reason, text) = condition(&md, "RolledBack").unwrap();
        assert_eq!(reason, "ProgressDeadlineExceeded");
        assert!(text.contains("progressDeadlineSeconds (30 s)") && text.contains("didn't match"), "{text}");
        // maxSurge 0 had taken revision 1's only pod away; the rollback gives it back.
        wait_status(&client, &ns, "slow", "revision 1 ready again", |md| {
            md.status.as_ref().and_then(|s| s.ready_replicas) == Some(1) && revisions(md) == (Some(2), Some(1), Some(2))
        })
        .await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn manual_rollback_is_declarative_audited_and_the_plugin_shows_it() {
    let (cp, _, _) = setup().await;
    with_namespace("manual-rollback", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_spec(&client, &ns, "chat", l4_spec("awq", json!({}))).await;
        wait_status(&client, &ns, "chat", "revision 1", |md| revisions(md) == (Some(1), Some(1), None)).await;
        apply_spec(&client, &ns, "chat", l4_spec("fp8", json!({}))).await;
        wait_status(&client, &ns, "chat", "revision 2", |md| revisions(md) == (Some(2), Some(2), None)).await;

        let (ok, out) = plugin(cp, &["rollback", "chat", "-n", &ns, "--to-revision", "7", "--reason", "x"]);
        assert!(!ok && out.contains("has no revision 7; recorded revisions: [1, 2]"), "{out}");
        let (ok, out) = plugin(
            cp,
            &["rollback", "chat", "-n", &ns, "--to-revision", "1", "--reason", "fp8 answers are worse on the eval set"],
        );
        assert!(ok, "{out}");
        let md = wait_status(&client, &ns, "chat", "revision 1 serving again", |md| {
            revisions(md) == (Some(1), Some(1), None)
        })
        .await;
        assert_eq!(md.spec.rollback.to_revision, Some(1), "the rollback is a spec change, visible to GitOps");
        let args = worker_args(&client, &ns, "chat").await;
        assert!(args.len() == 1 && args[0].windows(2).any(|w| w == ["--quantization", "awq_marlin"]), "{args:?}");
        wait_history(&client, &ns, "chat", vec![(1, Outcome::Active), (2, Outcome::RolledBack)]).await;

        let events = audit_events(cp, &ns, "chat");
        let manual = events.iter().find(|e| e["event"] == "rollback-manual").expect("a rollback-manual record");
        assert_eq!(manual["revision"], 1);
        assert_eq!(manual["from"], 2);
        assert_eq!(manual["requestedBy"], "kubectl-taimatsu");
        assert_eq!(manual["changeCause"], "fp8 answers are worse on the eval set");

        // Through kubectl itself, as a plugin on the PATH.
        let plugin_dir = std::path::Path::new(PLUGIN).parent().unwrap().to_owned();
        let path = format!("{}:{}", plugin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let out =
            cp.kubectl_command().env("PATH", path).args(["taimatsu", "history", "chat", "-n", &ns]).output().unwrap();
        let table = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<&str> = table.lines().collect();
        assert!(rows[0].starts_with("REV  OUTCOME"), "{table}");
        assert!(rows[1].starts_with("1    active") && rows[1].contains("awq") && rows[1].contains("tests"), "{table}");
        assert!(rows[2].starts_with("2    rolled-back") && rows[2].contains("fp8"), "{table}");
        let (ok, out) = plugin(cp, &["status", "chat", "-n", &ns]);
        assert!(ok && out.contains("serving revision:  1") && out.contains("pinned to:         1"), "{out}");

        // Serving the spec again rolls revision 2 out once more.
        let (ok, out) = plugin(cp, &["resume", "chat", "-n", &ns, "--reason", "eval fixed"]);
        assert!(ok, "{out}");
        wait_status(&client, &ns, "chat", "revision 2 again", |md| revisions(md) == (Some(2), Some(2), None)).await;

        // audit verify: the operator's file passes, also against the cluster's head; a
        // changed byte is named.
        let file = audit_log(cp, "operator-0");
        let (ok, out) = plugin(cp, &["audit", "verify", file.to_str().unwrap()]);
        assert!(ok && out.starts_with("ok: "), "{out}");
        let (ok, out) = plugin(cp, &["audit", "verify", "--against-cluster", "-n", "default", file.to_str().unwrap()]);
        assert!(ok && out.contains("reaches the cluster's head"), "{out}");
        let tampered = cp.dir().join("audit/tampered.jsonl");
        let text =
            std::fs::read_to_string(&file).unwrap().replacen("fp8 answers are worse", "fp8 answers are fine!", 1);
        std::fs::write(&tampered, text).unwrap();
        let (ok, out) = plugin(cp, &["audit", "verify", tampered.to_str().unwrap()]);
        assert!(!ok && out.contains("was modified"), "{out}");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn max_surge_zero_with_exactly_enough_gpus_completes_without_deadlock() {
    setup().await;
    with_namespace("exact-gpus", move |client, ns| async move {
        // The MIG node has exactly 4 slices and this binary's other tests use none of them.
        create_model(&client, &ns, "mistral", "7.25B").await;
        let spec = |quantization: &str| {
            json!({ "modelRef": { "name": "mistral" }, "quantization": quantization, "engine": { "type": "vllm" },
                    "placement": { "acceleratorProfileRef": { "name": "h100-mig-3g-40gb" } }, "replicas": 4,
                    "rollout": { "maxSurge": 0, "maxUnavailable": 1 } })
        };
        apply_spec(&client, &ns, "full", spec("bf16")).await;
        wait_status(&client, &ns, "full", "4 replicas of revision 1", |md| {
            revisions(md) == (Some(1), Some(1), None) && md.status.as_ref().and_then(|s| s.ready_replicas) == Some(4)
        })
        .await;
        // Every slice is taken: a new revision gets one only when the old one gives it back.
        apply_spec(&client, &ns, "full", spec("fp8")).await;
        let md = wait_status(&client, &ns, "full", "4 replicas of revision 2", |md| {
            revisions(md) == (Some(2), Some(2), None) && md.status.as_ref().and_then(|s| s.ready_replicas) == Some(4)
        })
        .await;
        assert_eq!(condition(&md, "RolledBack").unwrap().0, "False");
        let args = worker_args(&client, &ns, "full").await;
        assert!(args.len() == 1 && args[0].windows(2).any(|w| w == ["--quantization", "fp8"]), "{args:?}");
    })
    .await;
}

/// The audit chain's crash and reset handling, on the real API server (no operator process:
/// the module under test is the one every operator replica uses).
#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn the_audit_chain_repairs_a_crash_gap_and_refuses_a_reset_head() {
    use taimatsu_operator::audit::{AuditConfig, AuditError, ControlPlaneAudit};
    let (cp, client, _) = setup().await;
    let dir = cp.dir().join("audit-module");
    let config = |file: &str, head: &str| AuditConfig {
        file: Some(dir.join(file)),
        stdout: false,
        head_namespace: "default".into(),
        head_name: head.into(),
        identity: "test".into(),
    };

    // A replica crashed after the head took record 2 but before its file did: the next
    // append writes record 2 from the head's copy first.
    let audit = ControlPlaneAudit::open(client.clone(), config("a.jsonl", "crash-head")).unwrap();
    audit.append(json!({ "event": "one" })).await.unwrap();
    let kept = std::fs::read(dir.join("a.jsonl")).unwrap();
    audit.append(json!({ "event": "two" })).await.unwrap();
    drop(audit);
    std::fs::write(dir.join("a.jsonl"), &kept).unwrap();
    let audit = ControlPlaneAudit::open(client.clone(), config("a.jsonl", "crash-head")).unwrap();
    assert_eq!(audit.append(json!({ "event": "three" })).await.unwrap(), 3);
    let log = std::fs::read(dir.join("a.jsonl")).unwrap();
    assert_eq!(audit_chain::verify(&log).unwrap().records, 3, "{}", String::from_utf8_lossy(&log));

    // The same file against a head that knows nothing of it (a new cluster, an etcd
    // restore): appending would fork the chain, so it is refused.
    let reset = ControlPlaneAudit::open(client.clone(), config("a.jsonl", "fresh-head")).unwrap();
    let err = reset.append(json!({ "event": "four" })).await.unwrap_err();
    assert!(matches!(err, AuditError::Diverged { file_seq: 3, head_seq: 0, .. }), "{err}");
    assert_eq!(
        audit_chain::verify(&std::fs::read(dir.join("a.jsonl")).unwrap()).unwrap().records,
        3,
        "nothing written"
    );
}

/// A burst of decisions (a thousand reconciles after a restart) shares head swaps: each
/// decision is sealed once, in one chain, with far fewer swaps than records; and a crash
/// that loses a whole batch from the file is repaired from the head's copy of the batch.
#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn concurrent_audit_appends_share_head_swaps_and_seal_each_decision_once() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{WatchStreamExt, watcher};
    use taimatsu_operator::audit::{AuditConfig, ControlPlaneAudit};
    let (cp, client, _) = setup().await;
    let dir = cp.dir().join("audit-batch");
    let file = dir.join("a.jsonl");
    let config = AuditConfig {
        file: Some(file.clone()),
        stdout: false,
        head_namespace: "default".into(),
        head_name: "batch-head".into(),
        identity: "test".into(),
    };
    // Every swap of the head, as the API server's watch reports it.
    let heads: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let swaps = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let last_seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counted, seen_last) = (swaps.clone(), last_seen.clone());
    let watch = tokio::spawn(
        watcher(heads.clone(), watcher::Config::default().fields("metadata.name=batch-head"))
            .touched_objects()
            .for_each(move |head| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let last = head.ok().and_then(|h| h.data).and_then(|d| d.get("last-record").cloned());
                if last.is_some_and(|l| l.contains("\"seq\":150,")) {
                    seen_last.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                futures::future::ready(())
            }),
    );

    let audit = ControlPlaneAudit::open(client.clone(), config.clone()).unwrap();
    // 200 appends at once, 50 of them repeating a decision already asked for.
    let appends = (0..200).map(|i| audit.append(json!({ "event": "e", "decision": format!("d{}", i % 150) })));
    for result in futures::future::join_all(appends).await {
        result.expect("append");
    }
    let log = std::fs::read(&file).unwrap();
    assert_eq!(audit_chain::verify(&log).unwrap().records, 150, "each decision once");
    poll_until("the watch to see the last swap", Duration::from_secs(30), || {
        let seen = last_seen.load(std::sync::atomic::Ordering::SeqCst);
        async move { Ok(seen.then_some(())) }
    })
    .await
    .expect("the head's last swap");
    let seen = swaps.load(std::sync::atomic::Ordering::SeqCst);
    assert!(seen < 150, "{seen} swaps of the head for 150 records: appends were not batched");
    watch.abort();

    // The file loses the last batch (a crash after the swap, before the write): the next
    // append copies the batch from the head first.
    let batch = heads.get("batch-head").await.unwrap().data.unwrap()["last-batch"].clone();
    let kept = &log[..log.len() - batch.len()];
    drop(audit);
    std::fs::write(&file, kept).unwrap();
    let audit = ControlPlaneAudit::open(client.clone(), config).unwrap();
    assert_eq!(audit.append(json!({ "event": "after" })).await.unwrap(), 151);
    let log = std::fs::read(&file).unwrap();
    assert_eq!(audit_chain::verify(&log).unwrap().records, 151, "{}", String::from_utf8_lossy(&log));
}
