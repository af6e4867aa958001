#!/usr/bin/env bash
# Model verification throughput: `inference-worker verify` (threads=1 and the default, all
# cores) against GNU `sha256sum` over the same files, in one run. Target: ≥ 0.95× sha256sum.
#
# The set: the two real models (SmolLM2 GGUF, MiniLM safetensors dir; hard-linked, not
# copied) plus GENERATED_MB (default 1024) of generated files in 4 parts, so the run is
# not dominated by start-up noise. Every tool reads the same files from a warm page cache
# (one untimed pass first; the machine has far more RAM than the set), so this measures
# hashing + I/O-path cost, not the disk. Each tool runs ROUNDS times (default 3); the
# table reports the best and the median wall time.
#   benchmarks/verify.sh            # prints a markdown table
source "$(dirname "${BASH_SOURCE[0]}")/../hack/lib.sh"
cd "$REPO_ROOT"
GENERATED_MB="${GENERATED_MB:-1024}"
ROUNDS="${ROUNDS:-3}"
models="$CACHE_DIR/models"
[ -f "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ] && [ -d "$models/minilm" ] || {
  log "models missing under $models (hack/python-env.sh / the test fixtures fetch them)"; exit 1; }
# WORKER_BIN=path: benchmark that binary instead of building this tree.
if [ -z "${WORKER_BIN:-}" ]; then cargo build --release --locked -p taimatsu-inference-worker >&2; fi
worker_bin="${WORKER_BIN:-$REPO_ROOT/target/release/inference-worker}"

work="$CACHE_DIR/bench/verify"
set_dir="$work/set"
# The generated part is reused between runs when its size matches (writing 1 GB costs more
# than the benchmark).
if [ "$(cat "$work/generated-mb" 2>/dev/null)" != "$GENERATED_MB" ]; then
  rm -rf "$work" && mkdir -p "$set_dir/generated"
  part=$((GENERATED_MB / 4))
  for i in 1 2 3 4; do
    # Incompressible, deterministic bytes (a seekable stream from openssl would also do).
    head -c "$((part * 1024 * 1024))" /dev/urandom > "$set_dir/generated/part-$i.bin"
  done
  echo "$GENERATED_MB" > "$work/generated-mb"
fi
rm -rf "$set_dir/smollm2" "$set_dir/minilm"
mkdir -p "$set_dir/smollm2"
ln -f "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$set_dir/smollm2/" 2>/dev/null \
  || cp "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$set_dir/smollm2/"
cp -al "$models/minilm" "$set_dir/minilm" 2>/dev/null || cp -a "$models/minilm" "$set_dir/minilm"

# Manifest: paths relative to the set, sorted bytewise (as the worker sorts them).
mapfile -t files < <(cd "$set_dir" && find . -type f -printf '%P\n' | LC_ALL=C sort)
total_bytes=0; entries=(); lines=""
for f in "${files[@]}"; do
  sha=$(sha256sum "$set_dir/$f" | cut -d' ' -f1); size=$(stat -c %s "$set_dir/$f")
  total_bytes=$((total_bytes + size))
  entries+=("{\"path\":\"$f\",\"size\":$size,\"sha256\":\"$sha\"}")
  lines+="$sha  $size  $f"$'\n'
done
digest="sha256:$(printf '%s' "$lines" | sha256sum | cut -d' ' -f1)"
(IFS=,; printf '{"model":"bench-verify","source":"pvc:///bench","format":"safetensors","digest":"%s","files":[%s]}' \
  "$digest" "${entries[*]}") > "$work/manifest.json"
"$worker_bin" verify --model-dir="$set_dir" --manifest="$work/manifest.json" >/dev/null 2>&1 \
  || { log "the worker does not verify the set"; "$worker_bin" verify --model-dir="$set_dir" --manifest="$work/manifest.json"; exit 1; }

# Wall seconds of one command (the set's files are in the page cache after the passes above).
timed() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { log "failed: $*"; exit 1; }; e=$(date +%s%N); echo $(((e - s) / 1000)); }
sha_all() { (cd "$set_dir" && sha256sum "${files[@]}"); }
# A second, stronger reference: OpenSSL's SHA-256 (uses the CPU's SHA extensions where
# present; Debian's coreutils sha256sum does not).
ossl_all() { (cd "$set_dir" && openssl dgst -sha256 "${files[@]}"); }
sha_all >/dev/null
declare -A runs
for r in $(seq 1 "$ROUNDS"); do
  # Interleaved, so drift (other load, frequency) hits every tool alike.
  runs[sha256sum]+="$(timed sha_all) "
  command -v openssl >/dev/null && runs[openssl]+="$(timed ossl_all) "
  runs[worker_t1]+="$(timed "$worker_bin" verify --model-dir="$set_dir" --manifest="$work/manifest.json" --threads=1) "
  runs[worker_default]+="$(timed "$worker_bin" verify --model-dir="$set_dir" --manifest="$work/manifest.json") "
done
best() { tr ' ' '\n' <<<"$1" | grep . | sort -n | head -1; }
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mbps() { awk -v b="$total_bytes" -v us="$1" 'BEGIN{printf "%.0f", b/1048576/(us/1e6)}'; }
sha_best=$(best "${runs[sha256sum]}")

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "Machine: $(nproc) cores, $cpu; $(date -u +%Y-%m-%dT%H:%MZ). $(sha256sum --version | head -1)."
echo "Set: ${#files[@]} files, $((total_bytes / 1048576)) MiB (SmolLM2 GGUF + MiniLM dir + ${GENERATED_MB} MiB generated), warm page cache; $ROUNDS interleaved rounds."
echo
echo "| tool | best s | median s | MiB/s (best) | throughput vs sha256sum (best) | all runs (s) |"
echo "|---|---|---|---|---|---|"
for t in sha256sum openssl worker_t1 worker_default; do
  [ -n "${runs[$t]:-}" ] || continue
  b=$(best "${runs[$t]}"); m=$(median "${runs[$t]}")
  all=$(for v in ${runs[$t]}; do awk -v v="$v" 'BEGIN{printf "%.2f ", v/1e6}'; done)
  name=$t; [ "$t" = worker_t1 ] && name="inference-worker verify --threads=1"
  [ "$t" = worker_default ] && name="inference-worker verify (default threads = $(nproc))"
  [ "$t" = openssl ] && name="openssl dgst -sha256 ($(openssl version | cut -d' ' -f1-2); reference only)"
  echo "| $name | $(awk -v v="$b" 'BEGIN{printf "%.3f", v/1e6}') | $(awk -v v="$m" 'BEGIN{printf "%.3f", v/1e6}') | $(mbps "$b") | $(awk -v s="$sha_best" -v w="$b" 'BEGIN{printf "%.2f×", s/w}') | $all|"
done
echo
echo "Target: inference-worker verify ≥ 0.95× sha256sum throughput."
echo "Load during the run (uptime): $(uptime | sed 's/.*load/load/')."
