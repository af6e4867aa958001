//! Applying YAML manifests the way `kubectl apply --server-side` does.

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Api, Client};
use serde::Deserialize;

/// Field manager used by tests.
pub const FIELD_MANAGER: &str = "taimatsu-tests";

/// Server-side applies every document of a (multi-document) YAML text. Namespaced
/// objects land in `namespace`; cluster-scoped ones keep their names.
pub async fn apply_yaml(client: &Client, namespace: &str, yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    // Parse every document before the first await: the YAML parser is not Send.
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if !value.is_null() {
            objects.push(serde_yaml::from_value::<DynamicObject>(value)?);
        }
    }
    let mut applied = Vec::new();
    for obj in objects {
        let types = obj.types.clone().ok_or_else(|| anyhow::anyhow!("document without apiVersion/kind"))?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = discovery::pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = obj.metadata.name.clone().ok_or_else(|| anyhow::anyhow!("{} without metadata.name", types.kind))?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        applied.push(api.patch(&name, &params, &Patch::Apply(&obj)).await?);
    }
    Ok(applied)
}
