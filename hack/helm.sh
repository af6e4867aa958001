#!/usr/bin/env bash
# Builds helm (v3) from its Go module through the Go module proxy with the machine's Go
# toolchain (GOTOOLCHAIN=local: no toolchain download, no release tarball). Idempotent:
# a binary already in the cache is not rebuilt. Prints the binary's path on stdout.
# Used by hack/test.sh for the chart tests (tests/e2e/helm.rs) and by docs/install.md.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Pinned: the newest v3 release whose go.mod accepts Go 1.25 (the project's minimum; v3.21
# and later need Go 1.26), built with client-go v0.35 like the Kubernetes 1.35 the tests run.
HELM_VERSION="${HELM_VERSION:-v3.20.2}"
HELM_DIR="$CACHE_DIR/bin/helm-$HELM_VERSION"
HELM_BIN="$CACHE_DIR/bin/helm"

command -v go >/dev/null || { log "Go is required (https://go.dev); it is preinstalled on the CI machines"; exit 1; }

if [ ! -x "$HELM_DIR/helm" ]; then
  log "building helm $HELM_VERSION from Go modules (first run only; a few minutes on 2 cores)"
  mkdir -p "$HELM_DIR"
  # The ldflags of helm's Makefile. Without the Kubernetes version, `helm template` and
  # `helm lint` assume Kubernetes 1.20; helm's release build derives it from the client-go
  # it is built with (client-go v0.35 → Kubernetes 1.35).
  gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")"
  k8s_minor="$(echo "$client_go" | cut -d. -f2)"
  [ -n "$k8s_minor" ] || { log "could not read the client-go version from $gomod"; exit 1; }
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  CGO_ENABLED=0 GOBIN="$HELM_DIR" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
# A stable path for scripts and docs; points at the pinned version.
ln -sfn "helm-$HELM_VERSION/helm" "$HELM_BIN"

echo "$HELM_BIN"
