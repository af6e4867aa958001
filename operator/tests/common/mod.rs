//! Shared setup of the operator's cluster tests: the control plane, the CRDs, the
//! example AcceleratorProfiles and one operator process per test binary.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};
use taimatsu_tests::{ControlPlane, apply, crds};
use tokio::sync::OnceCell;

pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_taimatsu-operator");

/// Command line of an operator process against the test control plane.
pub fn operator_command(cp: &ControlPlane, identity: &str, lease_name: &str, http_port: u16) -> Command {
    let mut cmd = Command::new(OPERATOR_BIN);
    cmd.env("KUBECONFIG", cp.kubeconfig("taimatsu-operator"))
        .env("RUST_LOG", "info,taimatsu_operator=debug,kube=warn")
        .args(["--log-format=text", "--lease-namespace=default", "--lease-duration-seconds=3"])
        .arg(format!("--lease-name={lease_name}"))
        .arg(format!("--identity={identity}"))
        .arg(format!("--http-addr=127.0.0.1:{http_port}"))
        .arg(format!("--audit-log={}", audit_log(cp, identity).display()))
        .arg(format!("--analysis-pod-cidrs={}", taimatsu_tests::addresses::served_pods()))
        // No admission webhook unless a test configures one (tests/webhook.rs).
        .arg("--webhook-addr=");
    cmd
}

/// The records of the control-plane audit file of `identity` (none before its first
/// record), after checking that the chain verifies.
pub fn audit_records(
    cp: &ControlPlane,
    identity: &str,
) -> (taimatsu_core::audit_chain::VerifyReport, Vec<serde_json::Value>) {
    let log = std::fs::read(audit_log(cp, identity)).unwrap_or_default();
    let report = taimatsu_core::audit_chain::verify(&log).expect("the audit chain verifies");
    (report, sealed_records(&log))
}

/// The `record` of every sealed line of a chain (or a segment of one).
pub fn sealed_records(log: &[u8]) -> Vec<serde_json::Value> {
    log.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<serde_json::Value>(l).expect("a sealed record")["record"].clone())
        .collect()
}

/// The control-plane audit file the operator `identity` writes.
pub fn audit_log(cp: &ControlPlane, identity: &str) -> std::path::PathBuf {
    cp.dir().join("audit").join(format!("{identity}.jsonl"))
}

/// Control plane with CRDs, example profiles and one running operator.
pub async fn setup() -> (&'static ControlPlane, Client, u16) {
    static OPERATOR: OnceCell<u16> = OnceCell::const_new();
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.expect("client");
    let port = *OPERATOR
        .get_or_init(|| async {
            prepare(&client).await;
            let port = taimatsu_tests::control_plane::free_port().expect("port");
            let (child, log) = cp
                .start_process("operator", operator_command(cp, "operator-0", "taimatsu-operator", port))
                .expect("start operator");
            std::mem::forget(child); // lives as long as the test binary
            eprintln!("operator log: {}", log.display());
            port
        })
        .await;
    (cp, client, port)
}

/// CRDs, the operator's RBAC and the example AcceleratorProfiles.
pub async fn prepare(client: &Client) {
    crds::ensure_installed(client).await.expect("CRDs");
    grant_operator_rbac(client).await;
    let profiles = taimatsu_tests::repo_root().join("examples/accelerator-profiles");
    for entry in std::fs::read_dir(profiles).expect("profiles dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("profile");
        apply::apply_yaml(client, "default", &text).await.expect("apply profile");
    }
}

/// The operator's reconcile counter, read from its /metrics.
pub async fn reconcile_count(port: u16) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return 0 };
    let request = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    text.lines()
        .find_map(|l| l.strip_prefix("taimatsu_operator_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Binds the repository's ClusterRole and leader-election Role to the
/// `taimatsu-operator` user, so the operator under test has exactly those rights.
pub async fn grant_operator_rbac(client: &Client) {
    taimatsu_tests::rbac::grant_operator_rbac(client, "default").await.expect("operator RBAC");
}

/// A pinned safetensors Model of the given size, named `name`.
pub async fn create_model(client: &Client, ns: &str, name: &str, parameters: &str) {
    let models: Api<Model> = Api::namespaced(client.clone(), ns);
    let model = json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": name },
        "spec": {
            "source": { "uri": format!("https://mirror.example/{name}/") }, "format": "safetensors",
            "files": [
                { "path": "config.json", "size": 700, "sha256": "1".repeat(64) },
                { "path": "model.safetensors", "size": 4_000_000_000i64, "sha256": "2".repeat(64) },
            ],
            "architecture": "qwen2", "parameters": parameters, "contextLength": 8192, "license": "Apache-2.0",
        }
    });
    models.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(model)).await.expect("apply model");
}

/// Applies a vLLM ModelDeployment with the given placement.
pub async fn apply_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    model: &str,
    quantization: &str,
    placement: serde_json::Value,
) -> ModelDeployment {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let md = json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": name },
        "spec": { "modelRef": { "name": model }, "quantization": quantization, "engine": { "type": "vllm" }, "placement": placement },
    });
    mds.patch(name, &PatchParams::apply("tests").force(), &Patch::Apply(md)).await.expect("apply deployment")
}

/// Waits until condition `type_` of the ModelDeployment has `reason`.
pub async fn wait_reason(client: &Client, ns: &str, name: &str, type_: &str, reason: &str) -> ModelDeployment {
    wait_reason_within(client, ns, name, type_, reason, Duration::from_secs(90)).await
}

/// [`wait_reason`] for at most `timeout`.
pub async fn wait_reason_within(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
    timeout: Duration,
) -> ModelDeployment {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let cond = |md: Option<&ModelDeployment>| {
        md.and_then(|m| m.status.as_ref())
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.reason == reason))
    };
    let found = tokio::time::timeout(timeout, await_condition(mds.clone(), name, cond)).await;
    match found {
        Ok(Ok(Some(md))) => md,
        other => {
            let now = mds.get(name).await.ok().and_then(|m| m.status);
            panic!("{ns}/{name}: {type_} never became {reason} ({other:?}); status now: {now:#?}")
        }
    }
}

/// Worker Deployments of a ModelDeployment.
pub async fn worker_deployments(client: &Client, ns: &str, name: &str) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("taimatsu.dev/model-deployment={name}"))).await.expect("list").items
}

/// Writes a webhook serving certificate for 127.0.0.1 as `tls.crt`/`tls.key` in `dir` (each
/// replaced in one rename, as the kubelet swaps a Secret's files) and returns its CA.
pub fn write_serving_pair(dir: &std::path::Path) -> String {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("tls.crt.new"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    ca.pem()
}

/// Rewrites the head ConfigMap `name` in `default` with `edit`, retrying on a conflict
/// with the operator's own swaps.
pub async fn tamper_head(client: &Client, name: &str, edit: impl Fn(&mut std::collections::BTreeMap<String, String>)) {
    let heads: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), "default");
    taimatsu_tests::wait::poll_until("the tampered head to be written", Duration::from_secs(30), || {
        let heads = heads.clone();
        let edit = &edit;
        async move {
            let mut head = heads.get(name).await?;
            edit(head.data.get_or_insert_default());
            match heads.replace(name, &kube::api::PostParams::default(), &head).await {
                Ok(_) => Ok(Some(())),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
                Err(e) => Err(e.into()),
            }
        }
    })
    .await
    .expect("tamper with the head");
}
