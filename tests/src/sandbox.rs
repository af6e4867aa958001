//! Everything around a control plane that makes a deployed model answer: the operator
//! (with its admission webhook and audit trail), an in-house model mirror serving the real
//! model files over https and a Hugging Face Hub mirror serving them as Hub repositories
//! (the operator's `--hf-mirror`), and the [`PodRunner`] that runs the worker pods the
//! operator renders.
//! Used by the sandbox (`hack/sandbox.sh`) and by the end-to-end test, so the README's
//! demo and the test exercise the same assembly.
//!
//! With a real node (`hack/real-node.sh`: kubelet, containerd, runc) the pods run as
//! containers instead: [`SandboxOptions::real_node`] leaves the pod runner out and serves
//! the mirror where pods reach it, the node's bridge address.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};

use crate::control_plane::free_port;
use crate::hub_mirror::{HubMirror, Listen};
use crate::mirror::Mirror;
use crate::pod_runner::PodRunner;
use crate::{ControlPlane, crds, rbac};

/// What to run.
pub struct SandboxConfig {
    pub operator_bin: PathBuf,
    pub worker_bin: PathBuf,
    /// `hack/models.sh`'s output: `smollm2/` and `minilm/`.
    pub models_dir: PathBuf,
    /// State: audit logs, worker directories.
    pub state_dir: PathBuf,
}

/// How worker pods run, and so where the mirror must be reachable from.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    /// Run the [`PodRunner`] (node `sandbox-local`). Off when a real kubelet runs the pods.
    pub pod_runner: bool,
    /// The address pods reach the mirror at, when they run in their own network namespaces
    /// (a real node's bridge gateway, `10.85.0.1` with `hack/real-node.sh`). The mirror then
    /// listens on every address and its certificate names this one; `None`: 127.0.0.1 only.
    pub mirror_ip: Option<IpAddr>,
}

impl SandboxOptions {
    /// The pod runner plays the kubelet; everything on loopback. What [`Sandbox::start`] uses.
    pub fn pod_runner() -> Self {
        SandboxOptions { pod_runner: true, mirror_ip: None }
    }

    /// A real kubelet (`hack/real-node.sh`) runs the pods; they reach the mirror at `bridge_ip`.
    pub fn real_node(bridge_ip: IpAddr) -> Self {
        SandboxOptions { pod_runner: false, mirror_ip: Some(bridge_ip) }
    }
}

/// A running assembly; its processes and tasks stop when it is dropped or the process exits.
pub struct Sandbox {
    /// The in-house model mirror.
    pub mirror: Mirror,
    /// The in-house Hugging Face Hub mirror `hf://` sources are fetched from.
    pub hub: HubMirror,
    /// The operator's control-plane audit file.
    pub audit_log: PathBuf,
    pub operator_log: PathBuf,
    operator: Child,
    /// The pod runner's task, when it runs.
    pod_runner: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.operator.kill();
        if let Some(runner) = &self.pod_runner {
            runner.abort();
        }
    }
}

impl Sandbox {
    /// Installs the CRDs and the operator's RBAC, moves CPU-only workloads off kwok's fake
    /// CPU node onto the pod runner's, and starts the mirror, the operator and the runner.
    /// (With [`SandboxOptions::real_node`] they go to the real node, which joins separately.)
    pub async fn start(cp: &ControlPlane, client: &Client, config: SandboxConfig) -> anyhow::Result<Sandbox> {
        Self::start_with(cp, client, config, SandboxOptions::pod_runner()).await
    }

    /// [`Self::start`], with the pod runner and the mirror's address as `options` say.
    pub async fn start_with(
        cp: &ControlPlane,
        client: &Client,
        config: SandboxConfig,
        options: SandboxOptions,
    ) -> anyhow::Result<Sandbox> {
        crds::ensure_installed(client).await?;
        rbac::grant_operator_rbac(client, "default").await?;
        // Worker pods go to the pod runner's node, not kwok's CPU node.
        crate::fleet::cordon(client, crate::fleet::CPU_NODE).await?;

        let mirror = Mirror::serve(config.models_dir.clone(), options.mirror_ip).await?;
        let hub =
            HubMirror::models(&config.models_dir, options.mirror_ip.map_or(Listen::TlsLoopback, Listen::TlsAt)).await?;
        let webhook_port = free_port()?;
        register_webhook(client, webhook_port).await?;
        std::fs::create_dir_all(&config.state_dir)?;
        let audit_log = config.state_dir.join("audit").join("operator-0.jsonl");
        let mut operator = Command::new(&config.operator_bin);
        operator
            .env("KUBECONFIG", cp.kubeconfig("taimatsu-operator"))
            .env("RUST_LOG", "info,kube=warn")
            .args(["--log-format=text", "--lease-namespace=default", "--identity=operator-0", "--audit-stdout=false"])
            .arg(format!("--http-addr=127.0.0.1:{}", free_port()?))
            .arg(format!("--audit-log={}", audit_log.display()))
            .arg(format!("--webhook-addr=127.0.0.1:{webhook_port}"))
            .arg("--webhook-dns-names=127.0.0.1")
            .arg(format!("--webhook-client-ca-file={}", cp.webhook_client_ca().display()))
            .arg(format!("--webhook-client-names={}", crate::certs::WEBHOOK_CLIENT_NAME))
            .arg(format!("--analysis-pod-cidrs={}", crate::addresses::served_pods()))
            .arg(format!("--hf-mirror={}", hub.url))
            .arg(format!("--webhook-cert-dir={}", config.state_dir.join("no-webhook-certs").display()));
        let (operator, operator_log) = cp.start_process("operator", operator)?;
        // Fail-closed webhook: nothing Taimatsu can be applied until the operator serves it.
        let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        crate::wait::poll_until("the operator's admission webhook", std::time::Duration::from_secs(60), || async {
            let published = webhooks.get("taimatsu-operator").await?.webhooks.unwrap_or_default()[0]
                .client_config
                .ca_bundle
                .is_some();
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", webhook_port)).await.is_ok();
            Ok((published && listening).then_some(()))
        })
        .await?;

        let pod_runner = options.pod_runner.then(|| {
            let runner = PodRunner::new(client.clone(), config.worker_bin.clone(), config.state_dir.join("pods"));
            tokio::spawn(async move {
                if let Err(e) = runner.run().await {
                    eprintln!("pod runner stopped: {e:#}");
                }
            })
        });
        Ok(Sandbox { mirror, hub, audit_log, operator_log, operator, pod_runner })
    }

    /// examples/quickstart/model.yaml with its source pointed at this sandbox's mirror, and
    /// the Secret with the mirror's CA it names, created in `namespace`.
    pub async fn quickstart_model(&self, client: &Client, namespace: &str) -> anyhow::Result<Value> {
        self.mirror.example_model(client, namespace, "examples/quickstart/model.yaml").await
    }

    /// Applies examples/quickstart/ to `namespace` with `params`: the Model pointed at this
    /// sandbox's mirror (see [`Self::quickstart_model`]), which is returned, and the
    /// ModelDeployment as the example has it.
    pub async fn apply_quickstart(
        &self,
        client: &Client,
        namespace: &str,
        params: &PatchParams,
    ) -> anyhow::Result<Value> {
        let model = self.quickstart_model(client, namespace).await?;
        let models: Api<Model> = Api::namespaced(client.clone(), namespace);
        models.patch("smollm2-135m-instruct", params, &Patch::Apply(&model)).await?;
        let text = std::fs::read_to_string(crate::repo_root().join("examples/quickstart/deployment.yaml"))?;
        let md: Value = serde_yaml::from_str(&text)?;
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), namespace);
        mds.patch("smollm2-chat", params, &Patch::Apply(&md)).await?;
        Ok(model)
    }
}

/// The webhook configuration (`taimatsu-operator`, calling 127.0.0.1:`port`) the operator
/// publishes its generated CA into; fail-closed.
pub async fn register_webhook(client: &Client, port: u16) -> anyhow::Result<()> {
    let configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": "taimatsu-operator" },
        "webhooks": [{
            "name": "audit.taimatsu.dev",
            "clientConfig": { "url": format!("https://127.0.0.1:{port}/validate") },
            "rules": [{ "apiGroups": ["taimatsu.dev"], "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["modeldeployments", "models"], "scope": "Namespaced" },
                      { "apiGroups": ["taimatsu.dev"], "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["acceleratorprofiles"], "scope": "Cluster" }],
            "failurePolicy": "Fail", "sideEffects": "NoneOnDryRun", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10,
        }],
    });
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        "taimatsu-operator",
        &PatchParams::apply(crate::apply::FIELD_MANAGER).force(),
        &Patch::Apply(configuration),
    )
    .await?;
    Ok(())
}
