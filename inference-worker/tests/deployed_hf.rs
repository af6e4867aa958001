//! End to end from an `hf://` source: the quickstart Model pointed at
//! `hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@<commit>`, fetched by the real fetch step
//! from the sandbox's Hugging Face Hub mirror (the operator's `--hf-mirror`) under the pod
//! runner, answers a chat completion. Then the mirror serves a tampered file: the next
//! revision fails with DigestMismatch and serving stays on the first. A Model naming a
//! branch is refused at reconcile (UnpinnedModel) in a namespace that requires pinning.
//! Then examples/embeddings/ from `hf://sentence-transformers/all-MiniLM-L6-v2@<commit>`
//! (thirteen files, one in a subdirectory, git and LFS files) answers /v1/embeddings. Last,
//! in a namespace labelled to allow unpinned models, a Model naming `main` is served: the
//! fetch step gets `--allow-branch-revision` and resolves the branch to the mirror's commit.
//! Its own test binary: the sandbox registers a cluster-wide admission webhook.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment, ModelDeploymentStatus};
use taimatsu_tests::hub_mirror::{MINILM, SMOLLM2};
use taimatsu_tests::pod_runner::ENDPOINT_ANNOTATION;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig};
use taimatsu_tests::wait::{is_ready, poll_until};
use taimatsu_tests::{ControlPlane, with_namespace};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_inference-worker");
const DEPLOYMENT: &str = "smollm2-chat";

async fn wait_for(
    mds: &Api<ModelDeployment>,
    name: &str,
    what: &str,
    check: impl Fn(&ModelDeploymentStatus) -> bool,
) -> ModelDeploymentStatus {
    common::wait_for_status(mds, name, what, Duration::from_secs(300), check).await
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn the_quickstart_from_an_hf_source_answers_and_a_tampered_mirror_file_is_refused() {
    let operator_bin = Path::new(WORKER_BIN).with_file_name("taimatsu-operator");
    assert!(operator_bin.exists(), "{} is missing: build the workspace", operator_bin.display());
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    let config = SandboxConfig {
        operator_bin,
        worker_bin: WORKER_BIN.into(),
        models_dir: common::models_dir(),
        state_dir: cp.dir().join("sandbox-hf"),
    };
    let sandbox = Sandbox::start(cp, &client, config).await.expect("sandbox");
    eprintln!("operator log: {}", sandbox.operator_log.display());
    let sandbox = Arc::new(sandbox);
    let kept = sandbox.clone();
    with_namespace("hf-quickstart", move |client, ns| async move {
        let params = PatchParams::apply("tests").force();
        let model = sandbox.hub.example_model(&client, &ns, "examples/quickstart/model.yaml", SMOLLM2).await.unwrap();
        assert_eq!(model["spec"]["source"]["uri"], SMOLLM2.source());
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&model)).await.expect("Model");
        let text = std::fs::read_to_string(common::repo_root().join("examples/quickstart/deployment.yaml")).unwrap();
        let md: Value = serde_yaml::from_str(&text).unwrap();
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        mds.patch(DEPLOYMENT, &params, &Patch::Apply(&md)).await.expect("ModelDeployment");

        let status = wait_for(&mds, DEPLOYMENT, "the hf:// quickstart to be Ready", is_ready).await;
        assert_eq!(status.serving_revision, Some(1));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let selector = ListParams::default().labels(&format!("taimatsu.dev/model-deployment={DEPLOYMENT}"));
        let pod = pods.list(&selector).await.unwrap().items.into_iter().next().expect("a worker pod");
        let fetch = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        let args = fetch.args.clone().unwrap_or_default();
        assert!(args.contains(&format!("--source={}", SMOLLM2.source())), "{args:?}");
        assert!(args.contains(&format!("--hf-mirror={}", sandbox.hub.url)), "{args:?}");
        assert!(!args.contains(&"--allow-branch-revision".to_owned()), "{args:?}");
        let endpoint = pod.metadata.annotations.as_ref().and_then(|a| a.get(ENDPOINT_ANNOTATION)).cloned().unwrap();
        let answer = common::ask_deployed_model(endpoint).await;
        eprintln!("answer from the hf:// model: {answer}");

        // The mirror now serves the weights with one byte changed. A new revision (another
        // context length) fetches afresh into its new pod: the fetch step refuses the file.
        sandbox.hub.tamper(SMOLLM2.id, common::SMOLLM2_FILE);
        let change = json!({ "spec": { "engine": { "maxModelLen": 2048 } } });
        mds.patch(DEPLOYMENT, &PatchParams::default(), &Patch::Merge(change)).await.unwrap();
        let status =
            wait_for(&mds, DEPLOYMENT, "revision 2 to fail verification", |s| s.failed_revision == Some(2)).await;
        let rolled_back = status.conditions.iter().find(|c| c.type_ == "RolledBack").expect("RolledBack");
        assert_eq!(
            (rolled_back.status.as_str(), rolled_back.reason.as_str()),
            ("True", "DigestMismatch"),
            "{rolled_back:?}"
        );
        assert!(rolled_back.message.contains(common::SMOLLM2_FILE), "{}", rolled_back.message);
        sandbox.hub.clear_faults();
        wait_for(&mds, DEPLOYMENT, "revision 1 serving again", |s| {
            s.serving_revision == Some(1) && s.ready_replicas == Some(1)
        })
        .await;

        // A branch, in a namespace without the allow-unpinned label: blocked before any pod.
        let mut branch = model.clone();
        branch["metadata"]["name"] = json!("smollm2-main");
        branch["spec"]["source"]["uri"] = json!(format!("hf://{}@main", SMOLLM2.id));
        models.patch("smollm2-main", &params, &Patch::Apply(&branch)).await.expect("branch Model");
        let mut unpinned = md.clone();
        unpinned["metadata"]["name"] = json!("smollm2-main");
        unpinned["spec"]["modelRef"]["name"] = json!("smollm2-main");
        mds.patch("smollm2-main", &params, &Patch::Apply(&unpinned)).await.expect("branch ModelDeployment");
        let blocked = wait_for(&mds, "smollm2-main", "the branch to be refused", |s| {
            s.conditions.iter().any(|c| c.type_ == "Degraded" && c.reason == "UnpinnedModel")
        })
        .await;
        let degraded = blocked.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(degraded.message.contains("revision \"main\""), "{}", degraded.message);
        let selector = ListParams::default().labels("taimatsu.dev/model-deployment=smollm2-main");
        assert!(pods.list(&selector).await.unwrap().items.is_empty(), "nothing may run from a branch here");
    })
    .await;
    let embeddings = kept.clone();
    with_namespace("hf-embeddings", move |client, ns| embeddings_from_hf(embeddings, client, ns)).await;
    let branch = kept.clone();
    with_namespace("hf-branch-allowed", move |client, ns| branch_where_allowed(branch, client, ns)).await;
    // The operator lives as long as the sandbox: kept through the test.
    drop(kept);
}

/// examples/embeddings/ with its Model from the Hub mirror, one replica.
async fn embeddings_from_hf(sandbox: Arc<Sandbox>, client: kube::Client, ns: String) {
    const EXAMPLE: &str = "examples/embeddings/minilm.yaml";
    let params = PatchParams::apply("tests").force();
    let model = sandbox.hub.example_model(&client, &ns, EXAMPLE, MINILM).await.expect("the embeddings Model");
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    models.patch("all-minilm-l6-v2", &params, &Patch::Apply(&model)).await.expect("apply the Model");
    let text = std::fs::read_to_string(common::repo_root().join(EXAMPLE)).unwrap();
    let mut md: Value = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ModelDeployment")
        .expect("the example's ModelDeployment");
    md["spec"]["replicas"] = json!(1);
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    mds.patch("minilm-embeddings", &params, &Patch::Apply(&md)).await.expect("apply the ModelDeployment");
    wait_for(&mds, "minilm-embeddings", "the hf:// embeddings deployment to be Ready", is_ready).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels("taimatsu.dev/model-deployment=minilm-embeddings");
    let pod = pods.list(&selector).await.unwrap().items.into_iter().next().expect("a worker pod");
    let endpoint = pod.metadata.annotations.as_ref().and_then(|a| a.get(ENDPOINT_ANNOTATION)).cloned().unwrap();
    let answer: Value = tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .post(format!("{endpoint}/v1/embeddings"))
            .json(&json!({ "model": "all-minilm-l6-v2", "input": ["Discharge letter, cardiology ward"] }))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
    })
    .await
    .unwrap()
    .expect("embeddings");
    assert_eq!(answer["data"][0]["embedding"].as_array().map(Vec::len), Some(384), "{answer}");
}

/// The quickstart from `hf://…@main` in a namespace that allows unpinned models.
async fn branch_where_allowed(sandbox: Arc<Sandbox>, client: kube::Client, ns: String) {
    let params = PatchParams::apply("tests").force();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "taimatsu.dev/allow-unpinned-models": "true" } } });
    namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(label)).await.expect("label the namespace");
    let mut model = sandbox.hub.example_model(&client, &ns, "examples/quickstart/model.yaml", SMOLLM2).await.unwrap();
    model["spec"]["source"]["uri"] = json!(format!("hf://{}@main", SMOLLM2.id));
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&model)).await.expect("Model");
    let text = std::fs::read_to_string(common::repo_root().join("examples/quickstart/deployment.yaml")).unwrap();
    let md: Value = serde_yaml::from_str(&text).unwrap();
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    mds.patch(DEPLOYMENT, &params, &Patch::Apply(&md)).await.expect("ModelDeployment");

    // The operator reads namespace labels from its cache and is not woken by them: while it
    // still reports the branch as unpinned, a changed annotation asks it to look again.
    let mut bumps = 0;
    let ready =
        poll_until("the branch to be served where unpinned models are allowed", Duration::from_secs(300), || {
            bumps += 1;
            let (mds, bump) = (mds.clone(), bumps);
            async move {
                let status = mds.get(DEPLOYMENT).await?.status.unwrap_or_default();
                if status.conditions.iter().any(|c| c.reason == "UnpinnedModel") {
                    let poke =
                        json!({ "metadata": { "annotations": { "tests.taimatsu.dev/reconcile": bump.to_string() } } });
                    mds.patch(DEPLOYMENT, &PatchParams::default(), &Patch::Merge(poke)).await?;
                }
                Ok(is_ready(&status).then_some(status))
            }
        })
        .await;
    if let Err(e) = ready {
        panic!("{e:#}; status: {:#?}", mds.get(DEPLOYMENT).await.ok().and_then(|m| m.status));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("taimatsu.dev/model-deployment={DEPLOYMENT}"));
    let pod = pods.list(&selector).await.unwrap().items.into_iter().next().expect("a worker pod");
    let args = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0].args.clone().unwrap_or_default();
    assert!(args.contains(&"--allow-branch-revision".to_owned()), "{args:?}");
}
