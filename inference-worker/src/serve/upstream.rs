//! Requests forwarded to the OpenAI-compatible upstream (`backend::upstream`).
//!
//! The worker validates the request exactly as for the built-in engine (same 400/404s),
//! then forwards the client's bytes. Responses pass through unchanged, streamed as they
//! arrive; the worker only reads them to learn token usage and to hash the generated text
//! for the audit. So that usage is always known, a streaming request that did not ask for
//! it is sent with `stream_options.include_usage`, and that usage-only chunk is not passed
//! on to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;

use super::scope::RequestScope;
use crate::api::types::{self, CompletionRequest, EmbeddingInput, EmbeddingRequest, Prompt};
use crate::api::{ApiError, parse::json_body, sse, validate};
use crate::backend::upstream::{Answer, Event, Observed, Route, SendError, Upstream};

/// Validates like the built-in engine does and returns (audit prompt text, stream, include_usage).
fn check(route: Route, body: &[u8], scope: &RequestScope) -> Result<(String, bool, bool), ApiError> {
    let state = scope.state();
    match route {
        Route::Chat => {
            let (messages, g) = validate::chat(body, &state.served_model, &state.limits)?;
            Ok((types::audit_text(&messages), g.stream, g.include_usage))
        }
        Route::Completions => {
            let req: CompletionRequest = json_body(body)?;
            validate::model(&req.model, &state.served_model)?;
            let text = match &req.prompt {
                Prompt::One(p) => p.clone(),
                Prompt::Many(v) => v.join("\n"),
            };
            let g = validate::sampling(json_body(body)?, &state.limits)?;
            Ok((text, g.stream, g.include_usage))
        }
        Route::Embeddings => {
            let req: EmbeddingRequest = json_body(body)?;
            validate::model(&req.model, &state.served_model)?;
            let text = match req.input {
                EmbeddingInput::One(s) => s,
                EmbeddingInput::Many(v) => v.join("\n"),
            };
            Ok((text, false, false))
        }
    }
}

/// Asks the upstream for usage in a stream the client did not ask it for.
fn with_usage(body: &[u8]) -> Result<Bytes, ApiError> {
    let mut value: serde_json::Value = json_body(body)?;
    value["stream_options"] = serde_json::json!({ "include_usage": true });
    serde_json::to_vec(&value).map(Bytes::from).map_err(|e| ApiError::internal(e.to_string()))
}

pub async fn forward(upstream: &Upstream, route: Route, mut scope: RequestScope, body: Bytes) -> Response {
    let (audit_text, stream, client_wants_usage) = match check(route, &body, &scope) {
        Ok(c) => c,
        Err(e) => return scope.fail(e),
    };
    scope.set_prompt(&audit_text);
    let body = if stream && !client_wants_usage {
        match with_usage(&body) {
            Ok(b) => b,
            Err(e) => return scope.fail(e),
        }
    } else {
        body
    };
    let state = scope.state().clone();
    match state.admission.admit().await {
        Ok(permit) => scope.hold(permit),
        Err(e) => return scope.fail(e),
    }
    let answer = match upstream.post(route, body, scope.span(), state.request_timeout).await {
        Ok(a) => a,
        Err(SendError::TimedOut) => return scope.fail(ApiError::timeout(state.request_timeout.as_secs())),
        Err(SendError::Failed(e)) => {
            return scope
                .fail(ApiError::upstream(StatusCode::BAD_GATEWAY, format!("The model server did not answer: {e}")));
        }
    };
    if !answer.is_success() {
        return pass_error(scope, answer).await;
    }
    if stream { relay_stream(scope, answer, client_wants_usage) } else { relay_whole(scope, answer).await }
}

/// An upstream error is the client's answer as it is, status and body.
async fn pass_error(mut scope: RequestScope, answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = answer.body().await.unwrap_or_default();
    scope.set_status(status.as_u16());
    drop(scope);
    let mut out = Response::new(axum::body::Body::from(bytes));
    *out.status_mut() = status;
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out
}

async fn relay_whole(mut scope: RequestScope, answer: Answer) -> Response {
    let bytes = match answer.body().await {
        Ok(b) => b,
        Err(e) => {
            return scope.fail(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                format!("The model server's answer broke off: {e}"),
            ));
        }
    };
    let observed = Observed::read(&bytes);
    for choice in &observed.choices {
        if let Some(t) = choice.text() {
            scope.push_response(t);
        }
    }
    if let Some(reason) = observed.choices.first().and_then(|c| c.finish_reason.as_deref()) {
        scope.set_finish_reason(reason);
    }
    if let Some(u) = observed.usage {
        scope.set_usage(u.prompt_tokens, u.completion_tokens);
    }
    if let Err(e) = scope.complete(200).await {
        return e.into_response();
    }
    let mut out = Response::new(axum::body::Body::from(bytes));
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out
}

/// Passes the upstream's events on as they arrive; `[DONE]` is held back until the audit
/// record is written.
fn relay_stream(scope: RequestScope, answer: Answer, client_wants_usage: bool) -> Response {
    let body = async_stream::stream! {
        let mut scope = scope;
        let mut events = std::pin::pin!(answer.events());
        let mut done = false;
        while let Some(event) = events.next().await {
            let (event, observed) = match event {
                Ok(Event::Data { event, observed }) => (event, observed),
                Ok(Event::Other(event)) => {
                    yield Ok(event);
                    continue;
                }
                Ok(Event::Done) => {
                    done = true;
                    break;
                }
                Err(e) => {
                    let e = ApiError::upstream(StatusCode::BAD_GATEWAY, format!("The model server's stream broke off: {e}"));
                    scope.set_status(e.status.as_u16());
                    yield Ok::<_, std::convert::Infallible>(sse::event(&e.body()));
                    return;
                }
            };
            for choice in &observed.choices {
                if let Some(t) = choice.text() {
                    scope.push_response(t);
                }
                if let Some(reason) = &choice.finish_reason {
                    scope.set_finish_reason(reason);
                }
            }
            if let Some(u) = observed.usage {
                scope.set_usage(u.prompt_tokens, u.completion_tokens);
                if !client_wants_usage && observed.choices.is_empty() {
                    continue;
                }
            }
            yield Ok(event);
        }
        if !done {
            let e = ApiError::upstream(StatusCode::BAD_GATEWAY, "The model server's stream ended without [DONE].");
            scope.set_status(e.status.as_u16());
            yield Ok(sse::event(&e.body()));
            return;
        }
        match scope.complete(200).await {
            Ok(()) => yield Ok(sse::done()),
            Err(e) => yield Ok(sse::event(&e.body())),
        }
    };
    sse::response(body)
}
