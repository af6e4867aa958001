#!/usr/bin/env bash
# Builds the real control-plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet, kube-proxy, etcd, kwok) from Go modules through the Go module
# proxy. No release downloads: the wrapper modules under tests/cluster/ pin versions
# and go.sum pins content. Idempotent: a binary already in the cache is not rebuilt.
# Prints the bin directory on stdout.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || { log "Go is required (https://go.dev); it is preinstalled on the CI machines"; exit 1; }
mkdir -p "$CLUSTER_BIN_DIR"

have_all() { for b in "$@"; do [ -x "$CLUSTER_BIN_DIR/$b" ] || return 1; done; }

if ! have_all etcd; then
  log "building etcd $ETCD_VERSION (first run only)"
  (cd "$REPO_ROOT/tests/cluster/etcd" && CGO_ENABLED=0 go build -trimpath -o "$CLUSTER_BIN_DIR/etcd" go.etcd.io/etcd/server/v3)
fi

if ! have_all kwok; then
  log "building kwok $KWOK_VERSION (first run only)"
  (cd "$REPO_ROOT/tests/cluster/kwok" && CGO_ENABLED=0 go build -trimpath -o "$CLUSTER_BIN_DIR/kwok" sigs.k8s.io/kwok/cmd/kwok)
fi

K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
if ! have_all "${K8S_BINS[@]}"; then
  log "building Kubernetes $K8S_VERSION ${K8S_BINS[*]} (first run only; ~20 min on 2 cores)"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  pkgs=(); for b in "${K8S_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  (cd "$REPO_ROOT/tests/cluster/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$CLUSTER_BIN_DIR/" "${pkgs[@]}")
fi

# kube-proxy: only the real node (hack/real-node.sh) runs it, so Services' cluster IPs (the
# API server's own, for the operator pods the Helm chart installs) work for its pods. Built
# on its own so that adding it did not invalidate the binaries cached above.
if ! have_all kube-proxy; then
  log "building Kubernetes $K8S_VERSION kube-proxy (first run only)"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  (cd "$REPO_ROOT/tests/cluster/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$CLUSTER_BIN_DIR/" k8s.io/kubernetes/cmd/kube-proxy)
fi

echo "$CLUSTER_BIN_DIR"
