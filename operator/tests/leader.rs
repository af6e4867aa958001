//! Two operator replicas: only the Lease holder reconciles; killing it hands over.
//! Its own test binary, so no other operator runs against this control plane.

mod common;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::json;
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::wait::poll_until;
use taimatsu_tests::{ControlPlane, with_namespace};

use common::*;

const LEASE: &str = "leader-test";

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases.get_opt(LEASE).await.ok().flatten()?.spec?.holder_identity
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn only_the_leader_reconciles_and_a_killed_leader_hands_over() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;
    let mut replicas = Vec::new();
    for identity in ["replica-a", "replica-b"] {
        let port = free_port().unwrap();
        let (child, _) = cp.start_process(identity, operator_command(cp, identity, LEASE, port)).unwrap();
        replicas.push((identity, port, child));
    }
    let leader = poll_until("a leader", Duration::from_secs(30), || async { Ok(holder(&client).await) }).await.unwrap();
    let leader_index = replicas.iter().position(|(id, _, _)| *id == leader).expect("holder is one of ours");
    let (leader_port, standby_port) = (replicas[leader_index].1, replicas[1 - leader_index].1);
    let standby = replicas[1 - leader_index].0;

    with_namespace("leader", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_deployment(&client, &ns, "led", "qwen", "awq", json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }))
            .await;
        wait_reason(&client, &ns, "led", "Ready", "Available").await;
        assert!(reconcile_count(leader_port).await > 0, "the leader reconciled");
        assert_eq!(reconcile_count(standby_port).await, 0, "the standby must not reconcile");
    })
    .await;

    // SIGKILL: no graceful release of the Lease; the standby must wait it out.
    replicas[leader_index].2.kill().unwrap();
    let new_leader = poll_until("the standby to take over", Duration::from_secs(30), || async {
        Ok(holder(&client).await.filter(|h| h == standby))
    })
    .await
    .unwrap();
    assert_eq!(new_leader, standby);

    with_namespace("handover", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_deployment(
            &client,
            &ns,
            "after",
            "qwen",
            "awq",
            json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }),
        )
        .await;
        wait_reason(&client, &ns, "after", "Ready", "Available").await;
        assert!(reconcile_count(standby_port).await > 0, "the new leader reconciles");
    })
    .await;

    // One audit chain across the leader change: each replica's file is a segment, the new
    // leader's starting where the killed one's ended, and together they verify.
    let segments: Vec<Vec<u8>> =
        [leader.as_str(), standby].iter().map(|id| std::fs::read(audit_log(cp, id)).unwrap()).collect();
    let first_seq = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(bytes.split(|b| *b == b'\n').next().unwrap()).unwrap()["seq"]
            .as_u64()
    };
    assert_eq!(first_seq(&segments[0]), Some(1));
    assert!(first_seq(&segments[1]) > Some(1), "the new leader continues the chain instead of starting another");
    let merged = taimatsu_core::audit_chain::merge_segments(&[&segments[1], &segments[0]]).expect("no fork, no gap");
    let report = taimatsu_core::audit_chain::verify(&merged.log).expect("one valid chain");
    let writers: std::collections::BTreeSet<String> = merged
        .log
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["record"]["operator"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(writers, [leader.clone(), standby.to_owned()].into_iter().collect());
    assert!(report.records >= 6, "{} records", report.records);
}
