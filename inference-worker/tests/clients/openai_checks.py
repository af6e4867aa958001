"""Drives the worker with the official `openai` Python client, as users will.

usage: openai_checks.py BASE_URL MODEL API_KEY (chat|embeddings)
Exits non-zero with the failed assertion on any mismatch.
"""
import math
import sys

import openai

base_url, model, api_key, mode = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

ids = [m.id for m in client.models.list()]
assert ids == [model], ids


def chat_checks():
    question = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=32)
    answer = r.choices[0].message.content
    assert "Paris" in answer, answer
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    print("chat:", repr(answer), r.usage)

    stream = client.chat.completions.create(
        model=model, messages=question, temperature=0, max_tokens=32, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    streamed = "".join(pieces)
    assert streamed == answer, (streamed, answer)  # greedy: same text streamed or not
    assert chunks > 3, chunks
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
    print("chat stream:", chunks, "chunks", usage)

    c = client.completions.create(model=model, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert c.choices[0].text.strip(), c
    assert c.usage.completion_tokens <= 8
    print("completion:", repr(c.choices[0].text))

    texts = [ch.choices[0].text for ch in client.completions.create(
        model=model, prompt="The capital of France is", temperature=0, max_tokens=8, stream=True) if ch.choices]
    assert "".join(texts) == c.choices[0].text, (texts, c.choices[0].text)

    r = client.chat.completions.create(model=model, messages=question, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3, r

    try:
        client.chat.completions.create(model="gpt-4o", messages=question)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.body["code"] == "model_not_found", e.body
    try:
        client.chat.completions.create(model=model, messages=question, temperature=7)
        raise AssertionError("temperature 7 accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "temperature", e.body
    print("errors: ok")


def embedding_checks():
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    r = client.embeddings.create(model=model, input=sentences)  # the client asks for base64 by default
    vectors = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2]
    assert all(len(v) == 384 for v in vectors), [len(v) for v in vectors]
    for v in vectors:
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.2, (cos(vectors[0], vectors[1]), cos(vectors[0], vectors[2]))
    assert r.usage.prompt_tokens > 0
    floats = client.embeddings.create(model=model, input=sentences[0], encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors[0])) < 1e-4
    print("embeddings: ok", round(cos(vectors[0], vectors[1]), 3), round(cos(vectors[0], vectors[2]), 3))


chat_checks() if mode == "chat" else embedding_checks()
print("ALL OK")
