#!/usr/bin/env bash
# Builds the OCI registry and client the oci:// tests use, from their Go modules through the
# Go module proxy with the machine's Go toolchain (GOTOOLCHAIN=local: no toolchain or release
# download):
# - `registry`: the CNCF Distribution registry (what Harbor runs inside), which the tests
#   start on 127.0.0.1 with TLS and token auth (tests/src/oci_registry.rs);
# - `oras`: the ORAS client, which pushes a model's files as an OCI artifact, one layer per
#   file named by its `org.opencontainers.image.title` annotation (what docs/model-sources.md
#   tells users to run).
# Idempotent: binaries already in the cache are not rebuilt. Prints the directory holding
# both on stdout (hack/test.sh exports it as TAIMATSU_OCI_BIN_DIR).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || { log "Go is required (https://go.dev); it is preinstalled on the CI machines"; exit 1; }

build() { # <binary name> <package>@<version> <what, for the log> <how long, for the log>
  local name="$1" package="$2" what="$3"
  [ -x "$OCI_BIN_DIR/$name" ] && return 0
  log "building $what from Go modules (first run only; $4 on 2 cores)"
  mkdir -p "$OCI_BIN_DIR"
  # Into a temporary directory, then renamed: an interrupted build leaves no binary that a
  # later run would take for a finished one.
  local tmp; tmp="$(mktemp -d "$OCI_BIN_DIR/.build.XXXXXX")"
  CGO_ENABLED=0 GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$package" || { rm -rf "$tmp"; return 1; }
  mv "$tmp/$name" "$OCI_BIN_DIR/$name"
  rm -rf "$tmp"
}

build registry "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION" \
  "the Distribution registry $DISTRIBUTION_VERSION" "about 2 min"
build oras "oras.land/oras/cmd/oras@$ORAS_VERSION" "ORAS $ORAS_VERSION" "about 1 min"

echo "$OCI_BIN_DIR"
