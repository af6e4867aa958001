//! Cluster tests: run against a real kube-apiserver, etcd, controller-manager,
//! scheduler and kwok nodes started by the harness (see tests/src/control_plane.rs).
//! The control plane is shared by every test in this binary; each test has its
//! own namespace.

mod addresses;
mod api_validation;
mod crds;
mod examples;
mod fixtures;
mod fleet;
mod helm;
