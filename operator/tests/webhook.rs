//! The admission webhook, called by the real kube-apiserver over TLS: it records the
//! requesting user of each change in the control-plane audit chain, names that user on
//! the revision it creates, and with failurePolicy Fail no change passes while it is down.
//! Its own test binary: the webhook configuration intercepts every Taimatsu object of
//! this control plane.

mod common;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_operator::revision::store;
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, apply, with_namespace};

use common::*;

/// alice may manage Models and ModelDeployments in `ns`, nothing else.
async fn let_alice_deploy(client: &Client, ns: &str) {
    let rbac = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: model-deployer}
rules:
- apiGroups: ["taimatsu.dev"]
  resources: ["models", "modeldeployments"]
  verbs: ["get", "list", "create", "update", "patch", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-deploys}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: model-deployer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#;
    apply::apply_yaml(client, ns, rbac).await.expect("alice's role");
}

#[tokio::test]
async fn the_webhook_records_who_changed_what_and_fails_closed_when_down() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;
    let webhook_port = free_port().unwrap();
    taimatsu_tests::sandbox::register_webhook(&client, webhook_port).await.expect("webhook configuration");
    let mut operator = operator_command(cp, "webhook-operator", "webhook-test", free_port().unwrap());
    // No certificate supplied: the operator generates one for 127.0.0.1 and publishes its CA.
    operator.args([
        format!("--webhook-addr=127.0.0.1:{webhook_port}"),
        "--webhook-dns-names=127.0.0.1".to_owned(),
        format!("--webhook-cert-dir={}", cp.dir().join("no-webhook-certs").display()),
    ]);
    let (mut child, log) = cp.start_process("webhook-operator", operator).unwrap();
    eprintln!("operator log: {}", log.display());
    let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    poll_until("the generated CA in the webhook configuration", Duration::from_secs(60), || async {
        let c = vwcs.get("taimatsu-operator").await?;
        Ok(c.webhooks.unwrap_or_default()[0].client_config.ca_bundle.as_ref().map(|_| ()))
    })
    .await
    .unwrap();

    with_namespace("webhook", move |client, ns| async move {
        let_alice_deploy(&client, &ns).await;
        let alice = cp.client_as("alice").await.unwrap();
        create_model(&alice, &ns, "qwen", "7.6B").await;
        let mds: Api<ModelDeployment> = Api::namespaced(alice.clone(), &ns);
        let md = json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": { "name": "chat", "annotations": { "taimatsu.dev/change-cause": "CHG-1042: first Qwen deployment" } },
            "spec": { "modelRef": { "name": "qwen" }, "quantization": "awq", "engine": { "type": "vllm" },
                      "placement": { "acceleratorProfileRef": { "name": "l4-24gb" } } },
        });
        mds.patch("chat", &PatchParams::apply("alice-cli"), &Patch::Apply(md)).await.expect("alice deploys");
        wait_reason(&client, &ns, "chat", "Ready", "Available").await;

        let (_, records) = audit_records(cp, "webhook-operator");
        let admitted: Vec<&Value> =
            records.iter().filter(|r| r["event"] == "admission" && r["namespace"] == ns.as_str()).collect();
        let kinds: Vec<(&str, &str, &str)> = admitted
            .iter()
            .map(|r| (r["operation"].as_str().unwrap(), r["kind"].as_str().unwrap(), r["user"].as_str().unwrap()))
            .collect();
        assert_eq!(kinds, [("CREATE", "Model", "alice"), ("CREATE", "ModelDeployment", "alice")]);
        assert_eq!(admitted[1]["changeCause"], "CHG-1042: first Qwen deployment");
        assert_eq!(admitted[1]["generation"], 1);
        let created = records.iter().find(|r| r["event"] == "revision-created" && r["namespace"] == ns.as_str()).unwrap();
        assert_eq!(created["requestedBy"], "alice", "the revision names the user, not the client tool");
        let history = store::list(&client, &ns, "chat").await.unwrap();
        assert_eq!(history[0].snapshot.requested_by, "alice");
        assert_eq!(history[0].snapshot.change_cause.as_deref(), Some("CHG-1042: first Qwen deployment"));
    })
    .await;

    // Fail-closed: with the webhook down, no change gets through unrecorded.
    child.kill().unwrap();
    child.wait().unwrap();
    with_namespace("webhook-down", move |client, ns| async move {
        let models: Api<taimatsu_crds::v1alpha1::Model> = Api::namespaced(client.clone(), &ns);
        let model = json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "m" },
            "spec": { "source": { "uri": "https://mirror.example/m/" }, "format": "gguf",
                      "files": [{ "path": "m.gguf", "size": 1, "sha256": "a".repeat(64) }],
                      "architecture": "llama", "parameters": "135M", "contextLength": 2048, "license": "MIT" },
        });
        let err = models.patch("m", &PatchParams::apply("tests"), &Patch::Apply(model)).await.unwrap_err();
        assert!(err.to_string().contains("audit.taimatsu.dev"), "{err}");
    })
    .await;
    vwcs.delete("taimatsu-operator", &Default::default()).await.unwrap();
}
