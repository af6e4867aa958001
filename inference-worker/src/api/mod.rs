//! The OpenAI-compatible HTTP surface: request types, parsing, validation, errors, SSE.

pub mod error;
pub mod parse;
pub mod response;
pub mod sse;
pub mod types;
pub mod validate;

pub use error::ApiError;
