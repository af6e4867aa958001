//! Attack: an insider's pod posts an AdmissionReview of its own to the operator's webhook,
//! saying that another user (alice) changed `ml/chat`. Were it recorded, the next revision
//! of `ml/chat` would credit the change to alice. Only the API server may admit: a caller
//! without its client certificate is refused at the TLS handshake, or after it when the
//! certificate does not carry the API server's name, and nothing is appended to the chain.
//! Its own test binary: the operator here leads on this control plane.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use taimatsu_tests::ControlPlane;
use taimatsu_tests::certs::{WEBHOOK_CLIENT_NAME, ca_named};
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::wait::poll_until;

use common::*;

/// Forged reviews sent in a row by the flood.
const FLOOD: usize = 500;

/// A review that says alice updated `ml/chat` to generation 7.
fn forged_review(uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": { "group": "taimatsu.dev", "version": "v1alpha1", "kind": "ModelDeployment" },
            "resource": { "group": "taimatsu.dev", "version": "v1alpha1", "resource": "modeldeployments" },
            "name": "chat", "namespace": "ml", "operation": "UPDATE",
            "userInfo": { "username": "alice", "groups": ["system:authenticated"] },
            "object": { "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
                        "metadata": { "name": "chat", "namespace": "ml", "generation": 7, "uid": "00000000-0000-0000-0000-000000000007" } },
            "oldObject": null, "dryRun": false,
        },
    })
}

/// A client that trusts the webhook's serving CA and presents `identity`, if any.
fn caller(serving_ca: &str, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(serving_ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

/// A client certificate named like the API server's, from a CA of the attacker's own.
fn rogue_identity() -> reqwest::Identity {
    let ca = ca_named("rogue-ca").unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, WEBHOOK_CLIENT_NAME);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes()).unwrap()
}

/// A client certificate from the API server's webhook client CA, named `name`.
fn identity_from_the_client_ca(cp: &ControlPlane, name: &str) -> reqwest::Identity {
    let pki = cp.dir().join("pki");
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("webhook-client-ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(pki.join("webhook-client-ca.crt")).unwrap();
    let ca = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes()).unwrap()
}

/// The API server's own webhook client certificate.
fn api_server_identity(cp: &ControlPlane) -> reqwest::Identity {
    let pki = cp.dir().join("pki");
    let cert = std::fs::read_to_string(pki.join("apiserver-webhook-client.crt")).unwrap();
    let key = std::fs::read_to_string(pki.join("apiserver-webhook-client.key")).unwrap();
    reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
}

fn recorded(cp: &ControlPlane, identity: &str, uid: &str) -> bool {
    let (_, records) = audit_records(cp, identity);
    records.iter().any(|r| r["event"] == "admission" && r["admissionUid"] == uid)
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn a_forged_admission_review_is_refused_and_never_recorded() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;
    let cert_dir = cp.dir().join("forgery-webhook-certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    let serving_ca = write_serving_pair(&cert_dir);
    let port = free_port().unwrap();
    let mut operator = operator_command(cp, "forgery-operator", "forgery-test", free_port().unwrap());
    operator.args([
        format!("--webhook-addr=127.0.0.1:{port}"),
        format!("--webhook-cert-dir={}", cert_dir.display()),
        format!("--webhook-client-ca-file={}", cp.webhook_client_ca().display()),
        format!("--webhook-client-names={WEBHOOK_CLIENT_NAME}"),
    ]);
    let (mut child, log) = cp.start_process("forgery-operator", operator).unwrap();
    eprintln!("operator log: {}", log.display());
    let url = format!("https://127.0.0.1:{port}/validate");
    poll_until("the webhook port", Duration::from_secs(60), || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ()))
    })
    .await
    .unwrap();

    // No client certificate, as from any pod that reaches the port.
    let anonymous = caller(&serving_ca, None).post(&url).json(&forged_review("forged-anonymous")).send().await;
    assert!(anonymous.is_err(), "a caller without a certificate was answered: {anonymous:?}");
    // The API server's name, from the attacker's own CA.
    let rogue =
        caller(&serving_ca, Some(rogue_identity())).post(&url).json(&forged_review("forged-rogue")).send().await;
    assert!(rogue.is_err(), "a certificate from another CA was answered: {rogue:?}");
    // The right CA, another name (--webhook-client-names): the connection is closed unanswered.
    let misnamed = caller(&serving_ca, Some(identity_from_the_client_ca(cp, "alice")))
        .post(&url)
        .json(&forged_review("forged-misnamed"))
        .send()
        .await;
    assert!(misnamed.is_err(), "a certificate without the API server's name was answered: {misnamed:?}");

    // The same review with the API server's certificate is admitted and recorded: the
    // refusals above were for the caller, not for the request. (Whoever holds that key is
    // the API server, as far as the webhook can tell: it must stay on the control plane.)
    let answered = caller(&serving_ca, Some(api_server_identity(cp)))
        .post(&url)
        .json(&forged_review("from-the-api-server"))
        .send()
        .await
        .expect("the API server's certificate is accepted");
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert!(recorded(cp, "forgery-operator", "from-the-api-server"));
    assert!(!recorded(cp, "forgery-operator", "forged-anonymous"), "the anonymous forgery reached the chain");
    assert!(!recorded(cp, "forgery-operator", "forged-rogue"), "the rogue-CA forgery reached the chain");
    assert!(!recorded(cp, "forgery-operator", "forged-misnamed"), "the misnamed forgery reached the chain");
    // A flood of forgeries (which, recorded, would fill the audit volume until the pod is
    // evicted and, fail-closed, no Model could be written): not one byte is appended.
    let audit_size = || std::fs::metadata(audit_log(cp, "forgery-operator")).unwrap().len();
    let before = audit_size();
    let flood = caller(&serving_ca, None);
    for n in 0..FLOOD {
        let review = forged_review(&format!("flood-{n}"));
        assert!(flood.post(&url).json(&review).send().await.is_err(), "forgery {n} was answered");
    }
    assert_eq!(audit_size(), before, "the flood reached the audit file");
    // Logged, but not once per forgery: the flood would flood the log too.
    let refusals = std::fs::read_to_string(&log).unwrap().matches("webhook caller refused").count();
    assert!((1..FLOOD).contains(&refusals), "{refusals} refusal lines for {FLOOD} forgeries: {log:?}");

    let _ = child.kill();
    let _ = child.wait();
}
