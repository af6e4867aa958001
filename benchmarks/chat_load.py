#!/usr/bin/env python3
"""Streaming chat load against any OpenAI-compatible server, for benchmarks/cpu-engine.sh.

    chat_load.py --url http://127.0.0.1:P --model NAME --clients 8 --requests 2 [--api-key K]

Each of --clients runs --requests streaming /v1/chat/completions one after the other
(greedy, max_tokens, the same prompt with a unique request number in front so no server
can reuse a cached prompt between requests). Per request: time to first content token
(TTFT) and decode tok/s ((tokens - 1) / (last token - first token)). Over the run:
aggregate completion tok/s = all completion tokens / wall time from the first submission
to the last finish. Completion tokens come from the final `usage` (stream_options
include_usage) when the server sends one, else from the number of content chunks.
Prints one JSON object. Standard library only (one thread per client, http.client).
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

PROMPT = "Write a long story about a dragon who learns to cook."


def one(args, n, max_tokens=None):
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"Request {n}. {PROMPT}"}],
        "max_tokens": max_tokens or args.max_tokens,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    url = urllib.parse.urlparse(args.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    start = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage = event["usage"]
        for choice in event.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    end = time.perf_counter()
    conn.close()
    tokens = usage["completion_tokens"] if usage and usage.get("completion_tokens") else chunks
    decode = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else 0.0
    return {
        "start": start,
        "end": end,
        "ttft_ms": ((first or end) - start) * 1000,
        "tokens": tokens,
        "chunks": chunks,
        "usage": bool(usage),
        "decode_tok_s": decode,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--api-key", default="")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=1, help="sequential requests per client")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1, help="untimed requests first")
    p.add_argument("--run-id", type=int, default=1, help="makes prompts unique across runs")
    args = p.parse_args()
    for w in range(args.warmup):
        one(args, 900000 + 10 * args.run_id + w, max_tokens=8)
    results, errors = [], []

    def client(idx):
        try:
            for r in range(args.requests):
                results.append(one(args, 1000 * args.run_id + 100 * idx + r))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"errors: {errors[:3]}")
    total = sum(r["tokens"] for r in results)
    print(json.dumps({
        "clients": args.clients,
        "requests": len(results),
        "wall_s": round(wall, 3),
        "completion_tokens": total,
        "tokens_per_request": sorted({r["tokens"] for r in results}),
        "token_count_from_usage": all(r["usage"] for r in results),
        "aggregate_tok_s": round(total / wall, 2),
        "ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in results), 1),
        "ttft_ms_max": round(max(r["ttft_ms"] for r in results), 1),
        "decode_tok_s_per_stream_median": round(statistics.median(r["decode_tok_s"] for r in results), 2),
    }))


if __name__ == "__main__":
    main()
