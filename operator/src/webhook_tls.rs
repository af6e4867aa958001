//! The admission webhook's serving certificate: from `tls.crt`/`tls.key` in the certificate
//! directory (written by Helm or cert-manager), or generated with its CA published in the
//! ValidatingWebhookConfiguration.
//!
//! Supplied files are read again whenever they change. cert-manager renews the Secret
//! before the certificate expires and the kubelet swaps the mounted files; an operator that
//! kept the certificate it started with would serve an expired one, and with the chart's
//! fail-closed policy every Model and ModelDeployment write would then be refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::PostParams;
use kube::{Api, Client};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

use crate::webhook_client_auth::ClientAuth;

/// Where the webhook's certificate comes from.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Directory with `tls.crt` and `tls.key` (from Helm or cert-manager), read again when
    /// they change. When they are missing, a CA and certificate are generated for
    /// `dns_names` and the CA is written into the `configuration`'s caBundle.
    pub cert_dir: PathBuf,
    pub dns_names: Vec<String>,
    /// The ValidatingWebhookConfiguration that receives a generated CA.
    pub configuration: String,
}

/// The webhook's TLS configuration: supplied files (reloaded when they change), or a
/// generated CA and certificate whose CA is published in the ValidatingWebhookConfiguration.
/// Callers are verified by `client_auth` (the API server's client certificate).
pub async fn server_config(
    client: &Client,
    config: &TlsSettings,
    client_auth: &ClientAuth,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_auth.verifier(provider.clone())?);
    let (cert_file, key_file) = (config.cert_dir.join("tls.crt"), config.cert_dir.join("tls.key"));
    if cert_file.exists() && key_file.exists() {
        info!(dir = %config.cert_dir.display(), "webhook certificate from files, reloaded when they change");
        return Ok(builder.with_cert_resolver(Arc::new(FileCert::load(cert_file, key_file, provider)?)));
    }
    let (ca_pem, chain, key) = generate(&config.dns_names)?;
    publish_ca(client, &config.configuration, &ca_pem).await?;
    Ok(builder.with_single_cert(chain, key)?)
}

/// What identifies one version of a file: replaced files (the kubelet writes a Secret's
/// new files and swaps a symlink) have a new inode and modification time.
type Stamp = Option<(u64, std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.modified().ok()?, meta.len()))
}

/// The certificate of `tls.crt`/`tls.key`, checked for a change at every TLS handshake (two
/// `stat` calls; the API server keeps its connections, so handshakes are rare).
#[derive(Debug)]
pub struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
    /// Files that changed but did not load (half-written, or a key that does not match):
    /// said once, then the previous certificate is served until they change again.
    rejected: Option<(Stamp, Stamp)>,
}

impl FileCert {
    /// Loads the files now: a pair that does not load is an error at start.
    pub fn load(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> anyhow::Result<FileCert> {
        let stamps = (stamp(&cert), stamp(&key));
        let loaded = certified_key(&cert, &key, &provider)?;
        let state = Mutex::new(Loaded { stamps, key: Arc::new(loaded), rejected: None });
        Ok(FileCert { cert, key, provider, state })
    }

    /// The certificate to serve: the files' current one, or the last one that loaded.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (stamp(&self.cert), stamp(&self.key));
        if stamps != state.stamps && Some(stamps) != state.rejected {
            match certified_key(&self.cert, &self.key, &self.provider) {
                Ok(key) => {
                    info!(cert = %self.cert.display(), "webhook certificate reloaded");
                    *state = Loaded { stamps, key: Arc::new(key), rejected: None };
                }
                Err(e) => {
                    warn!(cert = %self.cert.display(), error = %e, "webhook certificate files changed but do not load; serving the previous certificate");
                    state.rejected = Some(stamps);
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// A CA and a serving certificate for `names` (DNS names or IP addresses).
fn generate(names: &[String]) -> anyhow::Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "taimatsu-webhook-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
    let mut leaf_params = rcgen::CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "taimatsu-webhook");
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).map_err(|e| anyhow::anyhow!(e))?;
    Ok((ca.pem(), vec![leaf.der().clone(), ca.der().clone()], key))
}

/// Writes the CA into every webhook of the configuration, so the API server trusts it.
async fn publish_ca(client: &Client, name: &str, ca_pem: &str) -> anyhow::Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mut configuration = api.get(name).await.map_err(|e| {
        anyhow::anyhow!("the webhook certificate was generated, but ValidatingWebhookConfiguration {name} could not be read to publish its CA ({e}): create it first, or supply tls.crt/tls.key in --webhook-cert-dir")
    })?;
    let bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
    for webhook in configuration.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(bundle.clone());
    }
    api.replace(name, &PostParams::default(), &configuration).await?;
    info!(configuration = %name, "published the generated webhook CA");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
        // As the kubelet does: new files, then the names point at them.
        let (new_cert, new_key) = (dir.join("tls.crt.new"), dir.join("tls.key.new"));
        std::fs::write(&new_cert, cert.pem()).unwrap();
        std::fs::write(&new_key, key.serialize_pem()).unwrap();
        std::fs::rename(new_cert, dir.join("tls.crt")).unwrap();
        std::fs::rename(new_key, dir.join("tls.key")).unwrap();
        cert.der().to_vec()
    }

    fn served(cert: &FileCert) -> Vec<u8> {
        cert.current().cert[0].to_vec()
    }

    #[test]
    fn replaced_files_are_served_and_a_broken_pair_keeps_the_previous_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "first.example");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = FileCert::load(dir.path().join("tls.crt"), dir.path().join("tls.key"), provider).unwrap();
        assert_eq!(served(&cert), first);
        assert_eq!(served(&cert), first, "unchanged files: the same certificate");

        let second = write_pair(dir.path(), "second.example");
        assert_eq!(served(&cert), second, "renewed files are served");

        // A key that does not match the certificate (a half-done manual copy): the previous
        // certificate stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("tls.key.new"), other.serialize_pem()).unwrap();
        std::fs::rename(dir.path().join("tls.key.new"), dir.path().join("tls.key")).unwrap();
        assert_eq!(served(&cert), second);

        let third = write_pair(dir.path(), "third.example");
        assert_eq!(served(&cert), third, "a good pair after a bad one is served");
    }

    #[test]
    fn files_that_do_not_load_at_start_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        assert!(FileCert::load(dir.path().join("tls.crt"), dir.path().join("tls.key"), provider).is_err());
    }
}
