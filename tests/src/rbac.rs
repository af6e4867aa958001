//! The operator's RBAC as the chart grants it, bound to the test user `taimatsu-operator`.

use kube::Client;

use crate::apply;

/// Binds the repository's ClusterRole and leader-election Role (in `lease_namespace`) to
/// the `taimatsu-operator` user, so an operator run with that user's kubeconfig has exactly
/// the rights the chart gives it.
pub async fn grant_operator_rbac(client: &Client, lease_namespace: &str) -> anyhow::Result<()> {
    let files = crate::repo_root().join("charts/taimatsu/files");
    for file in ["clusterrole.yaml", "lease-role.yaml"] {
        apply::apply_yaml(client, lease_namespace, &std::fs::read_to_string(files.join(file))?).await?;
    }
    let bindings = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: taimatsu-operator}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: taimatsu-operator}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: taimatsu-operator}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: taimatsu-operator-leader-election}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: taimatsu-operator-leader-election}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: taimatsu-operator}]
"#;
    apply::apply_yaml(client, lease_namespace, bindings).await?;
    Ok(())
}
