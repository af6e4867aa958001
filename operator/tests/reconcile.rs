//! The operator against a real control plane: kube-apiserver, controller-manager
//! (Deployments → ReplicaSets → Pods, garbage collection), the real scheduler and
//! kwok GPU nodes that mark scheduled pods Ready.

mod common;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client};
use serde_json::json;
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::with_namespace;

use common::*;

async fn pods_of(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("taimatsu.dev/model-deployment={name}"))).await.unwrap().items
}

fn gpu_limit(pod: &Pod, resource: &str) -> Option<String> {
    let worker = pod.spec.as_ref()?.containers.iter().find(|c| c.name == "worker")?;
    worker.resources.as_ref()?.limits.as_ref()?.get(resource).map(|q| q.0.clone())
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn placement_follows_the_accelerator_profile_through_the_real_scheduler() {
    setup().await;
    with_namespace("placement", |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let cases = [
            (
                "tp2-h100",
                json!({ "acceleratorProfileRef": { "name": "h100-80gb" }, "tensorParallel": 2 }),
                "gpu-h100-",
                "nvidia.com/gpu",
                "2",
            ),
            ("on-l4", json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }), "gpu-l4-0", "nvidia.com/gpu", "1"),
            (
                "on-mig",
                json!({ "acceleratorProfileRef": { "name": "h100-mig-3g-40gb" } }),
                "gpu-mig-0",
                "nvidia.com/mig-3g.40gb",
                "1",
            ),
        ];
        for (name, placement, _, _, _) in &cases {
            apply_deployment(&client, &ns, name, "qwen", "awq", placement.clone()).await;
        }
        for (name, _, node_prefix, resource, count) in &cases {
            let md = wait_reason(&client, &ns, name, "Ready", "Available").await;
            let pods = pods_of(&client, &ns, name).await;
            assert_eq!(pods.len(), 1, "{name}");
            let node = pods[0].spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            assert!(node.starts_with(node_prefix), "{name} landed on {node:?}");
            assert_eq!(gpu_limit(&pods[0], resource).as_deref(), Some(*count), "{name}");
            let status = md.status.unwrap();
            assert_eq!(status.ready_replicas, Some(1));
            assert_eq!(status.endpoint, Some(format!("http://{name}.{ns}.svc:8000/v1")));
            assert!(status.serving_model_digest.unwrap().starts_with("sha256:"));
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn too_many_gpus_per_replica_is_unschedulable_with_the_schedulers_reason() {
    setup().await;
    with_namespace("unschedulable", |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let placement =
            json!({ "acceleratorProfileRef": { "name": "h100-80gb" }, "tensorParallel": 8, "pipelineParallel": 2 });
        apply_deployment(&client, &ns, "sixteen", "qwen", "bf16", placement).await;
        let md = wait_reason(&client, &ns, "sixteen", "Degraded", "Unschedulable").await;
        let degraded = md.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(degraded.message.contains("Insufficient nvidia.com/gpu"), "{}", degraded.message);
        let ready = wait_reason(&client, &ns, "sixteen", "Ready", "RolloutInProgress").await;
        assert!(ready.status.unwrap().conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_model_that_does_not_fit_is_not_rolled_out() {
    setup().await;
    with_namespace("does-not-fit", |client, ns| async move {
        create_model(&client, &ns, "big", "72B").await;
        apply_deployment(
            &client,
            &ns,
            "big",
            "big",
            "bf16",
            json!({ "acceleratorProfileRef": { "name": "h100-80gb" } }),
        )
        .await;
        let md = wait_reason(&client, &ns, "big", "Degraded", "DoesNotFit").await;
        let degraded = md.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(degraded.message.starts_with("72B parameters at bf16 need ≈"), "{}", degraded.message);
        assert!(degraded.message.contains("set placement.tensorParallel to 2"), "{}", degraded.message);
        assert!(worker_deployments(&client, &ns, "big").await.is_empty(), "nothing may be rolled out");
        // A missing model is reported the same way.
        apply_deployment(
            &client,
            &ns,
            "orphan",
            "no-such-model",
            "bf16",
            json!({ "acceleratorProfileRef": { "name": "h100-80gb" } }),
        )
        .await;
        wait_reason(&client, &ns, "orphan", "Degraded", "ModelNotFound").await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_model_deployment_named_like_a_foreign_service_reports_conflict_and_leaves_it_untouched() {
    // The attack: whoever may write ModelDeployments names one after a Service of the
    // namespace (here the billing API's), and the operator's forced apply would repoint it at
    // the worker pods, whose API then receives the billing clients' traffic.
    setup().await;
    with_namespace("takeover", |client, ns| async move {
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let billing: Service = serde_json::from_value(json!({
            "metadata": { "name": "billing" },
            "spec": { "selector": { "app": "billing" }, "ports": [{ "port": 443, "targetPort": 8443 }] }
        }))
        .unwrap();
        let before = services.create(&Default::default(), &billing).await.expect("create the billing Service");
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_deployment(
            &client,
            &ns,
            "billing",
            "qwen",
            "awq",
            json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }),
        )
        .await;

        let md = wait_reason(&client, &ns, "billing", "Degraded", "Conflict").await;
        let degraded = md.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(
            degraded.message.starts_with(&format!("Service {ns}/billing already exists and is controlled by nothing")),
            "{}",
            degraded.message
        );
        let after = services.get("billing").await.unwrap();
        assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "the Service was written");
        assert!(worker_deployments(&client, &ns, "billing").await.is_empty(), "nothing may be rolled out");
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        assert!(policies.list(&Default::default()).await.unwrap().items.is_empty(), "no child may be written");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn an_hf_model_without_a_hub_mirror_is_blocked_before_any_pod() {
    // This operator runs without --hf-mirror, and the Model names none.
    setup().await;
    with_namespace("hf-no-mirror", |client, ns| async move {
        let models: Api<taimatsu_crds::v1alpha1::Model> = Api::namespaced(client.clone(), &ns);
        let model = json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "Model", "metadata": { "name": "smol" },
            "spec": {
                "source": { "uri": format!("hf://HuggingFaceTB/SmolLM2-135M-Instruct@{}", "0a".repeat(20)) },
                "format": "safetensors",
                "files": [{ "path": "model.safetensors", "size": 270_000_000i64, "sha256": "2".repeat(64) }],
                "architecture": "llama", "parameters": "135M", "contextLength": 8192, "license": "Apache-2.0",
            }
        });
        models.patch("smol", &PatchParams::apply("tests").force(), &Patch::Apply(model)).await.expect("apply model");
        apply_deployment(
            &client,
            &ns,
            "smol",
            "smol",
            "bf16",
            json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }),
        )
        .await;
        let md = wait_reason(&client, &ns, "smol", "Degraded", "IncompatibleModel").await;
        let degraded = md.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(degraded.message.contains("no Hugging Face Hub mirror is configured"), "{}", degraded.message);
        assert!(degraded.message.contains("--hf-mirror"), "{}", degraded.message);
        assert!(worker_deployments(&client, &ns, "smol").await.is_empty(), "nothing may be rolled out");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn egress_ranges_the_operator_does_not_allow_are_a_policy_violation_with_nothing_rolled_out() {
    // This operator has no webhook (a fail-open one lets such a spec through) and allows no
    // egress ranges (no --egress-allowed-cidrs).
    setup().await;
    with_namespace("egress-policy", |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        let md = json!({
            "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment", "metadata": { "name": "wide" },
            "spec": { "modelRef": { "name": "qwen" }, "quantization": "awq", "engine": { "type": "vllm" },
                      "placement": { "acceleratorProfileRef": { "name": "l4-24gb" } },
                      "access": { "egress": { "allowedCidrs": ["10.20.0.0/16"] } } },
        });
        mds.patch("wide", &PatchParams::apply("tests").force(), &Patch::Apply(md)).await.expect("apply");
        let md = wait_reason(&client, &ns, "wide", "Degraded", "PolicyViolation").await;
        let degraded = md.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
        assert!(
            degraded.message.starts_with("spec.access.egress.allowedCidrs[0]: 10.20.0.0/16"),
            "{}",
            degraded.message
        );
        assert!(worker_deployments(&client, &ns, "wide").await.is_empty(), "nothing may be rolled out");
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        assert!(policies.list(&Default::default()).await.unwrap().items.is_empty(), "no policy may be written");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn changing_quantization_rolls_out_new_engine_arguments_and_retires_the_old_revision() {
    setup().await;
    with_namespace("requantize", |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        let placement = json!({ "acceleratorProfileRef": { "name": "l4-24gb" } });
        apply_deployment(&client, &ns, "chat", "qwen", "awq", placement.clone()).await;
        wait_reason(&client, &ns, "chat", "Ready", "Available").await;
        let before = worker_deployments(&client, &ns, "chat").await;
        assert_eq!(before.len(), 1);
        let args = |d: &k8s_openapi::api::apps::v1::Deployment| {
            d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
        };
        assert!(args(&before[0]).windows(2).any(|w| w == ["--quantization", "awq_marlin"]), "{:?}", args(&before[0]));

        apply_deployment(&client, &ns, "chat", "qwen", "fp8", placement).await;
        let old_name = before[0].metadata.name.clone();
        let after = poll_until("the awq revision to be retired", std::time::Duration::from_secs(90), || {
            let (client, ns, old_name) = (client.clone(), ns.clone(), old_name.clone());
            async move {
                let ds = worker_deployments(&client, &ns, "chat").await;
                Ok((ds.len() == 1 && ds[0].metadata.name != old_name).then_some(ds))
            }
        })
        .await
        .unwrap();
        assert!(args(&after[0]).windows(2).any(|w| w == ["--quantization", "fp8"]), "{:?}", args(&after[0]));
        wait_reason(&client, &ns, "chat", "Ready", "Available").await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn reconcile_is_idempotent_and_deletion_cleans_up_every_child() {
    setup().await;
    with_namespace("idempotent", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_deployment(
            &client,
            &ns,
            "steady",
            "qwen",
            "awq",
            json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }),
        )
        .await;
        wait_reason(&client, &ns, "steady", "Ready", "Available").await;
        let snapshot = child_versions(&client, &ns).await;

        // Make the operator reconcile this object again with nothing served changed (a
        // history limit is no part of a revision), and wait until its status shows that
        // generation: then the reconcile ran, and it must have written no child.
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
        let poke = json!({ "spec": { "rollback": { "revisionHistoryLimit": 9 } } });
        let generation =
            mds.patch("steady", &PatchParams::default(), &Patch::Merge(poke)).await.unwrap().metadata.generation;
        let seen = |md: Option<&ModelDeployment>| {
            md.and_then(|m| m.status.as_ref()).is_some_and(|s| s.observed_generation == generation)
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), await_condition(mds.clone(), "steady", seen))
            .await
            .expect("the operator reconciled the new generation")
            .unwrap();
        assert_eq!(
            child_versions(&client, &ns).await,
            snapshot,
            "a reconcile that changes nothing served wrote to a child"
        );

        mds.delete("steady", &DeleteParams::foreground()).await.unwrap();
        poll_until("garbage collection of every child", std::time::Duration::from_secs(60), || {
            let (client, ns) = (client.clone(), ns.clone());
            async move { Ok(child_versions(&client, &ns).await.is_empty().then_some(())) }
        })
        .await
        .unwrap();
    })
    .await;
}

/// (kind/name, resourceVersion) of every object carrying the operator's label.
async fn child_versions(client: &Client, ns: &str) -> Vec<(String, String)> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=taimatsu-operator");
    let mut out = Vec::new();
    macro_rules! collect {
        ($kind:ty) => {
            for o in Api::<$kind>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items {
                out.push((
                    format!("{}/{}", stringify!($kind), o.metadata.name.unwrap()),
                    o.metadata.resource_version.unwrap(),
                ));
            }
        };
    }
    collect!(Deployment);
    collect!(Service);
    collect!(ConfigMap);
    collect!(ServiceAccount);
    collect!(NetworkPolicy);
    collect!(PodDisruptionBudget);
    out.sort();
    out
}
