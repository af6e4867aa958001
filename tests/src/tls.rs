//! HTTPS for test servers (the sandbox's model mirror): a private CA and a certificate for
//! 127.0.0.1 (and any further names asked for), and an axum app served over rustls.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA (its PEM, for clients) and a rustls server configuration for 127.0.0.1 and localhost.
pub fn loopback_server_config() -> anyhow::Result<(String, rustls::ServerConfig)> {
    server_config(&[])
}

/// Like [`loopback_server_config`], with `extra_names` (IP addresses or DNS names) in the
/// certificate too: the sandbox's mirror as pods on a real node reach it, at the node's
/// bridge address (`hack/real-node.sh`).
pub fn server_config(extra_names: &[String]) -> anyhow::Result<(String, rustls::ServerConfig)> {
    let cert = ServerCert::issue(extra_names)?;
    Ok((cert.ca_pem.clone(), cert.rustls_config()?))
}

/// A private CA and a serving certificate it signed for 127.0.0.1, localhost and
/// `extra_names`, as PEM (for servers that read files, such as the OCI registry) and DER.
pub struct ServerCert {
    pub ca_pem: String,
    /// The leaf, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl ServerCert {
    pub fn issue(extra_names: &[String]) -> anyhow::Result<ServerCert> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "taimatsu-sandbox-mirror-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf_key = KeyPair::generate()?;
        let mut names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        names.extend(extra_names.iter().cloned());
        let leaf = CertificateParams::new(names)?.signed_by(&leaf_key, &ca)?;
        Ok(ServerCert {
            ca_pem: ca.pem(),
            chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
            key_pem: leaf_key.serialize_pem(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key_der: leaf_key.serialize_der(),
        })
    }

    /// A rustls server configuration serving this certificate.
    pub fn rustls_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let key = PrivateKeyDer::try_from(self.key_der.clone()).map_err(|e| anyhow::anyhow!(e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)?)
    }
}

/// Serves `app` over TLS on `listener` until the task is dropped.
pub fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    app: axum::Router,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    let service = TowerToHyperService::new(app);
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                }
            });
        }
    })
}
