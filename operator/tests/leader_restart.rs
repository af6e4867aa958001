//! Two operator replicas ride out control-plane restarts (a crash, or a control-plane
//! upgrade). Down for less than the renew deadline (the API server, or etcd behind it):
//! neither process exits, the rollout in progress completes, one leader holds the Lease,
//! and the audit chain records every decision once. Down for longer than the Lease: the
//! leader stops at its renew deadline, exactly one leader resumes, and the chain still
//! verifies across both. Each scenario runs on a control plane of its own ([`Scenario`]):
//! it kills components, and Kubernetes' own clients come out of a restart with grown retry
//! delays that the next scenario would otherwise inherit. They take turns ([`SERIAL`]): the
//! Lease timings are tight for two cores.

mod common;

use std::process::Child;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use kube::{Api, Client};
use serde_json::json;
use taimatsu_crds::v1alpha1::ModelDeployment;
use taimatsu_tests::ControlPlane;
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::namespace::create_namespace;
use taimatsu_tests::wait::poll_until;
use tokio::sync::{Mutex, MutexGuard};

use common::*;

/// One scenario at a time: the Lease timings leave no room for two on this machine.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How long the cluster may take to settle after a component is back. Not the operator's
/// recovery (its watches retry within 5 s, see operator/src/watch_backoff.rs) but
/// Kubernetes': kube-controller-manager, the scheduler and kwok retry broken watches with
/// client-go's backoff (up to 30 s, doubled by jitter), and after an etcd restart
/// kube-apiserver's own watch cache was seen to resume 57 s late, with every watcher,
/// kube-controller-manager's included, seeing nothing meanwhile.
const SETTLE: Duration = Duration::from_secs(180);

/// A scenario's turn and its own control plane, stopped when dropped.
struct Scenario {
    cp: ControlPlane,
    client: Client,
    _turn: MutexGuard<'static, ()>,
}

impl Scenario {
    async fn start() -> Scenario {
        let turn = SERIAL.lock().await;
        let cp = ControlPlane::start().await.expect("the scenario's control plane");
        let client = cp.client().await.expect("admin client");
        // On this control plane, not only on the binary's first (which is all
        // `ensure_installed`, in `prepare`, remembers).
        taimatsu_tests::crds::install(&client).await.expect("CRDs");
        Scenario { cp, client, _turn: turn }
    }
}

/// Two operator replicas with the Lease timing of [`Timing`]. Killed when dropped, so no
/// scenario's replicas reconcile in the next one.
struct Replicas {
    lease: &'static str,
    timing: Timing,
    running: Vec<(String, Child)>,
}

/// Lease duration and renew deadline, in seconds.
#[derive(Clone, Copy)]
struct Timing(u64, u64);

/// Production timing (client-go's): a 15 s Lease, kept through failed renewals for 10 s.
const PRODUCTION: Timing = Timing(15, 10);
/// Room for a restart: the outage a "short" pause causes also holds the component's start
/// (an API server takes seconds to answer again on this shared machine) and the time since
/// the last renewal, so the short scenarios give the leader a 20 s deadline for a 6 s pause.
const ROOMY: Timing = Timing(30, 20);

impl Replicas {
    async fn start(cp: &ControlPlane, lease: &'static str, timing: Timing) -> Replicas {
        prepare(&cp.client().await.unwrap()).await;
        let running =
            ["a", "b"].iter().map(|suffix| start_replica(cp, lease, timing, &format!("{lease}-{suffix}"))).collect();
        Replicas { lease, timing, running }
    }

    fn leases(client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), "default")
    }

    async fn spec(&self, client: &Client) -> kube::Result<Option<LeaseSpec>> {
        Ok(Self::leases(client).get_opt(self.lease).await?.and_then(|l| l.spec))
    }

    async fn wait_for_holder(&self, client: &Client, wanted: Option<&str>) -> String {
        poll_until("a Lease holder", Duration::from_secs(60), || async {
            let holder = self.spec(client).await?.and_then(|s| s.holder_identity);
            Ok(holder.filter(|h| wanted.is_none_or(|w| w == h)))
        })
        .await
        .unwrap()
    }

    /// Waits until `leader` renews the Lease again (its renew time moves on).
    async fn wait_for_renewal_by(&self, client: &Client, leader: &str) {
        let before = self.spec(client).await.unwrap().and_then(|s| s.renew_time);
        poll_until("the leader to renew", Duration::from_secs(30), || async {
            let spec = self.spec(client).await?.filter(|s| s.holder_identity.as_deref() == Some(leader));
            Ok(spec.filter(|s| s.renew_time != before).map(|_| ()))
        })
        .await
        .unwrap();
    }

    fn assert_all_running(&mut self) {
        for (identity, child) in &mut self.running {
            assert_eq!(child.try_wait().unwrap(), None, "operator {identity} exited (log: logs/{identity}.log)");
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_replica(
    cp: &ControlPlane,
    lease: &str,
    Timing(duration, deadline): Timing,
    identity: &str,
) -> (String, Child) {
    let mut cmd = operator_command(cp, identity, lease, free_port().unwrap());
    cmd.arg(format!("--lease-duration-seconds={duration}")).arg(format!("--lease-renew-deadline-seconds={deadline}"));
    (identity.to_owned(), cp.start_process(identity, cmd).unwrap().0)
}

/// Starts a rollout of a new ModelDeployment in a namespace of its own, stops `component`
/// for `down` while it is in progress, and waits until the rollout has completed.
async fn rollout_across_restart(scenario: &Scenario, test: &str, component: &str, down: Duration) {
    let client = &scenario.client;
    let ns = create_namespace(client, test).await;
    create_model(client, &ns, "qwen", "7.6B").await;
    apply_deployment(client, &ns, "steady", "qwen", "awq", json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }))
        .await;
    // In progress: the leader has recorded the deployment's first revision and started its
    // rollout (an observed generation alone could be a status that the Model is not in the
    // leader's cache yet).
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    poll_until("the rollout to start", Duration::from_secs(60), || async {
        Ok(mds.get("steady").await?.status.and_then(|s| s.desired_revision))
    })
    .await
    .unwrap();
    scenario.cp.kill_and_restart(component, down).await.unwrap();
    wait_reason_within(client, &ns, "steady", "Ready", "Available", SETTLE).await;
}

/// The records of the scenario's whole chain (each replica's file is a segment of it),
/// after checking that the segments join without a fork or gap and verify.
fn whole_chain(cp: &ControlPlane) -> Vec<serde_json::Value> {
    let segments: Vec<Vec<u8>> = std::fs::read_dir(cp.dir().join("audit"))
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    let segments: Vec<&[u8]> = segments.iter().map(Vec::as_slice).collect();
    let merged = taimatsu_core::audit_chain::merge_segments(&segments).expect("no fork, no gap");
    taimatsu_core::audit_chain::verify(&merged.log).expect("one valid chain");
    sealed_records(&merged.log)
}

/// In the namespaces of test `test`: every decision once, and the rollout's success recorded.
fn assert_decisions_once(records: &[serde_json::Value], test: &str) {
    let prefix = format!("{test}-");
    let ours: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["namespace"].as_str().is_some_and(|ns| ns.starts_with(&prefix))).collect();
    let decisions: Vec<&str> = ours.iter().filter_map(|r| r["decision"].as_str()).collect();
    let mut unique = decisions.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), decisions.len(), "a decision was recorded twice: {decisions:?}");
    assert!(ours.iter().any(|r| r["event"] == "rollout-succeeded"), "the rollout completed: {ours:?}");
}

/// A pause shorter than the renew deadline: nobody exits, the same leader renews again.
async fn ride_out_short_restart(component: &'static str, lease: &'static str) {
    let scenario = Scenario::start().await;
    let (cp, client) = (&scenario.cp, &scenario.client);
    let mut replicas = Replicas::start(cp, lease, ROOMY).await;
    let leader = replicas.wait_for_holder(client, None).await;

    // Down for 6 s, renewals failing meanwhile: shorter than the renew deadline.
    rollout_across_restart(&scenario, lease, component, Duration::from_secs(6)).await;

    replicas.wait_for_renewal_by(client, &leader).await;
    replicas.assert_all_running();
    assert_decisions_once(&whole_chain(cp), lease);
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn an_api_server_restart_shorter_than_the_renew_deadline_stops_no_operator() {
    ride_out_short_restart("kube-apiserver", "apiserver-restart").await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn an_etcd_restart_shorter_than_the_renew_deadline_stops_no_operator() {
    ride_out_short_restart("etcd", "etcd-restart").await;
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn after_an_outage_longer_than_the_lease_exactly_one_leader_resumes() {
    let scenario = Scenario::start().await;
    let (cp, client) = (&scenario.cp, &scenario.client);
    let mut replicas = Replicas::start(cp, "long-outage", PRODUCTION).await;
    let leader = replicas.wait_for_holder(client, None).await;
    let standby = replicas.running.iter().map(|(id, _)| id.clone()).find(|id| *id != leader).unwrap();

    // Down for 20 s: past the leader's 10 s renew deadline and its 15 s Lease.
    rollout_across_restart(&scenario, "long-outage", "kube-apiserver", Duration::from_secs(20)).await;

    // The leader stopped at its renew deadline (it could not know whether the Lease was
    // still its own); the standby, which never led, took the expired Lease over. (The
    // Lease still names the old leader until the standby's next round.)
    let index = replicas.running.iter().position(|(id, _)| *id == leader).unwrap();
    let status = replicas.running[index].1.try_wait().unwrap();
    assert!(status.is_some_and(|s| !s.success()), "the old leader exits non-zero to be restarted: {status:?}");
    replicas.wait_for_holder(client, Some(&standby)).await;
    let ns = create_namespace(client, "after-outage").await;
    create_model(client, &ns, "qwen", "7.6B").await;
    apply_deployment(client, &ns, "next", "qwen", "awq", json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }))
        .await;
    wait_reason_within(client, &ns, "next", "Ready", "Available", SETTLE).await;

    // Restarted (as its pod would be), the old leader campaigns again and stays a standby.
    replicas.running[index] = start_replica(cp, "long-outage", replicas.timing, &leader);
    replicas.wait_for_renewal_by(client, &standby).await;
    replicas.wait_for_renewal_by(client, &standby).await;
    replicas.assert_all_running();

    // One chain across the two leaders: the standby's segment continues the old leader's.
    assert!(
        std::fs::metadata(audit_log(cp, &standby)).is_ok_and(|m| m.len() > 0),
        "the new leader recorded its decisions"
    );
    let records = whole_chain(cp);
    assert_decisions_once(&records, "long-outage");
    assert_decisions_once(&records, "after-outage");
}
