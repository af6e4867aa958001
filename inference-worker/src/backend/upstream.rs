//! Requests forwarded to an OpenAI-compatible upstream on loopback: vLLM on GPUs (started
//! and supervised by `supervisor.rs`), or any server given by `--upstream-url`.
//!
//! The worker validates the request exactly as for the built-in engine (same 400/404s),
//! then forwards the client's bytes. Responses pass through unchanged, streamed as they
//! arrive; the worker only reads them to learn token usage and to hash the generated text
//! for the audit. So that usage is always known, a streaming request that did not ask for
//! it is sent with `stream_options.include_usage`, and that usage-only chunk is not passed
//! on to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::Deserialize;

use crate::api::types::{CompletionRequest, EmbeddingRequest};
use crate::api::{ApiError, parse::json_body, sse, validate};
use crate::serve::scope::RequestScope;

pub struct Upstream {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
    Embeddings,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Route::Chat => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
        }
    }
}

/// What the worker reads of an upstream body: usage and the generated text.
#[derive(Deserialize, Default)]
struct Observed {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Vec<ObservedChoice>,
}

#[derive(Deserialize, Default, Clone, Copy)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(Deserialize, Default)]
struct ObservedChoice {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: Option<ObservedText>,
    #[serde(default)]
    delta: Option<ObservedText>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ObservedText {
    #[serde(default)]
    content: Option<String>,
}

impl ObservedChoice {
    fn text(&self) -> Option<&str> {
        self.text
            .as_deref()
            .or_else(|| self.message.as_ref().and_then(|m| m.content.as_deref()))
            .or_else(|| self.delta.as_ref().and_then(|m| m.content.as_deref()))
    }
}

/// Validates like the built-in engine does and returns (audit prompt text, stream, include_usage).
fn check(route: Route, body: &[u8], scope: &RequestScope) -> Result<(String, bool, bool), ApiError> {
    let state = scope.state();
    match route {
        Route::Chat => {
            let (messages, g) = validate::chat(body, &state.served_model, &state.limits)?;
            Ok((crate::api::types::audit_text(&messages), g.stream, g.include_usage))
        }
        Route::Completions => {
            let req: CompletionRequest = json_body(body)?;
            validate::model(&req.model, &state.served_model)?;
            let text = match &req.prompt {
                crate::api::types::Prompt::One(p) => p.clone(),
                crate::api::types::Prompt::Many(v) => v.join("\n"),
            };
            let g = validate::sampling(json_body(body)?, &state.limits)?;
            Ok((text, g.stream, g.include_usage))
        }
        Route::Embeddings => {
            let req: EmbeddingRequest = json_body(body)?;
            validate::model(&req.model, &state.served_model)?;
            let text = match req.input {
                crate::api::types::EmbeddingInput::One(s) => s,
                crate::api::types::EmbeddingInput::Many(v) => v.join("\n"),
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
    let request = upstream
        .client
        .post(format!("{}{}", upstream.base, route.path()))
        .header(header::CONTENT_TYPE, "application/json")
        // vLLM joins the request's trace (it reads `traceparent` when its tracing is on).
        .headers(taimatsu_telemetry::inject_context(scope.span()))
        .timeout(state.request_timeout)
        .body(body);
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return scope.fail(ApiError::timeout(state.request_timeout.as_secs())),
        Err(e) => {
            return scope.fail(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                format!("The model server did not answer: {}", without_url(&e)),
            ));
        }
    };
    let status = response.status();
    if !status.is_success() {
        return pass_error(scope, response).await;
    }
    if stream { relay_stream(scope, response, client_wants_usage) } else { relay_whole(scope, response).await }
}

/// reqwest errors print the URL; the loopback address means nothing to a client.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(&format!(" for url ({url})"), "");
    }
    msg
}

async fn pass_error(mut scope: RequestScope, response: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = response.bytes().await.unwrap_or_default();
    scope.set_status(status.as_u16());
    drop(scope);
    let mut out = Response::new(axum::body::Body::from(bytes));
    *out.status_mut() = status;
    out.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    out
}

async fn relay_whole(mut scope: RequestScope, response: reqwest::Response) -> Response {
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return scope.fail(ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                format!("The model server's answer broke off: {}", without_url(&e)),
            ));
        }
    };
    let observed: Observed = serde_json::from_slice(&bytes).unwrap_or_default();
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

/// Splits off complete SSE events (terminated by a blank line) from `buf`.
fn next_event(buf: &mut BytesMut) -> Option<Bytes> {
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    Some(buf.split_to(end + 2).freeze())
}

/// The JSON payload of a `data:` event, or None for `[DONE]`, comments and other fields.
fn event_data(event: &[u8]) -> Option<&[u8]> {
    let line = event.split(|b| *b == b'\n').find(|l| l.starts_with(b"data:"))?;
    let data = line[5..].strip_prefix(b" ").unwrap_or(&line[5..]);
    let data = data.strip_suffix(b"\r").unwrap_or(data);
    (data != b"[DONE]").then_some(data)
}

fn relay_stream(scope: RequestScope, response: reqwest::Response, client_wants_usage: bool) -> Response {
    let body = async_stream::stream! {
        let mut scope = scope;
        let mut upstream = response.bytes_stream();
        let mut buf = BytesMut::new();
        let mut done = false;
        while let Some(piece) = upstream.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    let e = ApiError::upstream(StatusCode::BAD_GATEWAY, format!("The model server's stream broke off: {}", without_url(&e)));
                    scope.set_status(e.status.as_u16());
                    yield Ok::<_, std::convert::Infallible>(sse::event(&e.body()));
                    return;
                }
            };
            buf.extend_from_slice(&piece);
            while let Some(event) = next_event(&mut buf) {
                let Some(data) = event_data(&event) else {
                    if event.windows(6).any(|w| w == b"[DONE]") {
                        // Held back until the audit record is written.
                        done = true;
                        break;
                    }
                    yield Ok(event);
                    continue;
                };
                let observed: Observed = serde_json::from_slice(data).unwrap_or_default();
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
            if done {
                break;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_pieces() {
        let mut buf = BytesMut::from(&b"data: {\"a\":1}\n\ndata: {\"b\""[..]);
        assert_eq!(next_event(&mut buf).as_deref(), Some(&b"data: {\"a\":1}\n\n"[..]));
        assert_eq!(next_event(&mut buf), None);
        buf.extend_from_slice(b":2}\n\ndata: [DONE]\n\n");
        let second = next_event(&mut buf).unwrap();
        assert_eq!(event_data(&second), Some(&b"{\"b\":2}"[..]));
        assert_eq!(event_data(&next_event(&mut buf).unwrap()), None);
    }
}
