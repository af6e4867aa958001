//! Fake nodes that look like a real GPU fleet, kept alive by kwok.
//!
//! Two 8 × H100 nodes, one 4 × L4 node, one H100 node partitioned into MIG 3g.40gb
//! slices, and one CPU-only node. GPU nodes carry the `nvidia.com/gpu` taint and the
//! labels NVIDIA's GPU feature discovery sets, as in a real cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::wait::poll_until;

/// Annotation that tells kwok to manage a node.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Product label set by GPU feature discovery.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
pub const H100_PRODUCT: &str = "NVIDIA-H100-80GB-HBM3";
pub const L4_PRODUCT: &str = "NVIDIA-L4";
pub const MIG_CONFIG_LABEL: &str = "nvidia.com/mig.config";
/// The fleet's node without accelerators (and without a taint): where CPU pods would go.
pub const CPU_NODE: &str = "cpu-0";

/// One fake node.
pub struct FakeNode {
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    /// Extended resources on top of CPU, memory and pods.
    pub accelerators: &'static [(&'static str, u32)],
    pub gpu_taint: bool,
}

/// The fleet every test control plane starts with.
pub const FLEET: [FakeNode; 5] = [
    FakeNode {
        name: "gpu-h100-0",
        labels: &[(GPU_PRODUCT_LABEL, H100_PRODUCT), ("nvidia.com/gpu.count", "8"), ("nvidia.com/gpu.memory", "81559")],
        accelerators: &[("nvidia.com/gpu", 8)],
        gpu_taint: true,
    },
    FakeNode {
        name: "gpu-h100-1",
        labels: &[(GPU_PRODUCT_LABEL, H100_PRODUCT), ("nvidia.com/gpu.count", "8"), ("nvidia.com/gpu.memory", "81559")],
        accelerators: &[("nvidia.com/gpu", 8)],
        gpu_taint: true,
    },
    FakeNode {
        name: "gpu-l4-0",
        labels: &[(GPU_PRODUCT_LABEL, L4_PRODUCT), ("nvidia.com/gpu.count", "4"), ("nvidia.com/gpu.memory", "23034")],
        accelerators: &[("nvidia.com/gpu", 4)],
        gpu_taint: true,
    },
    FakeNode {
        name: "gpu-mig-0",
        labels: &[
            (GPU_PRODUCT_LABEL, "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"),
            (MIG_CONFIG_LABEL, "all-3g.40gb"),
            ("nvidia.com/mig.strategy", "mixed"),
        ],
        accelerators: &[("nvidia.com/mig-3g.40gb", 4)],
        gpu_taint: true,
    },
    FakeNode { name: CPU_NODE, labels: &[], accelerators: &[], gpu_taint: false },
];

fn node_object(node: &FakeNode) -> Node {
    let mut labels: BTreeMap<String, String> = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), node.name.to_owned()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
        ("type".to_owned(), "kwok".to_owned()),
    ]);
    labels.extend(node.labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let mut resources = serde_json::Map::from_iter([
        ("cpu".to_owned(), json!("64")),
        ("memory".to_owned(), json!("512Gi")),
        ("pods".to_owned(), json!("110")),
        ("ephemeral-storage".to_owned(), json!("1Ti")),
    ]);
    resources.extend(node.accelerators.iter().map(|(r, n)| ((*r).to_owned(), json!(n.to_string()))));
    let taints = if node.gpu_taint {
        json!([{ "key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule" }])
    } else {
        json!([])
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": labels,
            "annotations": { KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0" },
        },
        "spec": { "taints": taints },
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": { "architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake" },
        },
    }))
    .expect("node object is well-formed")
}

/// Creates (or updates) every node of [`FLEET`], status included.
pub async fn install(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply("taimatsu-test-fleet").force();
    for node in &FLEET {
        let obj = node_object(node);
        nodes.patch(node.name, &params, &Patch::Apply(&obj)).await?;
        // Capacity lives in status, which the main resource ignores on update.
        nodes.patch_status(node.name, &params, &Patch::Apply(&obj)).await?;
    }
    Ok(())
}

/// Waits until kwok reports every fleet node Ready.
pub async fn wait_ready(client: &kube::Client, alive: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    poll_until("kwok to mark every fake node Ready", Duration::from_secs(120), || async {
        alive()?;
        for node in &FLEET {
            let ready = nodes
                .get(node.name)
                .await?
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

/// Marks node `name` unschedulable: kwok's fake nodes would mark a pod bound to them Ready
/// without running anything, so pods that must really run are kept off them.
pub async fn cordon(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let unschedulable = json!({ "spec": { "unschedulable": true } });
    nodes.patch(name, &PatchParams::default(), &Patch::Merge(unschedulable)).await?;
    Ok(())
}
