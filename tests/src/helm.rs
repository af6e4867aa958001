//! helm, as built by `hack/helm.sh` (`TAIMATSU_HELM`), for the chart tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};

use crate::wait::{deployment_rolled_out, poll_until};

/// The repository's chart `name` (`taimatsu-crds`, `taimatsu`), as a path argument.
pub fn chart(name: &str) -> String {
    crate::repo_root().join("charts").join(name).display().to_string()
}

/// A helm binary with its cache, config and data under one directory (never $HOME).
pub struct Helm {
    bin: PathBuf,
    home: PathBuf,
}

impl Helm {
    /// The helm of `TAIMATSU_HELM`, keeping its state under `home`. Panics with what to do
    /// when the variable is not set.
    pub fn from_env(home: PathBuf) -> Helm {
        match std::env::var_os("TAIMATSU_HELM") {
            Some(bin) => Helm { bin: PathBuf::from(bin), home },
            None => panic!(
                "TAIMATSU_HELM is not set: run hack/helm.sh and export TAIMATSU_HELM=<the path it prints> \
                 (hack/test.sh does both)"
            ),
        }
    }

    /// Runs helm with `args`, against the cluster of `kubeconfig` when one is given.
    pub fn run(&self, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"))
            .env_remove("KUBECONFIG")
            .args(args);
        if let Some(kubeconfig) = kubeconfig {
            cmd.arg("--kubeconfig").arg(kubeconfig);
        }
        cmd.output().unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()))
    }

    /// [`Self::run`], returning stdout, or panicking with everything helm said.
    pub fn ok(&self, kubeconfig: Option<&Path>, args: &[&str]) -> String {
        let out = self.run(kubeconfig, args);
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        assert!(
            out.status.success(),
            "helm {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

/// Waits until the operator of release `release` (charts/taimatsu) in `namespace` serves:
/// its Deployment rolled out within `timeout`, and its webhook Service forwarding to a pod.
/// kube-proxy programs a Service after its endpoints turn ready and refuses connections
/// until then; the fail-closed webhook would refuse every Taimatsu write meanwhile.
pub async fn wait_for_operator(
    client: &Client,
    namespace: &str,
    release: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    deployment_rolled_out(client, namespace, release, timeout).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let webhook = format!("{release}-webhook");
    let ip = services.get(&webhook).await?.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    poll_until(&format!("Service {webhook} to forward to an operator pod"), Duration::from_secs(60), || async {
        Ok(tokio::net::TcpStream::connect((ip.as_str(), 443)).await.ok().map(drop))
    })
    .await
}
