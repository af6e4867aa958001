//! Service, egress NetworkPolicy and PodDisruptionBudget.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use serde_json::json;
use taimatsu_crds::v1alpha1::EgressMode;

use super::labels::{self, API_PORT, METRICS_PORT};
use super::workload::from_json;
use super::{Inputs, child_meta};

/// The stable endpoint: selects the worker pods of every revision; readiness decides
/// which receive traffic, so a new revision's pods take requests once they are ready and
/// the stable revision's until they are removed, step by step (see `crate::rollout`).
pub fn service(inputs: &Inputs<'_>) -> Service {
    let name = inputs.deployment.name_any();
    from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": child_meta(inputs, name.clone()),
        "spec": {
            "selector": labels::selector(&name),
            "ports": [
                { "name": "http", "port": API_PORT, "targetPort": "http", "protocol": "TCP" },
                { "name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP" },
            ],
        },
    }))
}

/// Denies all egress from worker pods except DNS and the model source's address
/// ranges (`spec.access.egress.allowedCidrs`). None when egress is `Unrestricted`.
pub fn egress_policy(inputs: &Inputs<'_>) -> Option<NetworkPolicy> {
    let egress = &inputs.deployment.spec.access.egress;
    if egress.mode == EgressMode::Unrestricted {
        return None;
    }
    let name = inputs.deployment.name_any();
    let mut rules = vec![json!({
        "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
    })];
    if !egress.allowed_cidrs.is_empty() {
        let peers: Vec<_> = egress.allowed_cidrs.iter().map(|c| json!({ "ipBlock": { "cidr": c } })).collect();
        rules.push(json!({ "to": peers }));
    }
    Some(from_json(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": child_meta(inputs, format!("{name}-egress")),
        "spec": {
            "podSelector": { "matchLabels": labels::selector(&name) },
            "policyTypes": ["Egress"],
            "egress": rules,
        },
    })))
}

/// At most one worker pod of the deployment voluntarily evicted at a time.
pub fn disruption_budget(inputs: &Inputs<'_>) -> PodDisruptionBudget {
    let name = inputs.deployment.name_any();
    from_json(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": child_meta(inputs, name.clone()),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": labels::selector(&name) },
        },
    }))
}
