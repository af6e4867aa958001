//! SIGKILL the operator at several points of several rollouts: after each restart it
//! converges, and no revision and no audit record is lost or repeated. Its own test
//! binary, so the operator it kills and restarts is the only one.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_operator::revision::{Outcome, store};
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, with_namespace};

use common::*;

const IDENTITY: &str = "crash-operator";

fn records(cp: &ControlPlane) -> Vec<Value> {
    let (report, records) = audit_records(cp, IDENTITY);
    assert!(!report.incomplete_tail || report.records > 0);
    records
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_sigkilled_operator_converges_without_losing_or_repeating_a_record() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;
    let start = || {
        let (child, _) =
            cp.start_process(IDENTITY, operator_command(cp, IDENTITY, "crash-test", free_port().unwrap())).unwrap();
        child
    };
    with_namespace("crash", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        let quantizations = ["awq", "fp8", "gptq", "int8"];
        for (i, quantization) in quantizations.iter().enumerate() {
            let md = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "chat" },
                "spec": { "modelRef": { "name": "qwen" }, "quantization": quantization, "engine": { "type": "vllm" },
                          "placement": { "acceleratorProfileRef": { "name": "l4-24gb" } } } });
            mds.patch("chat", &PatchParams::apply("tests").force(), &Patch::Apply(md)).await.unwrap();
            // Kill it after 1, 2, 3 … new audit records of this rollout: between auditing a
            // decision and acting on it, or between two decisions.
            let before = records(cp).len();
            let mut operator = start();
            let kill_after = before + 1 + i % 3;
            poll_until("the next audit records", Duration::from_secs(60), || async move {
                Ok((records(cp).len() >= kill_after).then_some(()))
            })
            .await
            .unwrap();
            operator.kill().unwrap();
            operator.wait().unwrap();
            // Restarted, it converges on the revision the spec asks for.
            let mut operator = start();
            let number = i as i64 + 1;
            poll_until("convergence after the crash", Duration::from_secs(90), || {
                let mds = mds.clone();
                async move {
                    let s = mds.get("chat").await?.status.unwrap_or_default();
                    Ok((s.desired_revision == Some(number) && s.serving_revision == Some(number)).then_some(()))
                }
            })
            .await
            .unwrap();
            operator.kill().unwrap();
            operator.wait().unwrap();
        }

        let history = store::list(&client, &ns, "chat").await.unwrap();
        let numbers: Vec<(i64, Outcome)> = history.iter().map(|r| (r.number, r.outcome)).collect();
        assert_eq!(
            numbers,
            vec![(1, Outcome::Superseded), (2, Outcome::Superseded), (3, Outcome::Superseded), (4, Outcome::Active)],
            "no revision lost or created twice"
        );
        let mut count: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for r in records(cp).iter().filter(|r| r["modelDeployment"] == "chat" && r["namespace"] == ns.as_str()) {
            *count.entry((r["event"].as_str().unwrap().to_owned(), r["revision"].as_i64().unwrap_or(0))).or_default() += 1;
        }
        for n in 1..=4 {
            for event in ["revision-created", "rollout-started", "rollout-succeeded"] {
                assert_eq!(count.get(&(event.to_owned(), n)), Some(&1), "{event} of revision {n}: {count:?}");
            }
        }
    })
    .await;
}
