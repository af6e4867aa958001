//! Test harness for Taimatsu: a real Kubernetes control plane on loopback.
//!
//! [`ControlPlane::shared`] starts etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok (fake GPU nodes) once per test binary, from binaries built
//! by `hack/build-cluster-bins.sh` out of Go modules. Each test then works in its own
//! namespace ([`with_namespace`]). Every process is started with a parent-death
//! signal, so nothing outlives the test binary, even when a test panics or aborts.

pub mod addresses;
pub mod apply;
pub mod bins;
pub mod certs;
pub mod control_plane;
pub mod crds;
pub mod fleet;
pub mod helm;
pub mod hub_mirror;
pub mod leftovers;
pub mod mirror;
pub mod namespace;
pub mod oci_registry;
pub mod otlp;
pub mod pod_runner;
pub mod process;
pub mod rbac;
pub mod sandbox;
pub mod tls;
pub mod wait;

pub use control_plane::ControlPlane;
pub use namespace::with_namespace;

/// The repository root (the harness crate lives in `tests/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
