//! Pure builders: the desired child objects of a ModelDeployment, computed from
//! its spec, its Model and its AcceleratorProfile without any client call.
//! Tested by comparing whole objects; applied by `crate::apply`.

mod containers;
pub mod labels;
mod network;
mod policy;
mod revision;
mod sizing;
mod volumes;
mod workload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model, ModelDeployment};

pub use policy::NetworkSettings;
pub use revision::revision_hash;

/// Operator-wide settings the builders need.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default inference-worker image.
    pub worker_image: String,
    /// Base URL of the in-house Hugging Face mirror for `hf://` sources.
    pub hf_mirror: Option<String>,
    /// What the worker NetworkPolicies allow besides the spec.
    pub network: NetworkSettings,
}

/// Everything one reconcile builds from.
pub struct Inputs<'a> {
    pub deployment: &'a ModelDeployment,
    pub model: &'a Model,
    /// Absent for the builtin CPU engine.
    pub profile: Option<&'a AcceleratorProfile>,
    /// Manifest digest of the model (`sha256:…`).
    pub model_digest: String,
    /// Revision hash of what the spec asks for.
    pub revision: String,
    pub settings: &'a Settings,
}

/// The desired children. Destructured without `..` by `apply`, so a new child kind
/// cannot be forgotten there.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub manifest: ConfigMap,
    pub workload: Deployment,
    pub service: Service,
    pub ingress_policy: NetworkPolicy,
    /// `None` when egress is explicitly unrestricted.
    pub egress_policy: Option<NetworkPolicy>,
    pub disruption_budget: PodDisruptionBudget,
}

/// Builds every child of the deployment in `inputs`.
pub fn build(inputs: &Inputs<'_>) -> Children {
    Children {
        service_account: workload::service_account(inputs),
        manifest: workload::manifest_config_map(inputs),
        workload: workload::deployment(inputs),
        service: network::service(inputs),
        ingress_policy: policy::ingress_policy(inputs),
        egress_policy: policy::egress_policy(inputs),
        disruption_budget: network::disruption_budget(inputs),
    }
}

/// Metadata every child carries: namespace, labels and the controller owner reference
/// that lets the garbage collector remove it with its ModelDeployment.
pub(crate) fn child_meta(inputs: &Inputs<'_>, name: String) -> ObjectMeta {
    let md = inputs.deployment;
    ObjectMeta {
        name: Some(name),
        namespace: md.namespace(),
        labels: Some(labels::common(&md.name_any())),
        // An empty list, not an absent one, when there is no owner (no uid): as the JSON
        // builders had it (see the properties tests).
        owner_references: Some(md.controller_owner_ref(&()).into_iter().collect()),
        ..ObjectMeta::default()
    }
}

/// A selector of the pods carrying all of `labels`.
pub(crate) fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), match_expressions: None }
}
