//! The API server itself rejects bad manifests, with messages naming the field.

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use taimatsu_crds::v1alpha1::{AcceleratorProfile, Model};
use taimatsu_tests::{crds, with_namespace};

use crate::fixtures::{fixtures_dir, load_dir, post_raw};

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn valid_fixtures_are_accepted_through_the_same_path() {
    with_namespace("valid-fixtures", |client, ns| async move {
        crds::ensure_installed(&client).await.unwrap();
        for fixture in load_dir(&fixtures_dir("valid")) {
            post_raw(&client, &ns, &fixture)
                .await
                .unwrap_or_else(|e| panic!("{} was rejected: {e}", fixture.path.display()));
        }
        // Cluster-scoped leftovers would collide with a rerun against the same cluster.
        let profiles: Api<AcceleratorProfile> = Api::all(client);
        profiles.delete("good-profile", &Default::default()).await.unwrap();
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn invalid_manifests_are_rejected_by_the_api_server_naming_the_field() {
    with_namespace("invalid-fixtures", |client, ns| async move {
        crds::ensure_installed(&client).await.unwrap();
        let corpus = load_dir(&fixtures_dir("invalid"));
        assert!(corpus.len() >= 20, "the corpus has only {} manifests", corpus.len());
        let mut failures = Vec::new();
        for fixture in &corpus {
            assert!(!fixture.expect.is_empty(), "{} has no '# expect:' line", fixture.path.display());
            match post_raw(&client, &ns, fixture).await {
                Ok(()) => failures.push(format!("{}: accepted", fixture.path.display())),
                Err(kube::Error::Api(status)) => {
                    if !(400..500).contains(&status.code) {
                        failures.push(format!("{}: HTTP {} ({})", fixture.path.display(), status.code, status.message));
                    }
                    for needle in &fixture.expect {
                        if !status.message.contains(needle.as_str()) {
                            failures.push(format!(
                                "{}: message lacks {needle:?}: {}",
                                fixture.path.display(),
                                status.message
                            ));
                        }
                    }
                }
                Err(other) => failures.push(format!("{}: not an API error: {other}", fixture.path.display())),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} fixtures misbehaved:\n{}",
            failures.len(),
            corpus.len(),
            failures.join("\n")
        );
    })
    .await;
}

async fn apply_json<K>(api: &Api<K>, name: &str, value: serde_json::Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply("taimatsu-tests").force(), &Patch::Apply(value)).await
}

fn rejection(result: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn history_relevant_fields_are_immutable() {
    with_namespace("immutable-fields", |client, ns| async move {
        crds::ensure_installed(&client).await.unwrap();
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let model = |format: &str, arch: &str| {
            json!({
                "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "pinned" },
                "spec": {
                    "source": { "uri": "https://mirror.example/m/" }, "format": format,
                    "files": [{ "path": "model.gguf", "size": 1, "sha256": "0".repeat(64) }],
                    "architecture": arch, "parameters": "1B", "contextLength": 4096, "license": "MIT"
                }
            })
        };
        apply_json(&models, "pinned", model("gguf", "llama")).await.unwrap();
        let msg = rejection(apply_json(&models, "pinned", model("safetensors", "llama")).await);
        assert!(msg.contains("spec.format is immutable"), "{msg}");
        let msg = rejection(apply_json(&models, "pinned", model("gguf", "qwen2")).await);
        assert!(msg.contains("spec.architecture is immutable"), "{msg}");
        // Fields outside the revision identity stay editable.
        let mut moved = model("gguf", "llama");
        moved["spec"]["source"]["uri"] = json!("https://new-mirror.example/m/");
        apply_json(&models, "pinned", moved).await.unwrap();

        check_profile_resource_is_immutable(&client, &ns).await;
    })
    .await;
}

async fn check_profile_resource_is_immutable(client: &Client, ns: &str) {
    let profiles: Api<AcceleratorProfile> = Api::all(client.clone());
    let name = format!("immutable-{ns}");
    let profile = |resource: &str, memory: i32| {
        json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "AcceleratorProfile", "metadata": { "name": name },
            "spec": { "resourceName": resource, "gpuMemoryGiB": memory, "gpusPerNode": 8 }
        })
    };
    apply_json(&profiles, &name, profile("nvidia.com/gpu", 80)).await.unwrap();
    let msg = rejection(apply_json(&profiles, &name, profile("amd.com/gpu", 80)).await);
    assert!(msg.contains("spec.resourceName is immutable"), "{msg}");
    apply_json(&profiles, &name, profile("nvidia.com/gpu", 94)).await.unwrap();
    profiles.delete(&name, &Default::default()).await.unwrap();
}
