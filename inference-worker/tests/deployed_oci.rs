//! End to end from an `oci://` source: SmolLM2's GGUF pushed with the real ORAS client to
//! the real Distribution registry (https with a private CA, token auth:
//! `taimatsu_tests::oci_registry`), the quickstart Model pointed at
//! `oci://127.0.0.1:<port>/models/smollm2@sha256:<manifest digest>` with the registry's CA
//! and an `OCI_USERNAME`/`OCI_PASSWORD` Secret, fetched by the real fetch step under the pod
//! runner, answers a chat completion. Then the layer is tampered with on the registry's disk:
//! the next revision fails with DigestMismatch and serving stays on the first. A Model
//! naming a tag beside the digest is blocked before any pod.
//! Its own test binary: the sandbox registers a cluster-wide admission webhook.

mod common;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::{Model, ModelDeployment, ModelDeploymentStatus};
use taimatsu_tests::oci_registry::{OciRegistry, RegistryOptions};
use taimatsu_tests::pod_runner::ENDPOINT_ANNOTATION;
use taimatsu_tests::sandbox::{Sandbox, SandboxConfig};
use taimatsu_tests::wait::is_ready;
use taimatsu_tests::{ControlPlane, with_namespace};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_inference-worker");
const DEPLOYMENT: &str = "smollm2-chat";
const REPOSITORY: &str = "models/smollm2";
const CREDENTIALS: &str = "model-registry-credentials";

async fn wait_for(
    mds: &Api<ModelDeployment>,
    name: &str,
    what: &str,
    check: impl Fn(&ModelDeploymentStatus) -> bool,
) -> ModelDeploymentStatus {
    common::wait_for_status(mds, name, what, Duration::from_secs(300), check).await
}

/// The quickstart's Model with its source at `uri`, and the Secrets it names (the
/// registry's CA, its credentials) created in `namespace`.
async fn quickstart_model(client: &kube::Client, namespace: &str, registry: &OciRegistry, uri: &str) -> Value {
    let text = std::fs::read_to_string(common::repo_root().join("examples/quickstart/model.yaml")).unwrap();
    let mut model: Value = serde_yaml::from_str(&text).unwrap();
    model["spec"]["source"]["uri"] = json!(uri);
    model["spec"]["source"]["credentialsSecretRef"] = json!({ "name": CREDENTIALS });
    let ca = model["spec"]["source"]["caBundleRef"].clone();
    let (ca_secret, ca_key) = (ca["name"].as_str().unwrap(), ca["key"].as_str().unwrap());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply("tests").force();
    for (name, data) in [
        (ca_secret, json!({ ca_key: registry.ca_pem })),
        (CREDENTIALS, json!({ "OCI_USERNAME": registry.username, "OCI_PASSWORD": registry.password })),
    ] {
        let secret = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": data });
        secrets.patch(name, &params, &Patch::Apply(secret)).await.expect("Secret");
    }
    model
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn the_quickstart_from_an_oci_artifact_answers_and_a_tampered_layer_is_refused() {
    let operator_bin = Path::new(WORKER_BIN).with_file_name("taimatsu-operator");
    assert!(operator_bin.exists(), "{} is missing: build the workspace", operator_bin.display());
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    let registry = OciRegistry::start(&cp.dir().join("oci-registry"), RegistryOptions::default()).await.unwrap();
    let pushed = registry.push(&common::smollm2_dir(), &[common::SMOLLM2_FILE], REPOSITORY, "q4_1").await.unwrap();
    let layer = pushed.manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let config = SandboxConfig {
        operator_bin,
        worker_bin: WORKER_BIN.into(),
        models_dir: common::models_dir(),
        state_dir: cp.dir().join("sandbox-oci"),
    };
    let sandbox = Sandbox::start(cp, &client, config).await.expect("sandbox");
    eprintln!("operator log: {}", sandbox.operator_log.display());
    with_namespace("oci-quickstart", move |client, ns| async move {
        let params = PatchParams::apply("tests").force();
        let uri = registry.uri(REPOSITORY, &pushed.digest);
        let model = quickstart_model(&client, &ns, &registry, &uri).await;
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        models.patch("smollm2-135m-instruct", &params, &Patch::Apply(&model)).await.expect("Model");
        let text = std::fs::read_to_string(common::repo_root().join("examples/quickstart/deployment.yaml")).unwrap();
        let md: Value = serde_yaml::from_str(&text).unwrap();
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        mds.patch(DEPLOYMENT, &params, &Patch::Apply(&md)).await.expect("ModelDeployment");

        let status = wait_for(&mds, DEPLOYMENT, "the oci:// quickstart to be Ready", is_ready).await;
        assert_eq!(status.serving_revision, Some(1));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let selector = ListParams::default().labels(&format!("taimatsu.dev/model-deployment={DEPLOYMENT}"));
        let pod = pods.list(&selector).await.unwrap().items.into_iter().next().expect("a worker pod");
        let fetch = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
        assert!(fetch.args.clone().unwrap_or_default().contains(&format!("--source={uri}")), "{:?}", fetch.args);
        let endpoint = pod.metadata.annotations.as_ref().and_then(|a| a.get(ENDPOINT_ANNOTATION)).cloned().unwrap();
        let answer = common::ask_deployed_model(endpoint).await;
        eprintln!("answer from the oci:// model: {answer}");
        let pulls = registry
            .token_requests()
            .into_iter()
            .filter(|(ok, s)| *ok && s == &[format!("repository:{REPOSITORY}:pull")]);
        assert!(pulls.count() >= 1, "the fetch step asked for a pull token with the Secret's credentials");

        // The registry's disk now holds the weights with one byte changed. A new revision
        // (another context length) fetches afresh into its new pod: the fetch step refuses it.
        registry.tamper_blob(&layer).unwrap();
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
        assert!(rolled_back.message.contains(&format!("/v2/{REPOSITORY}/blobs/{layer}")), "{}", rolled_back.message);
        wait_for(&mds, DEPLOYMENT, "revision 1 serving again", |s| {
            s.serving_revision == Some(1) && s.ready_replicas == Some(1)
        })
        .await;

        // A tag beside the digest passes no further than the API server.
        let mut tagged = model.clone();
        tagged["metadata"]["name"] = json!("smollm2-tagged");
        tagged["spec"]["source"]["uri"] = json!(format!("oci://{}/{REPOSITORY}:q4_1@{}", registry.host, pushed.digest));
        let refused = models.patch("smollm2-tagged", &params, &Patch::Apply(&tagged)).await.unwrap_err();
        assert!(refused.to_string().contains("pinned by digest alone"), "{refused}");
        drop(registry);
    })
    .await;
    drop(sandbox);
}
