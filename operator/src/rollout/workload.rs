//! A revision's worker workload: built from its snapshot, applied at a replica count,
//! observed from the caches, and removed when the revision no longer serves.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{Api, ResourceExt};
use taimatsu_crds::v1alpha1::ModelDeployment;
use tracing::info;

use crate::build::{self, Inputs, labels};
use crate::cache;
use crate::context::Context;
use crate::error::Error;
use crate::revision::RevisionRecord;
use crate::revision::plan::Pods;

/// Builds one revision's children and server-side applies them at `replicas`: every shared
/// child (Service, policy, budget…) with `everything` (the desired revision), its
/// Deployment and manifest only for the stable one.
pub async fn apply(
    ctx: &Context,
    md: &ModelDeployment,
    record: &RevisionRecord,
    replicas: i32,
    everything: bool,
) -> Result<Deployment, Error> {
    let (mut deployment, model, profile) = record.snapshot.materialize(md);
    deployment.spec.replicas = replicas;
    let inputs = Inputs {
        deployment: &deployment,
        model: &model,
        profile: profile.as_ref(),
        model_digest: record.snapshot.model_digest.clone(),
        revision: record.snapshot.hash.clone(),
        settings: &ctx.settings,
    };
    let children = build::build(&inputs);
    let ns = md.namespace().unwrap_or_default();
    let writer = ctx.children();
    if everything {
        return writer.apply_all(&ns, &md.name_any(), children).await;
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    writer.apply(&maps, &children.manifest, &ctx.caches.manifests).await?;
    writer.apply_workload(&ns, &children.workload).await
}

/// A revision's worker Deployment and pods, as the watches last saw them.
pub fn observe(ctx: &Context, ns: &str, name: &str, hash: &str) -> (Option<Deployment>, Vec<Pod>) {
    let deployment = ctx.caches.deployment(ns, &labels::revision_name(name, hash)).map(|d| d.as_ref().clone());
    (deployment, ctx.caches.pods(ns, name, hash))
}

/// How many pods a worker Deployment wants, has and has available.
pub fn pods(deployment: Option<&Deployment>) -> Pods {
    let Some(d) = deployment else { return Pods::default() };
    let status = d.status.clone().unwrap_or_default();
    Pods {
        wanted: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        existing: status.replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
    }
}

/// Deletes the worker Deployments and manifests of every revision but `keep`.
pub async fn remove_except(ctx: &Context, ns: &str, name: &str, keep: &[&RevisionRecord]) -> Result<(), Error> {
    let hashes: Vec<&str> = keep.iter().map(|r| r.snapshot.hash.as_str()).collect();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    for d in cache::other_revisions(&ctx.caches.deployments, ns, name, &hashes) {
        info!(deployment = %d, "removing the worker Deployment of a revision that no longer serves");
        ctx.applier.delete(&deployments, ns, &d).await?;
    }
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for m in cache::other_revisions(&ctx.caches.manifests, ns, name, &hashes) {
        ctx.applier.delete(&maps, ns, &m).await?;
    }
    Ok(())
}
