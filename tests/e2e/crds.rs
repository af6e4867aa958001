use taimatsu_tests::{ControlPlane, crds};

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn crds_install_and_become_established() {
    let client = ControlPlane::shared().await.client().await.unwrap();
    let installed = crds::ensure_installed(&client).await.unwrap();
    let mut summary: Vec<(String, String, Vec<String>)> = installed
        .iter()
        .map(|crd| {
            let names = &crd.spec.names;
            (crd.spec.scope.clone(), names.kind.clone(), names.short_names.clone().unwrap_or_default())
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("Cluster".to_owned(), "AcceleratorProfile".to_owned(), vec!["accel".to_owned()]),
            ("Namespaced".to_owned(), "Model".to_owned(), vec!["tmodel".to_owned()]),
            ("Namespaced".to_owned(), "ModelDeployment".to_owned(), vec!["mdep".to_owned()]),
        ]
    );
    for crd in &installed {
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{:?} has no status subresource",
            crd.metadata.name
        );
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["taimatsu".to_owned()][..]));
    }
}

#[tokio::test]
#[ignore = "needs the test control plane (built by hack/build-cluster-bins.sh): hack/test.sh runs it, or cargo test -- --include-ignored"]
async fn kubectl_explain_shows_field_descriptions() {
    let cp = ControlPlane::shared().await;
    let client = cp.client().await.unwrap();
    crds::ensure_installed(&client).await.unwrap();
    // The OpenAPI document is republished shortly after a CRD is Established.
    let text = taimatsu_tests::wait::poll_until(
        "kubectl explain to know ModelDeployment",
        std::time::Duration::from_secs(60),
        || async {
            let out = cp.kubectl(&["explain", "modeldeployment.spec.placement"])?;
            Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
        },
    )
    .await
    .unwrap();
    for needle in [
        "Where replicas run",
        "acceleratorProfileRef",
        "The AcceleratorProfile (cluster-scoped) whose GPUs serve this deployment",
        "tensorParallel",
        "Tensor-parallel degree",
        "GPUs (or MIG slices) per replica",
    ] {
        assert!(text.contains(needle), "kubectl explain output lacks {needle:?}:\n{text}");
    }
    let out = cp.kubectl(&["explain", "model.spec.files.sha256"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("as printed by `sha256sum`"), "{text}");
}
