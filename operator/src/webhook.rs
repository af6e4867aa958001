//! The validating admission webhook that records who changes what: every create, update
//! and delete of a ModelDeployment or Model passes through it, and its requesting user,
//! groups, operation and change-cause are appended to the control-plane audit chain
//! before the API server commits the change. It never judges the object (CEL and the
//! reconciler do that): it denies only when the change cannot be audited, so nothing
//! changes unrecorded. With the webhook down, the ValidatingWebhookConfiguration's
//! failurePolicy decides: `Fail` (the chart's default, fail-closed) or `Ignore`.
//!
//! Every replica serves it (the Service spreads requests), and every replica appends to
//! the one chain: its head in the API server serialises the appends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{DynamicObject, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use taimatsu_crds::v1alpha1::CHANGE_CAUSE_ANNOTATION;
use tracing::{info, warn};

use crate::audit::ControlPlaneAudit;

/// Where and how the webhook serves.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// Directory with `tls.crt` and `tls.key` (from Helm or cert-manager). When they are
    /// missing, a CA and certificate are generated for `dns_names` and the CA is written
    /// into the `configuration`'s caBundle.
    pub cert_dir: PathBuf,
    pub dns_names: Vec<String>,
    pub configuration: String,
}

/// A ModelDeployment generation: namespace, name, generation.
type GenerationKey = (String, String, i64);

/// Who asked for each ModelDeployment generation, as this replica's webhook saw it.
#[derive(Clone, Default)]
pub struct Requesters(Arc<Mutex<HashMap<GenerationKey, String>>>);

impl Requesters {
    /// The user whose request produced `generation` of `namespace/name`, if this replica
    /// admitted it.
    pub fn get(&self, namespace: &str, name: &str, generation: i64) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(namespace.to_owned(), name.to_owned(), generation)).cloned()
    }

    fn insert(&self, key: GenerationKey, user: String) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: the audit trail, not this cache, is the record.
        if map.len() >= 10_000 {
            map.clear();
        }
        map.insert(key, user);
    }
}

#[derive(Clone)]
struct Shared {
    audit: Arc<ControlPlaneAudit>,
    requesters: Requesters,
}

/// Serves the webhook until the task is dropped.
pub async fn serve(
    client: Client,
    config: WebhookConfig,
    audit: Arc<ControlPlaneAudit>,
    requesters: Requesters,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = tls_config(&client, &config).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let app = Router::new().route("/validate", post(validate)).with_state(Shared { audit, requesters });
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    info!(addr = %config.addr, "serving the admission webhook");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = TowerToHyperService::new(app);
                if let Err(e) =
                    auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await
                {
                    warn!(error = %e, "webhook connection");
                }
            });
        }
    }))
}

async fn validate(
    State(shared): State<Shared>,
    axum::Json(review): axum::Json<AdmissionReview<DynamicObject>>,
) -> axum::Json<AdmissionReview<DynamicObject>> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed AdmissionReview");
            return axum::Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let response = AdmissionResponse::from(&request);
    if request.dry_run {
        return axum::Json(response.into_review());
    }
    let object = request.object.as_ref().or(request.old_object.as_ref());
    let meta = object.map(|o| o.metadata.clone()).unwrap_or_default();
    let generation = request.object.as_ref().and_then(|o| o.metadata.generation);
    let operation = match request.operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    };
    let user = request.user_info.username.clone().unwrap_or_default();
    let record = json!({
        "event": "admission",
        "operation": operation,
        "kind": request.kind.kind,
        "namespace": request.namespace,
        "name": request.name,
        "uid": meta.uid,
        "generation": generation,
        "user": user,
        "groups": request.user_info.groups,
        "changeCause": meta.annotations.as_ref().and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION)),
        "admissionUid": request.uid,
    });
    match shared.audit.append(record).await {
        Ok(_) => {
            if let (Some(g), Some(ns)) = (generation, request.namespace.clone())
                && request.kind.kind == "ModelDeployment"
            {
                shared.requesters.insert((ns, request.name.clone(), g), user);
            }
            axum::Json(response.into_review())
        }
        Err(e) => {
            warn!(error = %e, "denying a change that could not be audited");
            let denied = response.deny(format!(
                "Taimatsu could not record this change in its audit trail ({e}); no change is made unaudited: retry, or ask the platform team to check the operator"
            ));
            axum::Json(denied.into_review())
        }
    }
}

/// The webhook's TLS configuration: supplied files, or a generated CA and certificate whose
/// CA is published in the ValidatingWebhookConfiguration.
async fn tls_config(client: &Client, config: &WebhookConfig) -> anyhow::Result<rustls::ServerConfig> {
    let (cert_file, key_file) = (config.cert_dir.join("tls.crt"), config.cert_dir.join("tls.key"));
    let (chain, key) = if cert_file.exists() && key_file.exists() {
        info!(dir = %config.cert_dir.display(), "webhook certificate from files");
        load(&cert_file, &key_file)?
    } else {
        let (ca_pem, chain, key) = generate(&config.dns_names)?;
        publish_ca(client, &config.configuration, &ca_pem).await?;
        (chain, key)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    Ok((chain, key))
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
