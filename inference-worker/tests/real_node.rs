//! End to end on a real node: the operator deploys examples/quickstart/ on a real control
//! plane, and the pod it renders runs under a real kubelet (built from Kubernetes' Go
//! modules) with containerd and runc (`hack/real-node.sh`): the `fetch` init container
//! downloads and verifies the model from the HTTPS mirror over the pod network, then the
//! `worker` container serves it, and a chat completion to the pod IP is answered. Killed,
//! the worker container is restarted by the kubelet and continues its request-audit chain.
//!
//! Opt-in: it needs root, installs containerd, runc and the CNI plugins from Debian if
//! missing, takes the machine's pod bridge (10.85.0.1/24) and kubelet port 10250, and
//! changes a few kernel tunables while it runs (restored afterwards). Run it with
//!
//!     TAIMATSU_REAL_NODE=1 cargo test -p taimatsu-inference-worker --test real_node
//!
//! Without TAIMATSU_REAL_NODE (or with it empty or 0) it passes after printing why it did
//! nothing. Its own test binary with its own control plane: the sandbox assembly registers a
//! cluster-wide admission webhook, and a kubelet joins the cluster.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::real_node::{self, BRIDGE_IP, NODE_NAME, RealNode, WORKER_IMAGE};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, PatchParams, PostParams};
use serde_json::json;
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_tests::ControlPlane;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig, SandboxOptions};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_inference-worker");

/// What to print when the pod did not get there: the deployment's status, the pods', and
/// the kubelet's last words.
async fn diagnose(pods: &Api<Pod>, mds: &Api<ModelDeployment>) -> String {
    format!(
        "deployment status: {:#?}\n{}",
        mds.get("smollm2-chat").await.ok().and_then(|m| m.status),
        real_node::diagnose_pods(pods).await
    )
}

#[tokio::test]
#[ignore = "needs root and the real node (TAIMATSU_REAL_NODE=1, docs/real-node.md): hack/test.sh runs it"]
async fn the_quickstart_runs_as_containers_on_a_real_kubelet() {
    real_node::require();
    let started = Instant::now();
    let operator_bin = Path::new(WORKER_BIN).with_file_name("taimatsu-operator");
    assert!(
        operator_bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        operator_bin.display()
    );
    // A control plane of its own, in a directory no other test binary's cleanup of
    // /tmp/taimatsu-test-cluster-* can remove from under it (the kubelet outlives the
    // processes of this binary only until the guard below stops it).
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
    eprintln!("control plane, operator and real node up after {:.0}s", started.elapsed().as_secs_f64());

    {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({ "metadata": { "name": "real-node" } })).unwrap();
        namespaces.create(&PostParams::default(), &ns).await.expect("namespace");
        let ns = "real-node".to_owned();
        let params = PatchParams::apply("tests").force();
        let model = sandbox.apply_quickstart(&client, &ns, &params).await.expect("the quickstart");
        assert!(model["spec"]["source"]["uri"].as_str().unwrap().starts_with(&format!("https://{BRIDGE_IP}:")));
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let what = "the quickstart deployment to be Ready on the real node";
        let ready = real_node::wait_ready(what, &mds, "smollm2-chat", &pods, Duration::from_secs(600)).await;
        if let Err(e) = ready {
            panic!("{e:#}\n{}", diagnose(&pods, &mds).await);
        }
        eprintln!("quickstart Ready after {:.0}s", started.elapsed().as_secs_f64());

        // The pod ran under the kubelet, as containers of the imported image.
        let list =
            pods.list(&ListParams::default().labels("taimatsu.dev/model-deployment=smollm2-chat")).await.unwrap();
        assert_eq!(list.items.len(), 1, "{:#?}", list.items);
        let pod = &list.items[0];
        assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE_NAME));
        let status = pod.status.as_ref().unwrap();
        let init = &status.init_container_statuses.as_ref().unwrap()[0];
        let fetched = init.state.as_ref().and_then(|s| s.terminated.as_ref()).expect("fetch terminated");
        assert_eq!(fetched.exit_code, 0, "{init:?}");
        assert!(init.container_id.as_deref().unwrap_or_default().starts_with("containerd://"), "{init:?}");
        let worker = &status.container_statuses.as_ref().unwrap()[0];
        assert!(worker.ready && worker.state.as_ref().and_then(|s| s.running.as_ref()).is_some(), "{worker:?}");
        assert!(worker.container_id.as_deref().unwrap_or_default().starts_with("containerd://"), "{worker:?}");
        assert_eq!(worker.image, WORKER_IMAGE);
        assert!(worker.image_id.contains("sha256:"), "{worker:?}");
        let ip = status.pod_ip.clone().expect("pod IP");
        assert!(ip.starts_with("10.85.0."), "the pod IP {ip} is on the node's bridge");

        // The host reaches the pod IP: OpenAI API on 8000, metrics on 9090.
        let content = common::ask_deployed_model(format!("http://{ip}:8000")).await;
        eprintln!("the pod on {NODE_NAME} answered: {content:?}");
        let metrics = reqwest::get(format!("http://{ip}:9090/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("# TYPE"), "{metrics}");

        // The worker container dies (SIGKILL, as the OOM killer would) and the kubelet
        // restarts it in the same pod: its request audit continues the chain it wrote
        // before, in the file on the pod's audit volume.
        let uid = pod.metadata.uid.clone().expect("pod uid");
        let audit = common::repo_root()
            .join(".cache/real-node/kubelet/pods")
            .join(&uid)
            .join("volumes/kubernetes.io~empty-dir/audit/requests.jsonl");
        let before = std::fs::read(&audit).unwrap_or_else(|e| panic!("{}: {e}", audit.display()));
        let killed = std::process::Command::new("pkill")
            .args(["-KILL", "-f", "audit-log=/var/lib/taimatsu/audit/requests.jsonl"])
            .status()
            .unwrap();
        assert!(killed.success(), "no worker process to kill");
        let restarted = taimatsu_tests::wait::poll_until(
            "the worker container restarted and ready",
            Duration::from_secs(300),
            || async {
                let p = pods.get(pod.metadata.name.as_deref().unwrap()).await?;
                let worker = p.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next());
                Ok(worker.filter(|w| w.restart_count >= 1 && w.ready))
            },
        )
        .await;
        if let Err(e) = restarted {
            panic!("{e:#}\n{}", diagnose(&pods, &mds).await);
        }
        common::ask_deployed_model(format!("http://{ip}:8000")).await;
        let after = std::fs::read(&audit).unwrap();
        assert!(after.starts_with(&before), "the restarted worker rewrote its predecessor's records");
        let chain = taimatsu_core::audit_chain::verify(&after).expect("one chain across the restart");
        let before_count = taimatsu_core::audit_chain::verify(&before).unwrap().records;
        assert!(chain.records > before_count, "the restarted worker recorded nothing: {chain:?}");
    }
    drop(node);
    eprintln!("real-node test done in {:.0}s", started.elapsed().as_secs_f64());
}
