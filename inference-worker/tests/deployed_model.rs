//! End to end: the operator deploys examples/quickstart/ on a real control plane, the pod
//! it renders runs (fetch with sha256 verification from an in-house mirror, then the
//! worker with the built-in engine) under the pod runner, and the model answers a chat
//! completion; then examples/embeddings/ (MiniLM, whose files include a subdirectory)
//! answers /v1/embeddings. Its own test binary: the sandbox assembly registers a
//! cluster-wide admission webhook.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment};
use taimatsu_tests::pod_runner::ENDPOINT_ANNOTATION;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig};
use taimatsu_tests::wait::{is_ready, poll_until};
use taimatsu_tests::{ControlPlane, with_namespace};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_inference-worker");

/// Waits until the deployment's status satisfies `check`.
async fn wait_for(
    mds: &Api<ModelDeployment>,
    what: &str,
    check: impl Fn(&taimatsu_crds::v1alpha1::ModelDeploymentStatus) -> bool,
) -> taimatsu_crds::v1alpha1::ModelDeploymentStatus {
    common::wait_for_status(mds, "smollm2-chat", what, Duration::from_secs(240), check).await
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn the_operator_deploys_the_quickstart_and_the_model_answers() {
    // `cargo test --workspace` builds every binary before running tests.
    let operator_bin = Path::new(WORKER_BIN).with_file_name("taimatsu-operator");
    assert!(
        operator_bin.exists(),
        "{} is missing: build the workspace (cargo build --workspace)",
        operator_bin.display()
    );
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    let sandbox = Sandbox::start(
        cp,
        &client,
        SandboxConfig {
            operator_bin,
            worker_bin: WORKER_BIN.into(),
            models_dir: common::models_dir(),
            state_dir: cp.dir().join("sandbox"),
        },
    )
    .await
    .expect("sandbox");
    eprintln!("operator log: {}", sandbox.operator_log.display());
    let sandbox = Arc::new(sandbox);
    let quickstart = sandbox.clone();
    with_namespace("quickstart", move |client, ns| async move {
        let sandbox = quickstart;
        let params = PatchParams::apply("tests").force();
        let model = sandbox.apply_quickstart(&client, &ns, &params).await.expect("the quickstart");
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);

        // Fetching 98 MB, verifying it and loading the model take a while on 2 cores.
        let ready = poll_until("the quickstart deployment to be Ready", Duration::from_secs(300), || {
            let mds = mds.clone();
            async move {
                let md = mds.get("smollm2-chat").await?;
                Ok(is_ready(&md.status.clone().unwrap_or_default()).then_some(md))
            }
        })
        .await;
        let md = match ready {
            Ok(md) => md,
            Err(e) => panic!("{e:#}; status: {:#?}", mds.get("smollm2-chat").await.ok().and_then(|m| m.status)),
        };
        let status = md.status.unwrap();
        assert_eq!(status.serving_revision, Some(1));
        let expected_digest = taimatsu_core::manifest_digest(&[taimatsu_core::ManifestEntry {
            path: model["spec"]["files"][0]["path"].as_str().unwrap().into(),
            size: model["spec"]["files"][0]["size"].as_u64().unwrap(),
            sha256: model["spec"]["files"][0]["sha256"].as_str().unwrap().into(),
        }]);
        assert_eq!(status.serving_model_digest.as_deref(), Some(expected_digest.as_str()));

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod =
            pods.list(&ListParams::default().labels("taimatsu.dev/model-deployment=smollm2-chat")).await.unwrap().items;
        assert_eq!(pod.len(), 1);
        let endpoint =
            pod[0].metadata.annotations.as_ref().and_then(|a| a.get(ENDPOINT_ANNOTATION)).cloned().expect("endpoint");
        common::ask_deployed_model(endpoint).await;

        // Rollout analysis against the new revision's real pod: the smoke prompt is answered,
        // but a generation cannot finish within 1 ms, so the p95 threshold fails the
        // revision and serving returns to revision 1.
        let analysis = |max_p95: i64| json!({ "windowSeconds": 10, "smokePrompts": ["Say hello."], "maxErrorRatePercent": 0, "maxP95LatencyMs": max_p95 });
        let change = |len: i64, max_p95: i64| json!({ "spec": { "engine": { "maxModelLen": len }, "rollout": { "analysis": analysis(max_p95) } } });
        mds.patch("smollm2-chat", &PatchParams::default(), &Patch::Merge(change(2048, 1))).await.unwrap();
        let md = wait_for(&mds, "revision 2 to fail its analysis", |s| s.failed_revision == Some(2)).await;
        let rolled_back = md.conditions.iter().find(|c| c.type_ == "RolledBack").unwrap();
        assert_eq!((rolled_back.status.as_str(), rolled_back.reason.as_str()), ("True", "AnalysisFailed"), "{rolled_back:?}");
        assert!(rolled_back.message.contains("maxP95LatencyMs 1"), "{}", rolled_back.message);
        wait_for(&mds, "revision 1 serving again", |s| s.serving_revision == Some(1) && s.ready_replicas == Some(1)).await;

        // A generous threshold passes after the window: revision 3 serves.
        mds.patch("smollm2-chat", &PatchParams::default(), &Patch::Merge(change(3072, 600_000))).await.unwrap();
        let md = wait_for(&mds, "revision 3 to pass its analysis", |s| s.serving_revision == Some(3)).await;
        assert_eq!(md.desired_revision, Some(3));

        // A wrong sha256 in the Model is a new revision whose real fetch step refuses the
        // file: DigestMismatch, and serving stays on revision 3.
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let mut tampered = model.clone();
        tampered["spec"]["files"][0]["sha256"] = json!("0".repeat(64));
        models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&tampered)).await.expect("model");
        let md = wait_for(&mds, "revision 4 to fail verification", |s| s.failed_revision == Some(4)).await;
        let rolled_back = md.conditions.iter().find(|c| c.type_ == "RolledBack").unwrap();
        assert_eq!((rolled_back.status.as_str(), rolled_back.reason.as_str()), ("True", "DigestMismatch"), "{rolled_back:?}");
        wait_for(&mds, "revision 3 serving again", |s| s.serving_revision == Some(3) && s.ready_replicas == Some(1)).await;

        // A file the mirror does not have: the fetch step fails (404) each time the pod
        // restarts it; after its retries the revision fails with FetchFailed, the mirror's
        // answer in the message, and serving stays on revision 3.
        let mut missing = model.clone();
        missing["spec"]["files"][0]["path"] = json!("SmolLM2-135M-Instruct.Q4_1.renamed.gguf");
        models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&missing)).await.expect("model");
        let md = wait_for(&mds, "revision 5 to fail its fetch", |s| s.failed_revision == Some(5)).await;
        let rolled_back = md.conditions.iter().find(|c| c.type_ == "RolledBack").unwrap();
        assert_eq!((rolled_back.status.as_str(), rolled_back.reason.as_str()), ("True", "FetchFailed"), "{rolled_back:?}");
        assert!(rolled_back.message.contains("404"), "{}", rolled_back.message);
        wait_for(&mds, "revision 3 serving after the failed fetch", |s| s.serving_revision == Some(3) && s.ready_replicas == Some(1)).await;

        // A manual rollback to revision 1, with its reason, recorded with the requesting user
        // as the admission webhook saw it.
        let rollback = json!({ "metadata": { "annotations": { "taimatsu.dev/change-cause": "INC-9: back to the first context length" } },
                               "spec": { "rollback": { "toRevision": 1 } } });
        mds.patch("smollm2-chat", &PatchParams::default(), &Patch::Merge(rollback)).await.unwrap();
        wait_for(&mds, "revision 1 serving by request", |s| s.serving_revision == Some(1) && s.desired_revision == Some(1)).await;
    })
    .await;
    // The operator lives as long as the sandbox: keep it through the last phase.
    let operator_kept = sandbox.clone();
    with_namespace("embeddings", move |client, ns| embeddings_example_answers(sandbox, client, ns)).await;
    with_namespace("simulated_gpu", simulated_pods_are_never_probed).await;
    drop(operator_kept);
    let audit = std::fs::read(cp.dir().join("sandbox/audit/operator-0.jsonl")).unwrap();
    taimatsu_core::audit_chain::verify(&audit).expect("the control-plane audit verifies");
    let events: Vec<Value> = audit
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Value>(l).unwrap()["record"].clone())
        .filter(|r| r["event"] != "admission")
        .collect();
    let failed = events.iter().find(|r| r["event"] == "rollout-failed").expect("rollout-failed");
    assert_eq!((failed["revision"].as_i64(), failed["reason"].as_str()), (Some(2), Some("AnalysisFailed")));
    let passed = events.iter().find(|r| r["event"] == "rollout-succeeded" && r["revision"] == 3).unwrap();
    assert!(passed["analysis"].as_str().unwrap().contains("error rate 0.0%"), "{passed}");
    let verification =
        events.iter().find(|r| r["event"] == "model-verification-failed").expect("model-verification-failed");
    assert_eq!(verification["revision"], 4);
    let fetch =
        events.iter().find(|r| r["event"] == "rollout-failed" && r["revision"] == 5).expect("revision 5 failed");
    assert_eq!(fetch["reason"], "FetchFailed", "{fetch}");
    let manual = events.iter().find(|r| r["event"] == "rollback-manual").expect("rollback-manual");
    assert_eq!((manual["revision"].as_i64(), manual["from"].as_i64()), (Some(1), Some(3)));
    assert_eq!(manual["requestedBy"], "taimatsu-admin", "the webhook's user, not a client tool's name");
    assert_eq!(manual["changeCause"], "INC-9: back to the first context length");
}

/// examples/embeddings/ from the mirror: the fetch step verifies every file of MiniLM's
/// manifest (`1_Pooling/config.json` included) and the worker embeds with it.
async fn embeddings_example_answers(sandbox: Arc<Sandbox>, client: kube::Client, ns: String) {
    const EXAMPLE: &str = "examples/embeddings/minilm.yaml";
    let model = sandbox.mirror.example_model(&client, &ns, EXAMPLE).await.expect("the embeddings Model");
    assert!(model["spec"]["files"].as_array().unwrap().iter().any(|f| f["path"] == "1_Pooling/config.json"));
    let params = PatchParams::apply("tests").force();
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    models.patch("all-minilm-l6-v2", &params, &Patch::Apply(&model)).await.expect("apply the Model");
    let text = std::fs::read_to_string(common::repo_root().join(EXAMPLE)).unwrap();
    let mut md: Value = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ModelDeployment")
        .expect("the example's ModelDeployment");
    // One replica is enough to show it serves; the example's two would load the model twice.
    md["spec"]["replicas"] = json!(1);
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    mds.patch("minilm-embeddings", &params, &Patch::Apply(&md)).await.expect("apply the ModelDeployment");
    let ready = poll_until("the embeddings deployment to be Ready", Duration::from_secs(300), || async {
        Ok(is_ready(&mds.get("minilm-embeddings").await?.status.unwrap_or_default()).then_some(()))
    })
    .await;
    if let Err(e) = ready {
        panic!("{e:#}; status: {:#?}", mds.get("minilm-embeddings").await.ok().and_then(|m| m.status));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list =
        pods.list(&ListParams::default().labels("taimatsu.dev/model-deployment=minilm-embeddings")).await.unwrap();
    let endpoint = list.items[0]
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENDPOINT_ANNOTATION))
        .cloned()
        .expect("endpoint");
    let answer: Value = tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .post(format!("{endpoint}/v1/embeddings"))
            .json(&json!({ "model": "all-minilm-l6-v2", "input": ["Discharge letter, cardiology ward", "Lettre de sortie"] }))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
    })
    .await
    .unwrap()
    .expect("embeddings");
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "{answer}");
    for item in data {
        let vector = item["embedding"].as_array().expect("embedding");
        // all-MiniLM-L6-v2 embeds into 384 dimensions; its modules.json ends with Normalize.
        assert_eq!(vector.len(), 384);
        let norm: f64 = vector.iter().map(|x| x.as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
}

/// In the sandbox's configuration the operator probes only pods that really run (the pod
/// runner's 127.0.x.y, the real node's bridge: `--analysis-pod-cidrs`). A revision placed on
/// kwok's simulated GPUs, whose pods kwok gives addresses in 127.244.0.0/16, fails its
/// analysis without a packet sent to them. (A test cannot use an address off the machine
/// here: before the scope existed, the operator would have sent its probe there.)
async fn simulated_pods_are_never_probed(client: kube::Client, ns: String) {
    let profile =
        std::fs::read_to_string(common::repo_root().join("examples/accelerator-profiles/h100-80gb.yaml")).unwrap();
    taimatsu_tests::apply::apply_yaml(&client, &ns, &profile).await.expect("the H100 profile");
    let params = PatchParams::apply("tests").force();
    let model = json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "simulated-qwen" },
        "spec": { "source": { "uri": "https://mirror.example/qwen/" }, "format": "safetensors",
                  "files": [{ "path": "model.safetensors", "size": 4_000_000_000i64, "sha256": "2".repeat(64) }],
                  "architecture": "qwen2", "parameters": "2B", "contextLength": 8192, "license": "Apache-2.0" },
    });
    Api::<Model>::namespaced(client.clone(), &ns).patch("simulated-qwen", &params, &Patch::Apply(model)).await.unwrap();
    let md = json!({
        "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "simulated-chat" },
        "spec": { "modelRef": { "name": "simulated-qwen" }, "quantization": "bf16", "engine": { "type": "vllm" },
                  "placement": { "acceleratorProfileRef": { "name": "h100-80gb" } },
                  "rollout": { "analysis": { "windowSeconds": 10, "smokePrompts": ["Say hello."] } } },
    });
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    mds.patch("simulated-chat", &params, &Patch::Apply(md)).await.unwrap();
    let failed = poll_until("the simulated revision to fail its analysis", Duration::from_secs(120), || async {
        let status = mds.get("simulated-chat").await?.status.unwrap_or_default();
        Ok((status.failed_revision == Some(1)).then_some(status))
    })
    .await;
    let status = match failed {
        Ok(status) => status,
        Err(e) => panic!("{e:#}; status: {:#?}", mds.get("simulated-chat").await.ok().and_then(|m| m.status)),
    };
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let pod =
        &pods.list(&ListParams::default().labels("taimatsu.dev/model-deployment=simulated-chat")).await.unwrap().items
            [0];
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("kwok gave the pod an IP");
    assert!(ip.starts_with("127.244."), "kwok's pod IP {ip} is on loopback, in 127.244.0.0/16");
    let messages: Vec<&str> = status.conditions.iter().map(|c| c.message.as_str()).collect();
    let expected = format!("was not contacted: its IP {ip} is outside 127.0.0.0/16,10.85.0.0/24");
    assert!(messages.iter().any(|m| m.contains(&expected)), "no condition says {expected:?}: {messages:#?}");
    assert!(!messages.iter().any(|m| m.contains("could not be read")), "a probe was sent: {messages:#?}");
}
