//! Every address a test cluster hands out stays on this machine (tests/src/addresses.rs):
//! kwok's simulated pods and nodes get loopback addresses, and the address guard reports
//! (in every other test binary: aborts on) a pod or node address anywhere else.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use taimatsu_tests::addresses::{KWOK_POD_CIDR, on_machine};
use taimatsu_tests::control_plane::{ControlPlaneOptions, fresh_work_dir};
use taimatsu_tests::fleet::CPU_NODE;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, with_namespace};

fn pod_on(node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": "probe-target" },
        "spec": { "nodeName": node, "containers": [{ "name": "c", "image": "registry.local/none:0" }] },
    }))
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn simulated_pods_and_nodes_get_loopback_addresses() {
    with_namespace("loopback_addresses", |client: Client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.create(&PostParams::default(), &pod_on(CPU_NODE)).await.unwrap();
        let ip: IpAddr = poll_until("kwok to give the pod an IP", Duration::from_secs(60), || async {
            Ok(pods.get("probe-target").await?.status.and_then(|s| s.pod_ip))
        })
        .await
        .unwrap()
        .parse()
        .unwrap();
        let kwok: ipnet::IpNet = KWOK_POD_CIDR.parse().unwrap();
        assert!(kwok.contains(&ip) && ip.is_loopback(), "kwok's pod IP {ip} is not in {KWOK_POD_CIDR}");
        let node = Api::<Node>::all(client).get(CPU_NODE).await.unwrap();
        let addresses = node.status.unwrap().addresses.unwrap();
        let internal = addresses.iter().find(|a| a.type_ == "InternalIP").expect("an InternalIP");
        assert_eq!(internal.address, "127.0.0.1");
    })
    .await;
}

/// A cluster of its own, whose guard reports instead of aborting: a node and a pod are
/// given addresses off the machine (only written to the API: nothing is sent there).
#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn the_address_guard_names_a_pod_or_node_address_off_the_machine() {
    let (tx, violations) = std::sync::mpsc::channel();
    let options = ControlPlaneOptions { address_violations: Some(tx), ..Default::default() };
    let cp = ControlPlane::start_with(fresh_work_dir().unwrap(), options).await.unwrap();
    let client = cp.client().await.unwrap();
    assert_eq!(violations.try_recv().ok(), None, "the fleet's own addresses are on the machine ({})", on_machine());

    // A node no kwok manages, reporting an address on a private network.
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({ "metadata": { "name": "off-machine" } })).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let status = json!({ "status": { "addresses": [{ "type": "InternalIP", "address": "192.168.7.4" }] } });
    nodes.patch_status("off-machine", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let seen = violations.recv_timeout(Duration::from_secs(30)).expect("the guard reports the node");
    assert_eq!(seen, "node off-machine InternalIP: 192.168.7.4 is outside 127.0.0.0/8,::1/128,10.85.0.0/24");

    // A pod on it, with the address kwok used to give its pods (10.244.0.0/16).
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod_on("off-machine")).await.unwrap();
    let status = json!({ "status": { "podIP": "10.244.0.1", "podIPs": [{ "ip": "10.244.0.1" }] } });
    pods.patch_status("probe-target", &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    let seen = loop {
        let seen = violations.recv_timeout(Duration::from_secs(30)).expect("the guard reports the pod");
        if seen.starts_with("pod ") {
            break seen;
        }
    };
    assert_eq!(seen, "pod default/probe-target podIP: 10.244.0.1 is outside 127.0.0.0/8,::1/128,10.85.0.0/24");
    // Its processes end with the test binary (parent-death signal), its directory with the next run.
    drop(cp);
}
