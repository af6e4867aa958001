#!/usr/bin/env bash
# The local sandbox: a real Kubernetes control plane (etcd, kube-apiserver,
# controller-manager, scheduler) with fake GPU nodes (kwok), Taimatsu's CRDs and
# the examples applied. Runs in the background until `hack/sandbox.sh down`.
#   hack/sandbox.sh [up]   start it (idempotent) and show what is in it
#   hack/sandbox.sh down   stop it
#   hack/sandbox.sh status
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
STATE="$CACHE_DIR/sandbox"
PIDFILE="$STATE/sandbox.pid"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
kubectl_sandbox() { "$CLUSTER_BIN_DIR/kubectl" --kubeconfig "$(cat "$STATE/kubeconfig.path")" "$@"; }

show() {
  echo
  echo "== kubectl get acceleratorprofiles"
  kubectl_sandbox get acceleratorprofiles
  echo
  echo "== kubectl get nodes (kwok fakes a GPU fleet)"
  kubectl_sandbox get nodes -L nvidia.com/gpu.product
  echo
  echo "== kubectl get models,modeldeployments -n taimatsu-demo"
  kubectl_sandbox get models,modeldeployments -n taimatsu-demo
  echo
  echo "Use it:  export KUBECONFIG=$(cat "$STATE/kubeconfig.path") PATH=$CLUSTER_BIN_DIR:\$PATH"
  echo "Stop it: hack/sandbox.sh down"
}

up() {
  if running; then log "sandbox already running (pid $(cat "$PIDFILE"))"; show; return; fi
  require_toolchains
  ensure_apt ca-certificates git
  hack/build-cluster-bins.sh >/dev/null
  log "building the sandbox launcher"
  cargo build --locked -q -p taimatsu-tests --bin taimatsu-sandbox
  mkdir -p "$STATE"; rm -f "$STATE/ready"
  TAIMATSU_CLUSTER_BIN_DIR="$CLUSTER_BIN_DIR" setsid nohup target/debug/taimatsu-sandbox "$STATE" >"$STATE/sandbox.log" 2>&1 &
  echo $! >"$PIDFILE"
  log "starting the control plane (log: $STATE/sandbox.log)"
  for _ in $(seq 1 600); do
    [ -f "$STATE/ready" ] && break
    running || { tail -30 "$STATE/sandbox.log" >&2; log "sandbox failed to start"; exit 1; }
    sleep 0.5
  done
  [ -f "$STATE/ready" ] || { log "sandbox not ready after 5 minutes; see $STATE/sandbox.log"; exit 1; }
  log "sandbox ready: $(cat "$STATE/ready")"
  show
}

down() {
  if running; then kill "$(cat "$PIDFILE")"; log "sandbox stopped"; else log "sandbox not running"; fi
  rm -f "$PIDFILE" "$STATE/ready"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) if running; then log "running (pid $(cat "$PIDFILE"))"; show; else log "not running"; exit 1; fi ;;
  *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
