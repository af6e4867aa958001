#!/usr/bin/env bash
# The local sandbox, the README's first command:
#   hack/sandbox.sh [up]   build what is needed, start everything, run the demo
#   hack/sandbox.sh demo   run the demo again against the running sandbox
#   hack/sandbox.sh status
#   hack/sandbox.sh down   stop it
#
# What runs: a real Kubernetes control plane (etcd, kube-apiserver, controller-manager,
# scheduler from Kubernetes' Go modules) with fake GPU nodes (kwok); Taimatsu's CRDs; the
# operator (leader election, admission webhook, control-plane audit trail); an in-house
# HTTPS model mirror holding SmolLM2 and MiniLM from their PyPI packages; and a node for the
# worker pods the operator renders. The demo then shows the deployed model answering, a
# rollout to a changed revision, a manual rollback, the revision history and `audit verify`.
#
# The node, chosen by TAIMATSU_NODE:
#   real   a real kubelet with containerd, runc and kube-proxy (hack/real-node.sh,
#          docs/real-node.md), and the operator installed with the Helm charts: its two
#          pods and the worker pods run there as containers, on the pod network
#          10.85.0.0/24. Needs root. Fails if the node cannot be brought up.
#   local  (default) the operator as a process, with the chart's RBAC, and the pod runner:
#          worker pods as local processes (a development shortcut for a kubelet: see the
#          README).
#   auto   real, and if that fails, says what failed and falls back to local.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
STATE="$CACHE_DIR/sandbox"
PIDFILE="$STATE/sandbox.pid"
NS=taimatsu-demo
MD=smollm2-chat
NODE_MODE="${TAIMATSU_NODE:-local}"
# Where the real node's sandbox installs the charts.
CHART_NS=taimatsu-system
case "$NODE_MODE" in real|local|auto) ;; *) log "TAIMATSU_NODE must be real, local or auto"; exit 2 ;; esac

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
use_sandbox() {
  export KUBECONFIG="$(cat "$STATE/kubeconfig.path")"
  # kubectl from the same Kubernetes build; kubectl-taimatsu next to it, found as a plugin.
  export PATH="$CLUSTER_BIN_DIR:$REPO_ROOT/target/debug:$PATH"
}
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

# The base URL of a running worker pod of deployment $1. The pod runner publishes its
# local endpoint; on a real node the pod IP is routable.
endpoint_of() {
  local endpoint selector=(-n "$NS" -l "taimatsu.dev/model-deployment=$1")
  endpoint=$(kubectl get pods "${selector[@]}" \
    -o jsonpath='{.items[?(@.status.phase=="Running")].metadata.annotations.sandbox\.taimatsu\.dev/endpoint}' | awk '{print $1}')
  if [ -z "$endpoint" ]; then
    endpoint=$(kubectl get pods "${selector[@]}" -o jsonpath='{.items[?(@.status.phase=="Running")].status.podIP}' | awk '{print $1}')
    [ -z "$endpoint" ] || endpoint="http://$endpoint:8000"
  fi
  [ -n "$endpoint" ] || { log "no running worker pod of $1"; return 1; }
  echo "$endpoint"
}
chat() {
  local endpoint
  endpoint=$(endpoint_of "$MD") || return 1
  printf '\n\033[1m$ curl %s/v1/chat/completions\033[0m  (the worker pod the operator rendered)\n' "$endpoint"
  curl -sS --fail-with-body "$endpoint/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "smollm2-135m-instruct", "max_tokens": 40, "messages": [{"role": "user", "content": "In one sentence, why do hospitals run their own AI models?"}]}' \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("answer:", r["choices"][0]["message"]["content"].strip()); print("usage:", r["usage"])'
}

# The embeddings example (applied on the pod runner only): MiniLM's files, nested
# directory included, fetched from the mirror and verified; a vector from /v1/embeddings.
embed() {
  kubectl get -n "$NS" modeldeployment/minilm-embeddings >/dev/null 2>&1 || return 0
  step kubectl wait -n "$NS" modeldeployment/minilm-embeddings --for=condition=Ready --timeout=600s
  local endpoint
  endpoint=$(endpoint_of minilm-embeddings) || return 1
  printf '\n\033[1m$ curl %s/v1/embeddings\033[0m\n' "$endpoint"
  curl -sS --fail-with-body "$endpoint/v1/embeddings" -H 'Content-Type: application/json' \
    -d '{"model": "all-minilm-l6-v2", "input": "Discharge letter, cardiology ward"}' \
    | python3 -c 'import json,sys; v=json.load(sys.stdin)["data"][0]["embedding"]; print(f"embedding: {len(v)} dimensions, starting {[round(x, 4) for x in v[:4]]}")'
}
# Waits until the operator has seen the latest spec and the revision it asks for serves.
converge() {
  local generation desired
  generation=$(kubectl get -n "$NS" "modeldeployment/$MD" -o jsonpath='{.metadata.generation}')
  kubectl wait -n "$NS" "modeldeployment/$MD" --for=jsonpath='{.status.observedGeneration}'="$generation" --timeout=60s
  desired=$(kubectl get -n "$NS" "modeldeployment/$MD" -o jsonpath='{.status.desiredRevision}')
  log "revision $desired is desired; waiting until it serves"
  kubectl wait -n "$NS" "modeldeployment/$MD" --for=jsonpath='{.status.servingRevision}'="$desired" --timeout=600s
}

demo() {
  use_sandbox
  log "waiting for the quickstart deployment (fetch with sha256 verification, model load)"
  step kubectl wait -n "$NS" "modeldeployment/$MD" --for=condition=Ready --timeout=600s
  step kubectl get models,modeldeployments -n "$NS"
  local simulated
  simulated=$(kubectl get modeldeployments -n "$NS" -l sandbox.taimatsu.dev/simulated=true -o jsonpath='{.items[*].metadata.name}')
  [ -z "$simulated" ] || echo "simulated: ${simulated// /, } (placed by the real scheduler on kwok's simulated GPU nodes; nothing is served, so no rollout analysis)"
  chat
  embed

  log "a rollout: a changed engine setting is a new revision"
  local before len
  if [ -n "$(kubectl get -n "$NS" "modeldeployment/$MD" -o jsonpath='{.spec.rollback.toRevision}')" ]; then
    # An earlier demo left a rollback pin: serve the spec again first.
    step kubectl taimatsu resume "$MD" -n "$NS" --reason "sandbox demo: serve the spec again"
    step converge
  fi
  before=$(kubectl get -n "$NS" "modeldeployment/$MD" -o jsonpath='{.status.servingRevision}')
  len=$(kubectl get -n "$NS" "modeldeployment/$MD" -o jsonpath='{.spec.engine.maxModelLen}')
  [ "$len" = 2048 ] && len=3072 || len=2048
  step kubectl annotate -n "$NS" "modeldeployment/$MD" --overwrite "taimatsu.dev/change-cause=CHG-2: serve a $len-token context"
  step kubectl patch -n "$NS" "modeldeployment/$MD" --type merge -p "{\"spec\":{\"engine\":{\"maxModelLen\":$len}}}"
  step converge
  chat

  log "a manual rollback, declarative (spec.rollback.toRevision) and audited"
  step kubectl taimatsu rollback "$MD" -n "$NS" --to-revision "$before" --reason "INC-7: the $len-token context truncates discharge letters"
  step converge
  chat
  step kubectl taimatsu history "$MD" -n "$NS"
  step kubectl taimatsu status "$MD" -n "$NS"

  log "the control-plane audit trail"
  local audit head_ns=default
  if [ "$(cat "$STATE/node")" = real ]; then
    # The chart's replicas print every record they seal (audit.stdout): the trail is the
    # union of both pods' logs, in sequence order.
    head_ns=$CHART_NS audit="$STATE/audit-from-pod-logs.jsonl"
    for pod in $(kubectl get pods -n "$CHART_NS" -l app.kubernetes.io/instance=taimatsu -o name); do
      kubectl logs -n "$CHART_NS" "$pod"
    done | python3 -c '
import json, sys
records = {}
for line in sys.stdin:
    try: r = json.loads(line)
    except ValueError: continue
    if isinstance(r, dict) and {"seq", "hash", "record"} <= r.keys(): records[r["seq"]] = line
sys.stdout.write("".join(records[k] for k in sorted(records)))' >"$audit"
    log "gathered from the operator pods' logs into $audit"
  else
    audit=$(cat "$STATE/audit.path")
  fi
  python3 - "$audit" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    rec = r["record"]
    who = rec.get("user") or rec.get("requestedBy") or ""
    what = rec.get("kind", "") + " " + (rec.get("name") or rec.get("modelDeployment") or "")
    print(f'{r["seq"]:>4} {rec["event"]:<26} {what:<28} rev={rec.get("revision", ""):<3} who={who:<16} {rec.get("changeCause") or rec.get("reason") or ""}')
PY
  step kubectl taimatsu audit verify --against-cluster -n "$head_ns" "$audit"
  echo
  echo "Use it:  export KUBECONFIG=$KUBECONFIG PATH=$CLUSTER_BIN_DIR:$REPO_ROOT/target/debug:\$PATH"
  echo "Stop it: hack/sandbox.sh down"
}

# Starts the sandbox process and waits for it: local (control plane, mirror, operator, pod
# runner) until the examples are applied; real until the control plane is up
# (cluster-ready), for the node and the charts to follow. $1: real or local.
start_sandbox() {
  # A new control plane starts a new audit chain: nothing of an earlier sandbox is kept.
  rm -rf "$STATE"; mkdir -p "$STATE"
  echo "$1" >"$STATE/node"
  TAIMATSU_NODE="$1" TAIMATSU_CLUSTER_BIN_DIR="$CLUSTER_BIN_DIR" TAIMATSU_MODELS_DIR="$MODELS" \
    TAIMATSU_OPERATOR_BIN="$REPO_ROOT/target/debug/taimatsu-operator" \
    TAIMATSU_WORKER_BIN="$REPO_ROOT/target/debug/inference-worker" \
    setsid nohup target/debug/taimatsu-sandbox "$STATE" >"$STATE/sandbox.log" 2>&1 &
  echo $! >"$PIDFILE"
  if [ "$1" = real ]; then
    log "starting the control plane (log: $STATE/sandbox.log)"
    wait_for_file cluster-ready 300
  else
    log "starting the control plane and the operator (log: $STATE/sandbox.log)"
    wait_for_file ready 300
    log "sandbox ready: $(cat "$STATE/ready")"
  fi
}

# Waits for the sandbox process to write $STATE/$1, for at most $2 seconds.
wait_for_file() {
  local started=$SECONDS
  while [ ! -f "$STATE/$1" ]; do
    running || { tail -30 "$STATE/sandbox.log" >&2; log "sandbox failed (log: $STATE/sandbox.log)"; exit 1; }
    [ $((SECONDS - started)) -lt "$2" ] || { log "no $1 after $2 s; see $STATE/sandbox.log"; exit 1; }
    sleep 0.5
  done
}

# The charts, as a platform team installs them (docs/install.md), into a namespace that
# enforces the restricted Pod Security Standard. helm keeps its state under $STATE.
install_charts() {
  local helm; helm="$(hack/helm.sh)" || return 1
  export HELM_CACHE_HOME="$STATE/helm/cache" HELM_CONFIG_HOME="$STATE/helm/config" HELM_DATA_HOME="$STATE/helm/data"
  kubectl create namespace "$CHART_NS" || return 1
  kubectl label namespace "$CHART_NS" pod-security.kubernetes.io/enforce=restricted || return 1
  step "$helm" install taimatsu-crds charts/taimatsu-crds -n "$CHART_NS" || return 1
  # The real node enforces NetworkPolicies, after kube-proxy translated the `kubernetes`
  # Service to the API server's own address: its port must be in the chart's egress rule.
  local server port ports="443,6443"
  server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')" || return 1
  port="${server##*:}"
  case ",$ports," in *",$port,"*) ;; *) ports="$ports,$port" ;; esac
  # The API server presents its webhook client certificate (the sandbox control plane's
  # AdmissionConfiguration): the chart is given the CA that issued it.
  step "$helm" install taimatsu charts/taimatsu -n "$CHART_NS" --set "networkPolicy.apiServerPorts={$ports}" \
    --set-file "webhook.clientAuth.caBundle=$(dirname "$KUBECONFIG")/pki/webhook-client-ca.crt" || return 1
  step kubectl -n "$CHART_NS" rollout status deployment/taimatsu --timeout=300s || return 1
  step kubectl -n "$CHART_NS" get pods,lease -o wide
}

# The real node's images (the worker image holds the release build of the worker), built
# before the control plane starts so that a machine that cannot run them fails early.
prepare_real_node() {
  if [ -z "${TAIMATSU_IMAGE_WORKER_BIN:-}" ]; then  # (else: that binary goes in the image)
    log "building the release worker for the worker image"
    cargo build --release --locked -q -p taimatsu-inference-worker --bin inference-worker || return 1
  fi
  # A node left by a sandbox that did not stop cleanly belongs to a control plane that is gone.
  hack/real-node.sh down >/dev/null 2>&1 || true
  hack/real-node.sh images
}

# The operator image holds the debug operator built above (what the local mode runs too).
export TAIMATSU_IMAGE_OPERATOR_BIN="$REPO_ROOT/target/debug/taimatsu-operator"

# Says what failed, in the real node's own words, and whether the pod runner takes over.
real_node_failed() {
  log "the real node failed: $1 (node logs: $CACHE_DIR/real-node/logs/)"
  [ "$NODE_MODE" = auto ] || exit 1
  log "falling back to the pod runner (TAIMATSU_NODE=local); TAIMATSU_NODE=real makes this fatal"
}

up() {
  if running; then log "sandbox already running (pid $(cat "$PIDFILE"))"; demo; return; fi
  require_toolchains
  ensure_apt ca-certificates git cmake clang libclang-dev curl
  hack/build-cluster-bins.sh >/dev/null
  MODELS="$(hack/models.sh)"
  log "building the operator, the worker, kubectl-taimatsu and the sandbox launcher"
  cargo build --locked -q -p taimatsu-operator -p taimatsu-inference-worker -p taimatsu-tests --bins
  local node=local
  if [ "$NODE_MODE" != local ]; then
    if prepare_real_node; then node=real; else real_node_failed "building or importing its images (output above)"; fi
  fi
  start_sandbox "$node"
  if [ "$node" = real ]; then
    use_sandbox
    local failed=""
    if ! hack/real-node.sh up "$KUBECONFIG"; then
      failed="the kubelet did not join (output above)"
    elif ! install_charts; then
      failed="the operator from the Helm charts did not become ready (output above)"
    fi
    if [ -n "$failed" ]; then
      real_node_failed "$failed"
      hack/real-node.sh down || true
      down
      start_sandbox local
    else
      log "waiting for the sandbox to apply the examples through the operator's webhook"
      wait_for_file ready 600
      log "sandbox ready: $(cat "$STATE/ready")"
    fi
  fi
  demo
}

down() {
  # The kubelet and containerd outlive the sandbox process: stop them first.
  if [ "$(cat "$STATE/node" 2>/dev/null)" = real ]; then hack/real-node.sh down; fi
  if running; then kill "$(cat "$PIDFILE")"; log "sandbox stopped"; else log "sandbox not running"; fi
  rm -f "$PIDFILE" "$STATE/ready" "$STATE/cluster-ready"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  demo) running || { log "not running: hack/sandbox.sh up"; exit 1; }; demo ;;
  status) if running; then log "running (pid $(cat "$PIDFILE"))"; use_sandbox; kubectl get nodes,models,modeldeployments -A; else log "not running"; exit 1; fi ;;
  *) echo "usage: $0 [up|demo|status|down]" >&2; exit 2 ;;
esac
