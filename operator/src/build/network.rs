//! Service and PodDisruptionBudget (the NetworkPolicies are in `policy`).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::labels::{self, API_PORT, METRICS_PORT};
use super::{Inputs, child_meta, match_labels};

/// The stable endpoint: selects the worker pods of every revision; readiness decides
/// which receive traffic, so a new revision's pods take requests once they are ready and
/// the stable revision's until they are removed, step by step (see `crate::rollout`).
pub fn service(inputs: &Inputs<'_>) -> Service {
    let name = inputs.deployment.name_any();
    Service {
        metadata: child_meta(inputs, name.clone()),
        spec: Some(ServiceSpec {
            selector: Some(labels::selector(&name)),
            ports: Some(vec![service_port("http", API_PORT), service_port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A TCP port of the Service, forwarded to the container port of the same name.
fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

/// At most one worker pod of the deployment voluntarily evicted at a time.
pub fn disruption_budget(inputs: &Inputs<'_>) -> PodDisruptionBudget {
    let name = inputs.deployment.name_any();
    PodDisruptionBudget {
        metadata: child_meta(inputs, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(match_labels(labels::selector(&name))),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
