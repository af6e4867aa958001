"""The official `openai` client through the worker in front of a real third-party
OpenAI-compatible server (llama-cpp-python), as the vLLM backend path is used.

usage: upstream_checks.py BASE_URL MODEL
"""
import sys

import openai

base_url, model = sys.argv[1:3]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
question = [{"role": "user", "content": "What is the capital of France?"}]

r = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=24)
answer = r.choices[0].message.content
assert "Paris" in answer, answer
assert r.usage.completion_tokens > 0, r.usage
print("chat:", repr(answer))

chunks, pieces = 0, []
for chunk in client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=24, stream=True):
    chunks += 1
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
    # The worker asked the upstream for usage; the client did not, so it must not see it.
    assert chunk.usage is None or not chunk.choices, chunk
assert "".join(pieces) == answer, ("".join(pieces), answer)
assert chunks > 3, chunks
print("stream:", chunks, "chunks")

c = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=6)
assert c.choices[0].text.strip(), c
print("completion:", repr(c.choices[0].text))

try:
    client.chat.completions.create(model="other-model", messages=question)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError:
    pass
print("ALL OK")
