//! Credentials never reach what the operator writes for good or for everyone to read,
//! against the real control plane: a Model whose source URI carries user info is refused
//! by the API server (CEL), and a fetch failure whose text echoes a URL with credentials
//! (user info, a pre-signed S3 query, an Authorization header) is redacted in the audit
//! record, the status, the Events and the revision record. The failure is the status a
//! kubelet writes when the fetch init container exits, as in tests/rollout.rs.

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::with_namespace;

use common::*;

/// The secrets of the failure text below: none may appear anywhere the operator writes.
const SECRETS: [&str; 5] = ["s3cr3t-pw", "AKIAEXAMPLE7", "5ecre7519na7ure", "FQoGZXIvYXdzEXAMPLE", "tok3n-abc"];

/// What a fetch step might print when a pre-signed mirror URL is refused.
fn failure_text() -> String {
    "FetchFailed: model.safetensors: GET https://bot:s3cr3t-pw@mirror.internal/qwen/model.safetensors\
     ?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE7%2F20261202%2Feu-west-1\
     &X-Amz-Signature=5ecre7519na7ure&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE: 403 Forbidden \
     (request sent Authorization: Bearer tok3n-abc)"
        .to_owned()
}

fn model(uri: &str, hf_mirror: Option<&str>) -> Value {
    let mut source = json!({ "uri": uri });
    if let Some(mirror) = hf_mirror {
        source["hfMirror"] = json!(mirror);
    }
    json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "m" },
        "spec": { "source": source, "format": "safetensors",
                  "files": [{ "path": "model.safetensors", "size": 1000, "sha256": "1".repeat(64) }],
                  "architecture": "qwen2", "parameters": "7.6B", "contextLength": 8192, "license": "Apache-2.0" }
    })
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_source_uri_with_credentials_is_refused_by_the_api_server() {
    setup().await;
    with_namespace("source-credentials", move |client, ns| async move {
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let apply = |m: Value| {
            let models = models.clone();
            async move { models.patch("m", &PatchParams::apply("tests").force(), &Patch::Apply(m)).await }
        };
        for uri in ["https://bot:s3cr3t-pw@mirror.internal/qwen/", "https://tok3n-abc@mirror.internal/qwen/"] {
            let err = apply(model(uri, None)).await.expect_err(uri).to_string();
            assert!(
                err.contains("spec.source.uri must not carry credentials") && err.contains("credentialsSecretRef"),
                "{uri}: {err}"
            );
        }
        let err = apply(model("hf://org/m@main", Some("https://u:tok3n-abc@hub.internal/")))
            .await
            .expect_err("hfMirror with user info")
            .to_string();
        assert!(err.contains("spec.source.hfMirror must not carry credentials"), "{err}");
        // An '@' in the path is not user info.
        apply(model("https://mirror.internal/models/qwen@v2/", None)).await.expect("an @ in the path is accepted");
    })
    .await;
}

/// Every text the operator wrote about `ns/chat`, for the secrets check.
async fn everything_written(client: &Client, cp: &taimatsu_tests::ControlPlane, ns: &str) -> Vec<(String, String)> {
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let status = serde_json::to_string(&mds.get("chat").await.unwrap().status).unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let notes = events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.note);
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let annotations = revisions
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| serde_json::to_string(&r.metadata.annotations).unwrap());
    let (_, records) = audit_records(cp, "operator-0");
    let records = records.into_iter().filter(|r| r["namespace"] == ns).map(|r| r.to_string());
    let mut all = vec![("status".to_owned(), status)];
    all.extend(notes.map(|n| ("event".to_owned(), n)));
    all.extend(annotations.map(|a| ("revision".to_owned(), a)));
    all.extend(records.map(|r| ("audit".to_owned(), r)));
    all
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_fetch_error_carrying_credentials_is_redacted_in_records_status_and_events() {
    let (cp, _, _) = setup().await;
    with_namespace("fetch-credentials", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let spec = |hold: bool| {
            let mut placement = json!({ "acceleratorProfileRef": { "name": "l4-24gb" } });
            if hold {
                // No node matches: the new revision's pod stays Pending until its fetch "fails".
                placement["nodeSelector"] = json!({ "taimatsu.test/hold": "true" });
            }
            json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "chat" },
                    "spec": { "modelRef": { "name": "qwen" }, "quantization": "awq", "engine": { "type": "vllm" },
                              "placement": placement } })
        };
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        let params = PatchParams::apply("tests").force();
        mds.patch("chat", &params, &Patch::Apply(spec(false))).await.unwrap();
        wait_reason(&client, &ns, "chat", "Ready", "Available").await;
        mds.patch("chat", &params, &Patch::Apply(spec(true))).await.unwrap();

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = poll_until("a pod of revision 2", Duration::from_secs(60), || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default().labels("taimatsu.dev/model-deployment=chat")).await?;
                Ok(list.items.into_iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")))
            }
        })
        .await
        .unwrap();
        // Its third failure: the operator gives a fetch three tries.
        let status = json!({ "status": { "phase": "Pending", "initContainerStatuses": [{
            "name": "fetch", "image": "registry.local/taimatsu/inference-worker:0.1.0", "imageID": "", "ready": false,
            "restartCount": 2, "state": { "terminated": { "exitCode": 1, "reason": "Error", "message": failure_text() } } }] } });
        let name = pod.metadata.name.unwrap();
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
        let md = wait_reason(&client, &ns, "chat", "RolledBack", "FetchFailed").await;

        // The useful part of the failure is kept: what was fetched, from where, the answer.
        let rolled_back = md.status.unwrap().conditions.into_iter().find(|c| c.type_ == "RolledBack").unwrap();
        assert!(
            rolled_back.message.contains("https://***@mirror.internal/qwen/model.safetensors?")
                && rolled_back.message.contains("X-Amz-Signature=***")
                && rolled_back.message.contains("403 Forbidden"),
            "{}",
            rolled_back.message
        );
        // The audit record of the failure and the Event are written after the status; wait for both.
        let written = poll_until("the rollout-failed record and the RolledBack Event", Duration::from_secs(30), || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let all = everything_written(&client, cp, &ns).await;
                let has = |kind: &str, text: &str| all.iter().any(|(k, t)| k == kind && t.contains(text));
                Ok((has("audit", "rollout-failed") && has("event", "FetchFailed")).then_some(all))
            }
        })
        .await
        .unwrap();
        for (kind, text) in &written {
            for secret in SECRETS {
                assert!(!text.contains(secret), "{kind} carries the credential {secret}: {text}");
            }
        }
        let failed = written.iter().find(|(k, t)| k == "audit" && t.contains("rollout-failed")).unwrap();
        assert!(failed.1.contains("mirror.internal/qwen/model.safetensors"), "{}", failed.1);
    })
    .await;
}
