//! One namespace per test, removed afterwards even when the test fails.

use std::future::Future;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::ControlPlane;

/// Label carried by every test namespace, with the test's name as value.
pub const TEST_LABEL: &str = "taimatsu.dev/test";

/// Runs `body` with an admin client and a fresh namespace named after `test`,
/// then deletes the namespace. A panic in `body` is re-raised after the cleanup.
pub async fn with_namespace<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.expect("admin client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = create_namespace(&client, test).await;

    let outcome = tokio::spawn(body(client.clone(), name.clone())).await;
    // Deletion is asynchronous (the namespace controller empties it); not waited on.
    let _ = namespaces.delete(&name, &DeleteParams::background()).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task in namespace {name} failed: {e}"),
        }
    }
}

/// Creates a namespace named after `test` (with a random suffix) and labelled with
/// [`TEST_LABEL`]; returns its name. For a control plane of the test's own, discarded
/// whole afterwards; on the shared one, [`with_namespace`] also removes it.
pub async fn create_namespace(client: &Client, test: &str) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": { "generateName": format!("{}-", test.replace('_', "-")), "labels": { TEST_LABEL: test.replace('_', "-") } }
    }))
    .expect("namespace object");
    let created = namespaces.create(&PostParams::default(), &ns).await.expect("create test namespace");
    created.metadata.name.expect("generated name")
}
