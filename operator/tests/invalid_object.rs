//! A ModelDeployment that no longer decodes (stored under an older, looser schema)
//! must not stop the operator from reconciling the others. Its own test binary:
//! it changes a CRD for a while.

mod common;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, crds, with_namespace};

use common::*;

const CRD: &str = "modeldeployments.taimatsu.dev";

fn broken(name: &str) -> serde_json::Value {
    json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": name },
            "spec": { "modelRef": { "name": "qwen" }, "quantization": "q3_xs", "engine": { "type": "builtin" } } })
}

async fn try_create(client: &Client, ns: &str, name: &str, dry_run: bool) -> bool {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::erase::<taimatsu_crds::v1alpha1::ModelDeployment>(&()),
    );
    let pp = PostParams { dry_run, ..Default::default() };
    api.create(&pp, &serde_json::from_value(broken(name)).unwrap()).await.is_ok()
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn an_undecodable_deployment_is_reported_and_does_not_block_the_others() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;

    with_namespace("invalid-object", move |client, ns| async move {
        // An older, looser schema accepted anything under spec.
        let crds_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut loose = serde_json::to_value(crds_api.get(CRD).await.unwrap()).unwrap();
        loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
            json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true });
        crds_api.replace(CRD, &PostParams::default(), &serde_json::from_value(loose).unwrap()).await.unwrap();
        poll_until("the loose schema to accept q3_xs", Duration::from_secs(30), || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { Ok(try_create(&client, &ns, "broken", false).await.then_some(())) }
        })
        .await
        .unwrap();
        // Back to the real schema: the stored object stays as it is.
        crds::install(&client).await.unwrap();
        poll_until("the real schema to reject q3_xs again", Duration::from_secs(30), || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { Ok((!try_create(&client, &ns, "probe", true).await).then_some(())) }
        })
        .await
        .unwrap();

        let port = free_port().unwrap();
        let cp = ControlPlane::shared().await;
        let (child, _) = cp.start_process("operator", operator_command(cp, "operator-0", "taimatsu-operator", port)).unwrap();
        std::mem::forget(child);

        create_model(&client, &ns, "qwen", "7.6B").await;
        let healthy = json!({ "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "healthy" },
            "spec": { "modelRef": { "name": "qwen" }, "quantization": "none", "engine": { "type": "builtin" }, "replicas": 0 } });
        let mds: Api<taimatsu_crds::v1alpha1::ModelDeployment> = Api::namespaced(client.clone(), &ns);
        mds.patch("healthy", &PatchParams::apply("tests").force(), &Patch::Apply(healthy)).await.unwrap();
        wait_reason(&client, &ns, "healthy", "Ready", "ScaledToZero").await;

        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &ns, &kube::api::ApiResource::erase::<taimatsu_crds::v1alpha1::ModelDeployment>(&()));
        let degraded = poll_until("InvalidSpec on the broken deployment", Duration::from_secs(60), || {
            let api = api.clone();
            async move {
                let obj = api.get("broken").await?;
                let conditions = obj.data["status"]["conditions"].as_array().cloned().unwrap_or_default();
                Ok(conditions.into_iter().find(|c| c["type"] == "Degraded" && c["reason"] == "InvalidSpec"))
            }
        })
        .await
        .unwrap();
        let message = degraded["message"].as_str().unwrap_or_default();
        assert!(message.contains("q3_xs"), "{message}");
    })
    .await;
}
