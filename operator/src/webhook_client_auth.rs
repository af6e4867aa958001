//! Who may call the admission webhook: the API server, and nobody else.
//!
//! What the webhook is told becomes the audit trail's "who changed what". A caller that is
//! not the API server could post an AdmissionReview naming any user, and the next revision
//! would credit the change to that user. So the webhook requires a TLS client certificate
//! issued by a CA the operator is given (`--webhook-client-ca-file`), and optionally one of
//! a few names in it (`--webhook-client-names`): Kubernetes' documented way for an API
//! server to authenticate to webhooks (an AdmissionConfiguration whose
//! `WebhookAdmissionConfiguration.kubeConfigFile` gives the API server a client certificate
//! per webhook host). The CA should sign nothing else, or the names should be set: every
//! holder of a certificate from that CA and with an allowed name can admit.
//!
//! Managed clusters whose API server flags cannot be set can opt out with
//! `--webhook-client-auth=none`; docs/security.md says what that leaves open.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

/// How webhook callers are authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client certificate from the CAs in `ca_file` is required; when `names` is not
    /// empty, the certificate's subject common name or a DNS subject alternative name must
    /// be one of them.
    Certificate { ca_file: PathBuf, names: Vec<String> },
    /// Anyone who reaches the port may call (managed clusters that cannot give the API
    /// server a client certificate).
    None,
}

/// Errors in the webhook client-auth settings, each naming the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--webhook-client-auth=certificate needs --webhook-client-ca-file: the CA of the client certificate the API \
         server presents to webhooks (its AdmissionConfiguration's kubeConfigFile, see docs/security.md). A managed \
         cluster that cannot configure that: --webhook-client-auth=none, and any pod that reaches the webhook port \
         can then forge admission records"
    )]
    MissingCa,
    #[error("--webhook-client-auth={0:?}: expected `certificate` or `none`")]
    UnknownMode(String),
    #[error("--webhook-client-ca-file {path}: {reason}")]
    UnreadableCa { path: String, reason: String },
}

impl ClientAuth {
    /// From the command line: `mode` is `certificate` (the default) or `none`.
    pub fn from_flags(mode: &str, ca_file: &str, names: &[String]) -> Result<ClientAuth, SettingsError> {
        match (mode, ca_file) {
            ("certificate", "") => Err(SettingsError::MissingCa),
            ("certificate", ca) => {
                let names = names.iter().filter(|n| !n.is_empty()).cloned().collect();
                Ok(ClientAuth::Certificate { ca_file: ca.into(), names })
            }
            ("none", _) => Ok(ClientAuth::None),
            (other, _) => Err(SettingsError::UnknownMode(other.to_owned())),
        }
    }

    /// The TLS verifier for these settings: one that requires a certificate from the CA,
    /// or none at all.
    pub fn verifier(&self, provider: Arc<CryptoProvider>) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
        let ClientAuth::Certificate { ca_file, .. } = self else {
            return Ok(WebPkiClientVerifier::no_client_auth());
        };
        let unreadable = |reason: String| SettingsError::UnreadableCa { path: ca_file.display().to_string(), reason };
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| unreadable(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(e.to_string()))?;
        if certs.is_empty() {
            return Err(unreadable("no PEM certificate in it".into()).into());
        }
        for cert in certs {
            roots.add(cert).map_err(|e| unreadable(e.to_string()))?;
        }
        Ok(WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
    }

    /// Whether a verified peer certificate (`leaf`, DER) carries an allowed name. `Err`
    /// names what it carries instead.
    pub fn check_name(&self, leaf: Option<&CertificateDer<'_>>) -> Result<(), String> {
        let ClientAuth::Certificate { names, .. } = self else { return Ok(()) };
        if names.is_empty() {
            return Ok(());
        }
        let Some(leaf) = leaf else { return Err("no client certificate".into()) };
        let presented = certificate_names(leaf)?;
        if presented.iter().any(|p| names.contains(p)) {
            Ok(())
        } else {
            Err(format!("client certificate names {presented:?}, none of {names:?} (--webhook-client-names)"))
        }
    }
}

/// Logs refused callers without letting a flood of them flood the log: the first refusal,
/// then at most one line per [`REFUSAL_LOG_INTERVAL`] that counts the ones in between.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

/// See [`RefusalLog`].
pub const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl RefusalLog {
    /// Records one refusal of `peer` for `reason`; logs it if the interval has passed.
    pub fn refused(&self, peer: std::net::SocketAddr, reason: &str) {
        let now = std::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            *suppressed += 1;
            return;
        }
        tracing::warn!(%peer, reason, others_since_last_line = *suppressed, "webhook caller refused");
        (*last, *suppressed) = (Some(now), 0);
    }
}

/// The subject common names and DNS subject alternative names of a certificate.
fn certificate_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_owned)).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        names.extend(san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        }));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair};

    use super::*;

    fn certificate(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().clone()
    }

    #[test]
    fn the_mode_needs_a_ca_unless_it_is_none() {
        assert!(matches!(ClientAuth::from_flags("certificate", "", &[]), Err(SettingsError::MissingCa)));
        assert_eq!(ClientAuth::from_flags("none", "", &[]).unwrap(), ClientAuth::None);
        assert!(matches!(ClientAuth::from_flags("mtls", "/ca", &[]), Err(SettingsError::UnknownMode(_))));
        let auth = ClientAuth::from_flags("certificate", "/ca.crt", &["".into(), "kube-apiserver".into()]).unwrap();
        assert_eq!(auth, ClientAuth::Certificate { ca_file: "/ca.crt".into(), names: vec!["kube-apiserver".into()] });
        assert!(SettingsError::MissingCa.to_string().contains("--webhook-client-ca-file"));
    }

    #[test]
    fn names_are_matched_against_the_common_name_and_dns_alternative_names() {
        let auth = ClientAuth::Certificate { ca_file: "/ca".into(), names: vec!["kube-apiserver".into()] };
        assert_eq!(auth.check_name(Some(&certificate("kube-apiserver", &[]))), Ok(()));
        assert_eq!(auth.check_name(Some(&certificate("other", &["kube-apiserver"]))), Ok(()));
        let refused = auth.check_name(Some(&certificate("alice", &["alice.example"]))).unwrap_err();
        assert!(refused.contains("alice") && refused.contains("--webhook-client-names"), "{refused}");
        assert!(auth.check_name(None).is_err());
        let any_name = ClientAuth::Certificate { ca_file: "/ca".into(), names: vec![] };
        assert_eq!(any_name.check_name(Some(&certificate("alice", &[]))), Ok(()));
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "not a certificate").unwrap();
        let auth = ClientAuth::Certificate { ca_file: path.clone(), names: vec![] };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let err = auth.verifier(provider).map(|_| ()).expect_err("an error").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
