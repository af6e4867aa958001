#!/usr/bin/env python3
"""The in-process peer of inference-worker/cpu-engine/examples/decode_speed.rs: llama.cpp
through llama-cpp-python's `Llama`, the same GGUF, prompt (through the model's chat
template), greedy decoding, max tokens, context and threads (n_threads = n_threads_batch).

    llama_cpp_python_decode.py --model M.gguf [--threads 2] [--max-tokens 128] [--context-len 1024]

Warm-up of 4 tokens first (as decode_speed does), then one timed stream: time to first
token and decode tok/s = (tokens - 1) / (last token - first token). Prints key=value lines
with the same names as decode_speed.
"""
import argparse
import time

from llama_cpp import Llama, llama_print_system_info

PROMPT = "Write a long story about a dragon who learns to cook."


def run(llm, max_tokens):
    start = time.perf_counter()
    first = last = None
    tokens = 0
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=1, stream=True,
    ):
        if chunk["choices"][0]["delta"].get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            tokens += 1
    end = time.perf_counter()
    return start, first or end, last or end, tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--context-len", type=int, default=1024)
    args = p.parse_args()
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=args.context_len, verbose=False)
    run(llm, 4)
    llm.reset()  # no prompt-prefix reuse from the warm-up: the timed run prefills in full
    start, first, last, tokens = run(llm, args.max_tokens)
    print(f"system_info={llama_print_system_info().decode().strip()}")
    print(f"threads={args.threads}")
    print(f"single_completion_tokens={tokens}")
    print(f"single_ttft_ms={(first - start) * 1000:.1f}")
    print(f"single_decode_tok_s={(tokens - 1) / (last - first) if last > first else 0:.2f}")


if __name__ == "__main__":
    main()
