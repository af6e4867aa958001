#!/usr/bin/env bash
# Builds the NetworkPolicy implementation the real node (hack/real-node.sh) enforces with:
# kube-router, from its Go module through the Go module proxy with the machine's Go toolchain
# (GOTOOLCHAIN=local: no toolchain or release download). Only its firewall runs (iptables and
# ipset, see hack/real-node.sh). Idempotent: a binary already in the cache is not rebuilt.
# Prints the binary's path on stdout.
#
# Why kube-router and not SIG Network's sigs.k8s.io/kube-network-policies: the latter sends
# packets to user space through nftables' queue, and these machines' kernels lack
# CONFIG_NFT_QUEUE.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || { log "Go is required (https://go.dev); it is preinstalled on the CI machines"; exit 1; }

if [ ! -x "$KUBE_ROUTER_BIN" ]; then
  log "building kube-router $KUBE_ROUTER_VERSION from Go modules (first run only; about 2 min on 2 cores)"
  mkdir -p "$(dirname "$KUBE_ROUTER_BIN")"
  # Into a temporary directory, then renamed: an interrupted build leaves no binary that a
  # later run would take for a finished one.
  tmp="$(mktemp -d "$(dirname "$KUBE_ROUTER_BIN")/.build.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  mv "$tmp/kube-router" "$KUBE_ROUTER_BIN"
fi

echo "$KUBE_ROUTER_BIN"
