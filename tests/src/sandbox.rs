//! Everything around a control plane that makes a deployed model answer: the operator
//! (with its admission webhook and audit trail), an in-house model mirror serving the real
//! model files, and the [`PodRunner`] that runs the worker pods the operator renders.
//! Used by the sandbox (`hack/sandbox.sh`) and by the end-to-end test, so the README's
//! demo and the test exercise the same assembly.
//!
//! With a real node (`hack/real-node.sh`: kubelet, containerd, runc) the pods run as
//! containers instead: [`SandboxOptions::real_node`] leaves the pod runner out and serves
//! the mirror where pods reach it, the node's bridge address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};

use crate::control_plane::free_port;
use crate::pod_runner::PodRunner;
use crate::{ControlPlane, crds, rbac};

/// The mirror's path for each model directory under the models dir (`hack/models.sh`).
pub const MIRRORED: [(&str, &str); 2] = [("smollm2-135m-instruct", "smollm2"), ("all-minilm-l6-v2", "minilm")];

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
    /// Base URL of the model mirror, e.g. `https://127.0.0.1:41000`.
    pub mirror_url: String,
    /// PEM of the CA that signs the mirror's certificate.
    pub mirror_ca: String,
    /// The operator's control-plane audit file.
    pub audit_log: PathBuf,
    pub operator_log: PathBuf,
    operator: Child,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.operator.kill();
        for t in &self.tasks {
            t.abort();
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
        // kwok would mark a worker pod on its CPU node Ready without running anything.
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .patch("cpu-0", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "unschedulable": true } })))
            .await?;

        let (mirror_url, mirror_ca, mirror) = serve_mirror(config.models_dir.clone(), options.mirror_ip).await?;
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

        let mut tasks = vec![mirror];
        if options.pod_runner {
            let runner = PodRunner::new(client.clone(), config.worker_bin.clone(), config.state_dir.join("pods"));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = runner.run().await {
                    eprintln!("pod runner stopped: {e:#}");
                }
            }));
        }
        Ok(Sandbox { mirror_url, mirror_ca, audit_log, operator_log, operator, tasks })
    }

    /// examples/quickstart/model.yaml with its source pointed at this sandbox's mirror, and
    /// the Secret with the mirror's CA it names, created in `namespace`.
    pub async fn quickstart_model(&self, client: &Client, namespace: &str) -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(crate::repo_root().join("examples/quickstart/model.yaml"))?;
        let mut model: Value = serde_yaml::from_str(&text)?;
        model["spec"]["source"]["uri"] = json!(format!("{}/smollm2-135m-instruct/", self.mirror_url));
        let ca = &model["spec"]["source"]["caBundleRef"];
        let (name, key) = (ca["name"].as_str().unwrap_or_default(), ca["key"].as_str().unwrap_or_default());
        let secret = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": { key: self.mirror_ca } });
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), namespace);
        secrets.patch(name, &PatchParams::apply(crate::apply::FIELD_MANAGER).force(), &Patch::Apply(secret)).await?;
        Ok(model)
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
                        "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["modeldeployments", "models"] }],
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

/// An HTTPS file server for the model directories ([`MIRRORED`]) with a private CA, like an
/// in-house mirror. Returns its base URL, its CA's PEM and the task.
///
/// On 127.0.0.1, or, with `pod_ip` (the address pods in their own network namespaces reach
/// this host at), on every address with `pod_ip` in the URL and the certificate. Every
/// address rather than `pod_ip` alone: the real node's bridge may come up after the mirror.
async fn serve_mirror(
    models_dir: PathBuf,
    pod_ip: Option<IpAddr>,
) -> anyhow::Result<(String, String, tokio::task::JoinHandle<()>)> {
    let app = Router::new().route("/{model}/{file}", get(mirror_file)).with_state(models_dir);
    let (listener, url, tls) = match pod_ip {
        None => {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let url = format!("https://{}", listener.local_addr()?);
            (listener, url, crate::tls::loopback_server_config()?)
        }
        Some(ip) => {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
            let url = format!("https://{}", std::net::SocketAddr::new(ip, listener.local_addr()?.port()));
            (listener, url, crate::tls::server_config(&[ip.to_string()])?)
        }
    };
    let (ca_pem, config) = tls;
    Ok((url, ca_pem, crate::tls::serve(listener, config, app)))
}

async fn mirror_file(
    State(root): State<PathBuf>,
    UrlPath((model, file)): UrlPath<(String, String)>,
) -> Result<Vec<u8>, StatusCode> {
    let dir =
        MIRRORED.iter().find(|(name, _)| *name == model).map(|(_, dir)| root.join(dir)).ok_or(StatusCode::NOT_FOUND)?;
    if file.contains("..") || file.contains('/') {
        return Err(StatusCode::BAD_REQUEST);
    }
    tokio::fs::read(Path::new(&dir).join(file)).await.map_err(|_| StatusCode::NOT_FOUND)
}
