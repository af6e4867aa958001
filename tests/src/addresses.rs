//! The addresses a test cluster may hand out, and a guard that fails loudly when one does
//! not stay on this machine.
//!
//! The machines these tests run on must send traffic to loopback (127.0.0.0/8) and to the
//! network namespaces the project makes itself (the real node's bridge), never elsewhere.
//! Every simulated address therefore lies in 127.0.0.0/8: the pod runner's pods in
//! [`POD_RUNNER_CIDR`], kwok's in [`KWOK_POD_CIDR`], kwok's nodes at 127.0.0.1. A probe of a
//! simulated pod that nobody serves is refused locally. The real node's pods live on its
//! bridge ([`REAL_NODE_POD_SUBNET`]). [`AddressGuard`] watches every Pod and Node of a
//! cluster and reports any address outside [`on_machine`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use taimatsu_core::AddressScope;

/// kwok's pod IPs (`kwok --cidr`): on loopback, apart from the pod runner's.
pub const KWOK_POD_CIDR: &str = "127.244.0.0/16";
/// The pod runner's pod IPs, 127.0.x.y ([`crate::pod_runner`]).
pub const POD_RUNNER_CIDR: &str = "127.0.0.0/16";
/// The real node's pod network: `POD_SUBNET` of hack/real-node.sh, whose bridge gateway
/// (10.85.0.1) is the node's address. A namespace of this machine's own making.
pub const REAL_NODE_POD_SUBNET: &str = "10.85.0.0/24";

/// Where pod and node addresses of a test cluster may lie: loopback and the real node's
/// bridge.
pub fn on_machine() -> AddressScope {
    scope(&["127.0.0.0/8", "::1/128", REAL_NODE_POD_SUBNET])
}

/// The pod IPs the operator's rollout analysis may probe in the sandbox and the tests
/// (`--analysis-pod-cidrs`): pods that really run, on the pod runner or the real node.
/// kwok's simulated pods serve nothing and are never contacted.
pub fn served_pods() -> String {
    [POD_RUNNER_CIDR, REAL_NODE_POD_SUBNET].join(",")
}

fn scope(blocks: &[&str]) -> AddressScope {
    AddressScope::parse_list(&blocks.join(",")).expect("constant CIDR blocks parse")
}

/// The addresses of `pod` that lie outside `allowed`, each as "what: address (why)".
pub fn pod_violations(pod: &Pod, allowed: &AddressScope) -> Vec<String> {
    let Some(status) = &pod.status else { return Vec::new() };
    // podIP is podIPs[0], hostIP hostIPs[0]: each address once.
    let ips: BTreeSet<&String> = status.pod_ip.iter().chain(status.pod_ips.iter().flatten().map(|p| &p.ip)).collect();
    let hosts: BTreeSet<&String> =
        status.host_ip.iter().chain(status.host_ips.iter().flatten().map(|h| &h.ip)).collect();
    let name = format!("pod {}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    ips.into_iter()
        .map(|ip| (format!("{name} podIP"), ip))
        .chain(hosts.into_iter().map(|ip| (format!("{name} hostIP"), ip)))
        .filter_map(|(what, ip)| outside(&what, ip, allowed))
        .collect()
}

/// The InternalIP/ExternalIP addresses of `node` that lie outside `allowed`.
pub fn node_violations(node: &Node, allowed: &AddressScope) -> Vec<String> {
    let addresses = node.status.iter().flat_map(|s| s.addresses.iter().flatten());
    addresses
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| outside(&format!("node {} {}", node.name_any(), a.type_), &a.address, allowed))
        .collect()
}

fn outside(what: &str, address: &str, allowed: &AddressScope) -> Option<String> {
    match address.parse::<IpAddr>() {
        Ok(ip) => allowed.check(ip).err().map(|e| format!("{what}: {e}")),
        Err(_) => Some(format!("{what}: {address:?} is not an IP address")),
    }
}

/// What the guard does with a violation.
pub type OnViolation = Arc<dyn Fn(String) + Send + Sync>;

/// The default for a test cluster: say it as loudly as possible and stop the process, since
/// a test that goes on might send traffic off the machine.
pub fn abort_on_violation() -> OnViolation {
    Arc::new(|violation| {
        eprintln!(
            "\n\n*** ADDRESS GUARD: {violation}\n*** Test clusters may hand out loopback and real-node bridge \
             addresses only ({}); stopping before anything is sent there.\n",
            on_machine()
        );
        std::process::abort();
    })
}

/// Watches every Pod and Node of the cluster `kubeconfig` names, on a thread of its own
/// (the test that starts a shared control plane ends, and its runtime with it, long before
/// the control plane does), and calls `on_violation` for each address outside
/// [`on_machine`]. Stops when the process does.
pub struct AddressGuard;

impl AddressGuard {
    pub fn start(kubeconfig: std::path::PathBuf, on_violation: OnViolation) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("address-guard".into()).spawn(move || {
            runtime.block_on(async move {
                let client = match client(&kubeconfig).await {
                    Ok(client) => client,
                    Err(e) => return on_violation(format!("the address guard cannot reach the cluster: {e:#}")),
                };
                let allowed = on_machine();
                let pods = watch(Api::<Pod>::all(client.clone()), |p| pod_violations(p, &allowed), &on_violation);
                let nodes = watch(Api::<Node>::all(client), |n| node_violations(n, &allowed), &on_violation);
                futures::join!(pods, nodes);
            })
        })?;
        Ok(())
    }
}

async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn watch<K>(api: Api<K>, violations: impl Fn(&K) -> Vec<String>, on_violation: &OnViolation)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
    while let Some(event) = events.next().await {
        // Errors (an API server restarting) are retried by the watcher itself.
        let Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = event else { continue };
        for violation in violations(&obj) {
            on_violation(violation);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus, PodIP, PodStatus};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(ip: &str, host: &str) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some("p".into()), namespace: Some("ns".into()), ..Default::default() },
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                host_ip: Some(host.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn simulated_and_real_node_addresses_pass() {
        let allowed = on_machine();
        for (ip, host) in [("127.244.0.3", "127.0.0.1"), ("127.0.1.7", "127.0.0.1"), ("10.85.0.12", "10.85.0.1")] {
            assert_eq!(pod_violations(&pod(ip, host), &allowed), Vec::<String>::new(), "{ip}");
        }
    }

    #[test]
    fn an_address_off_the_machine_is_named() {
        let allowed = on_machine();
        assert_eq!(
            pod_violations(&pod("10.244.0.1", "127.0.0.1"), &allowed),
            ["pod ns/p podIP: 10.244.0.1 is outside 127.0.0.0/8,::1/128,10.85.0.0/24"]
        );
        let node = Node {
            metadata: ObjectMeta { name: Some("n".into()), ..Default::default() },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress { type_: "Hostname".into(), address: "n".into() },
                    NodeAddress { type_: "InternalIP".into(), address: "192.168.1.4".into() },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            node_violations(&node, &allowed),
            ["node n InternalIP: 192.168.1.4 is outside 127.0.0.0/8,::1/128,10.85.0.0/24"]
        );
    }
}
