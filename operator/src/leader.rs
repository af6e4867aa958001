//! Leader election on a coordination.k8s.io Lease, so two replicas are safe.
//!
//! The holder renews the Lease every `renew`; a candidate takes it over once it has
//! not been renewed for `duration`. Updates carry the resourceVersion read, so two
//! candidates racing for an expired Lease cannot both win: one gets a conflict.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
    pub renew: Duration,
}

/// Campaigns for the Lease forever. The returned receiver turns `true` when this
/// process leads; if it ever turns back to `false`, the caller must stop working.
pub fn campaign(client: Client, config: LeaseConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
        loop {
            let leading = match try_acquire(&leases, &config).await {
                Ok(leading) => leading,
                Err(e) => {
                    // Unsure whether the lease is still ours: stop rather than risk two leaders.
                    warn!(error = %e, "lease update failed");
                    false
                }
            };
            if leading != *tx.borrow() {
                info!(identity = %config.identity, leading, "leadership changed");
                let _ = tx.send(leading);
            }
            tokio::time::sleep(config.renew).await;
        }
    });
    rx
}

/// One round: renew our Lease, take over an expired one, or report another holder.
async fn try_acquire(leases: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let Some(lease) = leases.get_opt(&config.name).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": config.name, "namespace": config.namespace },
            "spec": lease_spec(config, now, now, 0),
        }))
        .map_err(kube::Error::SerdeError)?;
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH);
    let lease_for = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let expired = now.duration_since(renewed).unsigned_abs() > lease_for && now > renewed;
    let ours = holder == config.identity;
    if !ours && !expired && !holder.is_empty() {
        return Ok(false);
    }
    let (acquired, transitions) = if ours {
        (spec.acquire_time.as_ref().map(|t| t.0).unwrap_or(now), spec.lease_transitions.unwrap_or(0))
    } else {
        (now, spec.lease_transitions.unwrap_or(0) + 1)
    };
    let mut updated = lease.clone();
    updated.spec =
        Some(serde_json::from_value(lease_spec(config, acquired, now, transitions)).map_err(kube::Error::SerdeError)?);
    match leases.replace(&config.name, &PostParams::default(), &updated).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn lease_spec(config: &LeaseConfig, acquired: Timestamp, renewed: Timestamp, transitions: i32) -> serde_json::Value {
    json!({
        "holderIdentity": config.identity,
        "leaseDurationSeconds": config.duration.as_secs(),
        "acquireTime": MicroTime(acquired),
        "renewTime": MicroTime(renewed),
        "leaseTransitions": transitions,
    })
}
