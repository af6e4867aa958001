"""Dequantizes a llama GGUF into a bf16 Hugging Face safetensors directory that vLLM loads,
keeping the tokenizer and its chat template (written as chat_template.jinja).

usage: gguf-to-hf.py GGUF_FILE OUT_DIR   (run with hack/vllm-env.sh's python; offline)
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

gguf_path, out_dir = sys.argv[1:3]
src_dir, gguf_file = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype="bfloat16")
# Loaded from GGUF, the model still carries the GGUF "quantizer", and save_pretrained refuses
# to write a quantized model it cannot serialize: the weights are plain bf16 by now.
model.hf_quantizer = None
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out_dir)
tokenizer.save_pretrained(out_dir)
assert tokenizer.chat_template, "the GGUF carried no chat template"
print(out_dir)
