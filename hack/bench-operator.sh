#!/usr/bin/env bash
# Operator benchmark on the local control plane: apply→children latency, time for
# 1000 ModelDeployments to converge, and the operator's peak RSS. Prints a Markdown
# table with the machine it ran on; results are kept in benchmarks/operator.md.
#   hack/bench-operator.sh [COUNT]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
require_toolchains
TAIMATSU_CLUSTER_BIN_DIR="$(hack/build-cluster-bins.sh)"
export TAIMATSU_CLUSTER_BIN_DIR
cargo build --locked --release -q -p taimatsu-operator --bin taimatsu-operator --example converge_bench
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); Kubernetes $K8S_VERSION; $(date -u +%F)"
echo
"$REPO_ROOT/target/release/examples/converge_bench" "$REPO_ROOT/target/release/taimatsu-operator" "${1:-1000}"
