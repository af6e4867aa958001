//! The Helm charts (`charts/taimatsu-crds`, `charts/taimatsu`) with the helm built by
//! `hack/helm.sh` (`TAIMATSU_HELM`), against the real API server of the shared control plane:
//! lint, rendering checked by the API server's strict validation, the values schema, and an
//! install → upgrade → uninstall cycle.
//!
//! kwok's fake nodes run no containers, so the operator pods' readiness here is simulated
//! by kwok. The chart's operator pods run for real in
//! inference-worker/tests/chart_real_node.rs: on a real kubelet node, with the webhook on,
//! deploying the quickstart.

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use taimatsu_crds::v1alpha1::Model;
use taimatsu_tests::helm::{Helm, chart};
use taimatsu_tests::{ControlPlane, apply, crds, repo_root, wait, with_namespace};

const CRD_NAMES: [&str; 3] =
    ["acceleratorprofiles.taimatsu.dev", "modeldeployments.taimatsu.dev", "models.taimatsu.dev"];

fn helm_tool() -> &'static Helm {
    static HELM: OnceLock<Helm> = OnceLock::new();
    HELM.get_or_init(|| Helm::from_env(Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home")))
}

/// helm, with the admin kubeconfig given explicitly when a control plane is.
fn helm(cp: Option<&ControlPlane>, args: &[&str]) -> Output {
    helm_tool().run(cp.map(|cp| cp.kubeconfig("taimatsu-admin")).as_deref(), args)
}

/// Runs helm and returns stdout, or panics with everything it said.
fn helm_ok(cp: Option<&ControlPlane>, args: &[&str]) -> String {
    helm_tool().ok(cp.map(|cp| cp.kubeconfig("taimatsu-admin")).as_deref(), args)
}

/// `--set-file` of a webhook client CA (`webhook.clientAuth.caBundle`), which the chart
/// requires by default: any CA will do for rendering.
fn client_ca_file() -> String {
    static FILE: OnceLock<String> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-webhook-client-ca.crt");
        let ca = taimatsu_tests::certs::ca_named("helm-test-webhook-client-ca").expect("a CA");
        std::fs::write(&path, ca.pem()).expect("write the CA");
        format!("webhook.clientAuth.caBundle={}", path.display())
    })
    .clone()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every non-empty document of a multi-document YAML text, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_name(doc: &Value) -> (String, String) {
    (
        doc["kind"].as_str().unwrap_or_default().to_owned(),
        doc["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
    )
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, rendered {:?}", docs.iter().map(kind_name).collect::<Vec<_>>());
    found[0]
}

/// The rules of a role file under charts/taimatsu/files/.
fn file_rules(file: &str) -> Value {
    let path = repo_root().join("charts/taimatsu/files").join(file);
    let role: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).expect("role file")).expect("role YAML");
    role["rules"].clone()
}

fn operator_args(docs: &[Value]) -> Vec<String> {
    let container = &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    container["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("string arg").to_owned()).collect()
}

fn operator_env(docs: &[Value], name: &str) -> Option<String> {
    let container = &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    container["env"].as_array()?.iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).map(str::to_owned)
}

/// `kubectl apply --dry-run=server --validate=strict`: the API server checks every object
/// (unknown or misspelt fields included) and persists nothing. Returns kubectl's output.
fn server_dry_run(cp: &ControlPlane, docs: &[Value]) -> String {
    let stream: String = docs.iter().map(|d| format!("---\n{}\n", serde_json::to_string(d).expect("JSON"))).collect();
    let mut child = cp
        .kubectl_command()
        .args(["apply", "--dry-run=server", "--validate=strict", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child.stdin.take().expect("stdin").write_all(stream.as_bytes()).expect("write manifests");
    let out = child.wait_with_output().expect("kubectl output");
    assert!(
        out.status.success(),
        "the API server rejected the rendered chart:\n{}\n{}\nmanifests:\n{stream}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The kinds whose CRDs the test control plane does not have (cert-manager, Prometheus
/// Operator). They are checked structurally in the test instead of by the API server.
fn needs_foreign_crd(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    api.starts_with("cert-manager.io/") || api.starts_with("monitoring.coreos.com/")
}

#[tokio::test]
#[ignore = "needs helm (hack/helm.sh, TAIMATSU_HELM): hack/test.sh runs it"]
async fn helm_lint_strict_passes() {
    let ca = client_ca_file();
    for args in [
        vec!["lint", "--strict", &chart("taimatsu-crds")],
        vec!["lint", "--strict", &chart("taimatsu"), "--set-file", &ca],
        vec!["lint", "--strict", &chart("taimatsu"), "--set", "webhook.certManager.enabled=true", "--set-file", &ca],
        vec!["lint", "--strict", &chart("taimatsu"), "--set", "webhook.clientAuth.mode=none"],
        vec![
            "lint",
            "--strict",
            &chart("taimatsu"),
            "--set",
            "webhook.enabled=false,metrics.serviceMonitor.enabled=true,audit.persistence.enabled=true,replicaCount=1",
        ],
    ] {
        let out = helm_ok(None, &args);
        assert!(out.contains("0 chart(s) failed"), "helm {}:\n{out}", args.join(" "));
    }
}

#[tokio::test]
#[ignore = "needs helm (hack/helm.sh, TAIMATSU_HELM): hack/test.sh runs it"]
async fn helm_values_schema_rejects_bad_values_naming_the_field() {
    for (set, field) in [
        ("replicaCount=-1", "/replicaCount"),
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
        ("logFormat=xml", "/logFormat"),
        ("audit.persistence.accessModes[0]=ReadWriteSometimes", "/audit/persistence/accessModes/0"),
        // additionalProperties: false, so a misspelt key is an error, not silently ignored.
        ("replicas=3", "'replicas'"),
        ("webhook.failurePolicyy=Ignore", "'failurePolicyy'"),
    ] {
        let out = helm(None, &["template", "t", &chart("taimatsu"), "--set", set]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema") && stderr.contains(field),
            "--set {set}: the error does not name {field}:\n{stderr}"
        );
    }
}

#[tokio::test]
#[ignore = "needs helm (hack/helm.sh, TAIMATSU_HELM): hack/test.sh runs it"]
async fn helm_requires_the_webhook_client_ca_or_an_explicit_opt_out() {
    // Defaults without the API server's webhook client CA: refused, naming the value and
    // the opt-out.
    let out = helm(None, &["template", "t", &chart("taimatsu")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "rendered without a webhook client CA");
    assert!(
        stderr.contains("webhook.clientAuth.caBundle") && stderr.contains("webhook.clientAuth.mode=none"),
        "{stderr}"
    );

    // With it: the CA in a ConfigMap, mounted where the operator is told to read it.
    let docs = documents(&helm_ok(None, &["template", "t", &chart("taimatsu"), "--set-file", &client_ca_file()]));
    let configmap = one(&docs, "ConfigMap");
    assert_eq!(configmap["metadata"]["name"], "t-taimatsu-webhook-client-ca");
    assert!(configmap["data"]["ca.crt"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(
        pod["volumes"].as_array().unwrap().iter().any(|v| v["configMap"]["name"] == "t-taimatsu-webhook-client-ca")
    );
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/taimatsu/webhook-client"), "{mounts:?}");

    // The opt-out for managed control planes: no CA, and the operator is told so.
    let docs =
        documents(&helm_ok(None, &["template", "t", &chart("taimatsu"), "--set", "webhook.clientAuth.mode=none"]));
    let args = operator_args(&docs);
    assert!(args.contains(&"--webhook-client-auth=none".to_owned()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--webhook-client-ca-file")), "{args:?}");
    assert!(find(&docs, "ConfigMap").is_empty());

    // The webhook port limited to the API server's addresses when they are given.
    let docs = documents(&helm_ok(
        None,
        &[
            "template",
            "t",
            &chart("taimatsu"),
            "--set-file",
            &client_ca_file(),
            "--set",
            "networkPolicy.webhookSourceCIDRs={192.0.2.10/32}",
        ],
    ));
    assert_eq!(
        one(&docs, "NetworkPolicy")["spec"]["ingress"][0],
        json!({ "ports": [{ "port": "webhook", "protocol": "TCP" }], "from": [{ "ipBlock": { "cidr": "192.0.2.10/32" } }] })
    );
}

#[tokio::test]
#[ignore = "needs helm and the test control plane: hack/test.sh runs it"]
async fn helm_templates_pass_strict_server_side_validation() {
    with_namespace("helm_template", |client, ns| async move {
        let cp = ControlPlane::shared().await;
        crds::ensure_installed(&client).await.expect("CRDs");
        let operator_chart = chart("taimatsu");
        let render = |sets: &[&str]| {
            let ca = client_ca_file();
            let mut args = vec!["template", "helm-dry-run", operator_chart.as_str(), "-n", ns.as_str()];
            args.extend(["--set-file", ca.as_str()]);
            for set in sets {
                args.extend(["--set", set]);
            }
            documents(&helm_ok(None, &args))
        };

        // The CRDs chart is exactly the generated files.
        let crd_docs = documents(&helm_ok(None, &["template", "taimatsu-crds", &chart("taimatsu-crds"), "-n", &ns]));
        let mut names: Vec<_> = crd_docs.iter().map(|d| kind_name(d).1).collect();
        names.sort();
        assert_eq!(names, CRD_NAMES);
        server_dry_run(cp, &crd_docs);

        // Defaults: Helm-generated webhook certificate, no ServiceMonitor, emptyDir audit.
        let docs = render(&[]);
        let fullname = "helm-dry-run-taimatsu";
        assert_eq!(
            operator_args(&docs),
            [
                "--http-addr=0.0.0.0:8080",
                "--lease-name=taimatsu-operator",
                "--audit-log=/var/lib/taimatsu/audit/$(POD_NAME).jsonl",
                "--audit-stdout=true",
                "--webhook-addr=0.0.0.0:9443",
                "--webhook-cert-dir=/etc/taimatsu/webhook",
                "--webhook-client-auth=certificate",
                "--webhook-client-ca-file=/etc/taimatsu/webhook-client/ca.crt",
                "--webhook-client-names=kube-apiserver",
                "--operator-pod-labels=app.kubernetes.io/instance=helm-dry-run,app.kubernetes.io/name=taimatsu",
                "--dns-namespace=kube-system",
                "--dns-pod-labels=k8s-app=kube-dns",
                "--mirror-cidrs=",
                "--egress-allowed-cidrs=",
            ]
        );
        // The operator's own policy lets rollout analysis reach the worker pods' ports.
        assert_eq!(
            one(&docs, "NetworkPolicy")["spec"]["egress"][2],
            json!({
                "ports": [{ "port": 8000, "protocol": "TCP" }, { "port": 9090, "protocol": "TCP" }],
                "to": [{ "namespaceSelector": {}, "podSelector": { "matchExpressions": [
                    { "key": "taimatsu.dev/model-deployment", "operator": "Exists" }] } }]
            })
        );
        let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "registry.local/taimatsu/operator:0.1.0");
        assert_eq!(operator_env(&docs, "TAIMATSU_WORKER_IMAGE").as_deref(), Some("registry.local/taimatsu/inference-worker:0.1.0"));
        assert_eq!(operator_env(&docs, "TAIMATSU_LOG_FORMAT").as_deref(), Some("json"));
        assert_eq!(operator_env(&docs, "TAIMATSU_HF_MIRROR"), None);
        assert_eq!(one(&docs, "Deployment")["spec"]["replicas"], 2);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(pod["containers"][0]["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert!(pod["volumes"].as_array().expect("volumes").iter().any(|v| v["name"] == "audit" && v["emptyDir"].is_object()));
        // The RBAC is the files the operator's own tests bind.
        assert_eq!(one(&docs, "ClusterRole")["rules"], file_rules("clusterrole.yaml"));
        assert_eq!(one(&docs, "Role")["rules"], file_rules("lease-role.yaml"));
        // The webhook: fixed name, the Secret's CA in caBundle, fail-closed by default.
        let vwc = one(&docs, "ValidatingWebhookConfiguration");
        assert_eq!(vwc["metadata"]["name"], "taimatsu-operator");
        let webhook = &vwc["webhooks"][0];
        assert_eq!(webhook["failurePolicy"], "Fail");
        assert_eq!(webhook["sideEffects"], "NoneOnDryRun");
        assert_eq!(webhook["timeoutSeconds"], 10);
        assert_eq!(webhook["clientConfig"]["service"]["name"], format!("{fullname}-webhook"));
        assert_eq!(webhook["clientConfig"]["service"]["path"], "/validate");
        let secret = one(&docs, "Secret");
        assert_eq!(secret["metadata"]["name"], format!("{fullname}-webhook-tls"));
        assert_eq!(webhook["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
        assert!(find(&docs, "ServiceMonitor").is_empty() && find(&docs, "PersistentVolumeClaim").is_empty());
        assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
        // Air-gapped: no image from anywhere but the configured registry.
        for doc in &docs {
            let text = doc.to_string();
            for public in ["docker.io", "ghcr.io", "quay.io", "gcr.io", "huggingface.co"] {
                assert!(!text.contains(public), "{:?} mentions {public}", kind_name(doc));
            }
        }
        server_dry_run(cp, &docs);

        // Everything optional on. cert-manager's and Prometheus Operator's CRDs are not
        // installed in the test control plane, so their objects are checked here and left out
        // of the server-side validation (which would fail on the unknown kinds).
        let docs = render(&[
            "webhook.certManager.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prometheus",
            "audit.persistence.enabled=true",
            "audit.persistence.storageClass=shared-fs",
            "networkPolicy.apiServerCIDRs={10.0.0.1/32}",
            "hfMirror=https://hf-mirror.internal.example",
            "otel.endpoint=http://otel-collector.observability:4317",
            "image.registry=registry.internal.example:5000/mirror",
            "workerNetwork.ingressNamespaces={ingress-nginx}",
            "workerNetwork.monitoringNamespaces={monitoring,observability}",
            "workerNetwork.dns.namespace=dns",
            "workerNetwork.mirrorCIDRs={10.20.0.0/16,10.21.0.0/24}",
            "workerNetwork.egressAllowedCIDRs={10.0.0.0/8}",
        ]);
        let args = operator_args(&docs);
        for flag in [
            "--ingress-namespace=ingress-nginx",
            "--monitoring-namespace=monitoring",
            "--monitoring-namespace=observability",
            "--dns-namespace=dns",
            "--mirror-cidrs=10.20.0.0/16,10.21.0.0/24",
            "--egress-allowed-cidrs=10.0.0.0/8",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
        }
        let vwc = one(&docs, "ValidatingWebhookConfiguration");
        assert!(vwc["webhooks"][0]["clientConfig"]["caBundle"].is_null(), "cainjector fills caBundle");
        assert!(find(&docs, "Secret").is_empty(), "cert-manager writes the Secret");
        let certificates = find(&docs, "Certificate");
        let serving = certificates
            .iter()
            .find(|c| c["spec"]["secretName"] == format!("{fullname}-webhook-tls"))
            .expect("a Certificate writing the mounted Secret");
        assert_eq!(
            vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!("{ns}/{}", serving["metadata"]["name"].as_str().expect("name"))
        );
        assert!(
            serving["spec"]["dnsNames"]
                .as_array()
                .expect("dnsNames")
                .contains(&json!(format!("{fullname}-webhook.{ns}.svc"))),
            "{serving}"
        );
        let issuers = find(&docs, "Issuer");
        assert!(issuers.iter().any(|i| i["spec"]["selfSigned"].is_object()), "self-signed root Issuer");
        assert!(issuers.iter().any(|i| i["metadata"]["name"] == serving["spec"]["issuerRef"]["name"] && i["spec"]["ca"].is_object()));
        let monitor = one(&docs, "ServiceMonitor");
        let metrics_service = find(&docs, "Service")
            .into_iter()
            .find(|s| s["spec"]["ports"][0]["name"] == "http-metrics")
            .expect("metrics Service");
        for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().expect("selector") {
            assert_eq!(&metrics_service["metadata"]["labels"][key], value, "ServiceMonitor selects the metrics Service");
        }
        assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
        let pvc = one(&docs, "PersistentVolumeClaim");
        assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteMany"]));
        assert_eq!(pvc["spec"]["storageClassName"], "shared-fs");
        assert_eq!(pvc["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
        let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
        assert!(pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]));
        assert_eq!(pod["containers"][0]["image"], "registry.internal.example:5000/mirror/taimatsu/operator:0.1.0");
        assert_eq!(operator_env(&docs, "TAIMATSU_HF_MIRROR").as_deref(), Some("https://hf-mirror.internal.example"));
        assert_eq!(
            operator_env(&docs, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
            Some("http://otel-collector.observability:4317")
        );
        assert_eq!(one(&docs, "NetworkPolicy")["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"], "10.0.0.1/32");
        let kept: Vec<Value> = docs.iter().filter(|d| !needs_foreign_crd(d)).cloned().collect();
        assert_eq!(docs.len() - kept.len(), 5, "2 Issuers, 2 Certificates, 1 ServiceMonitor left out");
        server_dry_run(cp, &kept);

        // No webhook, one replica: `--webhook-addr=` (off), no webhook objects, no PDB.
        let docs = render(&[
            "webhook.enabled=false",
            "replicaCount=1",
            "logFormat=text",
            "worker.image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ]);
        let args = operator_args(&docs);
        assert!(args.contains(&"--webhook-addr=".to_owned()), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("--webhook-cert-dir")), "{args:?}");
        for kind in ["ValidatingWebhookConfiguration", "Secret", "PodDisruptionBudget"] {
            assert!(find(&docs, kind).is_empty(), "{kind} rendered without the webhook / with one replica");
        }
        assert_eq!(
            operator_env(&docs, "TAIMATSU_WORKER_IMAGE").as_deref(),
            Some("registry.local/taimatsu/inference-worker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        server_dry_run(cp, &docs);
    })
    .await;
}

/// Marks the existing CRDs as belonging to the Helm release `release` in `namespace`: Helm's
/// documented adoption (label app.kubernetes.io/managed-by=Helm, annotations
/// meta.helm.sh/release-name and -namespace). Without it `helm install` refuses objects it
/// did not create; the shared control plane's CRDs were applied by `crds::ensure_installed`.
async fn adopt_crds(client: &Client, release: &str, namespace: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let patch = json!({"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace},
    }});
    for name in CRD_NAMES {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("adopt CRD");
    }
}

fn release_revision(cp: &ControlPlane, release: &str, ns: &str) -> i64 {
    let status: Value =
        serde_json::from_str(&helm_ok(Some(cp), &["status", release, "-n", ns, "-o", "json"])).expect("status JSON");
    assert_eq!(status["info"]["status"], "deployed", "{release}: {}", status["info"]);
    status["version"].as_i64().expect("release version")
}

#[tokio::test]
#[ignore = "needs helm and the test control plane: hack/test.sh runs it"]
async fn helm_install_upgrade_uninstall() {
    with_namespace("helm_install", |client, ns| async move {
        let cp = ControlPlane::shared().await;
        // Pods of this namespace must meet the restricted Pod Security Standard: the
        // operator's pods are refused otherwise, and the Deployment never becomes Available.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let label = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
        namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&label)).await.expect("label namespace");

        // The CRDs chart. Other tests of this binary install the CRDs without Helm (and may do
        // so at any moment), so make sure they exist, then let the release adopt them.
        crds::ensure_installed(&client).await.expect("CRDs");
        adopt_crds(&client, "taimatsu-crds", &ns).await;
        helm_ok(Some(cp), &["install", "taimatsu-crds", &chart("taimatsu-crds"), "-n", &ns]);
        let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for name in CRD_NAMES {
            tokio::time::timeout(
                Duration::from_secs(60),
                await_condition(crd_api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .expect("CRD Established in time")
            .expect("watch CRD");
        }

        // The operator chart, without the webhook. The webhook configuration is cluster-wide:
        // registered here it would intercept every Model/ModelDeployment write of the other
        // tests in this control plane, and nothing would answer (kwok's pods run no
        // container), so with failurePolicy Fail their writes would fail, and with Ignore each
        // would first try the unreachable webhook (up to its timeout) and then go through
        // unaudited: slower, and showing nothing. The webhook objects are checked by the API
        // server's dry run in helm_templates_pass_strict_server_side_validation instead, and
        // the certificate's reuse on upgrade below with a server-side dry run.
        let installed = helm_ok(
            Some(cp),
            &["install", "taimatsu", &chart("taimatsu"), "-n", &ns, "--set", "webhook.enabled=false"],
        );
        eprintln!("{installed}");
        assert!(installed.contains("Audit webhook:  disabled"), "NOTES.txt:\n{installed}");
        // kwok marks the scheduled pods Running and Ready: this shows the objects are accepted,
        // schedulable and admitted under the restricted policy, not that the operator runs
        // (chart_real_node.rs shows that).
        let deployment = wait::deployment_rolled_out(&client, &ns, "taimatsu", Duration::from_secs(120))
            .await
            .expect("the operator Deployment");
        assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(2));
        let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
        assert!(cluster_roles.get_opt("taimatsu").await.expect("get ClusterRole").is_some());

        // A Model, which upgrades and the operator's uninstall must leave alone.
        let model_yaml = std::fs::read_to_string(repo_root().join("examples/quickstart/model.yaml")).expect("example");
        apply::apply_yaml(&client, &ns, &model_yaml).await.expect("apply the quickstart Model");
        let models: Api<Model> = Api::namespaced(client.clone(), &ns);
        let model_uid = models.get("smollm2-135m-instruct").await.expect("Model").metadata.uid;

        // An upgrade reuses the webhook certificate (Helm's `lookup` of the Secret) instead of
        // generating a new one. Shown with a server-side dry run (lookup reaches the cluster;
        // nothing is persisted, so no webhook is registered): a Secret as the chart would have
        // made it, owned by the release, must come back unchanged, with its CA in caBundle.
        let ca = client_ca_file();
        let rendered =
            documents(&helm_ok(None, &["template", "taimatsu", &chart("taimatsu"), "-n", &ns, "--set-file", &ca]));
        let mut existing: Secret = serde_json::from_value(one(&rendered, "Secret").clone()).expect("Secret");
        let meta = &mut existing.metadata;
        meta.annotations = Some(
            [("meta.helm.sh/release-name", "taimatsu"), ("meta.helm.sh/release-namespace", ns.as_str())]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
        );
        meta.labels.get_or_insert_default().insert("app.kubernetes.io/managed-by".into(), "Helm".into());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        secrets.create(&PostParams::default(), &existing).await.expect("create the webhook Secret");
        let dry_run = helm_ok(
            Some(cp),
            // Values given: without any, `helm upgrade` reuses the release's (webhook off).
            &[
                "upgrade",
                "taimatsu",
                &chart("taimatsu"),
                "-n",
                &ns,
                "--set",
                "webhook.enabled=true",
                "--set-file",
                &ca,
                "--dry-run=server",
                "-o",
                "json",
            ],
        );
        let release: Value = serde_json::from_str(&dry_run).expect("release JSON");
        let docs = documents(release["manifest"].as_str().expect("manifest"));
        let existing_json = serde_json::to_value(&existing).expect("JSON");
        let secret = one(&docs, "Secret");
        assert_eq!(secret["data"], existing_json["data"], "the upgrade regenerated the webhook certificate");
        assert_eq!(
            one(&docs, "ValidatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"],
            existing_json["data"]["ca.crt"]
        );
        secrets.delete("taimatsu-webhook-tls", &Default::default()).await.expect("delete the Secret");

        // Upgrade both charts, the operator with a changed value.
        helm_ok(Some(cp), &["upgrade", "taimatsu-crds", &chart("taimatsu-crds"), "-n", &ns]);
        helm_ok(
            Some(cp),
            &[
                "upgrade",
                "taimatsu",
                &chart("taimatsu"),
                "-n",
                &ns,
                "--set",
                "webhook.enabled=false",
                "--set",
                "logFormat=text",
            ],
        );
        assert_eq!(release_revision(cp, "taimatsu-crds", &ns), 2);
        assert_eq!(release_revision(cp, "taimatsu", &ns), 2);
        let deployment = wait::deployment_rolled_out(&client, &ns, "taimatsu", Duration::from_secs(120))
            .await
            .expect("the operator Deployment");
        let env =
            deployment.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].env.clone().unwrap_or_default());
        let log_format = env.iter().flatten().find(|e| e.name == "TAIMATSU_LOG_FORMAT").and_then(|e| e.value.clone());
        assert_eq!(log_format.as_deref(), Some("text"));
        for name in CRD_NAMES {
            let crd = crd_api.get(name).await.expect("CRD still there after the upgrade");
            assert_eq!(
                crd.metadata.annotations.unwrap_or_default().get("meta.helm.sh/release-name").map(String::as_str),
                Some("taimatsu-crds")
            );
        }
        assert_eq!(models.get("smollm2-135m-instruct").await.expect("Model after the upgrade").metadata.uid, model_uid);

        // Uninstalling the operator removes its objects, cluster-scoped ones included, and
        // leaves the CRDs and the Models alone.
        helm_ok(Some(cp), &["uninstall", "taimatsu", "-n", &ns]);
        assert!(cluster_roles.get_opt("taimatsu").await.expect("get ClusterRole").is_none(), "ClusterRole left behind");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let gone = deployments.get_opt("taimatsu").await.expect("get Deployment");
        assert!(gone.is_none_or(|d| d.metadata.deletion_timestamp.is_some()), "the operator Deployment is left");
        for name in CRD_NAMES {
            crd_api.get(name).await.expect("CRD still there after uninstalling the operator");
        }
        assert_eq!(models.get("smollm2-135m-instruct").await.expect("Model after uninstall").metadata.uid, model_uid);
        // The taimatsu-crds release is deliberately not uninstalled: its CRDs live in
        // templates/, so Helm would delete them, and with them every custom resource of the
        // other tests running in this control plane. Its release record goes with the
        // namespace; the CRDs stay (with stale ownership annotations, which the next run
        // overwrites when it adopts them).
    })
    .await;
}
