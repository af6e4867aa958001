//! Focused properties of the built objects, each stated where a whole-object fixture
//! would only show it implicitly.

use serde_json::json;

use super::cases::{h100, inputs, qwen, tp2_deployment};
use crate::build::{NetworkSettings, Settings, build};

#[test]
fn unrestricted_egress_builds_no_network_policy_and_the_service_selects_every_revision() {
    let (mut md, model, profile) = (tp2_deployment(), qwen(), h100());
    md.spec.access.egress.mode = taimatsu_crds::v1alpha1::EgressMode::Unrestricted;
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network: NetworkSettings::default() };
    let inputs = inputs(&md, &model, &profile, &settings, "new");
    let children = build(&inputs);
    assert_eq!(children.egress_policy, None);
    let selector = children.service.spec.and_then(|s| s.selector).expect("selector");
    assert_eq!(selector.get("taimatsu.dev/revision"), None);
    assert_eq!(selector.get("taimatsu.dev/model-deployment").map(String::as_str), Some("chat"));
    assert_eq!(children.workload.metadata.name.as_deref(), Some("chat-new"));
}

#[test]
fn pvc_source_is_mounted_read_only_where_the_fetcher_reads_it() {
    let (md, mut model, profile) = (tp2_deployment(), qwen(), h100());
    model.spec.source.uri = "pvc://model-store/qwen/Qwen2.5-7B".into();
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network: NetworkSettings::default() };
    let inputs = inputs(&md, &model, &profile, &settings, "r");
    let pod = serde_json::to_value(build(&inputs).workload).expect("json")["spec"]["template"]["spec"].clone();
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "model-source").cloned();
    assert_eq!(
        volume,
        Some(
            json!({ "name": "model-source", "persistentVolumeClaim": { "claimName": "model-store", "readOnly": true } })
        )
    );
    let fetch = &pod["initContainers"][0];
    assert!(
        fetch["volumeMounts"].as_array().unwrap().contains(
            &json!({ "name": "model-source", "mountPath": "/mnt/taimatsu/pvc/model-store", "readOnly": true })
        )
    );
    assert!(pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().all(|m| m["name"] != "model-source"));
}

#[test]
fn a_revision_snapshot_rebuilds_exactly_what_it_recorded() {
    let (md, model, profile) = (tp2_deployment(), qwen(), h100());
    let hash = crate::build::revision_hash(&md, &model, "sha256:feed", Some(&profile));
    let snapshot = crate::revision::Snapshot::of(&md, &model, "sha256:feed", Some(&profile), &hash);
    // The spec moves on: another quantization, more replicas.
    let mut later = md.clone();
    later.spec.quantization = taimatsu_core::Quantization::Fp8;
    later.spec.replicas = 3;
    let (rebuilt, rebuilt_model, rebuilt_profile) = snapshot.materialize(&later);
    assert_eq!(crate::build::revision_hash(&rebuilt, &rebuilt_model, "sha256:feed", rebuilt_profile.as_ref()), hash);
    assert_eq!(rebuilt.spec.replicas, 3, "replicas are not part of a revision");
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network: NetworkSettings::default() };
    let original = build(&inputs(&md, &model, &profile, &settings, &hash)).workload;
    let again = build(&inputs(&rebuilt, &rebuilt_model, rebuilt_profile.as_ref().unwrap(), &settings, &hash)).workload;
    assert_eq!(original.spec.unwrap().template, again.spec.unwrap().template);
}

/// A ModelDeployment read from the API server always has a uid; without one there is no
/// owner to name, and the list is empty rather than absent.
#[test]
fn a_deployment_without_uid_gives_its_children_an_empty_owner_list() {
    let (mut md, model, profile) = (tp2_deployment(), qwen(), h100());
    md.metadata.uid = None;
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network: NetworkSettings::default() };
    let children = build(&inputs(&md, &model, &profile, &settings, "r"));
    let owners = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| meta.owner_references.clone();
    assert_eq!(owners(&children.service_account.metadata), Some(vec![]));
    assert_eq!(owners(&children.workload.metadata), Some(vec![]));
    assert_eq!(owners(&children.service.metadata), Some(vec![]));
}

#[test]
fn named_namespaces_replace_the_own_one_on_the_api_port_but_never_reach_metrics() {
    let (mut md, model, profile) = (tp2_deployment(), qwen(), h100());
    md.spec.access.ingress.from_namespaces = vec!["team-a".into(), "team-b".into()];
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network: NetworkSettings::default() };
    let policy = build(&inputs(&md, &model, &profile, &settings, "r")).ingress_policy;
    let ns = |name: &str| json!({ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": name } } });
    let operator = json!({
        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "taimatsu-system" } },
        "podSelector": { "matchLabels": { "app.kubernetes.io/name": "taimatsu" } }
    });
    assert_eq!(
        serde_json::to_value(policy.spec).expect("json"),
        json!({
            "podSelector": { "matchLabels": { "taimatsu.dev/model-deployment": "chat" } },
            "policyTypes": ["Ingress"],
            "ingress": [
                { "ports": [{ "port": 8000, "protocol": "TCP" }], "from": [ns("team-a"), ns("team-b"), operator.clone()] },
                { "ports": [{ "port": 9090, "protocol": "TCP" }], "from": [operator] }
            ]
        })
    );
}

#[test]
fn a_source_named_by_address_is_reachable_on_its_port_only_with_the_mirror_and_user_ranges() {
    let (md, mut model, profile) = (tp2_deployment(), qwen(), h100());
    model.spec.source.uri = "https://10.85.0.1:8443/models/qwen/".into();
    let network = NetworkSettings { mirror_cidrs: vec!["10.21.0.0/24".into()], ..NetworkSettings::default() };
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network };
    let policy = build(&inputs(&md, &model, &profile, &settings, "r")).egress_policy.expect("restricted");
    let block = |cidr: &str| json!({ "ipBlock": { "cidr": cidr } });
    assert_eq!(
        serde_json::to_value(policy.spec).expect("json"),
        json!({
            "podSelector": { "matchLabels": { "taimatsu.dev/model-deployment": "chat" } },
            "policyTypes": ["Egress"],
            "egress": [
                { "ports": [{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }],
                  "to": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
                           "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } } }] },
                { "ports": [{ "port": 8443, "protocol": "TCP" }],
                  "to": [block("10.85.0.1/32"), block("10.21.0.0/24"), block("10.20.0.0/16")] }
            ]
        })
    );
}

#[test]
fn a_source_named_by_host_without_any_range_gets_no_rule_that_would_open_everything() {
    let (mut md, model, profile) = (tp2_deployment(), qwen(), h100());
    md.spec.access.egress.allowed_cidrs.clear();
    let settings = Settings { worker_image: "w".into(), hf_mirror: None, network: NetworkSettings::default() };
    let policy = build(&inputs(&md, &model, &profile, &settings, "r")).egress_policy.expect("restricted");
    let rules = policy.spec.and_then(|s| s.egress).expect("rules");
    assert_eq!(rules.len(), 1, "DNS only: {rules:?}");
    assert!(rules.iter().all(|r| r.to.as_ref().is_some_and(|to| !to.is_empty())), "{rules:?}");
}
