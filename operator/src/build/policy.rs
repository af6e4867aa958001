//! The worker NetworkPolicies: who may reach a ModelDeployment's pods, and what they may
//! reach. Two objects, so that each names one direction:
//!
//! - `<name>-ingress`: the API port only from the namespaces `spec.access.ingress` names
//!   (default: the deployment's own), the operator's pods (rollout analysis) and the
//!   configured ingress namespaces; the metrics port, which has no authentication, only
//!   from the operator's pods and the configured monitoring namespaces.
//! - `<name>-egress` (unless egress is `Unrestricted`): DNS only to the cluster DNS pods,
//!   and the model source on its port only, at its address when that is an IP, the
//!   operator's mirror ranges and the user's `allowedCidrs` (checked against what the
//!   operator allows before anything is built, see `crate::validate`).
//!
//! Namespaces are selected by `kubernetes.io/metadata.name`, which the API server sets on
//! every namespace and no one else can change.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use taimatsu_core::EgressRanges;
use taimatsu_crds::v1alpha1::EgressMode;

use super::labels::{self, API_PORT, METRICS_PORT};
use super::{Inputs, child_meta, match_labels};

/// The label the API server puts on every namespace, holding its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
const DNS_PORT: i32 = 53;

/// What the worker policies allow besides the spec: operator flags, set by the platform team.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSettings {
    /// The operator's namespace and pod labels: its pods run rollout analysis against the
    /// workers' API and metrics ports.
    pub operator_namespace: String,
    pub operator_pod_labels: BTreeMap<String, String>,
    /// Namespaces (an ingress controller's, a gateway's) whose pods may call every
    /// deployment's API port (`--ingress-namespace`).
    pub ingress_namespaces: Vec<String>,
    /// Namespaces whose pods may scrape the workers' metrics (`--monitoring-namespace`).
    pub monitoring_namespaces: Vec<String>,
    /// Where the cluster DNS pods run, and their labels.
    pub dns_namespace: String,
    pub dns_pod_labels: BTreeMap<String, String>,
    /// Address ranges of the model mirror(s), opened on the model source's port
    /// (`--mirror-cidrs`): needed when the source is named by host name.
    pub mirror_cidrs: Vec<String>,
    /// The ranges users may open with `spec.access.egress.allowedCidrs`.
    pub egress_allowed: EgressRanges,
}

impl Default for NetworkSettings {
    /// The operator flags' defaults.
    fn default() -> Self {
        NetworkSettings {
            operator_namespace: "taimatsu-system".into(),
            operator_pod_labels: BTreeMap::from([("app.kubernetes.io/name".into(), "taimatsu".into())]),
            ingress_namespaces: Vec::new(),
            monitoring_namespaces: Vec::new(),
            dns_namespace: "kube-system".into(),
            dns_pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
            mirror_cidrs: Vec::new(),
            egress_allowed: EgressRanges::default(),
        }
    }
}

/// Who may reach the worker pods, port by port.
pub fn ingress_policy(inputs: &Inputs<'_>) -> NetworkPolicy {
    let md = inputs.deployment;
    let net = &inputs.settings.network;
    let name = md.name_any();
    let own = md.namespace().unwrap_or_default();
    let from_namespaces = match &md.spec.access.ingress.from_namespaces {
        names if names.is_empty() => vec![own],
        names => names.clone(),
    };
    let api_from = from_namespaces
        .iter()
        .chain(&net.ingress_namespaces)
        .map(|ns| namespace_peer(ns, None))
        .chain([operator_peer(net)])
        .collect();
    let metrics_from =
        [operator_peer(net)].into_iter().chain(net.monitoring_namespaces.iter().map(|ns| namespace_peer(ns, None)));
    NetworkPolicy {
        metadata: child_meta(inputs, format!("{name}-ingress")),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(labels::selector(&name))),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule { ports: Some(vec![tcp(API_PORT)]), from: Some(api_from) },
                NetworkPolicyIngressRule { ports: Some(vec![tcp(METRICS_PORT)]), from: Some(metrics_from.collect()) },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// Denies all egress from worker pods but DNS to the cluster DNS pods and the model
/// source on its port. None when egress is `Unrestricted`.
pub fn egress_policy(inputs: &Inputs<'_>) -> Option<NetworkPolicy> {
    let egress = &inputs.deployment.spec.access.egress;
    if egress.mode == EgressMode::Unrestricted {
        return None;
    }
    let net = &inputs.settings.network;
    let name = inputs.deployment.name_any();
    let dns = NetworkPolicyEgressRule {
        ports: Some(vec![port("UDP", DNS_PORT), port("TCP", DNS_PORT)]),
        to: Some(vec![namespace_peer(&net.dns_namespace, Some(&net.dns_pod_labels))]),
    };
    let mut rules = vec![dns];
    if let Some(source) = source_endpoint(inputs) {
        let blocks = source
            .ip
            .map(host_block)
            .into_iter()
            .chain(net.mirror_cidrs.iter().cloned())
            .chain(egress.allowed_cidrs.iter().cloned());
        let peers: Vec<NetworkPolicyPeer> = blocks.map(ip_block).collect();
        // A rule without peers would allow every destination: none is written instead, and
        // the fetch then fails visibly rather than the policy opening everything.
        if !peers.is_empty() {
            rules.push(NetworkPolicyEgressRule { ports: Some(vec![tcp(source.port)]), to: Some(peers) });
        }
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

/// Where the fetch step connects: the port, and the address when the source names an IP.
#[derive(Debug, PartialEq)]
struct SourceEndpoint {
    ip: Option<IpAddr>,
    port: i32,
}

/// The model source's endpoint: the `https://` or `oci://` URI's, or for `hf://` the
/// mirror it resolves against. None for `pvc://` (nothing is fetched over the network).
/// s3:// names no endpoint: its port is the HTTPS one, its address comes from
/// `--mirror-cidrs` or `allowedCidrs`.
fn source_endpoint(inputs: &Inputs<'_>) -> Option<SourceEndpoint> {
    let source = &inputs.model.spec.source;
    let uri = source.uri.as_str();
    let location = match uri.split_once("://")?.0 {
        "pvc" => return None,
        "s3" => return Some(SourceEndpoint { ip: None, port: 443 }),
        "hf" => source.hf_mirror.clone().or_else(|| inputs.settings.hf_mirror.clone())?,
        _ => uri.to_owned(),
    };
    let url = reqwest::Url::parse(&location).ok()?;
    // An IPv6 host comes bracketed ("[fd00::1]"); a name does not parse as an address.
    let ip = url.host_str()?.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
    let port = url.port().map_or(443, i32::from);
    Some(SourceEndpoint { ip, port })
}

fn host_block(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn ip_block(cidr: String) -> NetworkPolicyPeer {
    NetworkPolicyPeer { ip_block: Some(IPBlock { cidr, except: None }), ..NetworkPolicyPeer::default() }
}

/// The pods of namespace `ns` (those with `pods`' labels, or all of them).
fn namespace_peer(ns: &str, pods: Option<&BTreeMap<String, String>>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(match_labels(BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())]))),
        pod_selector: pods.map(|labels| match_labels(labels.clone())),
        ip_block: None,
    }
}

fn operator_peer(net: &NetworkSettings) -> NetworkPolicyPeer {
    namespace_peer(&net.operator_namespace, Some(&net.operator_pod_labels))
}

fn tcp(number: i32) -> NetworkPolicyPort {
    port("TCP", number)
}

fn port(protocol: &str, number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { protocol: Some(protocol.to_owned()), port: Some(IntOrString::Int(number)), end_port: None }
}
