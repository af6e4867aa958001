#!/usr/bin/env bash
# Coverage-guided fuzzing of the worker's request parsing (libFuzzer via cargo-fuzz, nightly).
#   hack/fuzz.sh [seconds=60]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT/inference-worker"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz >&2
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal >&2
cargo +nightly fuzz run request_parsing -- -max_total_time="${1:-60}"
