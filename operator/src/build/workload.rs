//! The worker Deployment of one revision, its ServiceAccount and manifest ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile, ServiceAccount, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::json;
use taimatsu_crds::v1alpha1::{RolloutSpec, RolloutStrategy};

use super::sizing::gpus_per_replica;
use super::{Inputs, child_meta, containers, labels, match_labels, volumes};

/// The non-root user the worker image runs as (distroless "nonroot").
const WORKER_UID: i64 = 65532;

pub fn service_account(inputs: &Inputs<'_>) -> ServiceAccount {
    let name = labels::worker_service_account(&inputs.deployment.name_any());
    ServiceAccount {
        metadata: child_meta(inputs, name),
        // Workers never talk to the API server.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Metadata of the objects of one revision: named after it and labelled with it.
fn revision_meta(inputs: &Inputs<'_>) -> ObjectMeta {
    let mut meta = child_meta(inputs, labels::revision_name(&inputs.deployment.name_any(), &inputs.revision));
    meta.labels.get_or_insert_default().insert(labels::REVISION_LABEL.to_owned(), inputs.revision.clone());
    meta
}

/// The file manifest the fetch step verifies against, immutable per revision.
pub fn manifest_config_map(inputs: &Inputs<'_>) -> ConfigMap {
    let model = &inputs.model.spec;
    // The file's content, not a Kubernetes object: a JSON value, whose keys serialize sorted.
    let manifest = json!({
        "model": inputs.model.name_any(),
        "source": model.source.uri,
        "format": model.format,
        "digest": inputs.model_digest,
        "files": model.files,
    });
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    ConfigMap {
        metadata: revision_meta(inputs),
        immutable: Some(true),
        data: Some(BTreeMap::from([("manifest.json".to_owned(), text)])),
        ..ConfigMap::default()
    }
}

pub fn deployment(inputs: &Inputs<'_>) -> Deployment {
    let spec = &inputs.deployment.spec;
    let name = inputs.deployment.name_any();
    let revision_labels = labels::revision_selector(&name, &inputs.revision);
    let mut pod_labels = labels::common(&name);
    pod_labels.extend(revision_labels.clone());
    let digest = BTreeMap::from([("taimatsu.dev/model-digest".to_owned(), inputs.model_digest.clone())]);
    Deployment {
        metadata: revision_meta(inputs),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: match_labels(revision_labels),
            strategy: Some(strategy(&spec.rollout)),
            progress_deadline_seconds: Some(spec.rollout.progress_deadline_seconds),
            revision_history_limit: Some(1),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(digest),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(inputs)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn strategy(rollout: &RolloutSpec) -> DeploymentStrategy {
    match rollout.strategy {
        RolloutStrategy::Recreate => DeploymentStrategy { type_: Some("Recreate".to_owned()), rolling_update: None },
        RolloutStrategy::RollingUpdate => DeploymentStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(rollout.max_surge)),
                max_unavailable: Some(IntOrString::Int(rollout.max_unavailable)),
            }),
        },
    }
}

fn pod_spec(inputs: &Inputs<'_>) -> PodSpec {
    let name = inputs.deployment.name_any();
    let placement = inputs.deployment.spec.placement.as_ref();
    let profile = inputs.profile.map(|p| &p.spec);

    // The placement's node labels win over the profile's; its tolerations are added to the
    // profile's, each once. Both are set even when empty, as the reviewed objects have them.
    let mut node_selector: BTreeMap<String, String> = profile.map(|p| p.node_selector.clone()).unwrap_or_default();
    node_selector.extend(placement.map(|p| p.node_selector.clone()).unwrap_or_default());
    let mut tolerations: Vec<Toleration> = profile.map(|p| p.tolerations.clone()).unwrap_or_default();
    for t in placement.map(|p| p.tolerations.clone()).unwrap_or_default() {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }

    let gpus = gpus_per_replica(inputs);
    PodSpec {
        service_account_name: Some(labels::worker_service_account(&name)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WORKER_UID),
            run_as_group: Some(WORKER_UID),
            fs_group: Some(WORKER_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
            ..PodSecurityContext::default()
        }),
        node_selector: Some(node_selector),
        tolerations: Some(tolerations),
        affinity: placement.and_then(|p| p.affinity.clone()),
        topology_spread_constraints: Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(match_labels(labels::revision_selector(&name, &inputs.revision))),
            ..TopologySpreadConstraint::default()
        }]),
        init_containers: Some(vec![containers::fetch(inputs)]),
        containers: vec![containers::worker(inputs, gpus)],
        volumes: Some(volumes::volumes(inputs, gpus)),
        ..PodSpec::default()
    }
}
