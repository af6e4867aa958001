//! The Helm chart on a real node: `helm install` of charts/taimatsu-crds and charts/taimatsu
//! (default values: two replicas, leader election, the admission webhook with the
//! certificate Helm generates, restricted Pod Security) into a control plane whose node is a
//! real kubelet with containerd, runc and kube-proxy (`hack/real-node.sh`). The operator
//! pods run the operator image assembled from this build and reach the API server through
//! the `kubernetes` Service; the API server calls their webhook through its Service. The
//! chart's operator then deploys examples/quickstart/ on the same node, and the model
//! answers through its Service's cluster IP. An upgrade replaces both operator pods; the
//! new ones take the Lease and serve the webhook.
//!
//! Opt-in like real_node.rs (TAIMATSU_REAL_NODE=1, root, the machine's pod bridge):
//!
//!     TAIMATSU_REAL_NODE=1 TAIMATSU_HELM=… cargo test -p taimatsu-inference-worker --test chart_real_node

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::real_node::{self, BRIDGE_IP, NODE_NAME, OPERATOR_IMAGE, RealNode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};
use taimatsu_tests::ControlPlane;
use taimatsu_tests::control_plane::ControlPlaneOptions;
use taimatsu_tests::fleet;
use taimatsu_tests::helm::{Helm, chart, wait_for_operator};
use taimatsu_tests::mirror::Mirror;
use taimatsu_tests::wait::{deployment_rolled_out, is_ready, poll_until};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_inference-worker");
const SYSTEM_NS: &str = "taimatsu-system";
const APP_NS: &str = "clinic";
/// The chart's pods: `app.kubernetes.io/instance` is the release name.
const OPERATOR_PODS: &str = "app.kubernetes.io/instance=taimatsu";

async fn create_namespace(client: &Client, name: &str, labels: Value) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
}

/// The operator pods, once `want` of them run Ready on the real node; their names.
async fn operator_pods_ready(pods: &Api<Pod>, want: usize) -> BTreeSet<String> {
    let ready = poll_until("the operator pods to run Ready on the real node", Duration::from_secs(300), || async {
        let list = pods.list(&ListParams::default().labels(OPERATOR_PODS)).await?.items;
        let running: Vec<&Pod> = list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        let all_ready = running.iter().all(|p| {
            let status = p.status.as_ref();
            status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        Ok((running.len() == want && all_ready).then(|| running.iter().map(|p| (*p).clone()).collect::<Vec<Pod>>()))
    })
    .await;
    let ready = match ready {
        Ok(ready) => ready,
        Err(e) => panic!("{e:#}\n{}", real_node::diagnose_pods(pods).await),
    };
    for pod in &ready {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some(NODE_NAME), "{name}");
        let container = &pod.status.as_ref().and_then(|s| s.container_statuses.clone()).expect("statuses")[0];
        assert_eq!(container.image, OPERATOR_IMAGE, "{name}");
        assert!(container.container_id.as_deref().unwrap_or_default().starts_with("containerd://"), "{container:?}");
        assert!(container.state.as_ref().and_then(|s| s.running.as_ref()).is_some(), "{container:?}");
    }
    ready.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

/// The holder of the operator's Lease, once one of `candidates` holds it.
async fn leader_among(client: &Client, candidates: &BTreeSet<String>) -> String {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NS);
    poll_until("an operator pod to hold the Lease", Duration::from_secs(120), || async {
        let holder = leases.get_opt("taimatsu-operator").await?.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        Ok(holder.filter(|h| candidates.contains(h)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; candidates: {candidates:?}"))
}

/// The control-plane audit records the operator pods printed (`--audit-stdout=true`), read
/// with `kubectl logs`, through the API server from the real kubelet.
fn audit_records(cp: &ControlPlane, pods: &BTreeSet<String>) -> Vec<Value> {
    let mut records = Vec::new();
    for pod in pods {
        let out = cp.kubectl(&["logs", "-n", SYSTEM_NS, pod, "-c", "operator"]).expect("kubectl logs");
        assert!(out.status.success(), "kubectl logs {pod}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        records.extend(
            text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter_map(|v| v.get("record").cloned()),
        );
    }
    records
}

fn has_record(records: &[Value], event: &str, name: &str) -> bool {
    records.iter().any(|r| r["event"] == event && (r["name"] == name || r["modelDeployment"] == name))
}

#[tokio::test]
#[ignore = "needs root and the real node (TAIMATSU_REAL_NODE=1, docs/real-node.md): hack/test.sh runs it"]
async fn the_helm_chart_runs_the_operator_on_a_real_node() {
    real_node::require();
    let started = Instant::now();
    let operator_bin = Path::new(WORKER_BIN).with_file_name("taimatsu-operator");
    assert!(operator_bin.exists(), "{} is missing: build the workspace", operator_bin.display());
    let helm = Helm::from_env(Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home"));
    let bridge = BRIDGE_IP.parse().unwrap();
    let options = ControlPlaneOptions { pod_reachable_at: Some(bridge), ..Default::default() };
    let cp = ControlPlane::start_with(real_node::cluster_dir(), options).await.expect("control plane");
    let kubeconfig = cp.kubeconfig("taimatsu-admin");
    let client = cp.client().await.unwrap();
    // Every pod goes to the real node: kwok's fake nodes would mark a pod Ready without
    // running it.
    for node in &fleet::FLEET {
        fleet::cordon(&client, node.name).await.unwrap();
    }
    let mirror = Mirror::serve(common::models_dir(), Some(bridge)).await.expect("mirror");
    let node = RealNode::up(&kubeconfig, Path::new(WORKER_BIN), Some(&operator_bin));
    eprintln!("control plane and real node up after {:.0}s", started.elapsed().as_secs_f64());

    {
        // The charts, with their default values, into a namespace that enforces the
        // restricted Pod Security Standard.
        create_namespace(&client, SYSTEM_NS, json!({ "pod-security.kubernetes.io/enforce": "restricted" })).await;
        helm.ok(Some(&kubeconfig), &["install", "taimatsu-crds", &chart("taimatsu-crds"), "-n", SYSTEM_NS]);
        // The node enforces NetworkPolicies (kube-router) after kube-proxy translated the
        // `kubernetes` Service to the API server's own port: the chart's egress rule must name it.
        let api_port = cp.server.rsplit(':').next().expect("the API server's port");
        let ports = format!("networkPolicy.apiServerPorts={{443,6443,{api_port}}}");
        // The API server presents its webhook client certificate (the control plane's
        // AdmissionConfiguration): the chart is given the CA that issued it.
        let client_ca = format!("webhook.clientAuth.caBundle={}", cp.webhook_client_ca().display());
        let install =
            ["install", "taimatsu", &chart("taimatsu"), "-n", SYSTEM_NS, "--set", &ports, "--set-file", &client_ca];
        let notes = helm.ok(Some(&kubeconfig), &install);
        eprintln!("{notes}");
        let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
        // Ready is the operator's own /readyz, probed by the kubelet.
        let first = operator_pods_ready(&pods, 2).await;
        // Its Deployment rolled out, and the webhook Service forwarding (kube-proxy).
        wait_for_operator(&client, SYSTEM_NS, "taimatsu", Duration::from_secs(60)).await.expect("the chart's operator");
        let leader = leader_among(&client, &first).await;
        eprintln!("operator pods {first:?} Ready after {:.0}s; leader {leader}", started.elapsed().as_secs_f64());

        // The quickstart, from the in-house mirror. The webhook is fail-closed: each write
        // below is admitted only if an operator pod answered the API server through the
        // webhook Service, with the certificate Helm generated.
        create_namespace(&client, APP_NS, json!({})).await;
        let model = mirror.example_model(&client, APP_NS, "examples/quickstart/model.yaml").await.expect("Model");
        let params = PatchParams::apply("tests").force();
        let models: Api<Model> = Api::namespaced(client.clone(), APP_NS);
        models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&model)).await.expect("apply the Model");
        let text = std::fs::read_to_string(common::repo_root().join("examples/quickstart/deployment.yaml")).unwrap();
        let mut md: Value = serde_yaml::from_str(&text).unwrap();
        // The node has the machine's CPUs (2 on the CI machines); the operator pods request
        // 100m each, so a worker asking for 2 (`threads: 2`) would stay Pending.
        md["spec"]["engine"]["threads"] = json!(1);
        // Rollout analysis by the operator pods: through the chart's egress policy and the
        // worker's ingress one, both enforced on this node.
        md["spec"]["rollout"] = json!({ "analysis": { "windowSeconds": 10, "smokePrompts": ["Say hello."] } });
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), APP_NS);
        mds.patch("smollm2-chat", &params, &Patch::Apply(&md)).await.expect("apply the ModelDeployment");

        // The chart's operator deploys it on the real node.
        let workers: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
        let what = "the quickstart to be Ready, deployed by the chart's operator";
        let ready = real_node::wait_ready(what, &mds, "smollm2-chat", &workers, Duration::from_secs(600)).await;
        if let Err(e) = ready {
            panic!(
                "{e:#}\nworker pods: {}\noperator pods: {}",
                real_node::diagnose_pods(&workers).await,
                real_node::diagnose_pods(&pods).await
            );
        }
        eprintln!("quickstart Ready after {:.0}s", started.elapsed().as_secs_f64());

        // Through the Service's cluster IP, which only kube-proxy's rules make reachable.
        let services: Api<Service> = Api::namespaced(client.clone(), APP_NS);
        let cluster_ip =
            services.get("smollm2-chat").await.unwrap().spec.and_then(|s| s.cluster_ip).expect("cluster IP");
        assert!(cluster_ip.starts_with("10.0."), "{cluster_ip} is in the service range");
        let content = common::ask_deployed_model(format!("http://{cluster_ip}:8000")).await;
        eprintln!("the Service answered: {content:?}");

        // The audit trail, from the pods' logs: the webhook's admission records and the
        // leader's revision record.
        let records = audit_records(&cp, &first);
        assert!(has_record(&records, "admission", "smollm2-chat"), "no admission record in {records:#?}");
        assert!(has_record(&records, "revision-created", "smollm2-chat"), "no revision record in {records:#?}");
        // Whichever replica's webhook admitted it, the leader names the user who asked (not
        // the field manager, "tests").
        let created = records.iter().find(|r| r["event"] == "revision-created").unwrap();
        assert_eq!(created["requestedBy"], "taimatsu-admin", "{created}");

        // An upgrade with a changed value rolls both pods (one at a time: the chart's PDB and
        // rolling update); the new pods take over the Lease and the webhook.
        helm.ok(
            Some(&kubeconfig),
            &["upgrade", "taimatsu", &chart("taimatsu"), "-n", SYSTEM_NS, "--reuse-values", "--set", "logFormat=text"],
        );
        deployment_rolled_out(&client, SYSTEM_NS, "taimatsu", Duration::from_secs(300)).await.expect("the upgrade");
        let second = operator_pods_ready(&pods, 2).await;
        assert!(first.is_disjoint(&second), "the upgrade kept pods: {first:?} then {second:?}");
        let new_leader = leader_among(&client, &second).await;
        eprintln!("after the upgrade: pods {second:?}, leader {new_leader}");
        let cause = json!({ "metadata": { "annotations": { "taimatsu.dev/change-cause": "CHG-9: after the operator upgrade" } } });
        mds.patch("smollm2-chat", &PatchParams::default(), &Patch::Merge(cause))
            .await
            .expect("admitted by the new pods");
        let records = audit_records(&cp, &second);
        assert!(
            records
                .iter()
                .any(|r| r["event"] == "admission" && r["changeCause"] == "CHG-9: after the operator upgrade"),
            "the new pods' webhook did not audit the change: {records:#?}"
        );
        let md = mds.get("smollm2-chat").await.unwrap();
        assert!(is_ready(&md.status.unwrap_or_default()), "the model stopped serving across the operator upgrade");
    }
    drop(node);
    eprintln!("chart-on-real-node test done in {:.0}s", started.elapsed().as_secs_f64());
}
