//! The validating admission webhook that records who changes what: every create, update
//! and delete of a ModelDeployment or Model passes through it, and its requesting user,
//! groups, operation and change-cause are appended to the control-plane audit chain
//! before the API server commits the change. It judges one thing CEL cannot: that a
//! ModelDeployment's `allowedCidrs` lie inside the ranges the operator allows (the
//! reconciler checks again, since a webhook can be fail-open). Otherwise it denies only
//! when the change cannot be audited, so nothing changes unrecorded. With the webhook down, the ValidatingWebhookConfiguration's
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
use taimatsu_core::EgressRanges;
use taimatsu_crds::v1alpha1::CHANGE_CAUSE_ANNOTATION;
use tracing::{info, warn};

use crate::audit::ControlPlaneAudit;
pub use crate::webhook_client_auth::ClientAuth;
use crate::webhook_client_auth::RefusalLog;
pub use crate::webhook_tls::TlsSettings;

/// Where and how the webhook serves.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub addr: SocketAddr,
    /// Its serving certificate.
    pub tls: TlsSettings,
    /// Who may call it: the API server's client certificate.
    pub client_auth: ClientAuth,
    /// The ranges a ModelDeployment's `allowedCidrs` must lie inside (`--egress-allowed-cidrs`).
    pub egress_allowed: EgressRanges,
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
    egress_allowed: Arc<EgressRanges>,
}

/// Serves the webhook until the task is dropped.
pub async fn serve(
    client: Client,
    config: WebhookConfig,
    audit: Arc<ControlPlaneAudit>,
    requesters: Requesters,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = crate::webhook_tls::server_config(&client, &config.tls, &config.client_auth).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let client_auth = Arc::new(config.client_auth.clone());
    let refusals = Arc::new(RefusalLog::default());
    if client_auth.as_ref() == &ClientAuth::None {
        warn!("--webhook-client-auth=none: any caller that reaches the webhook can forge admission records");
    }
    let shared = Shared { audit, requesters, egress_allowed: Arc::new(config.egress_allowed.clone()) };
    let app = Router::new().route("/validate", post(validate)).with_state(shared);
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    info!(addr = %config.addr, "serving the admission webhook");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            let (acceptor, app, client_auth) = (acceptor.clone(), app.clone(), client_auth.clone());
            let refusals = refusals.clone();
            tokio::spawn(async move {
                // A caller without a certificate from the client CA fails the handshake.
                let stream = match acceptor.accept(tcp).await {
                    Ok(stream) => stream,
                    Err(e) => return refusals.refused(peer, &format!("TLS handshake: {e}")),
                };
                let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first());
                if let Err(why) = client_auth.check_name(leaf) {
                    return refusals.refused(peer, &why);
                }
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
    if let Some(refused) = policy_refusal(&request, &shared.egress_allowed) {
        return axum::Json(response.deny(refused).into_review());
    }
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

/// Why a created or updated ModelDeployment breaks the operator's policy, if it does: the
/// same words the reconciler would put in its PolicyViolation condition. A spec that does
/// not even have the expected shape is left to the schema.
fn policy_refusal(request: &AdmissionRequest<DynamicObject>, egress_allowed: &EgressRanges) -> Option<String> {
    if request.kind.kind != "ModelDeployment" || !matches!(request.operation, Operation::Create | Operation::Update) {
        return None;
    }
    let cidrs = request.object.as_ref()?.data.pointer("/spec/access/egress/allowedCidrs")?;
    let cidrs: Vec<String> = serde_json::from_value(cidrs.clone()).ok()?;
    egress_allowed.check(&cidrs).err().map(|e| format!("Taimatsu's egress policy refuses this ModelDeployment: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(operation: &str, cidrs: serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "operation": operation, "name": "d", "namespace": "ns",
                "kind": { "group": "taimatsu.dev", "version": "v1alpha1", "kind": "ModelDeployment" },
                "resource": { "group": "taimatsu.dev", "version": "v1alpha1", "resource": "modeldeployments" },
                "userInfo": { "username": "alice" },
                "object": { "apiVersion": "taimatsu.dev/v1alpha1", "kind": "ModelDeployment",
                            "metadata": { "name": "d", "namespace": "ns" },
                            "spec": { "access": { "egress": { "allowedCidrs": cidrs } } } }
            }
        }))
        .expect("review");
        review.try_into().expect("request")
    }

    #[test]
    fn ranges_outside_the_operator_ones_are_refused_naming_the_field() {
        let allowed = EgressRanges::parse_list("10.0.0.0/8").unwrap();
        assert_eq!(policy_refusal(&request("CREATE", json!(["10.20.0.0/16"])), &allowed), None);
        let refused = policy_refusal(&request("UPDATE", json!(["10.20.0.0/16", "8.8.8.8/32"])), &allowed);
        assert_eq!(
            refused.as_deref(),
            Some(
                "Taimatsu's egress policy refuses this ModelDeployment: spec.access.egress.allowedCidrs[1]: 8.8.8.8/32 is not inside the ranges this cluster allows (10.0.0.0/8): use a range inside them, or ask the platform team to allow it (operator flag --egress-allowed-cidrs)"
            )
        );
        // A deletion is never refused for its spec.
        assert_eq!(policy_refusal(&request("DELETE", json!(["8.8.8.8/32"])), &allowed), None);
    }
}
