#!/usr/bin/env bash
# The Python tools the tests and benchmarks use, in a virtualenv under .cache/venv:
#   openai                    the official client, to test the worker's OpenAI API
#   llama-cpp-python[server]  a real third-party OpenAI-compatible server (built from its
#                             source package on CPU, ~5 min on 2 cores, then cached as a wheel)
#   gguf                      writes tiny random-weight GGUF files for fast engine tests
#   huggingface_hub           the official Hub client, to prove the tests' Hub mirror speaks
#                             the Hub's protocol (snapshot_download with HF_ENDPOINT)
# Prints the venv's python. Idempotent: a stamp records the requirement set.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
venv="$CACHE_DIR/venv"
requirements=(openai==3.54.0 "llama-cpp-python[server]==0.3.36" gguf==0.19.0 huggingface_hub==2.4.0)
stamp="$venv/.taimatsu-requirements"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${requirements[*]}" ]; then
  echo "$venv/bin/python"; exit 0
fi
ensure_apt cmake build-essential
log "creating $venv (${requirements[*]})"
python3 -m venv "$venv"
export PIP_CACHE_DIR="$CACHE_DIR/pip"
# llama.cpp's build must not tune for this CPU: the wheel is cached and reused.
CMAKE_ARGS="-DGGML_NATIVE=OFF" "$venv/bin/pip" install --quiet "${requirements[@]}" >&2
echo "${requirements[*]}" > "$stamp"
echo "$venv/bin/python"
