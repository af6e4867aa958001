//! What a running operator does when its audit head was altered outside it: it refuses to
//! extend the head (so nothing is rolled out unrecorded), says so in its log and in its
//! reconcile-error metric, and carries on once the head is restored as docs/security.md
//! describes. Its own test binary: the tampering stops the shared operator's audit.

mod common;

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::with_namespace;

use common::*;

const HEAD: &str = "taimatsu-audit-head";
const TAMPERED: &str = "taimatsu_operator_reconcile_errors_total{category=\"audit-head-tampered\"}";

async fn apply(client: &Client, ns: &str, quantization: &str) {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let md = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "chat" },
                     "spec": { "modelRef": { "name": "qwen" }, "quantization": quantization, "engine": { "type": "vllm" },
                               "placement": { "acceleratorProfileRef": { "name": "l4-24gb" } } } });
    mds.patch("chat", &PatchParams::apply("tests").force(), &Patch::Apply(md)).await.expect("apply deployment");
}

/// A counter of the operator's /metrics (0 while absent).
async fn metric(port: u16, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return 0 };
    if stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

async fn revisions(client: &Client, ns: &str) -> (Option<i64>, Option<i64>) {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let status = mds.get("chat").await.unwrap().status.unwrap_or_default();
    (status.desired_revision, status.serving_revision)
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_tampered_head_stops_the_rollout_loudly_until_it_is_restored() {
    let (cp, _, port) = setup().await;
    with_namespace("tampered-head", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply(&client, &ns, "awq").await;
        let serving = |revision: i64| {
            let (client, ns) = (client.clone(), ns.clone());
            poll_until("the revision to serve", Duration::from_secs(120), move || {
                let (client, ns) = (client.clone(), ns.clone());
                async move { Ok((revisions(&client, &ns).await == (Some(revision), Some(revision))).then_some(())) }
            })
        };
        serving(1).await.expect("revision 1 serves");

        // The head's last line with an edited hash.
        tamper_head(&client, HEAD, |data| {
            let mut line: Value = serde_json::from_str(data["last-batch"].lines().last().unwrap()).unwrap();
            line["hash"] = json!("ef".repeat(32));
            let text = format!("{line}\n");
            data.insert("last-record".into(), text.clone());
            data.insert("last-batch".into(), text);
        })
        .await;
        apply(&client, &ns, "fp8").await;
        poll_until("the tampering to be reported in the metric", Duration::from_secs(60), || async {
            Ok((metric(port, TAMPERED).await > 0).then_some(()))
        })
        .await
        .expect("reconcile errors of category audit-head-tampered");
        let log = std::fs::read_to_string(cp.dir().join("logs/operator.log")).unwrap();
        assert!(log.contains("the audit head was altered outside the operator"), "not in the operator's log");
        assert_eq!(revisions(&client, &ns).await, (Some(1), Some(1)), "nothing is rolled out unrecorded");
        let (_, records) = audit_records(cp, "operator-0");
        assert!(!records.iter().any(|r| r["namespace"] == ns.as_str() && r["revision"] == 2), "{records:#?}");

        // Restored from the operator's file, as docs/security.md says (`tail -n1`: no newline).
        let file = std::fs::read_to_string(audit_log(cp, "operator-0")).unwrap();
        let last = file.lines().last().unwrap().to_owned();
        tamper_head(&client, HEAD, |data| {
            data.clear();
            data.insert("last-record".into(), last.clone());
            data.insert("last-batch".into(), last.clone());
        })
        .await;
        serving(2).await.expect("revision 2 serves once the head is restored");
        let (_, records) = audit_records(cp, "operator-0");
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "revision-created" && r["revision"] == 2 && r["namespace"] == ns.as_str())
        );
    })
    .await;
}
