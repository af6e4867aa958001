#!/usr/bin/env bash
# Gateway overhead of the inference worker (vLLM backend path) against nginx as a reverse
# proxy and LiteLLM's proxy, all in front of the same upstream, in one run.
#
# The upstream is an nginx that answers /v1/chat/completions with a fixed, realistic
# OpenAI body in microseconds, so what is measured is what each proxy adds. The worker
# runs as in production: API key auth, request audit (metadata, to a file) and metrics on.
# Load: wrk from one connection (latency p50/p99) and from 32 (max throughput).
#   benchmarks/worker-gateway.sh            # prints a markdown table
source "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"
cd "$REPO_ROOT"
ensure_apt nginx wrk
DURATION="${DURATION:-10}"
work="$CACHE_DIR/bench/gateway"
rm -rf "$work" && mkdir -p "$work"/{nginx-up,nginx-proxy,model,audit}
venv="$CACHE_DIR/bench-venv"
if [ ! -x "$venv/bin/litellm" ]; then
  log "installing litellm[proxy] into $venv"
  python3 -m venv "$venv"
  PIP_CACHE_DIR="$CACHE_DIR/pip" "$venv/bin/pip" install --quiet 'litellm[proxy]==1.80.0' >&2
fi
# WORKER_BIN=path: benchmark that binary instead of building this tree.
if [ -z "${WORKER_BIN:-}" ]; then cargo build --release --locked -p taimatsu-inference-worker >&2; fi
worker_bin="${WORKER_BIN:-$REPO_ROOT/target/release/inference-worker}"

UP=18100 NGINX=18101 WORKER=18102 WORKER_METRICS=18112 LITELLM=18103
body='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"The capital of France is Paris."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":8,"total_tokens":22}}'
cat > "$work/nginx-up/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx-up/pid; error_log $work/nginx-up/error.log;
events { worker_connections 1024; }
http { access_log off;
  server { listen 127.0.0.1:$UP;
    location = /health { return 200 ''; }
    location / { default_type application/json; return 200 '$body'; } } }
CONF
cat > "$work/nginx-proxy/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $work/nginx-proxy/pid; error_log $work/nginx-proxy/error.log;
events { worker_connections 1024; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NGINX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
nginx -c "$work/nginx-up/nginx.conf" -p "$work/nginx-up" & pids+=($!)
nginx -c "$work/nginx-proxy/nginx.conf" -p "$work/nginx-proxy" & pids+=($!)

# The worker verifies a (tiny) model before serving, as always.
echo "placeholder weights for the gateway benchmark" > "$work/model/weights.bin"
sha=$(sha256sum "$work/model/weights.bin" | cut -d' ' -f1); size=$(stat -c %s "$work/model/weights.bin")
digest="sha256:$(printf '%s  %s  %s\n' "$sha" "$size" weights.bin | sha256sum | cut -d' ' -f1)"
printf '{"model":"bench","source":"pvc:///bench","format":"safetensors","digest":"%s","files":[{"path":"weights.bin","size":%s,"sha256":"%s"}]}' \
  "$digest" "$size" "$sha" > "$work/manifest.json"
key="sk-bench-0123456789abcdef0123"
echo "$key" > "$work/keys"
"$worker_bin" serve --engine=vllm --upstream-url="http://127.0.0.1:$UP" --upstream-metrics-path= \
  --model-dir="$work/model" --manifest="$work/manifest.json" --served-model-name=bench \
  --listen="127.0.0.1:$WORKER" --metrics-listen="127.0.0.1:$WORKER_METRICS" \
  --api-keys="$work/keys" --audit-level=metadata --audit-log="$work/audit/requests.jsonl" --audit-stdout=false \
  --max-concurrent=1024 --max-queued=1024 --termination-log="$work/termination-log" 2>"$work/worker.log" & pids+=($!)

cat > "$work/litellm.yaml" <<CONF
model_list:
  - model_name: bench
    litellm_params: { model: openai/bench, api_base: "http://127.0.0.1:$UP/v1", api_key: unused }
litellm_settings: { telemetry: false }
CONF
LITELLM_LOG=ERROR "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$LITELLM" >"$work/litellm.log" 2>&1 & pids+=($!)

wait_for() { for _ in $(seq 1 600); do curl -fsS -o /dev/null "$@" 2>/dev/null && return 0; sleep 0.2; done; log "not up: $*"; exit 1; }
wait_for "http://127.0.0.1:$UP/health"
wait_for "http://127.0.0.1:$WORKER/readyz"
wait_for "http://127.0.0.1:$LITELLM/health/liveliness"

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
LUA
export BENCH_KEY="$key"

# p50 p99 (ms) from one connection, and requests/s from 32.
measure() { # URL
  local lat thr
  lat=$(wrk -t1 -c1 -d"${DURATION}s" --latency -s "$work/post.lua" "$1")
  thr=$(wrk -t2 -c32 -d"${DURATION}s" -s "$work/post.lua" "$1")
  local p50 p99 rps
  p50=$(awk '$1=="50%"{print $2}' <<<"$lat"); p99=$(awk '$1=="99%"{print $2}' <<<"$lat")
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$thr")
  # Errors do not abort the run (a proxy that sheds load at 32 connections is a result):
  # they are counted into the table and logged.
  local errs
  errs=$(awk '/Non-2xx/{n+=$NF} /Socket errors/{gsub(",","");for(i=1;i<=NF;i++) if($i ~ /^[0-9]+$/) n+=$i} END{print n+0}' <<<"$lat"$'\n'"$thr")
  [ "$errs" = 0 ] || log "errors against $1: $(grep -E "Non-2xx|Socket errors" <<<"$lat"$'\n'"$thr" | tr '\n' ' ')"
  echo "$(to_ms "$p50") $(to_ms "$p99") $rps $errs"
}
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) printf "%.3f", v/1000; else if (v ~ /ms$/) printf "%.3f", v+0; else printf "%.3f", v*1000 }'; }

direct=($(measure "http://127.0.0.1:$UP/v1/chat/completions"))
via_nginx=($(measure "http://127.0.0.1:$NGINX/v1/chat/completions"))
via_worker=($(measure "http://127.0.0.1:$WORKER/v1/chat/completions"))
via_litellm=($(measure "http://127.0.0.1:$LITELLM/v1/chat/completions"))
audited=$(grep -c . "$work/audit/requests.jsonl")
"$worker_bin" audit-verify "$work/audit/requests.jsonl" >&2

added() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "Machine: $(nproc) cores, $cpu; $(date -u +%Y-%m-%d). wrk ${DURATION}s per point; same upstream for all."
echo
echo "| path | p50 ms | p99 ms | added p50 ms | added p99 ms | max req/s (32 conns) | errors |"
echo "|---|---|---|---|---|---|---|"
echo "| direct to upstream | ${direct[0]} | ${direct[1]} | – | – | ${direct[2]} | ${direct[3]} |"
for row in "nginx reverse proxy:via_nginx" "taimatsu worker (auth + audit + metrics):via_worker" "LiteLLM proxy:via_litellm"; do
  name="${row%%:*}"; declare -n r="${row##*:}"
  echo "| $name | ${r[0]} | ${r[1]} | $(added "${r[0]}" "${direct[0]}") | $(added "${r[1]}" "${direct[1]}") | ${r[2]} | ${r[3]} |"
done
w50=$(added "${via_worker[0]}" "${direct[0]}"); n50=$(added "${via_nginx[0]}" "${direct[0]}")
echo
echo "Worker/nginx added-latency ratio (p50): $(awk -v w="$w50" -v n="$n50" 'BEGIN{ if (n > 0) printf "%.2f", w/n; else print "n/a" }') (target ≤ 1.2). Audit records written: $audited (chain verified)."
