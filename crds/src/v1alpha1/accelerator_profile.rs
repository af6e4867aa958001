//! `AcceleratorProfile`: a class of GPU, described once by cluster admins.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// A class of accelerator in this cluster: the extended resource that requests
/// it, how much memory each unit has, and how to reach the nodes that carry it.
/// Owned by cluster admins; ModelDeployments name a profile instead of repeating
/// node details, so one manifest moves between clusters by changing the profile.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
// kube-derive takes one `printcolumn(...)` per column; clippy reads them as duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "taimatsu.dev",
    version = "v1alpha1",
    kind = "AcceleratorProfile",
    status = "AcceleratorProfileStatus",
    shortname = "accel",
    category = "taimatsu",
    derive = "PartialEq",
    printcolumn(name = "Resource", type_ = "string", json_path = ".spec.resourceName"),
    printcolumn(name = "GPU-Memory-GiB", type_ = "integer", json_path = ".spec.gpuMemoryGiB"),
    printcolumn(name = "GPUs-Per-Node", type_ = "integer", json_path = ".spec.gpusPerNode"),
    printcolumn(name = "Product", type_ = "string", json_path = ".spec.product", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorProfileSpec {
    /// Extended resource that requests one unit of this accelerator, e.g.
    /// `nvidia.com/gpu`, or a MIG slice such as `nvidia.com/mig-3g.40gb`. Immutable:
    /// running revisions were placed against it.
    #[schemars(length(min = 3, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("spec.resourceName must be an extended resource name such as nvidia.com/gpu or nvidia.com/mig-3g.40gb"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.resourceName is immutable: create a new AcceleratorProfile for other hardware"))]
    pub resource_name: String,

    /// Memory of one unit in GiB (the whole GPU, or the MIG slice), e.g. 80 for
    /// H100-80GB, 24 for L4, 40 for a 3g.40gb slice. Used by the memory-fit check.
    #[serde(rename = "gpuMemoryGiB")]
    #[schemars(range(min = 1, max = 4096))]
    pub gpu_memory_gib: i32,

    /// How many units one node offers. A replica never spans nodes unless
    /// pipeline parallelism is used, so GPUs per replica above this cannot schedule.
    #[schemars(range(min = 1, max = 128))]
    pub gpus_per_node: i32,

    /// Human-readable product name, e.g. `NVIDIA-H100-80GB-HBM3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub product: Option<String>,

    /// Labels a node must carry to run workloads on this accelerator, e.g.
    /// `nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3`. Merged with the deployment's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for the taints on these nodes (GPU nodes are usually tainted).
    /// Merged with the deployment's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
}

/// Observed state of an AcceleratorProfile.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorProfileStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
