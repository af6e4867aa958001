#!/usr/bin/env bash
# The built-in CPU engine against llama.cpp, in one run, same GGUF (SmolLM2-135M Q4_1),
# same threads, greedy, same prompt and max tokens.
#
#  A. In-process, one stream: decode_speed (our engine, no HTTP) against llama-cpp-python's
#     `Llama` (benchmarks/llama_cpp_python_decode.py): TTFT and decode tok/s.
#     Target: decode tok/s ≥ llama.cpp's.
#  B. Over HTTP, streaming chat (benchmarks/chat_load.py), 1 client and 8 concurrent
#     clients: the worker (`serve --engine=builtin --parallel=8`) against llama.cpp's own
#     server (`llama-server --parallel 8`). Target: 8-stream aggregate tok/s ≥ llama-server's.
#     Also decode_speed --streams 8 (in-process aggregate).
#
# llama-server is NOT built by this script (it is third-party source): build it by hand
# and pass its path, e.g. LLAMA_SERVER=/work/peers/llama-server benchmarks/cpu-engine.sh
# (benchmarks/worker.md says which commit and cmake flags the published numbers used).
# Without LLAMA_SERVER the HTTP peer is llama-cpp-python's server (python -m
# llama_cpp.server), which serves one request at a time.
#
# Only one server runs at a time (2 cores: running both would measure the contention).
#   THREADS=2 MAX_TOKENS=128 ROUNDS=2 benchmarks/cpu-engine.sh   # prints markdown tables
source "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"
cd "$REPO_ROOT"
THREADS="${THREADS:-2}"
MAX_TOKENS="${MAX_TOKENS:-128}"
ROUNDS="${ROUNDS:-2}"
PARALLEL=8
CTX_PER_SEQ=4096            # the worker's default --context-len, per sequence
py="$CACHE_DIR/venv/bin/python"
model_dir="$CACHE_DIR/models/smollm2"
gguf="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -x "$py" ] || { log "no $py: run hack/python-env.sh"; exit 1; }
[ -f "$gguf" ] || { log "no $gguf"; exit 1; }
# WORKER_BIN / DECODE_SPEED_BIN=path: benchmark those binaries instead of building this tree.
if [ -z "${WORKER_BIN:-}" ]; then cargo build --release --locked -p taimatsu-inference-worker >&2; fi
if [ -z "${DECODE_SPEED_BIN:-}" ]; then cargo build --release --locked -p taimatsu-cpu-engine --example decode_speed >&2; fi
worker_bin="${WORKER_BIN:-$REPO_ROOT/target/release/inference-worker}"
decode_bin="${DECODE_SPEED_BIN:-$REPO_ROOT/target/release/examples/decode_speed}"
work="$CACHE_DIR/bench/cpu-engine"
rm -rf "$work" && mkdir -p "$work"
PORT=18200 METRICS=18210

sha=$(sha256sum "$gguf" | cut -d' ' -f1); size=$(stat -c %s "$gguf"); name=$(basename "$gguf")
digest="sha256:$(printf '%s  %s  %s\n' "$sha" "$size" "$name" | sha256sum | cut -d' ' -f1)"
printf '{"model":"smollm2","source":"pvc:///bench","format":"gguf","digest":"%s","files":[{"path":"%s","size":%s,"sha256":"%s"}]}' \
  "$digest" "$name" "$size" "$sha" > "$work/manifest.json"

server_pid=""
stop_server() { [ -n "$server_pid" ] && { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }; server_pid=""; }
trap stop_server EXIT
wait_for() { for _ in $(seq 1 600); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done; log "not up: $1"; exit 1; }
kv() { sed -n "s/^$2=//p" <<<"$1" | head -1; }
jq_() { "$py" -c "import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(json.dumps(v,separators=(',',':')) if isinstance(v,list) else v)" "$1" "$2"; }

# HTTP load: 1 client x 3 requests, then 8 clients x 2 requests.
load() { # URL MODEL RUN_ID -> two JSON lines
  "$py" benchmarks/chat_load.py --url "$1" --model "$2" --clients 1 --requests 3 --max-tokens "$MAX_TOKENS" --run-id "$3"
  "$py" benchmarks/chat_load.py --url "$1" --model "$2" --clients "$PARALLEL" --requests 2 --max-tokens "$MAX_TOKENS" --run-id "$(($3 + 50))"
}

declare -A R
for round in $(seq 1 "$ROUNDS"); do
  log "round $round: in-process"
  out=$("$decode_bin" --model "$gguf" --threads "$THREADS" --streams "$PARALLEL" --max-tokens "$MAX_TOKENS" --context-len 1024 2>/dev/null)
  echo "$out" > "$work/decode_speed.$round.txt"
  R[ours_ttft]+="$(kv "$out" single_ttft_ms) "; R[ours_dec]+="$(kv "$out" single_decode_tok_s) "
  R[ours_tok]+="$(kv "$out" single_completion_tokens) "; R[ours_agg]+="$(kv "$out" streams_aggregate_tok_s) "
  out=$("$py" benchmarks/llama_cpp_python_decode.py --model "$gguf" --threads "$THREADS" --max-tokens "$MAX_TOKENS" --context-len 1024 2>/dev/null)
  echo "$out" > "$work/llama_cpp_python.$round.txt"
  R[peer_ttft]+="$(kv "$out" single_ttft_ms) "; R[peer_dec]+="$(kv "$out" single_decode_tok_s) "
  R[peer_tok]+="$(kv "$out" single_completion_tokens) "

  log "round $round: worker over HTTP"
  "$worker_bin" serve --engine=builtin --model-dir="$model_dir" --manifest="$work/manifest.json" \
    --served-model-name=smollm2 --listen="127.0.0.1:$PORT" --metrics-listen="127.0.0.1:$METRICS" \
    --threads="$THREADS" --parallel="$PARALLEL" --context-len="$CTX_PER_SEQ" \
    --audit-log="$work/audit.jsonl" --audit-stdout=false --termination-log="$work/termination-log" \
    >"$work/worker.log" 2>&1 & server_pid=$!
  wait_for "http://127.0.0.1:$PORT/readyz"
  mapfile -t w < <(load "http://127.0.0.1:$PORT" smollm2 "$round")
  stop_server
  echo "${w[@]}" > "$work/worker-http.$round.json"
  R[w1]+="$(jq_ "${w[0]}" decode_tok_s_per_stream_median) "; R[w1ttft]+="$(jq_ "${w[0]}" ttft_ms_median) "
  R[w8]+="$(jq_ "${w[1]}" aggregate_tok_s) "; R[w8ttft]+="$(jq_ "${w[1]}" ttft_ms_median) "
  R[wtok]+="$(jq_ "${w[1]}" tokens_per_request) "

  if [ -n "${LLAMA_SERVER:-}" ]; then
    log "round $round: llama-server over HTTP"
    peer_name="llama-server --parallel $PARALLEL"
    "$LLAMA_SERVER" -m "$gguf" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -tb "$THREADS" \
      --parallel "$PARALLEL" -c "$((CTX_PER_SEQ * PARALLEL))" --alias smollm2 --no-webui \
      >"$work/llama-server.log" 2>&1 & server_pid=$!
    wait_for "http://127.0.0.1:$PORT/health"
  else
    log "round $round: llama-cpp-python server over HTTP (LLAMA_SERVER unset)"
    peer_name="llama-cpp-python server (fallback)"
    "$py" -m llama_cpp.server --model "$gguf" --host 127.0.0.1 --port "$PORT" --n_threads "$THREADS" \
      --n_threads_batch "$THREADS" --n_ctx "$CTX_PER_SEQ" --model_alias smollm2 \
      >"$work/llama-cpp-python-server.log" 2>&1 & server_pid=$!
    wait_for "http://127.0.0.1:$PORT/v1/models"
  fi
  mapfile -t p < <(load "http://127.0.0.1:$PORT" smollm2 "$((round + 10))")
  stop_server
  echo "${p[@]}" > "$work/peer-http.$round.json"
  R[p1]+="$(jq_ "${p[0]}" decode_tok_s_per_stream_median) "; R[p1ttft]+="$(jq_ "${p[0]}" ttft_ms_median) "
  R[p8]+="$(jq_ "${p[1]}" aggregate_tok_s) "; R[p8ttft]+="$(jq_ "${p[1]}" ttft_ms_median) "
  R[ptok]+="$(jq_ "${p[1]}" tokens_per_request) "
done

ratio() { # OURS PEER (space-separated per round) -> "r1 / r2"
  "$py" -c "import sys; a=sys.argv[1].split(); b=sys.argv[2].split(); print(' / '.join(f'{float(x)/float(y):.2f}×' for x,y in zip(a,b)))" "$1" "$2"
}
sl() { sed 's/ *$//; s/ / \/ /g' <<<"$1"; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "Machine: $(nproc) cores, $cpu; $(date -u +%Y-%m-%dT%H:%MZ). Model: $name; threads=$THREADS, greedy, max_tokens=$MAX_TOKENS. Rounds: $ROUNDS (values are round 1 / round 2 / …)."
echo
echo "A. In-process, one stream (context 1024)"
echo
echo "| engine | TTFT ms | decode tok/s | completion tokens |"
echo "|---|---|---|---|"
echo "| ours (decode_speed) | $(sl "${R[ours_ttft]}") | $(sl "${R[ours_dec]}") | $(sl "${R[ours_tok]}") |"
echo "| llama-cpp-python Llama | $(sl "${R[peer_ttft]}") | $(sl "${R[peer_dec]}") | $(sl "${R[peer_tok]}") |"
echo "| ratio ours/peer (target decode ≥ 1.00×) | | $(ratio "${R[ours_dec]}" "${R[peer_dec]}") | |"
echo
echo "B. HTTP streaming chat; peer: $peer_name"
echo
echo "| server | 1 client: decode tok/s | 1 client: TTFT ms | $PARALLEL clients: aggregate tok/s | $PARALLEL clients: median TTFT ms | tokens/request |"
echo "|---|---|---|---|---|---|"
echo "| worker --engine=builtin | $(sl "${R[w1]}") | $(sl "${R[w1ttft]}") | $(sl "${R[w8]}") | $(sl "${R[w8ttft]}") | $(sl "${R[wtok]}") |"
echo "| $peer_name | $(sl "${R[p1]}") | $(sl "${R[p1ttft]}") | $(sl "${R[p8]}") | $(sl "${R[p8ttft]}") | $(sl "${R[ptok]}") |"
echo "| ratio worker/peer (target 8-client aggregate ≥ 1.00×) | $(ratio "${R[w1]}" "${R[p1]}") | | $(ratio "${R[w8]}" "${R[p8]}") | | |"
echo
echo "In-process $PARALLEL streams (decode_speed --streams $PARALLEL, aggregate tok/s): $(sl "${R[ours_agg]}")"
