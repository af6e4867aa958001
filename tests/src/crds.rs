//! Installing Taimatsu's generated CRDs into the test control plane.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use tokio::sync::OnceCell;

/// Applies the committed CRD files (the same ones the Helm chart ships) and waits
/// until each is Established. Later calls in the same test binary return at once.
pub async fn ensure_installed(client: &Client) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    static INSTALLED: OnceCell<Vec<CustomResourceDefinition>> = OnceCell::const_new();
    INSTALLED.get_or_try_init(|| install(client)).await.cloned()
}

/// Applies the committed CRD files again (after a test changed a CRD) and waits
/// until they are Established.
pub async fn install(client: &Client) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = crate::repo_root().join(taimatsu_crds::generate::CRD_DIR);
    let mut names = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    paths.sort();
    for path in paths {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        let name = crd.metadata.name.clone().ok_or_else(|| anyhow::anyhow!("{} has no name", path.display()))?;
        api.patch(&name, &PatchParams::apply(crate::apply::FIELD_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .map_err(|e| anyhow::anyhow!("installing {}: {e}", path.display()))?;
        names.push(name);
    }
    let mut established = Vec::new();
    for name in names {
        let crd = tokio::time::timeout(
            Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("CRD {name} not Established within 60s"))??;
        established.push(crd.ok_or_else(|| anyhow::anyhow!("CRD {name} disappeared"))?);
    }
    Ok(established)
}
