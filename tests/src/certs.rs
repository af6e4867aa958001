//! Certificates and keys for a throwaway control plane, generated in-process.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// Paths of the PEM files written by [`generate`].
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_pem: String,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// ECDSA P-256 key the API server signs service-account tokens with.
    pub service_account_key: PathBuf,
    /// Its public half, which the API server verifies tokens with.
    pub service_account_public_key: PathBuf,
    /// A CA of its own for the client certificate the API server presents to admission
    /// webhooks (so that no other certificate of this control plane can call them).
    pub webhook_client_ca_cert: PathBuf,
    /// Its key, kept so that tests can issue other certificates from it (a caller with the
    /// right CA and the wrong name).
    pub webhook_client_ca_key: PathBuf,
    /// That client certificate (common name [`WEBHOOK_CLIENT_NAME`]) and its key.
    pub webhook_client_cert: PathBuf,
    pub webhook_client_key: PathBuf,
}

/// The common name of the API server's webhook client certificate.
pub const WEBHOOK_CLIENT_NAME: &str = "kube-apiserver";

/// Writes a CA, an API-server serving certificate for 127.0.0.1/localhost and the
/// in-cluster service names, and a service-account signing key, into `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;

    let ca = ca_named("taimatsu-test-ca")?;

    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "10.0.0.1".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    let sa_key = KeyPair::generate()?;

    let webhook_ca = ca_named("taimatsu-test-webhook-client-ca")?;
    let mut webhook_client = CertificateParams::new(Vec::<String>::new())?;
    webhook_client.distinguished_name.push(DnType::CommonName, WEBHOOK_CLIENT_NAME);
    webhook_client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let webhook_client_key = KeyPair::generate()?;
    let webhook_client_cert = webhook_client.signed_by(&webhook_client_key, &webhook_ca)?;

    let pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_pem: ca.pem(),
        serving_cert: dir.join("apiserver.crt"),
        serving_key: dir.join("apiserver.key"),
        service_account_key: dir.join("service-account.key"),
        service_account_public_key: dir.join("service-account.pub"),
        webhook_client_ca_cert: dir.join("webhook-client-ca.crt"),
        webhook_client_ca_key: dir.join("webhook-client-ca.key"),
        webhook_client_cert: dir.join("apiserver-webhook-client.crt"),
        webhook_client_key: dir.join("apiserver-webhook-client.key"),
    };
    std::fs::write(&pki.ca_cert, &pki.ca_pem)?;
    std::fs::write(&pki.serving_cert, serving_cert.pem())?;
    std::fs::write(&pki.serving_key, serving_key.serialize_pem())?;
    std::fs::write(&pki.service_account_key, sa_key.serialize_pem())?;
    std::fs::write(&pki.service_account_public_key, sa_key.public_key_pem())?;
    std::fs::write(&pki.webhook_client_ca_cert, webhook_ca.pem())?;
    std::fs::write(&pki.webhook_client_ca_key, webhook_ca.key().serialize_pem())?;
    std::fs::write(&pki.webhook_client_cert, webhook_client_cert.pem())?;
    std::fs::write(&pki.webhook_client_key, webhook_client_key.serialize_pem())?;
    Ok(pki)
}

/// A self-signed CA with common name `name`.
pub fn ca_named(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}
