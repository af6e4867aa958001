//! Requests answered by the built-in CPU engine (`backend::builtin`): chat and
//! completions from a GGUF model, embeddings from a BERT-style model. Requests are
//! validated here, the engine's output becomes OpenAI bodies or SSE chunks, and the
//! request's scope records usage and text for the metrics and the audit.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use taimatsu_cpu_engine::{ChatMessage, EngineError, FinishReason, Generation, GenerationEvent, TextEngine};

use super::scope::RequestScope;
use super::state::AppState;
use crate::api::response::{self, Kind, Meta};
use crate::api::types::{self, CompletionRequest, EmbeddingInput, EmbeddingRequest, Prompt};
use crate::api::{ApiError, parse::json_body, sse, validate};
use crate::backend::builtin::Builtin;

const MAX_EMBEDDING_INPUTS: usize = 256;

fn finish_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn engine_error(err: EngineError) -> ApiError {
    match err {
        EngineError::PromptTooLong { .. } => ApiError::invalid("messages", err.to_string()),
        EngineError::Template(_) => ApiError::invalid("messages", err.to_string()),
        EngineError::InvalidRequest(_) => ApiError::malformed(err.to_string()),
        EngineError::Inference(_) => ApiError::internal(err.to_string()),
        other => ApiError::unavailable(format!("The engine cannot take the request: {other}")),
    }
}

fn text_engine(builtin: &Builtin) -> Result<&Arc<TextEngine>, ApiError> {
    builtin
        .text()
        .ok_or_else(|| ApiError::invalid("model", "This deployment serves an embedding model: use /v1/embeddings."))
}

pub async fn chat(builtin: &Builtin, mut scope: RequestScope, body: Bytes) -> Response {
    let state = scope.state().clone();
    let prepared = (|| {
        let (messages, generation) = validate::chat(&body, &state.served_model, &state.limits)?;
        let engine = text_engine(builtin)?.clone();
        let audit_text = types::audit_text(&messages);
        let messages: Vec<ChatMessage> = messages
            .into_iter()
            .map(|m| ChatMessage { role: m.role, content: m.content.map(|c| c.text()).unwrap_or_default() })
            .collect();
        let prompt = engine.apply_chat_template(&messages).map_err(engine_error)?;
        Ok::<_, ApiError>((engine, audit_text, prompt, generation))
    })();
    let (engine, audit_text, prompt, generation) = match prepared {
        Ok(p) => p,
        Err(e) => return scope.fail(e),
    };
    scope.set_prompt(&audit_text);
    run(scope, &state, &engine, Kind::Chat, prompt, generation).await
}

pub async fn completions(builtin: &Builtin, mut scope: RequestScope, body: Bytes) -> Response {
    let state = scope.state().clone();
    let prepared = (|| {
        let req: CompletionRequest = json_body(&body)?;
        validate::model(&req.model, &state.served_model)?;
        let prompt = match req.prompt {
            Prompt::One(p) => p,
            Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
            Prompt::Many(v) => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("`prompt` has {} prompts: send one per request", v.len()),
                ));
            }
        };
        let generation = validate::sampling(json_body(&body)?, &state.limits)?;
        Ok::<_, ApiError>((text_engine(builtin)?.clone(), prompt, generation))
    })();
    let (engine, prompt, generation) = match prepared {
        Ok(p) => p,
        Err(e) => return scope.fail(e),
    };
    scope.set_prompt(&prompt);
    run(scope, &state, &engine, Kind::Completion, prompt, generation).await
}

async fn run(
    mut scope: RequestScope,
    state: &Arc<AppState>,
    engine: &TextEngine,
    kind: Kind,
    prompt: String,
    g: validate::Generation,
) -> Response {
    match state.admission.admit().await {
        Ok(permit) => scope.hold(permit),
        Err(e) => return scope.fail(e),
    }
    let request = taimatsu_cpu_engine::GenerateRequest {
        prompt,
        max_tokens: g.max_tokens,
        temperature: g.temperature,
        top_p: g.top_p,
        seed: g.seed,
        stop: g.stop,
    };
    let generation = match engine.generate(request) {
        Ok(generation) => generation,
        Err(e) => return scope.fail(engine_error(e)),
    };
    if g.stream { stream(scope, generation, kind, g.include_usage) } else { collect(scope, generation, kind).await }
}

/// Non-streaming: gathers the whole answer within the request timeout.
async fn collect(mut scope: RequestScope, generation: Generation, kind: Kind) -> Response {
    let state = scope.state().clone();
    let Generation { prompt_tokens, mut events } = generation;
    let mut text = String::new();
    let outcome = tokio::time::timeout(state.request_timeout, async {
        while let Some(event) = events.recv().await {
            match event {
                GenerationEvent::Text(t) => text.push_str(&t),
                GenerationEvent::Finished { reason, completion_tokens } => return Ok((reason, completion_tokens)),
                GenerationEvent::Failed(e) => return Err(e),
            }
        }
        Err("the engine stopped before finishing".to_owned())
    })
    .await;
    // Dropping the receiver here cancels a generation cut short by the timeout.
    drop(events);
    let (reason, completion_tokens) = match outcome {
        Err(_) => return scope.fail(ApiError::timeout(state.request_timeout.as_secs())),
        Ok(Err(e)) => return scope.fail(ApiError::internal(format!("Generation failed: {e}"))),
        Ok(Ok(done)) => done,
    };
    scope.push_response(&text);
    scope.set_usage(prompt_tokens, completion_tokens);
    scope.set_finish_reason(finish_str(reason));
    let meta = Meta {
        id: scope.request_id(),
        created: state.now_unix(),
        model: &state.served_model,
        fingerprint: &state.model_digest,
    };
    let body =
        response::full(kind, &meta, &text, finish_str(reason), response::usage(prompt_tokens, completion_tokens));
    match scope.complete(200).await {
        Ok(()) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Streaming: one SSE chunk per piece of text. If the client disconnects, axum drops this
/// stream, which drops the engine's receiver and cancels the generation.
fn stream(scope: RequestScope, generation: Generation, kind: Kind, include_usage: bool) -> Response {
    let body = async_stream::stream! {
        let mut scope = scope;
        let state = scope.state().clone();
        let request_id = scope.request_id().to_owned();
        let meta = Meta { id: &request_id, created: state.now_unix(), model: &state.served_model, fingerprint: &state.model_digest };
        let Generation { prompt_tokens, mut events } = generation;
        let deadline = tokio::time::Instant::now() + state.request_timeout;
        if kind == Kind::Chat {
            yield Ok(sse::event(&response::chunk(kind, &meta, Some(""), true, None)));
        }
        loop {
            let event = match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => GenerationEvent::Failed("the engine stopped before finishing".into()),
                Err(_) => {
                    let e = ApiError::timeout(state.request_timeout.as_secs());
                    scope.set_status(e.status.as_u16());
                    yield Ok(sse::event(&e.body()));
                    break;
                }
            };
            match event {
                GenerationEvent::Text(t) => {
                    scope.push_response(&t);
                    yield Ok(sse::event(&response::chunk(kind, &meta, Some(&t), false, None)));
                }
                GenerationEvent::Finished { reason, completion_tokens } => {
                    scope.set_usage(prompt_tokens, completion_tokens);
                    scope.set_finish_reason(finish_str(reason));
                    yield Ok(sse::event(&response::chunk(kind, &meta, None, false, Some(finish_str(reason)))));
                    if include_usage {
                        let usage = response::usage(prompt_tokens, completion_tokens);
                        yield Ok(sse::event(&response::usage_chunk(kind, &meta, usage)));
                    }
                    match scope.complete(200).await {
                        Ok(()) => yield Ok(sse::done()),
                        Err(e) => yield Ok(sse::event(&e.body())),
                    }
                    return;
                }
                GenerationEvent::Failed(e) => {
                    let e = ApiError::internal(format!("Generation failed: {e}"));
                    scope.set_status(e.status.as_u16());
                    yield Ok(sse::event(&e.body()));
                    break;
                }
            }
        }
    };
    sse::response(body)
}

pub async fn embeddings(builtin: &Builtin, mut scope: RequestScope, body: Bytes) -> Response {
    let state = scope.state().clone();
    let prepared = (|| {
        let req: EmbeddingRequest = json_body(&body)?;
        validate::model(&req.model, &state.served_model)?;
        let engine = builtin.embeddings().cloned().ok_or_else(|| {
            ApiError::invalid("model", "This deployment serves a text-generation model: it has no embeddings.")
        })?;
        let inputs = match req.input {
            EmbeddingInput::One(s) => vec![s],
            EmbeddingInput::Many(v) => v,
        };
        if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!("`input` has {} items: send 1 to {MAX_EMBEDDING_INPUTS}", inputs.len()),
            ));
        }
        if let Some(i) = inputs.iter().position(String::is_empty) {
            return Err(ApiError::invalid(format!("input[{i}]"), "`input` items must not be empty strings"));
        }
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` is {other:?}: use \"float\" or \"base64\""),
                ));
            }
        };
        if let Some(d) = req.dimensions
            && d as usize != engine.dimensions()
        {
            return Err(ApiError::invalid(
                "dimensions",
                format!("`dimensions` is {d} but this model's embeddings have {}: omit it", engine.dimensions()),
            ));
        }
        Ok::<_, ApiError>((engine, inputs, base64))
    })();
    let (engine, inputs, base64) = match prepared {
        Ok(p) => p,
        Err(e) => return scope.fail(e),
    };
    scope.set_prompt(&inputs.join("\n"));
    match state.admission.admit().await {
        Ok(permit) => scope.hold(permit),
        Err(e) => return scope.fail(e),
    }
    let work = tokio::task::spawn_blocking(move || engine.embed(&inputs));
    let embeddings = match tokio::time::timeout(state.request_timeout, work).await {
        Err(_) => return scope.fail(ApiError::timeout(state.request_timeout.as_secs())),
        Ok(Err(join)) => return scope.fail(ApiError::internal(format!("The embedding task failed: {join}"))),
        Ok(Ok(Err(e))) => return scope.fail(engine_error(e)),
        Ok(Ok(Ok(e))) => e,
    };
    let data: Vec<serde_json::Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                serde_json::json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                serde_json::json!(v)
            };
            serde_json::json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    scope.set_usage(embeddings.prompt_tokens, 0);
    let body = serde_json::json!({
        "object": "list",
        "data": data,
        "model": state.served_model,
        "usage": { "prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens },
    });
    match scope.complete(200).await {
        Ok(()) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}
