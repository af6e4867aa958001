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
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kube::Client;
use kube::api::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::json;
use taimatsu_crds::v1alpha1::CHANGE_CAUSE_ANNOTATION;
use tracing::{info, warn};

use crate::audit::ControlPlaneAudit;
pub use crate::webhook_tls::TlsSettings;

/// Where and how the webhook serves.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// Its serving certificate.
    pub tls: TlsSettings,
}

/// A ModelDeployment generation: namespace, name, generation.
type GenerationKey = (String, String, i64);

/// Who asked for each ModelDeployment generation, as this replica's webhook saw it.
#[derive(Clone, Default)]
pub struct Requesters {
    seen: Arc<Mutex<HashMap<GenerationKey, String>>>,
    /// Whether the webhooks serve: then every admission is also in the audit head, where
    /// the leader looks up what another replica admitted.
    webhook: bool,
}

impl Requesters {
    /// `webhook`: whether the replicas serve the admission webhook.
    pub fn new(webhook: bool) -> Self {
        Requesters { seen: Arc::default(), webhook }
    }

    /// Whether the replicas serve the admission webhook.
    pub fn webhook_serves(&self) -> bool {
        self.webhook
    }

    /// The user whose request produced `generation` of `namespace/name`, if this replica
    /// admitted it.
    pub fn get(&self, namespace: &str, name: &str, generation: i64) -> Option<String> {
        let map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(namespace.to_owned(), name.to_owned(), generation)).cloned()
    }

    fn insert(&self, key: GenerationKey, user: String) {
        let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
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
    let tls = crate::webhook_tls::server_config(&client, &config.tls).await?;
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
