use k8s_openapi::api::core::v1::Node;
use kube::Api;
use taimatsu_tests::ControlPlane;
use taimatsu_tests::fleet::FLEET;

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn fake_gpu_nodes_report_their_accelerators() {
    let client = ControlPlane::shared().await.client().await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    for node in &FLEET {
        let status = nodes.get(node.name).await.unwrap().status.unwrap();
        let allocatable = status.allocatable.unwrap();
        for (resource, count) in node.accelerators {
            assert_eq!(
                allocatable.get(*resource).map(|q| q.0.clone()),
                Some(count.to_string()),
                "{} {resource}",
                node.name
            );
        }
        if node.accelerators.is_empty() {
            assert!(!allocatable.keys().any(|k| k.starts_with("nvidia.com/")), "{} is CPU-only", node.name);
        }
    }
}
