//! The Taimatsu operator: reconciles ModelDeployments into inference-worker workloads,
//! keeps their revision history, rolls out and back, and audits every decision. A library
//! so that the operator binary and the `kubectl-taimatsu` plugin share the revision and
//! status code.

pub mod analysis;
pub mod api_client;
pub mod apply;
pub mod audit;
pub mod build;
pub mod cache;
pub mod context;
pub mod controller;
pub mod error;
pub mod field_manager;
pub mod leader;
pub mod metrics;
pub mod model_manifest;
pub mod report;
pub mod revision;
pub mod rollout;
pub mod status;
pub mod validate;
pub mod watch_backoff;
pub mod webhook;
pub mod webhook_client_auth;
pub mod webhook_tls;
