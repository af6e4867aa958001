//! An https mirror whose certificate is signed by a private CA: trusted only through
//! `ca_bundle`, and an untrusted certificate fails at once (it is not retried).

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use support::{Model, init_tracing, no_env};
use taimatsu_model_fetch::{SourceEnv, fetch_with_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer};

/// A minimal HTTP/1.1-over-TLS server answering GETs of `files` (path without '/'); with
/// `token`, only requests carrying it as a bearer token (others get 401).
async fn tls_server(files: HashMap<String, Vec<u8>>, token: Option<&'static str>) -> (u16, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, files) = (acceptor.clone(), files.clone());
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake: nothing to serve.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
                let authorized = token.is_none_or(|t| {
                    head.lines().any(|l| l.to_ascii_lowercase() == format!("authorization: bearer {t}"))
                });
                let response = match files.get(path) {
                    _ if !authorized => {
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                    }
                    Some(body) => {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                                .into_bytes();
                        r.extend_from_slice(body);
                        r
                    }
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_through_the_bundle() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let model = Model::write(
        work.path(),
        "",
        &[("config.json", b"{}".to_vec()), ("weights/model.gguf", support::content(200_000, 3))],
    );
    let (port, ca_pem) = tls_server(model.files.iter().cloned().collect(), None).await;
    let source = format!("https://127.0.0.1:{port}/");

    // Without the CA: the certificate is not trusted, and that is reported at once.
    let started = std::time::Instant::now();
    let err = fetch_with_env(&model.options(source.clone(), &work.path().join("a")), &no_env()).await.unwrap_err();
    assert_eq!(err.reason(), "FetchFailed");
    assert!(err.to_string().contains("TLS certificate is not trusted"), "{err}");
    assert!(err.to_string().contains("spec.source.caBundleRef"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "an untrusted certificate was retried");

    // With the CA bundle.
    let bundle = work.path().join("ca.pem");
    std::fs::write(&bundle, ca_pem).unwrap();
    let mut options = model.options(source, &work.path().join("b"));
    options.ca_bundle = Some(bundle);
    let report = fetch_with_env(&options, &no_env()).await.unwrap();
    model.assert_fetched(&work.path().join("b"), &report);
}

#[tokio::test]
async fn the_secrets_token_is_sent_as_a_bearer_token_over_https() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let model = Model::write(work.path(), "", &[("config.json", b"{}".to_vec())]);
    let (port, ca_pem) = tls_server(model.files.iter().cloned().collect(), Some("s3cr3t")).await;
    let bundle = work.path().join("ca.pem");
    std::fs::write(&bundle, ca_pem).unwrap();
    let options = |dest: &str| {
        let mut options = model.options(format!("https://127.0.0.1:{port}/"), &work.path().join(dest));
        options.ca_bundle = Some(bundle.clone());
        options
    };

    // Without it the mirror refuses, and the error says where the token goes.
    let err = fetch_with_env(&options("a"), &no_env()).await.unwrap_err();
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    assert!(err.to_string().contains("spec.source.credentialsSecretRef"), "{err}");

    let env = SourceEnv::from_pairs([("token".to_owned(), "s3cr3t".to_owned())]);
    let report = fetch_with_env(&options("b"), &env).await.unwrap();
    model.assert_fetched(&work.path().join("b"), &report);
}

#[tokio::test]
async fn a_token_is_never_sent_over_plain_http() {
    init_tracing();
    let work = tempfile::tempdir().unwrap();
    let model = Model::write(work.path(), "m", &[("config.json", b"{}".to_vec())]);
    let server = support::FileServer::start(&work.path().join("source")).await;
    let env = SourceEnv::from_pairs([("token".to_owned(), "s3cr3t".to_owned())]);
    let err = fetch_with_env(&model.options(server.url("m/"), &work.path().join("out")), &env).await.unwrap_err();
    assert!(err.to_string().contains("a token is sent only over https"), "{err}");
    assert!(server.requests().is_empty(), "a request was sent: {:?}", server.requests());
}
