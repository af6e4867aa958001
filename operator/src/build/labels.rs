//! Labels and names shared by every child object.

use std::collections::BTreeMap;

/// Label naming the ModelDeployment a child belongs to.
pub const DEPLOYMENT_LABEL: &str = "taimatsu.dev/model-deployment";
/// Label carrying the revision hash of a worker Deployment and its pods.
pub const REVISION_LABEL: &str = "taimatsu.dev/revision";
/// Port of the OpenAI-compatible API.
pub const API_PORT: i32 = 8000;
/// Port of the worker's Prometheus metrics.
pub const METRICS_PORT: i32 = 9090;

/// Labels on every child of `name`.
pub fn common(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "inference-worker".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "taimatsu-operator".to_owned()),
        (DEPLOYMENT_LABEL.to_owned(), name.to_owned()),
    ])
}

/// Labels selecting the worker pods of `name`, all revisions.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(DEPLOYMENT_LABEL.to_owned(), name.to_owned())])
}

/// Labels selecting the worker pods of one revision.
pub fn revision_selector(name: &str, revision: &str) -> BTreeMap<String, String> {
    let mut labels = selector(name);
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    labels
}

/// Name of the worker Deployment (and manifest ConfigMap) of one revision.
pub fn revision_name(name: &str, revision: &str) -> String {
    format!("{name}-{revision}")
}

/// Name of the ServiceAccount of the worker pods.
pub fn worker_service_account(name: &str) -> String {
    format!("{name}-worker")
}
