//! Service, egress NetworkPolicy and PodDisruptionBudget.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use taimatsu_crds::v1alpha1::EgressMode;

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

/// Denies all egress from worker pods except DNS and the model source's address
/// ranges (`spec.access.egress.allowedCidrs`). None when egress is `Unrestricted`.
pub fn egress_policy(inputs: &Inputs<'_>) -> Option<NetworkPolicy> {
    let egress = &inputs.deployment.spec.access.egress;
    if egress.mode == EgressMode::Unrestricted {
        return None;
    }
    let name = inputs.deployment.name_any();
    let dns = ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(53)),
        end_port: None,
    });
    let mut rules = vec![NetworkPolicyEgressRule { ports: Some(dns.into()), to: None }];
    if !egress.allowed_cidrs.is_empty() {
        let peers = egress.allowed_cidrs.iter().map(|cidr| NetworkPolicyPeer {
            ip_block: Some(IPBlock { cidr: cidr.clone(), except: None }),
            ..NetworkPolicyPeer::default()
        });
        rules.push(NetworkPolicyEgressRule { ports: None, to: Some(peers.collect()) });
    }
    Some(NetworkPolicy {
        metadata: child_meta(inputs, format!("{name}-egress")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(labels::selector(&name))),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    })
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
