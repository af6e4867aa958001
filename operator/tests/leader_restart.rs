//! Two operator replicas ride out an API server restart (a crash, or a control-plane
//! upgrade): neither process exits, the rollout in progress completes, one leader holds
//! the Lease, and the audit chain records every decision once. Its own test binary: it kills
//! the API server of its control plane.

mod common;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, with_namespace};

use common::*;

const LEASE: &str = "restart-test";

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn an_api_server_restart_shorter_than_the_renew_deadline_stops_no_operator() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;
    let mut replicas = Vec::new();
    for identity in ["restart-a", "restart-b"] {
        let mut cmd = operator_command(cp, identity, LEASE, free_port().unwrap());
        // Production timing (client-go's): a 15 s Lease renewed every 5 s, kept through
        // failed renewals for 10 s.
        cmd.args(["--lease-duration-seconds=15", "--lease-renew-deadline-seconds=10"]);
        let (child, _) = cp.start_process(identity, cmd).unwrap();
        replicas.push((identity, child));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async { Ok(leases.get_opt(LEASE).await?.and_then(|l| l.spec?.holder_identity)) };
    let leader = poll_until("a leader", Duration::from_secs(60), holder).await.unwrap();

    with_namespace("apiserver_restart", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_deployment(
            &client,
            &ns,
            "steady",
            "qwen",
            "awq",
            json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }),
        )
        .await;
        // Down for 6 s, a renewal or two failing: shorter than the 10 s renew deadline.
        ControlPlane::shared().await.kill_and_restart("kube-apiserver", Duration::from_secs(6)).await.unwrap();
        wait_reason(&client, &ns, "steady", "Ready", "Available").await;
    })
    .await;

    // The leader's renewals succeed again; neither replica exited.
    poll_until("the leader to renew after the restart", Duration::from_secs(30), || async {
        let lease = leases.get_opt(LEASE).await?.and_then(|l| l.spec);
        Ok(lease.filter(|s| s.holder_identity.as_deref() == Some(leader.as_str())).map(|_| ()))
    })
    .await
    .unwrap();
    for (identity, child) in &mut replicas {
        assert_eq!(child.try_wait().unwrap(), None, "operator {identity} exited (log: logs/{identity}.log)");
    }
    // Every decision once: the chain verifies and no decision id repeats.
    let (_, records) = audit_records(cp, &leader);
    let decisions: Vec<&str> = records.iter().filter_map(|r| r["decision"].as_str()).collect();
    let mut unique = decisions.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), decisions.len(), "a decision was recorded twice: {decisions:?}");
    assert!(records.iter().any(|r| r["event"] == "rollout-succeeded"), "the rollout completed: {records:?}");
}
