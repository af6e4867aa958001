//! TCP connection attempts from pods on the real node, to see what a NetworkPolicy lets
//! through. A probe is a pod (image registry.local/taimatsu/netprobe:0.1.0, which
//! hack/real-node.sh builds from images/netprobe/netprobe.c) with the namespace and labels
//! under test, idle until the test `kubectl exec`s an attempt in it, and only once
//! kube-router's rules name it: a pod the enforcer has not seen yet would be let through (or
//! kept out) for the wrong reason.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_tests::ControlPlane;
use taimatsu_tests::wait::poll_until;

use super::real_node::NODE_NAME;

pub const NETPROBE_IMAGE: &str = "registry.local/taimatsu/netprobe:0.1.0";
/// How long one attempt waits for an answer: a policy drops the SYN, so a blocked attempt
/// takes this long; an allowed one across the node's bridge takes milliseconds.
const CONNECT_TIMEOUT_MS: u32 = 3000;

/// A running probe pod.
pub struct Probe {
    pub namespace: String,
    pub name: String,
}

/// What one attempt saw: "connected", "refused", "timed out".
#[derive(Debug)]
pub struct Attempt {
    pub connected: bool,
    pub outcome: String,
}

impl Probe {
    /// Starts probe `name` in `namespace` with `labels`, and waits until it runs and
    /// kube-router's firewall has a chain for it.
    pub async fn start(client: &Client, namespace: &str, name: &str, labels: Value) -> Probe {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": labels },
            "spec": {
                // Straight to the real node: kwok's fake nodes would only pretend to run it.
                "nodeName": NODE_NAME,
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "probe",
                    "image": NETPROBE_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["wait"],
                    "securityContext": { "allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                         "capabilities": { "drop": ["ALL"] } }
                }]
            }
        }))
        .expect("probe pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create probe {namespace}/{name}: {e}"));
        let what = format!("probe {namespace}/{name} to run");
        poll_until(&what, Duration::from_secs(120), || async {
            let Ok(pod) = pods.get(name).await else { return Ok(None) };
            let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
            Ok(statuses.iter().any(|s| s.state.as_ref().is_some_and(|s| s.running.is_some())).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let probe = Probe { namespace: namespace.to_owned(), name: name.to_owned() };
        probe.wait_enforced().await;
        probe
    }

    /// kube-router names every local pod in the comments of the rules that send its traffic
    /// through its own firewall chain, written in one iptables-restore with the ip sets the
    /// policies select pods by.
    async fn wait_enforced(&self) {
        let needle = format!("POD name:{} namespace: {}", self.name, self.namespace);
        let what = format!("kube-router's rules for probe {}/{}", self.namespace, self.name);
        poll_until(&what, Duration::from_secs(60), || async {
            let out = Command::new("iptables-save").args(["-t", "filter"]).output()?;
            Ok(String::from_utf8_lossy(&out.stdout).contains(&needle).then_some(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// One connection attempt from this probe to `address:port`.
    pub fn attempt(&self, cp: &ControlPlane, address: &str, port: u16) -> Attempt {
        let (port, timeout) = (port.to_string(), CONNECT_TIMEOUT_MS.to_string());
        let args = ["exec", "-n", &self.namespace, &self.name, "--", "/netprobe", address, &port, &timeout];
        let out = cp.kubectl(&args).expect("kubectl exec");
        let outcome = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let connected = match out.status.code() {
            Some(0) => true,
            Some(1) if !outcome.is_empty() => false,
            _ => panic!(
                "the probe {}/{} could not run ({:?}): {outcome} {}",
                self.namespace,
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        Attempt { connected, outcome }
    }
}
