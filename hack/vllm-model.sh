#!/usr/bin/env bash
# SmolLM2-135M-Instruct for vLLM: the GGUF hack/models.sh unpacks, dequantized once into a
# bf16 Hugging Face safetensors directory with its chat template (hack/gguf-to-hf.py), at
# .cache/models/smollm2-bf16/. vLLM could load the GGUF itself only through a plugin
# (vllm-gguf-plugin), and the converted directory also exercises the safetensors path the
# GPU deployments use. MiniLM (embeddings) is served by vLLM as hack/models.sh unpacks it.
# Prints the directory. Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
models="$("$REPO_ROOT/hack/models.sh")"
python="$("$REPO_ROOT/hack/vllm-env.sh")"
out="$models/smollm2-bf16"
if [ ! -f "$out/model.safetensors" ] || [ ! -f "$out/chat_template.jinja" ]; then
  log "converting SmolLM2's GGUF into $out (bf16 safetensors)"
  rm -rf "$out.tmp"
  HF_HUB_OFFLINE=1 "$python" "$REPO_ROOT/hack/gguf-to-hf.py" "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$out.tmp" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
fi
echo "$out"
