//! The worker NetworkPolicies, enforced for real: the operator deploys examples/quickstart/
//! (with rollout analysis) on a real node whose NetworkPolicies kube-router's firewall
//! enforces (`hack/real-node.sh`, `hack/network-policy-bin.sh`), and probe pods try to
//! connect, as an attacker in another namespace and as pods the worker policies select:
//!
//! - ingress: a pod in another namespace reaches neither the API port (8000) nor the
//!   unauthenticated metrics (9090); a pod of the deployment's own namespace reaches the API
//!   but not the metrics; once `spec.access.ingress.fromNamespaces` names the other
//!   namespace, it reaches the API and the own namespace no longer does;
//! - egress: a pod the worker policy selects reaches the model mirror on its port, and not
//!   the API server, the kubelet, or another pod;
//! - rollout analysis (the operator probing the new revision's metrics and API) still passes:
//!   the deployment becomes Ready only through it.
//!
//! Opt-in like real_node.rs (TAIMATSU_REAL_NODE=1, root, the machine's pod bridge):
//!
//!     TAIMATSU_REAL_NODE=1 cargo test -p taimatsu-inference-worker --test network_policy_real_node -- --include-ignored

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::netprobe::Probe;
use common::real_node::{self, BRIDGE_IP, RealNode};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};
use taimatsu_tests::ControlPlane;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig, SandboxOptions};
use taimatsu_tests::wait::poll_until;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_inference-worker");
const APP_NS: &str = "np-app";
const OTHER_NS: &str = "np-other";
const MD: &str = "smollm2-chat";
/// The kubelet's port on the node's bridge address (hack/real-node.sh).
const KUBELET_PORT: u16 = 10250;

async fn create_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
}

/// The port of a URL such as `https://10.85.0.1:38111/smollm2/`.
fn port_of(url: &str) -> u16 {
    let authority = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).expect("an authority");
    authority.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {url}"))
}

/// The quickstart deployment, with rollout analysis: a smoke prompt and the metrics window.
fn deployment_with_analysis() -> Value {
    let text = std::fs::read_to_string(common::repo_root().join("examples/quickstart/deployment.yaml")).unwrap();
    let mut md: Value = serde_yaml::from_str(&text).unwrap();
    md["spec"]["rollout"] =
        json!({ "analysis": { "windowSeconds": 10, "smokePrompts": ["Say hello."], "maxErrorRatePercent": 0 } });
    md
}

async fn worker_ip(client: &Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
    let list = pods.list(&ListParams::default().labels("taimatsu.dev/revision")).await.unwrap().items;
    assert_eq!(list.len(), 1, "one worker pod: {list:#?}");
    list[0].status.as_ref().and_then(|s| s.pod_ip.clone()).expect("the worker's pod IP")
}

fn assert_blocked(cp: &ControlPlane, probe: &Probe, what: &str, address: &str, port: u16) {
    let attempt = probe.attempt(cp, address, port);
    assert!(!attempt.connected, "{}/{} reached {what} ({address}:{port}): {attempt:?}", probe.namespace, probe.name);
}

fn assert_allowed(cp: &ControlPlane, probe: &Probe, what: &str, address: &str, port: u16) {
    let attempt = probe.attempt(cp, address, port);
    assert!(
        attempt.connected,
        "{}/{} did not reach {what} ({address}:{port}): {attempt:?}",
        probe.namespace, probe.name
    );
}

#[tokio::test]
#[ignore = "needs root and the real node (TAIMATSU_REAL_NODE=1, docs/real-node.md): hack/test.sh runs it"]
async fn worker_network_policies_hold_on_a_real_node() {
    real_node::require();
    let started = Instant::now();
    let operator_bin = Path::new(WORKER_BIN).with_file_name("taimatsu-operator");
    assert!(operator_bin.exists(), "{} is missing: build the workspace", operator_bin.display());
    let cp = ControlPlane::start_in(real_node::cluster_dir()).await.expect("control plane");
    let cp = &cp;
    let client = cp.client().await.unwrap();
    let config = SandboxConfig {
        operator_bin,
        worker_bin: WORKER_BIN.into(),
        models_dir: common::models_dir(),
        state_dir: cp.dir().join("sandbox"),
    };
    let options = SandboxOptions::real_node(BRIDGE_IP.parse().unwrap());
    let sandbox = Sandbox::start_with(cp, &client, config, options).await.expect("sandbox");
    eprintln!("operator log: {}", sandbox.operator_log.display());
    let node = RealNode::up(&cp.kubeconfig("taimatsu-admin"), Path::new(WORKER_BIN), None);
    eprintln!("control plane, operator and enforcing real node up after {:.0}s", started.elapsed().as_secs_f64());

    {
        create_namespace(&client, APP_NS).await;
        create_namespace(&client, OTHER_NS).await;
        let params = PatchParams::apply("tests").force();
        let model = sandbox.quickstart_model(&client, APP_NS).await.expect("the quickstart Model");
        let mirror_port = port_of(model["spec"]["source"]["uri"].as_str().unwrap());
        let models: Api<Model> = Api::namespaced(client.clone(), APP_NS);
        models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&model)).await.expect("apply the Model");
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), APP_NS);
        mds.patch(MD, &params, &Patch::Apply(deployment_with_analysis())).await.expect("apply the ModelDeployment");

        // Ready only once the analysis passed: the fetch reached the mirror through the
        // egress policy, the operator the worker's metrics and API through the ingress one.
        let pods: Api<Pod> = Api::namespaced(client.clone(), APP_NS);
        let what = "the quickstart, analysed, to be Ready under enforced NetworkPolicies";
        if let Err(e) = real_node::wait_ready(what, &mds, MD, &pods, Duration::from_secs(600)).await {
            let status = mds.get(MD).await.ok().and_then(|m| m.status);
            panic!("{e:#}\nstatus: {status:#?}\n{}", real_node::diagnose_pods(&pods).await);
        }
        eprintln!("quickstart Ready (analysis passed) after {:.0}s", started.elapsed().as_secs_f64());
        let worker = worker_ip(&client).await;
        let api_server_port = port_of(&cp.server);

        // Ingress.
        let intruder = Probe::start(&client, OTHER_NS, "intruder", json!({})).await;
        let neighbour = Probe::start(&client, APP_NS, "neighbour", json!({})).await;
        assert_blocked(cp, &intruder, "the worker's API from another namespace", &worker, 8000);
        assert_blocked(cp, &intruder, "the worker's metrics from another namespace", &worker, 9090);
        assert_allowed(cp, &neighbour, "the worker's API from its own namespace", &worker, 8000);
        assert_blocked(cp, &neighbour, "the worker's metrics (operator and monitoring only)", &worker, 9090);

        // Egress, from a pod the worker policies select (the deployment's label; without the
        // revision label it never counts as a worker).
        let selected = json!({ "taimatsu.dev/model-deployment": MD });
        let worker_like = Probe::start(&client, APP_NS, "worker-like", selected).await;
        assert_allowed(cp, &worker_like, "the model mirror", BRIDGE_IP, mirror_port);
        assert_blocked(cp, &worker_like, "the API server", BRIDGE_IP, api_server_port);
        assert_blocked(cp, &worker_like, "the kubelet", BRIDGE_IP, KUBELET_PORT);
        assert_blocked(cp, &worker_like, "another pod", &worker, 8000);

        // Naming the other namespace lets it in, in place of the own one.
        let open = json!({ "spec": { "access": { "ingress": { "fromNamespaces": [OTHER_NS] } } } });
        mds.patch(MD, &PatchParams::default(), &Patch::Merge(open)).await.expect("name the other namespace");
        poll_until("the other namespace to be let in", Duration::from_secs(120), || async {
            Ok(intruder.attempt(cp, &worker, 8000).connected.then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_blocked(cp, &neighbour, "the worker's API once only another namespace is named", &worker, 8000);
        assert_blocked(cp, &intruder, "the worker's metrics (never opened by the spec)", &worker, 9090);
    }
    drop(node);
    eprintln!("network-policy real-node test done in {:.0}s", started.elapsed().as_secs_f64());
}
