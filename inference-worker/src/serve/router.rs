//! Routes of the API port and the metrics port. Every API request goes through the same
//! gate — readiness, audit availability (fail-closed), API key and rate limit, body size —
//! before the backend sees it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;

use super::metrics::Endpoint;
use super::scope::RequestScope;
use super::state::AppState;
use super::{builtin, upstream};
use crate::api::ApiError;
use crate::backend::Backend;
use crate::backend::upstream::Route;

pub fn api(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

pub fn metrics(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn not_found() -> ApiError {
    let mut e = ApiError::malformed(
        "Unknown path: the API serves /v1/models, /v1/chat/completions, /v1/completions and /v1/embeddings.",
    );
    e.status = StatusCode::NOT_FOUND;
    e
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the model is being verified, loaded or warmed up, or the backend is down",
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.queued.set(state.admission.queued() as i64);
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

/// The shared gate. On refusal the scope records the error (metrics, audit) as it drops.
async fn admit(
    state: &Arc<AppState>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<(RequestScope, Bytes), Response> {
    let mut scope = RequestScope::new(state.clone(), endpoint, headers);
    if !state.readiness.is_ready() {
        return Err(
            scope.fail(ApiError::unavailable("The model is not ready yet: it is being verified, loaded or warmed up."))
        );
    }
    if let Err(e) = state.audit.check_available() {
        return Err(scope.fail(e));
    }
    match state.auth.check(headers) {
        Ok(caller) => scope.set_caller(caller),
        Err(e) => return Err(scope.fail(e)),
    }
    match axum::body::to_bytes(body, state.body_limit).await {
        Ok(bytes) => Ok((scope, bytes)),
        Err(_) => Err(scope.fail(ApiError::payload_too_large(state.body_limit))),
    }
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let (scope, body) = match admit(&state, Endpoint::Chat, &headers, body).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    match &state.backend {
        Backend::Builtin(b) => builtin::chat(b, scope, body).await,
        Backend::Upstream(u) => upstream::forward(u, Route::Chat, scope, body).await,
    }
}

async fn completions(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let (scope, body) = match admit(&state, Endpoint::Completions, &headers, body).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    match &state.backend {
        Backend::Builtin(b) => builtin::completions(b, scope, body).await,
        Backend::Upstream(u) => upstream::forward(u, Route::Completions, scope, body).await,
    }
}

async fn embeddings(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let (scope, body) = match admit(&state, Endpoint::Embeddings, &headers, body).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    match &state.backend {
        Backend::Builtin(b) => builtin::embeddings(b, scope, body).await,
        Backend::Upstream(u) => upstream::forward(u, Route::Embeddings, scope, body).await,
    }
}

fn model_object(state: &AppState) -> serde_json::Value {
    serde_json::json!({
        "id": state.served_model,
        "object": "model",
        "created": state.created,
        "owned_by": "taimatsu",
    })
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let scope = RequestScope::new(state.clone(), Endpoint::Models, &headers);
    model_listing(scope, &state, &headers, None).await
}

async fn model(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let scope = RequestScope::new(state.clone(), Endpoint::Models, &headers);
    model_listing(scope, &state, &headers, Some(id)).await
}

async fn model_listing(mut scope: RequestScope, state: &AppState, headers: &HeaderMap, id: Option<String>) -> Response {
    match state.auth.check(headers) {
        Ok(caller) => scope.set_caller(caller),
        Err(e) => return scope.fail(e),
    }
    let body = match id {
        None => serde_json::json!({ "object": "list", "data": [model_object(state)] }),
        Some(id) if id == state.served_model => model_object(state),
        Some(id) => return scope.fail(ApiError::model_not_found(&id, &state.served_model)),
    };
    match scope.complete(200).await {
        Ok(()) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}
