//! The audit head ConfigMap as an insider with `edit` in the operator's namespace (or the
//! operator's own ConfigMap right) would attack it, against the real control plane: a
//! decision digest planted in `recent-decisions`, a line planted in `last-batch`, an edited
//! sequence number or hash. None of them may silence a record, enter a replica's file, or
//! make the operator extend a chain it has not verified.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use taimatsu_core::audit_chain;
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_operator::audit::{AuditConfig, AuditError, ControlPlaneAudit};
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, with_namespace};

use common::*;

/// The head the test operator (`setup`) keeps: `--audit-head` default, lease namespace.
const OPERATOR_HEAD: &str = "taimatsu-audit-head";

/// What the operator keeps of a decision id in `recent-decisions` (audit/head.rs).
fn digest(decision: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(decision.as_bytes())[..8])
}

fn spec(quantization: &str) -> Value {
    json!({ "modelRef": { "name": "qwen" }, "quantization": quantization, "engine": { "type": "vllm" },
            "placement": { "acceleratorProfileRef": { "name": "l4-24gb" } } })
}

async fn apply_spec(client: &Client, ns: &str, spec: Value) {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let md = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "chat" }, "spec": spec });
    mds.patch("chat", &PatchParams::apply("tests").force(), &Patch::Apply(md)).await.expect("apply deployment");
}

async fn wait_serving(client: &Client, ns: &str, revision: i64) {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let serving = poll_until("the revision to serve", Duration::from_secs(120), || {
        let mds = mds.clone();
        async move {
            let status = mds.get("chat").await?.status.unwrap_or_default();
            Ok((status.serving_revision == Some(revision) && status.desired_revision == Some(revision)).then_some(()))
        }
    })
    .await;
    if let Err(e) = serving {
        panic!("{ns}/chat: {e:#}; status: {:#?}", mds.get("chat").await.ok().and_then(|m| m.status));
    }
}

/// The operator's records about `ns/chat`.
fn chat_records(cp: &ControlPlane, ns: &str) -> Vec<Value> {
    let (_, records) = audit_records(cp, "operator-0");
    records.into_iter().filter(|r| r["namespace"] == ns && r["modelDeployment"] == "chat").collect()
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_planted_decision_digest_does_not_silence_the_next_revision() {
    let (cp, _, _) = setup().await;
    with_namespace("planted-decision", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_spec(&client, &ns, spec("awq")).await;
        wait_serving(&client, &ns, 1).await;

        // The decisions the next spec change (generation + 1, revision 2) will take, as
        // anyone who can read the ModelDeployment can compute them, planted in the head.
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        let md = mds.get("chat").await.unwrap();
        let (uid, next) = (md.uid().unwrap(), md.metadata.generation.unwrap() + 1);
        let planted: Vec<String> = ["revision-created", "rollout-started", "rollout-succeeded"]
            .iter()
            .map(|event| digest(&format!("{uid}:{next}:{event}:2")))
            .collect();
        tamper_head(&client, OPERATOR_HEAD, |data| {
            let recent = data.entry("recent-decisions".into()).or_default();
            for d in &planted {
                recent.push('\n');
                recent.push_str(d);
            }
        })
        .await;

        apply_spec(&client, &ns, spec("fp8")).await;
        wait_serving(&client, &ns, 2).await;
        let recorded: Vec<(String, Value)> = chat_records(cp, &ns)
            .iter()
            .map(|r| (r["event"].as_str().unwrap().to_owned(), r["revision"].clone()))
            .collect();
        for event in ["revision-created", "rollout-started", "rollout-succeeded"] {
            assert!(
                recorded.contains(&(event.to_owned(), json!(2))),
                "revision 2 serves but its {event} record is missing: {recorded:?}"
            );
        }
    })
    .await;
}

/// An audit module instance of its own (file and head), as every operator replica runs it.
fn module(cp: &ControlPlane, client: &Client, head: &str) -> (ControlPlaneAudit, std::path::PathBuf) {
    let file = cp.dir().join("audit-head").join(format!("{head}.jsonl"));
    let config = AuditConfig {
        file: Some(file.clone()),
        stdout: false,
        head_namespace: "default".into(),
        head_name: head.into(),
        identity: "replica".into(),
    };
    (ControlPlaneAudit::open(client.clone(), config).unwrap(), file)
}

/// The head's last line, parsed.
async fn head_line(client: &Client, head: &str) -> Value {
    let heads: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let data = heads.get(head).await.unwrap().data.unwrap();
    serde_json::from_str(data["last-batch"].lines().last().unwrap()).unwrap()
}

/// Sets both copies of the head's last line (`last-record` and `last-batch`) to `line`.
fn set_head_line(data: &mut std::collections::BTreeMap<String, String>, line: &Value) {
    let text = format!("{line}\n");
    data.insert("last-record".into(), text.clone());
    data.insert("last-batch".into(), text);
}

/// The append after a tampering must be refused and leave the file as it was.
#[track_caller]
fn assert_refused(result: Result<u64, AuditError>, file: &std::path::Path, records: u64) {
    let log = std::fs::read(file).unwrap();
    let text = String::from_utf8_lossy(&log).to_string();
    assert!(result.is_err(), "the operator extended a tampered head: sealed as {result:?}; its file:\n{text}");
    let report =
        audit_chain::verify(&log).unwrap_or_else(|e| panic!("the replica's file no longer verifies ({e}):\n{text}"));
    assert_eq!(report.records, records, "{text}");
    assert!(!text.contains("alice"), "a planted line entered the replica's file:\n{text}");
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_line_planted_in_last_batch_is_never_copied_into_a_replica_file() {
    let (cp, client, _) = setup().await;
    let (audit, file) = module(cp, &client, "planted-line-head");
    audit.append(json!({ "event": "one" })).await.unwrap();
    audit.append(json!({ "event": "two" })).await.unwrap();
    // A forged admission after record 2: linked to it, but with a made-up hash.
    let last = head_line(&client, "planted-line-head").await;
    let planted = json!({ "seq": 3, "prev": last["hash"], "hash": "ab".repeat(32),
                          "record": { "event": "admission", "kind": "ModelDeployment", "namespace": "ml",
                                      "name": "chat", "generation": 9, "user": "alice" } });
    tamper_head(&client, "planted-line-head", |data| set_head_line(data, &planted)).await;
    // A replica whose file lacks the last batch (it crashed after the swap): the head's
    // lines are what it would copy.
    let result = audit.append(json!({ "event": "three" })).await;
    assert_refused(result, &file, 2);
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn an_edited_sequence_number_or_hash_in_the_head_is_refused() {
    let (cp, client, _) = setup().await;
    for (head, key, value) in
        [("edited-seq-head", "seq", json!(7)), ("edited-hash-head", "hash", json!("cd".repeat(32)))]
    {
        let (audit, file) = module(cp, &client, head);
        audit.append(json!({ "event": "one" })).await.unwrap();
        let mut line = head_line(&client, head).await;
        line[key] = value;
        tamper_head(&client, head, |data| set_head_line(data, &line)).await;
        let result = audit.append(json!({ "event": "two" })).await;
        assert_refused(result, &file, 1);
        // And again: the refusal is not a one-off the next attempt gets past.
        let again = audit.append(json!({ "event": "two" })).await;
        if let Err(e) = &again {
            assert!(e.to_string().contains(head), "the error names the head ConfigMap: {e}");
        }
        assert_refused(again, &file, 1);
    }
}
