# Shared settings for the hack/ scripts. Sourced, never run.
# Everything built or downloaded lands under .cache/ (ignored by git), keyed by version,
# so a second run reuses it.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${TAIMATSU_CACHE_DIR:-$REPO_ROOT/.cache}"
K8S_VERSION="v1.35.4"
ETCD_VERSION="v3.6.16"
KWOK_VERSION="v0.7.0"
CLUSTER_BIN_DIR="$CACHE_DIR/cluster-bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
# The real node's NetworkPolicy implementation (hack/network-policy-bin.sh).
KUBE_ROUTER_VERSION="v2.1.0"
KUBE_ROUTER_BIN="$CACHE_DIR/bin/kube-router-$KUBE_ROUTER_VERSION/kube-router"
# The oci:// tests' registry and client (hack/oci-bins.sh).
DISTRIBUTION_VERSION="v3.1.2"
ORAS_VERSION="v1.3.6"
OCI_BIN_DIR="$CACHE_DIR/bin/oci-distribution-$DISTRIBUTION_VERSION-oras-$ORAS_VERSION"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOMODCACHE="${GOMODCACHE:-$CACHE_DIR/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE_DIR/go/build}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# Never download a Go toolchain: build with the one on the machine.
export GOTOOLCHAIN=local

# Installs Debian packages that are missing, once (apt-get update only when needed).
ensure_apt() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Checks the toolchains the project builds with.
require_toolchains() {
  command -v go >/dev/null || { log "Go >= 1.25 is required to build the control plane (https://go.dev/dl)"; exit 1; }
  command -v cargo >/dev/null || { log "Rust (cargo) is required (https://rustup.rs)"; exit 1; }
}
