//! OpenAI response bodies for answers the worker generates itself (the built-in engine).
//! The vLLM backend passes vLLM's own bodies through instead.

use serde_json::{Value, json};

/// Chat or plain completions: the two differ only in object names and where text goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

pub struct Meta<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    /// The model digest, so a client can see what answered.
    pub fingerprint: &'a str,
}

fn id(kind: Kind, meta: &Meta<'_>) -> String {
    match kind {
        Kind::Chat => format!("chatcmpl-{}", meta.id),
        Kind::Completion => format!("cmpl-{}", meta.id),
    }
}

pub fn usage(prompt_tokens: u32, completion_tokens: u32) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// The fields every body and chunk share, around its `choices` (and `usage`, when given).
fn envelope(kind: Kind, meta: &Meta<'_>, object: &str, choices: Value, usage: Option<Value>) -> Value {
    let mut body = json!({
        "id": id(kind, meta),
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": meta.fingerprint,
        "choices": choices,
    });
    if let Some(usage) = usage {
        body["usage"] = usage;
    }
    body
}

fn chunk_object(kind: Kind) -> &'static str {
    if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" }
}

pub fn full(kind: Kind, meta: &Meta<'_>, text: &str, finish_reason: &str, usage: Value) -> Value {
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": null,
            "finish_reason": finish_reason,
        }),
        Kind::Completion => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason }),
    };
    let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
    envelope(kind, meta, object, json!([choice]), Some(usage))
}

/// A streaming chunk. `text: None` with a finish reason is the last content chunk;
/// for chat the first chunk carries the role.
pub fn chunk(kind: Kind, meta: &Meta<'_>, text: Option<&str>, first: bool, finish_reason: Option<&str>) -> Value {
    let choice = match kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if first {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = text {
                delta.insert("content".into(), json!(t));
            }
            json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason })
        }
        Kind::Completion => {
            json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish_reason })
        }
    };
    envelope(kind, meta, chunk_object(kind), json!([choice]), None)
}

/// The final usage chunk of a stream (`stream_options.include_usage`): no choices.
pub fn usage_chunk(kind: Kind, meta: &Meta<'_>, usage: Value) -> Value {
    envelope(kind, meta, chunk_object(kind), json!([]), Some(usage))
}
