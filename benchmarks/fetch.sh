#!/usr/bin/env bash
# Fetch throughput: the same real files (SmolLM2 GGUF, the MiniLM directory) fetched from an
# https:// mirror, an hf:// Hugging Face Hub mirror (the tests' mirrors) and an oci://
# registry (the real Distribution registry with token auth, the files pushed with ORAS as
# one layer each: hack/oci-bins.sh), all on loopback over TLS, with the library the worker's
# fetch step runs: every file streamed, hashed and
# verified against the manifest. Each source ROUNDS times (default 3) into an empty
# directory; the table reports the best and the median wall time. On loopback this measures
# the fetch path's own cost (TLS, hashing, writing, for hf:// the revision lookup and the
# LFS redirect, for oci:// the token and manifest requests), not a network.
#   benchmarks/fetch.sh            # prints a markdown table
source "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"
cd "$REPO_ROOT"
models="$(bash hack/models.sh)"
TAIMATSU_OCI_BIN_DIR="$(bash hack/oci-bins.sh)"
export TAIMATSU_OCI_BIN_DIR
TAIMATSU_MODELS_DIR="$models" cargo run --release --locked -q -p taimatsu-model-fetch --example fetch_throughput
