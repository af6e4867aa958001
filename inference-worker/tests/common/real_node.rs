//! The real node of `hack/real-node.sh` (kubelet, containerd, runc, CNI bridge, kube-proxy)
//! for the tests that run pods as containers. Opt-in with TAIMATSU_REAL_NODE=1: it needs
//! root and changes the machine while it runs (see docs/real-node.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use taimatsu_crds::v1alpha1::ModelDeployment;

/// hack/real-node.sh's bridge address: the host as the pods see it.
pub const BRIDGE_IP: &str = "10.85.0.1";
pub const NODE_NAME: &str = "sandbox-node";
/// The operator's default --worker-image, which hack/real-node.sh builds and imports.
pub const WORKER_IMAGE: &str = "registry.local/taimatsu/inference-worker:0.1.0";
/// The Helm chart's default operator image, which hack/real-node.sh builds when given
/// an operator binary.
pub const OPERATOR_IMAGE: &str = "registry.local/taimatsu/operator:0.1.0";
/// Where the tests of each binary keep their control plane: its own directory, which no
/// other test binary's cleanup of /tmp/taimatsu-test-cluster-* removes from under the
/// kubelet. Test binaries run one after another, so the real-node tests can share it.
pub fn cluster_dir() -> PathBuf {
    std::env::temp_dir().join("taimatsu-real-node-cluster")
}

/// Fails the test unless TAIMATSU_REAL_NODE is set (not empty, not 0): the real-node tests
/// are `#[ignore]`d, so they run only when asked for, and then never pass by doing nothing.
pub fn require() {
    let on = std::env::var("TAIMATSU_REAL_NODE").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        on,
        "set TAIMATSU_REAL_NODE=1 to run pods on a real kubelet with containerd (needs root; see docs/real-node.md)"
    );
}

fn script() -> PathBuf {
    super::repo_root().join("hack/real-node.sh")
}

/// The running node; `hack/real-node.sh down` when dropped, also when the test panics.
pub struct RealNode;

impl RealNode {
    /// Starts the node against `kubeconfig`. The worker image holds `worker_bin`, and with
    /// `operator_bin` the operator image is built too: this test build's binaries, so the
    /// test checks the code under test (unless TAIMATSU_IMAGE_WORKER_BIN names another).
    pub fn up(kubeconfig: &Path, worker_bin: &Path, operator_bin: Option<&Path>) -> RealNode {
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("up").arg(kubeconfig);
        if std::env::var_os("TAIMATSU_IMAGE_WORKER_BIN").is_none() {
            cmd.env("TAIMATSU_IMAGE_WORKER_BIN", worker_bin);
        }
        if let Some(bin) = operator_bin {
            cmd.env("TAIMATSU_IMAGE_OPERATOR_BIN", bin);
        }
        // A node left by an earlier run that was killed belongs to a control plane that is gone.
        let _ = Command::new("bash").arg(script()).arg("down").status();
        let status = cmd.status().expect("run hack/real-node.sh");
        let node = RealNode;
        assert!(status.success(), "hack/real-node.sh up failed (output above; logs in .cache/real-node/logs/)");
        node
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("down").status();
    }
}

/// What to print when pods did not get where they should: where they are and their
/// status, and the kubelet's last words.
pub async fn diagnose_pods(pods: &Api<Pod>) -> String {
    let pods = pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let statuses: Vec<_> =
        pods.iter().map(|p| (&p.metadata.name, p.spec.as_ref().and_then(|s| s.node_name.clone()), &p.status)).collect();
    let kubelet_log = super::repo_root().join(".cache/real-node/logs/kubelet.log");
    let log = std::fs::read_to_string(&kubelet_log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    format!(
        "pods: {statuses:#?}\nlast kubelet log lines ({}):\n{}",
        kubelet_log.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// Fails when a container of `pods` was killed by its memory limit: it would restart
/// forever, and a wait would only time out.
pub async fn fail_on_oom(pods: &Api<Pod>) -> anyhow::Result<()> {
    for pod in pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
        let spec = pod.spec.unwrap_or_default();
        for status in pod.status.and_then(|s| s.container_statuses).unwrap_or_default() {
            let last = status.last_state.and_then(|s| s.terminated);
            if last.is_some_and(|t| t.reason.as_deref() == Some("OOMKilled")) {
                let limits = spec
                    .containers
                    .iter()
                    .find(|c| c.name == status.name)
                    .and_then(|c| c.resources.clone())
                    .and_then(|r| r.limits);
                anyhow::bail!("container {} was OOMKilled under its memory limit {limits:?}", status.name);
            }
        }
    }
    Ok(())
}

/// Waits until the ModelDeployment `name` is Ready, failing at once when a container of
/// `pods` was OOM-killed ([`fail_on_oom`]). A read that fails (a slow API server on two
/// shared cores) is not a failure: it looks again.
pub async fn wait_ready(
    what: &str,
    mds: &Api<ModelDeployment>,
    name: &str,
    pods: &Api<Pod>,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    taimatsu_tests::wait::poll_until(what, timeout, || async {
        fail_on_oom(pods).await?;
        let Ok(md) = mds.get(name).await else { return Ok(None) };
        Ok(taimatsu_tests::wait::is_ready(&md.status.unwrap_or_default()).then_some(()))
    })
    .await
}
