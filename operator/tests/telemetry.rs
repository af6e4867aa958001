//! OpenTelemetry traces from the operator, configured only by the standard OTEL_* variables:
//! every reconcile is a span, exported over OTLP/HTTP to a real receiver.
//! Its own test binary, so its operator is the only one on this control plane.

mod common;

use std::time::Duration;

use serde_json::json;
use taimatsu_tests::ControlPlane;
use taimatsu_tests::control_plane::free_port;
use taimatsu_tests::otlp::OtlpReceiver;
use taimatsu_tests::with_namespace;

use common::*;

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn each_reconcile_is_an_exported_trace_span() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    prepare(&client).await;
    let receiver = OtlpReceiver::start();
    let mut cmd = operator_command(cp, "traced", "telemetry-test", free_port().unwrap());
    cmd.envs(receiver.env()).env("OTEL_SERVICE_NAME", "taimatsu-operator-under-test");
    let (_child, _log) = cp.start_process("operator-traced", cmd).unwrap();

    let receiver_in = receiver.clone();
    with_namespace("telemetry", move |client, ns| async move {
        create_model(&client, &ns, "qwen", "7.6B").await;
        apply_deployment(
            &client,
            &ns,
            "traced-chat",
            "qwen",
            "awq",
            json!({ "acceleratorProfileRef": { "name": "l4-24gb" } }),
        )
        .await;
        wait_reason(&client, &ns, "traced-chat", "Ready", "Available").await;
        let spans = tokio::task::spawn_blocking(move || {
            receiver_in.wait_for(
                "traces",
                &["reconcile ModelDeployment", "traced-chat", "taimatsu-operator-under-test"],
                Duration::from_secs(30),
            )
        })
        .await
        .unwrap();
        assert!(spans.contains(&ns), "the span names the namespace: {spans}");
    })
    .await;
}
