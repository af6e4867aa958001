//! Leader election on a coordination.k8s.io Lease, so two replicas are safe.
//!
//! The holder renews the Lease every `renew`; a candidate takes it over once it has
//! not been renewed for `duration`. Updates carry the resourceVersion read, so two
//! candidates racing for an expired Lease cannot both win: one gets a conflict.
//!
//! A failed renewal is not a lost Lease: as client-go's leader election does, the holder
//! keeps leading while renewals fail (an API server restart, a control-plane upgrade) until
//! `renew_deadline` has passed since its last successful renewal, which is below the lease
//! duration, so no other candidate can have taken over by then. Only then, or when another
//! holder is seen, does it stop. (Kept here rather than taken from a crate: kube 5 ships no
//! leader election, and the crates that add one pin other kube versions.)

use std::time::{Duration, Instant};

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
    /// How long the holder keeps leading while renewals fail; below `duration`.
    pub renew_deadline: Duration,
}

/// Campaigns for the Lease forever. The returned receiver turns `true` when this
/// process leads; if it ever turns back to `false`, the caller must stop working.
pub fn campaign(client: Client, config: LeaseConfig) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, &config.namespace);
        // When our last successful round started: the renew time it wrote is no later.
        let mut renewed: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let budget = round_budget(renewed.map(|t| t.elapsed()), config.renew_deadline);
            let round = match tokio::time::timeout(budget, try_acquire(&leases, &config)).await {
                Ok(Ok(leading)) => Some(leading),
                Ok(Err(e)) => {
                    warn!(error = %e, "lease update failed");
                    None
                }
                Err(_) => {
                    warn!(after = ?budget, "lease update timed out");
                    None
                }
            };
            let leading = still_leading(round, renewed.map(|t| t.elapsed()), config.renew_deadline);
            renewed = match round {
                Some(true) => Some(started),
                _ if leading => renewed,
                _ => None,
            };
            if leading != *tx.borrow() {
                info!(identity = %config.identity, leading, "leadership changed");
                let _ = tx.send(leading);
            }
            tokio::time::sleep(pause(round, renewed.map(|t| t.elapsed()), &config)).await;
        }
    });
    rx
}

/// How long one round may take. While we lead, no longer than what is left of the renew
/// deadline: a request hanging on an API server whose etcd is down must not keep us
/// leading past it, when another replica may take the Lease over. A candidate's round
/// gets the whole deadline.
fn round_budget(since_renewal: Option<Duration>, renew_deadline: Duration) -> Duration {
    since_renewal.map_or(renew_deadline, |since| renew_deadline.saturating_sub(since))
}

/// How soon a leader tries again after a failed renewal (client-go's default retry period):
/// several tries fit in the renew deadline, so the first one after the API server is back
/// keeps the lead.
const RETRY: Duration = Duration::from_secs(2);

/// The wait before the next round: the renew period, but after a failed renewal [`RETRY`],
/// and never past what is left of the deadline, so the lead ends on time if the API stays away.
fn pause(round: Option<bool>, since_renewal: Option<Duration>, config: &LeaseConfig) -> Duration {
    match (round, since_renewal) {
        (None, Some(since)) => config.renew.min(RETRY).min(config.renew_deadline.saturating_sub(since)),
        _ => config.renew,
    }
}

/// Whether this replica leads after a round: `round` is its outcome (`None`: it failed or
/// timed out, so the Lease may still be ours), `since_renewal` the time since our last
/// successful renewal while we lead. A failed round keeps the lead until the renew deadline.
fn still_leading(round: Option<bool>, since_renewal: Option<Duration>, renew_deadline: Duration) -> bool {
    match round {
        Some(leading) => leading,
        None => since_renewal.is_some_and(|since| since < renew_deadline),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    #[test]
    fn failed_renewals_keep_the_lead_until_the_renew_deadline() {
        assert!(still_leading(None, Some(Duration::from_secs(4)), DEADLINE), "an API server restart 4 s in");
        assert!(!still_leading(None, Some(Duration::from_secs(10)), DEADLINE), "the deadline passed");
        assert!(!still_leading(None, None, DEADLINE), "a candidate that never led stays a candidate");
    }

    #[test]
    fn a_round_that_answers_decides() {
        assert!(still_leading(Some(true), None, DEADLINE));
        // Another holder (or a lost race, 409): stop at once, whatever the deadline says.
        assert!(!still_leading(Some(false), Some(Duration::from_secs(1)), DEADLINE));
    }

    #[test]
    fn a_leader_never_waits_past_its_renew_deadline() {
        let config = LeaseConfig {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(5),
            renew_deadline: DEADLINE,
        };
        // A round 7 s after the last renewal may take 3 s at most; after a failed one the
        // next comes after the retry period, and no later than the deadline.
        assert_eq!(round_budget(Some(Duration::from_secs(7)), DEADLINE), Duration::from_secs(3));
        assert_eq!(pause(None, Some(Duration::from_secs(5)), &config), RETRY);
        assert_eq!(pause(None, Some(Duration::from_millis(9500)), &config), Duration::from_millis(500));
        assert_eq!(round_budget(Some(Duration::from_secs(12)), DEADLINE), Duration::ZERO);
        // A candidate, or a leader whose round answered, keeps the renew period.
        assert_eq!(round_budget(None, DEADLINE), DEADLINE);
        assert_eq!(pause(None, None, &config), config.renew);
        assert_eq!(pause(Some(true), Some(Duration::ZERO), &config), config.renew);
    }
}
