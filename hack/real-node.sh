#!/usr/bin/env bash
# A real Kubernetes node for the sandbox and the tests: the kubelet built from Kubernetes'
# Go modules (hack/build-cluster-bins.sh) with containerd, runc and the CNI plugins from
# Debian, running the worker pods the operator renders as real containers, kube-proxy
# (from the same build) for Services' cluster IPs, and kube-router's firewall
# (hack/network-policy-bin.sh), which enforces NetworkPolicies with iptables and ipset. See
# docs/real-node.md for what it is and is not.
#
#   hack/real-node.sh up [KUBECONFIG]  install what is missing, start containerd, import the
#                                      images, start the kubelet against KUBECONFIG (default:
#                                      $KUBECONFIG) and wait until the node is Ready
#   hack/real-node.sh images           (re)build the pause and worker images (and the operator
#                                      image, see below) and import them
#   hack/real-node.sh status
#   hack/real-node.sh down             stop kube-router, the kubelet and containerd, remove
#                                      pods, mounts, firewall rules and network state; `up`
#                                      works again afterwards
#
# Needs root (it runs containerd and a kubelet) and cgroups v1 or v2. Nothing is pulled:
# both images are built here from local files and imported as OCI archives.
#
# Environment:
#   TAIMATSU_NODE_NAME        node name (default sandbox-node)
#   TAIMATSU_IMAGE_WORKER_BIN the inference-worker binary put in the worker image
#                             (default: target/release/inference-worker, built if missing)
#   TAIMATSU_WORKER_IMAGE     the worker image's name; must be what the operator renders
#                             (its --worker-image default, below)
#   TAIMATSU_IMAGE_OPERATOR_BIN  a taimatsu-operator binary: also build the operator image
#                             (registry.local/taimatsu/operator:0.1.0, the Helm chart's
#                             default) from it, so the chart's operator pods run here
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

NODE_NAME="${TAIMATSU_NODE_NAME:-sandbox-node}"
WORKER_IMAGE="${TAIMATSU_WORKER_IMAGE:-registry.local/taimatsu/inference-worker:0.1.0}"
# Our own pause image, named in containerd's sandbox_image: nothing is ever pulled.
PAUSE_IMAGE="registry.local/taimatsu/pause:0.1.0"
OPERATOR_IMAGE="registry.local/taimatsu/operator:0.1.0"
# A one-shot TCP connection probe (images/netprobe/netprobe.c) for the NetworkPolicy tests.
NETPROBE_IMAGE="registry.local/taimatsu/netprobe:0.1.0"
# Pod network: one bridge, pods in 10.85.0.0/24. The gateway address is the host's own on
# the bridge: the kubelet listens there (not on the machine's external interface) and the
# sandbox's model mirror can bind it so that pods reach it.
BRIDGE=taimatsu0
POD_SUBNET=10.85.0.0/24
GATEWAY=10.85.0.1
CNI_BIN_DIR=/usr/lib/cni   # Debian's containernetworking-plugins (containerd defaults to /opt/cni/bin)
KUBELET_PORT=10250
# The test control plane's Service range (tests/src/control_plane.rs): kube-router lets pods
# reach it before kube-proxy's DNAT decides where the traffic goes.
SERVICE_CIDR=10.0.0.0/16

# Kept between runs (the image store, built archives, logs) vs. thrown away by `down`.
# Resolved: the unmounting in `down` compares with /proc/mounts, which has real paths.
STATE="$(realpath -m "$CACHE_DIR/real-node")"
CONTAINERD_ROOT="$STATE/containerd"
IMAGES_DIR="$STATE/images"
LOGS="$STATE/logs"
ETC="$STATE/etc"
KUBELET_ROOT="$STATE/kubelet"
IPAM_DIR="$STATE/cni-ipam"
# Runtime state (sockets, runc bundles, pid files): short paths, unix socket names are
# limited to 108 bytes.
RUN=/run/taimatsu-node
SOCK="$RUN/containerd.sock"

ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }
kubectl_() { "$CLUSTER_BIN_DIR/kubectl" --kubeconfig "$(cat "$RUN/kubeconfig.path")" "$@"; }
alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }
die() { log "$*"; exit 1; }

# --- prerequisites ------------------------------------------------------------------------

install_packages() {
  [ "$(id -u)" -eq 0 ] || die "the real node needs root (containerd, runc, the kubelet's mounts and cgroups)"
  # iptables: the bridge CNI plugin calls it; mount/util-linux and iproute2 are used below;
  # ipset: kube-router keeps the pods each policy selects in ip sets.
  ensure_apt containerd runc containernetworking-plugins iptables ipset iproute2 gcc libc6-dev
  [ -x "$CLUSTER_BIN_DIR/kubelet" ] && [ -x "$CLUSTER_BIN_DIR/kube-proxy" ] || hack/build-cluster-bins.sh >/dev/null
  [ -x "$KUBE_ROUTER_BIN" ] || hack/network-policy-bin.sh >/dev/null
}

# --- images -------------------------------------------------------------------------------

# The pause image: our own static PID 1 (images/pause/pause.c), nothing else.
build_pause_image() {
  local root="$IMAGES_DIR/pause-rootfs"
  rm -rf "$root"; mkdir -p "$root"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$root/pause" images/pause/pause.c
  images/build-oci.py --rootfs "$root" --name "$PAUSE_IMAGE" --out "$IMAGES_DIR/pause.tar" \
    --entrypoint /pause --user 65535:65535 >/dev/null
}

# The connection probe: one static binary, like the pause image.
build_netprobe_image() {
  local root="$IMAGES_DIR/netprobe-rootfs"
  rm -rf "$root"; mkdir -p "$root"
  gcc -static -Os -s -Wall -Wextra -Werror -o "$root/netprobe" images/netprobe/netprobe.c
  images/build-oci.py --rootfs "$root" --name "$NETPROBE_IMAGE" --out "$IMAGES_DIR/netprobe.tar" \
    --entrypoint /netprobe --user 65532:65532 >/dev/null
}

# A root filesystem for one dynamically linked binary, like distroless/cc: the binary, the
# shared libraries ldd names plus the loader, CA certificates, /etc/passwd and /etc/group
# with the UID the pods run as (65532), and /tmp. Checked by running `BIN --version` in it
# with chroot, so a missing library fails here rather than in a pod.
binary_rootfs() {
  local bin="$1" root="$2" name; name=$(basename "$bin")
  rm -rf "$root"; mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  cp "$bin" "$root/usr/local/bin/$name"
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" and "/lib64/ld-linux-x86-64.so.2 (0x…)";
  # linux-vdso has no file. cp -L: the file itself, under the name the loader asks for.
  local lib
  for lib in $(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  chroot "$root" "/usr/local/bin/$name" --version >/dev/null ||
    die "the image rootfs $root cannot run $name (missing library?)"
}

# The worker image: the release inference-worker (it is both the `fetch` init container and
# the `serve` container: the operator renders only args, the entrypoint is the binary). The
# fetch step's HTTPS uses the system roots besides --ca-bundle.
build_worker_image() {
  local bin="${TAIMATSU_IMAGE_WORKER_BIN:-$REPO_ROOT/target/release/inference-worker}"
  if [ -n "${TAIMATSU_IMAGE_WORKER_BIN:-}" ]; then
    [ -x "$bin" ] || die "TAIMATSU_IMAGE_WORKER_BIN=$bin is not an executable"
  elif [ ! -x "$bin" ]; then
    log "building the release inference-worker for the worker image"
    cargo build --release --locked -q -p taimatsu-inference-worker --bin inference-worker
  fi
  local root="$IMAGES_DIR/worker-rootfs"
  binary_rootfs "$bin" "$root"
  images/build-oci.py --rootfs "$root" --name "$WORKER_IMAGE" --out "$IMAGES_DIR/worker.tar" \
    --entrypoint /usr/local/bin/inference-worker --user 65532:65532 --expose 8000 --expose 9090 \
    --label org.opencontainers.image.title=taimatsu-inference-worker >/dev/null
}

# The operator image, as images/operator.Dockerfile has it: the binary, and
# /var/lib/taimatsu/audit (the chart mounts its audit volume there).
build_operator_image() {
  local bin="$TAIMATSU_IMAGE_OPERATOR_BIN"
  [ -x "$bin" ] || die "TAIMATSU_IMAGE_OPERATOR_BIN=$bin is not an executable"
  local root="$IMAGES_DIR/operator-rootfs"
  binary_rootfs "$bin" "$root"
  mkdir -p "$root/var/lib/taimatsu/audit"
  images/build-oci.py --rootfs "$root" --name "$OPERATOR_IMAGE" --out "$IMAGES_DIR/operator.tar" \
    --entrypoint /usr/local/bin/taimatsu-operator --user 65532:65532 --expose 8080 \
    --label org.opencontainers.image.title=taimatsu-operator >/dev/null
}

# Imports an archive unless containerd already has exactly that manifest under the name.
import_image() {
  local archive="$1" name="$2" want have
  want=$(tar -xOf "$archive" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
  have=$(ctr_ images ls "name==$name" 2>/dev/null | awk 'NR==2 {print $3}')
  if [ "$want" = "$have" ]; then log "image $name is up to date ($want)"; return; fi
  ctr_ images import "$archive" >/dev/null
  log "imported $name ($want)"
}

images() {
  mkdir -p "$IMAGES_DIR"
  build_pause_image
  build_netprobe_image
  build_worker_image
  import_image "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE"
  import_image "$IMAGES_DIR/netprobe.tar" "$NETPROBE_IMAGE"
  import_image "$IMAGES_DIR/worker.tar" "$WORKER_IMAGE"
  if [ -n "${TAIMATSU_IMAGE_OPERATOR_BIN:-}" ]; then
    build_operator_image
    import_image "$IMAGES_DIR/operator.tar" "$OPERATOR_IMAGE"
  fi
}

# --- configuration ------------------------------------------------------------------------

write_containerd_config() {
  cat >"$ETC/containerd.toml" <<EOF
# Written by hack/real-node.sh. containerd 1.6 (Debian) with its CRI plugin, for one kubelet.
version = 2
root = "$CONTAINERD_ROOT"
state = "$RUN/containerd"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  # Our own pause image (hack/real-node.sh images); the default registry.k8s.io/pause
  # cannot be pulled here.
  sandbox_image = "$PAUSE_IMAGE"
  # These VMs withhold CAP_SYS_RESOURCE even from root, so no process may lower its
  # oom_score_adj; CRI's pod sandboxes ask for -998 and runc's init then dies with
  # "failed to update /proc/self/oom_score_adj: Permission denied". Clamp to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # The kubelet uses the cgroupfs driver (no systemd on these machines).
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$ETC/cni"
EOF
}

# One bridge network. containerd adds the loopback interface itself (with the loopback
# plugin from bin_dir). No masquerading: pods reach the host (the mirror) and each other,
# nothing beyond, which is what an air-gapped sandbox wants.
write_cni_config() {
  mkdir -p "$ETC/cni"
  cat >"$ETC/cni/10-taimatsu.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "taimatsu-node",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": { "type": "host-local", "dataDir": "$IPAM_DIR",
              "ranges": [[{ "subnet": "$POD_SUBNET", "gateway": "$GATEWAY" }]],
              "routes": [{ "dst": "0.0.0.0/0" }] }
  }]
}
EOF
}

write_kubelet_config() {
  cat >"$ETC/kubelet.yaml" <<EOF
# Written by hack/real-node.sh.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines have cgroups v1; Kubernetes 1.35 refuses it unless told (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
# Listen on the bridge address only: reachable from this host and its pods, not outside.
address: $GATEWAY
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The sandbox's API server has no kubelet client certificate; kubectl logs/exec reach the
# kubelet anonymously. Acceptable only because it listens on the host-only bridge.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# Lowering the kubelet's own OOM score needs CAP_SYS_RESOURCE, which these VMs withhold.
oomScoreAdj: 0
podLogsDir: $STATE/pod-logs
maxPods: 20
# A development machine's disk is shared: never evict or GC for disk pressure here.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
}

# kube-proxy in iptables mode, so that a pod reaches a Service's cluster IP: the operator
# pods of the Helm chart reach the API server at the `kubernetes` Service (in-cluster
# config), the API server reaches their webhook Service. It changes nothing it need not:
# no conntrack sysctls (0 = leave as is), no localhost NodePorts (they need route_localnet).
write_kube_proxy_config() {
  cat >"$ETC/kube-proxy.yaml" <<EOF
# Written by hack/real-node.sh.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: $1
hostnameOverride: $NODE_NAME
bindAddress: $GATEWAY
clusterCIDR: $POD_SUBNET
detectLocalMode: ClusterCIDR
iptables:
  localhostNodePorts: false
  masqueradeAll: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
EOF
}

# --- host state the kubelet and the bridge plugin change ------------------------------------

# The kubelet sets kernel tunables (panic on oops, overcommit) and the bridge plugin turns on
# IP forwarding: remember the machine's values so `down` puts them back.
SYSCTLS="vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops net.ipv4.ip_forward"
# Bridged (same-node, pod to pod) traffic passes iptables only with this on: without it
# kube-router could not filter it.
BRIDGE_NF=net.bridge.bridge-nf-call-iptables
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && SYSCTLS="$SYSCTLS $BRIDGE_NF"
save_sysctls() {
  [ -f "$STATE/sysctl.saved" ] && return
  local k; for k in $SYSCTLS; do echo "$k=$(sysctl -n "$k")"; done >"$STATE/sysctl.saved"
}
restore_sysctls() {
  [ -f "$STATE/sysctl.saved" ] || return 0
  sysctl -q -p "$STATE/sysctl.saved" >/dev/null && rm -f "$STATE/sysctl.saved"
}

# The bridge exists before any pod, so the mirror can bind the gateway address and the
# kubelet can listen on it; the bridge plugin adopts it.
ensure_bridge() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr show dev "$BRIDGE" | grep -q "inet $GATEWAY/" || ip addr add "$GATEWAY/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# --- processes ----------------------------------------------------------------------------

# Starts a daemon detached from this shell (it outlives `up`), its pid in $RUN/NAME.pid.
start_daemon() {
  local name="$1"; shift
  # The daemon writes its own pid: $! is setsid's, which differs when setsid has to fork.
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  for _ in $(seq 1 50); do [ -s "$RUN/$name.pid" ] && return; sleep 0.1; done
}

stop_daemon() {
  local name="$1"
  alive "$name" || { rm -f "$RUN/$name.pid"; return 0; }
  local pid; pid=$(cat "$RUN/$name.pid")
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$RUN/$name.pid"
  log "$name stopped"
}

start_containerd() {
  if alive containerd; then return; fi
  rm -f "$RUN/containerd.pid"
  start_daemon containerd containerd --config "$ETC/containerd.toml"
  for _ in $(seq 1 100); do ctr --address "$SOCK" version >/dev/null 2>&1 && return; sleep 0.2; alive containerd || break; done
  tail -20 "$LOGS/containerd.log" >&2
  die "containerd did not start; log: $LOGS/containerd.log"
}

start_kubelet() {
  local kubeconfig="$1"
  if alive kubelet; then log "kubelet already running (pid $(cat "$RUN/kubelet.pid"))"; return; fi
  rm -f "$RUN/kubelet.pid"
  start_daemon kubelet "$CLUSTER_BIN_DIR/kubelet" \
    --config="$ETC/kubelet.yaml" --kubeconfig="$kubeconfig" --root-dir="$KUBELET_ROOT" \
    --hostname-override="$NODE_NAME" --node-ip="$GATEWAY" \
    --node-labels=taimatsu.dev/sandbox=real-node --v=1
}

start_kube_proxy() {
  if alive kube-proxy; then return; fi
  rm -f "$RUN/kube-proxy.pid"
  start_daemon kube-proxy "$CLUSTER_BIN_DIR/kube-proxy" --config="$ETC/kube-proxy.yaml" --v=1
}

# kube-router with only its NetworkPolicy firewall: no routing (the bridge is the pod
# network), no service proxy (kube-proxy is). Its health and metrics endpoints would listen on
# every address (no flag binds them elsewhere), so both are off; `wait_kube_router` watches
# its iptables chains instead.
start_kube_router() {
  local kubeconfig="$1"
  if alive kube-router; then return; fi
  rm -f "$RUN/kube-router.pid"
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || die "the kernel has no bridge netfilter (br_netfilter): NetworkPolicies could not be enforced between pods"
  sysctl -q -w "$BRIDGE_NF=1"
  start_daemon kube-router "$KUBE_ROUTER_BIN" --kubeconfig="$kubeconfig" --hostname-override="$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --health-port=0 --metrics-port=0 --v=1
}

# kube-router hooks its chains into INPUT, FORWARD and OUTPUT once it has synced the
# policies, pods and namespaces it watches.
wait_kube_router() {
  local started=$SECONDS
  while [ $((SECONDS - started)) -lt 60 ]; do
    alive kube-router || { tail -30 "$LOGS/kube-router.log" >&2; die "kube-router exited; log: $LOGS/kube-router.log"; }
    if iptables -t filter -S FORWARD 2>/dev/null | grep -q -- '-j KUBE-ROUTER-FORWARD'; then
      log "kube-router enforces NetworkPolicies (log: $LOGS/kube-router.log)"
      return
    fi
    sleep 1
  done
  tail -30 "$LOGS/kube-router.log" >&2
  die "kube-router did not install its chains after 60s"
}

# kube-router's chains and ip sets, as its own cleanup removes them, without the rest of
# `kube-router --cleanup-config` (which also resets IPVS and routes this node never used).
remove_kube_router_rules() {
  command -v iptables-save >/dev/null || return 0
  local rule chain set
  iptables-save -t filter | sed -n 's/^-A \(INPUT\|FORWARD\|OUTPUT\) \(.*kube-router netpol.*\)$/\1 \2/p' | while read -r rule; do
    eval "iptables -t filter -D $rule" || true
  done
  for chain in $(iptables-save -t filter | sed -n 's/^:\(KUBE-ROUTER-[^ ]*\|KUBE-POD-FW-[^ ]*\|KUBE-NWPLCY-[^ ]*\) .*/\1/p'); do
    iptables -t filter -F "$chain" 2>/dev/null || true
  done
  for chain in $(iptables-save -t filter | sed -n 's/^:\(KUBE-ROUTER-[^ ]*\|KUBE-POD-FW-[^ ]*\|KUBE-NWPLCY-[^ ]*\) .*/\1/p'); do
    iptables -t filter -X "$chain" 2>/dev/null || true
  done
  command -v ipset >/dev/null || return 0
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-SRC-|KUBE-DST-|KUBE-ROUTER|kube-router|TMP-)'); do
    ipset destroy "$set" 2>/dev/null || true
  done
}

# kube-proxy's health endpoint answers once it has synced its rules.
wait_kube_proxy() {
  local started=$SECONDS
  while [ $((SECONDS - started)) -lt 60 ]; do
    alive kube-proxy || { tail -30 "$LOGS/kube-proxy.log" >&2; die "kube-proxy exited; log: $LOGS/kube-proxy.log"; }
    python3 -c 'import sys, urllib.request; urllib.request.urlopen("http://127.0.0.1:10256/healthz", timeout=2)' 2>/dev/null &&
      { log "kube-proxy synced its rules"; return; }
    sleep 1
  done
  tail -30 "$LOGS/kube-proxy.log" >&2
  die "kube-proxy not healthy after 60s"
}

wait_node_ready() {
  local started=$SECONDS
  while [ $((SECONDS - started)) -lt 180 ]; do
    alive kubelet || { tail -30 "$LOGS/kubelet.log" >&2; die "the kubelet exited; log: $LOGS/kubelet.log"; }
    if [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; then
      log "node $NODE_NAME Ready after $((SECONDS - started))s (kubelet log: $LOGS/kubelet.log)"
      return
    fi
    sleep 1
  done
  kubectl_ get node "$NODE_NAME" -o yaml >&2 || true
  tail -30 "$LOGS/kubelet.log" >&2
  die "node $NODE_NAME not Ready after 180s"
}

# --- teardown -----------------------------------------------------------------------------

# Removes every container and pod sandbox containerd runs for the kubelet, with their
# network namespaces. The kubelet is stopped first, so nothing restarts them.
remove_containers() {
  local ids netns
  ids=$(ctr_ containers ls -q 2>/dev/null) || return 0
  [ -n "$ids" ] || return 0
  # The pod sandboxes' network namespaces (/var/run/netns/cni-…), from their specs.
  netns=$(for id in $ids; do ctr_ containers info "$id"; done 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
dec, i = json.JSONDecoder(), 0
while i < len(text):
    while i < len(text) and text[i].isspace(): i += 1
    if i >= len(text): break
    doc, i = dec.raw_decode(text, i)
    for ns in doc.get("Spec", {}).get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network" and ns.get("path"): print(ns["path"])
' | sort -u)
  for id in $ids; do
    ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  sleep 1
  for id in $ids; do
    ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
    ctr_ containers delete "$id" >/dev/null 2>&1 || true
  done
  local ns; for ns in $netns; do umount "$ns" 2>/dev/null || true; rm -f "$ns"; done
  rmdir /var/run/netns 2>/dev/null || true  # containerd made it; only if nothing else uses it
  log "removed $(echo "$ids" | wc -w) containers and sandboxes"
}

# Unmounts what the kubelet mounted (emptyDir, Secret tmpfs) and what containerd left
# (overlay rootfs, shm) under this node's directories, deepest first.
unmount_under() {
  local dir
  for dir in "$@"; do
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount "$m" 2>/dev/null || umount -l "$m"
    done
  done
}

# Empty pod cgroups the kubelet created (kubepods/…), in every v1 hierarchy, deepest first.
remove_pod_cgroups() {
  find /sys/fs/cgroup -mindepth 2 -maxdepth 6 -type d -path '*/kubepods*' 2>/dev/null | sort -r | while read -r d; do
    rmdir "$d" 2>/dev/null || true
  done
}

# The chains the kubelet itself adds (kube-proxy --cleanup leaves them): KUBE-FIREWALL
# (drops packets to 127.0.0.0/8 from elsewhere) and its canary and hint chains, in IPv4
# and IPv6.
remove_kubelet_chains() {
  local cmd table
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    while "$cmd" -t filter -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$cmd" -t filter -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    "$cmd" -t filter -F KUBE-FIREWALL 2>/dev/null && "$cmd" -t filter -X KUBE-FIREWALL 2>/dev/null
    for table in filter nat mangle; do
      "$cmd" -t "$table" -X KUBE-KUBELET-CANARY 2>/dev/null || true
    done
    "$cmd" -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
  done
}

# --- commands -----------------------------------------------------------------------------

up() {
  local kubeconfig="${1:-${KUBECONFIG:-}}"
  [ -n "$kubeconfig" ] && [ -f "$kubeconfig" ] || die "usage: $0 up KUBECONFIG (or set KUBECONFIG): the cluster the node joins"
  kubeconfig=$(realpath "$kubeconfig")
  local started=$SECONDS
  if alive kubelet && [ "$(cat "$RUN/kubeconfig.path")" != "$kubeconfig" ]; then
    die "a real node is already running for another cluster ($(cat "$RUN/kubeconfig.path")): $0 down first"
  fi
  install_packages
  alive kubelet || rm -rf "$STATE/pod-logs"
  mkdir -p "$STATE" "$ETC" "$LOGS" "$RUN" "$IMAGES_DIR" "$IPAM_DIR" "$KUBELET_ROOT" "$STATE/pod-logs"
  echo "$kubeconfig" >"$RUN/kubeconfig.path"
  save_sysctls
  ensure_bridge
  write_containerd_config
  write_cni_config
  write_kubelet_config
  start_containerd
  images
  start_kubelet "$kubeconfig"
  write_kube_proxy_config "$kubeconfig"
  start_kube_proxy
  wait_node_ready
  wait_kube_proxy
  # After the node is registered: kube-router reads its address from the Node object.
  start_kube_router "$kubeconfig"
  wait_kube_router
  log "real node up in $((SECONDS - started))s"
}

down() {
  stop_daemon kube-router
  remove_kube_router_rules
  stop_daemon kube-proxy
  # Its iptables chains (KUBE-*) go with it.
  [ -x "$CLUSTER_BIN_DIR/kube-proxy" ] && "$CLUSTER_BIN_DIR/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop_daemon kubelet
  remove_kubelet_chains
  if alive containerd; then remove_containers; fi
  stop_daemon containerd
  unmount_under "$KUBELET_ROOT" "$RUN" "$CONTAINERD_ROOT"
  # CRI's per-pod files (hostname, resolv.conf, shm); their containers are gone.
  rm -rf "$CONTAINERD_ROOT/io.containerd.grpc.v1.cri/sandboxes" "$CONTAINERD_ROOT/io.containerd.grpc.v1.cri/containers"
  # The pods' logs stay for a post-mortem; the next `up` removes them.
  rm -rf "$KUBELET_ROOT" "$IPAM_DIR" "$RUN"
  remove_pod_cgroups
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  restore_sysctls
  log "real node down (images kept in $CONTAINERD_ROOT)"
}

status() {
  local d; for d in containerd kubelet kube-proxy kube-router; do
    if alive "$d"; then log "$d running (pid $(cat "$RUN/$d.pid"))"; else log "$d not running"; fi
  done
  alive containerd && ctr_ images ls -q | grep registry.local || true
  [ -f "$RUN/kubeconfig.path" ] && kubectl_ get node "$NODE_NAME" -o wide 2>/dev/null || true
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  images)
    install_packages; mkdir -p "$ETC" "$LOGS" "$RUN"
    if ! alive containerd; then
      # Only for the import: stopped again however `images` ends.
      write_containerd_config; start_containerd; trap 'stop_daemon containerd' EXIT
    fi
    images ;;
  status) status ;;
  *) echo "usage: $0 up [KUBECONFIG] | images | status | down" >&2; exit 2 ;;
esac
