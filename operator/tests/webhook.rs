//! The admission webhook, called by the real kube-apiserver over TLS: it records the
//! requesting user of each change in the control-plane audit chain, names that user on
//! the revision it creates (also when another replica's webhook admitted the change), with
//! failurePolicy Fail no change passes while it is down, and a certificate from files is
//! reloaded when it is renewed. The API server calls it with its webhook client
//! certificate (the test control plane's AdmissionConfiguration); webhook_forgery.rs shows
//! that nobody else can.
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
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
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
        format!("--webhook-client-ca-file={}", cp.webhook_client_ca().display()),
        format!("--webhook-client-names={}", taimatsu_tests::certs::WEBHOOK_CLIENT_NAME),
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

        // A change to a GPU profile (cluster-scoped) is admitted and recorded too, with who made it.
        let profiles: Api<taimatsu_crds::v1alpha1::AcceleratorProfile> = Api::all(client.clone());
        let label = json!({ "metadata": { "labels": { "taimatsu.dev/reviewed-in": ns.as_str() } } });
        profiles.patch("l4-24gb", &PatchParams::default(), &Patch::Merge(label)).await.expect("label the profile");
        let (_, records) = audit_records(cp, "webhook-operator");
        let profile_change = records.iter().find(|r| {
            r["event"] == "admission" && r["kind"] == "AcceleratorProfile" && r["name"] == "l4-24gb" && r["operation"] == "UPDATE"
        });
        let profile_change = profile_change.unwrap_or_else(|| panic!("no admission record of the profile change: {records:#?}"));
        assert_eq!(profile_change["user"], "taimatsu-admin");
        assert_eq!(profile_change["namespace"], Value::Null);

        // An egress range outside the operator's (it allows none: no --egress-allowed-cidrs)
        // is refused at admission, naming the entry and the flag.
        let wide = json!({ "spec": { "access": { "egress": { "allowedCidrs": ["10.20.0.0/16"] } } } });
        let refused = mds.patch("chat", &PatchParams::default(), &Patch::Merge(wide)).await.unwrap_err().to_string();
        assert!(refused.contains("spec.access.egress.allowedCidrs[0]: 10.20.0.0/16 cannot be opened"), "{refused}");
        assert!(refused.contains("--egress-allowed-cidrs"), "{refused}");
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

    // Two replicas, as the chart runs them. The leader's webhook is not the one the API
    // server calls (the Service may send any admission to either): the standby admits
    // alice's change, and the leader still names her on the revision, from the audit head.
    // The standby's certificate comes from files (as Helm or cert-manager mount them) and is
    // reloaded when it changes: after a renewal under a new CA, and the caBundle changed to
    // it, changes are admitted again without restarting it.
    let cert_dir = cp.dir().join("webhook-certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let first_ca = write_serving_pair(&cert_dir);
    set_ca_bundle(&vwcs, &first_ca).await;
    let replica = |identity: &str, webhook_port: u16| {
        let mut operator = operator_command(cp, identity, "webhook-replicas", free_port().unwrap());
        operator.args([
            format!("--webhook-addr=127.0.0.1:{webhook_port}"),
            format!("--webhook-cert-dir={}", cert_dir.display()),
            format!("--webhook-client-ca-file={}", cp.webhook_client_ca().display()),
        ]);
        let (child, log) = cp.start_process(identity, operator).unwrap();
        eprintln!("operator log: {}", log.display());
        (child, log)
    };
    let (mut leader, _) = replica("webhook-leader", free_port().unwrap());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "default");
    poll_until("webhook-leader to lead", Duration::from_secs(60), || async {
        let holder = leases.get_opt("webhook-replicas").await?.and_then(|l| l.spec).and_then(|s| s.holder_identity);
        Ok((holder.as_deref() == Some("webhook-leader")).then_some(()))
    })
    .await
    .unwrap();
    let (mut standby, log) = replica("webhook-standby", webhook_port);
    with_namespace("webhook-replicas", move |client, ns| async move {
        admitted_in_time(&client, &ns, "before-renewal").await;
        let renewed_ca = write_serving_pair(&cert_dir);
        let vwcs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        set_ca_bundle(&vwcs, &renewed_ca).await;
        admitted_in_time(&client, &ns, "after-renewal").await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("webhook certificate reloaded"), "the operator did not say it reloaded:\n{text}");

        let_alice_deploy(&client, &ns).await;
        let alice = cp.client_as("alice").await.unwrap();
        create_model(&alice, &ns, "qwen", "7.6B").await;
        let md = json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "chat" },
            "spec": { "modelRef": { "name": "qwen" }, "quantization": "awq", "engine": { "type": "vllm" },
                      "placement": { "acceleratorProfileRef": { "name": "l4-24gb" } } },
        });
        let mds: Api<ModelDeployment> = Api::namespaced(alice, &ns);
        mds.patch("chat", &PatchParams::apply("alice-cli"), &Patch::Apply(md)).await.expect("alice deploys");
        wait_reason(&client, &ns, "chat", "Ready", "Available").await;
        // The standby's file is a segment of the chain (the first phase's records precede
        // it), so it is read without verifying from the genesis.
        let segment = std::fs::read_to_string(audit_log(cp, "webhook-standby")).unwrap();
        let standby_records: Vec<Value> =
            segment.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["record"].clone()).collect();
        assert!(
            standby_records
                .iter()
                .any(|r| r["event"] == "admission" && r["namespace"] == ns.as_str() && r["user"] == "alice"),
            "the standby admitted alice's change: {standby_records:#?}"
        );
        let history = store::list(&client, &ns, "chat").await.unwrap();
        assert_eq!(history[0].snapshot.requested_by, "alice", "not the client tool's name (alice-cli)");
    })
    .await;
    for child in [&mut standby, &mut leader] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    vwcs.delete("taimatsu-operator", &Default::default()).await.unwrap();
}

/// Writes a new CA and a serving certificate for 127.0.0.1 signed by it into `dir` as
/// `tls.crt`/`tls.key`, replacing both files at once as the kubelet does; returns the CA.
async fn set_ca_bundle(vwcs: &Api<ValidatingWebhookConfiguration>, ca_pem: &str) {
    let mut configuration = vwcs.get("taimatsu-operator").await.unwrap();
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec()));
    }
    vwcs.replace("taimatsu-operator", &Default::default(), &configuration).await.unwrap();
}

/// Creates the Model `name`, which the fail-closed webhook admits only once the API server
/// trusts the certificate the operator serves (the API server picks up a changed caBundle
/// within moments, and the operator may still be starting): retried for 30 s.
async fn admitted_in_time(client: &Client, ns: &str, name: &str) {
    let models: Api<taimatsu_crds::v1alpha1::Model> = Api::namespaced(client.clone(), ns);
    let model = json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": name },
        "spec": { "source": { "uri": "https://mirror.example/m/" }, "format": "gguf",
                  "files": [{ "path": "m.gguf", "size": 1, "sha256": "a".repeat(64) }],
                  "architecture": "llama", "parameters": "135M", "contextLength": 2048, "license": "MIT" },
    });
    let last = std::sync::Mutex::new(String::new());
    let admitted = poll_until(&format!("Model {name} to be admitted by the webhook"), Duration::from_secs(30), || {
        let (models, model) = (models.clone(), model.clone());
        let last = &last;
        async move {
            match models.patch(name, &PatchParams::apply("tests"), &Patch::Apply(model)).await {
                Ok(_) => Ok(Some(())),
                Err(e) => {
                    *last.lock().unwrap() = e.to_string();
                    Ok(None)
                }
            }
        }
    })
    .await;
    if let Err(e) = admitted {
        panic!("{e:#}; last refusal: {}", last.lock().unwrap());
    }
}
