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
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export GOMODCACHE="${GOMODCACHE:-$CACHE_DIR/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE_DIR/go/build}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
