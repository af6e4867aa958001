//! Checks a parsed request against what this worker serves and its limits, before any
//! work starts. Every refusal names the field and says what would be accepted.

use super::error::ApiError;
use super::parse::json_body;
use super::types::{ChatCompletionRequest, ChatMessageIn, MessageContent, Sampling};

/// The limits a deployment sets on requests.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// Largest `max_tokens` accepted (and the default when a request gives none).
    pub max_tokens: u32,
    /// Most stop strings.
    pub max_stop: usize,
}

/// Generation parameters after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub fn model(requested: &str, served: &str) -> Result<(), ApiError> {
    if requested == served { Ok(()) } else { Err(ApiError::model_not_found(requested, served)) }
}

pub fn sampling(s: Sampling, limits: &RequestLimits) -> Result<Generation, ApiError> {
    if let Some(n) = s.n
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            format!("`n` is {n}: this server returns one choice per request, send n=1"),
        ));
    }
    let max_tokens = match (s.max_completion_tokens, s.max_tokens) {
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => limits.max_tokens,
    };
    if max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens", "`max_tokens` must be at least 1"));
    }
    if max_tokens > limits.max_tokens {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("`max_tokens` is {max_tokens} but this deployment allows at most {}", limits.max_tokens),
        ));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", format!("`temperature` is {temperature}: use 0 to 2")));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("`top_p` is {top_p}: use a value above 0 and at most 1")));
    }
    let stop = s.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > limits.max_stop {
        return Err(ApiError::invalid(
            "stop",
            format!("`stop` has {} strings: at most {}", stop.len(), limits.max_stop),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "`stop` strings must not be empty"));
    }
    let include_usage = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if s.stream_options.is_some() && !s.stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"));
    }
    Ok(Generation { max_tokens, temperature, top_p, seed: s.seed, stop, stream: s.stream, include_usage })
}

/// Messages must be non-empty, with known roles and text content only.
pub fn messages(messages: &[ChatMessageIn]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` is empty: send at least one message"));
    }
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("`messages[{i}].role` is {:?}: use one of {}", m.role, ROLES.join(", ")),
            ));
        }
        if let Some(MessageContent::Parts(parts)) = &m.content
            && let Some(j) = parts.iter().position(|p| p.kind != "text" || p.text.is_none())
        {
            return Err(ApiError::invalid(
                format!("messages[{i}].content[{j}]"),
                format!("`messages[{i}].content[{j}]` is a {:?} part: this model reads text parts only", parts[j].kind),
            ));
        }
    }
    Ok(())
}

/// Parses and validates a chat request body; the messages are returned for the backend.
pub fn chat(body: &[u8], served: &str, limits: &RequestLimits) -> Result<(Vec<ChatMessageIn>, Generation), ApiError> {
    let req: ChatCompletionRequest = json_body(body)?;
    model(&req.model, served)?;
    messages(&req.messages)?;
    let generation = sampling(json_body(body)?, limits)?;
    Ok((req.messages, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    const LIMITS: RequestLimits = RequestLimits { max_tokens: 512, max_stop: 4 };

    fn chat_body(extra: &str) -> Result<(Vec<ChatMessageIn>, Generation), ApiError> {
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
        chat(body.as_bytes(), "m", &LIMITS)
    }

    #[test]
    fn defaults_apply() {
        let (_, g) = chat_body("").unwrap();
        assert_eq!(
            g,
            Generation {
                max_tokens: 512,
                temperature: 1.0,
                top_p: 1.0,
                seed: None,
                stop: vec![],
                stream: false,
                include_usage: false
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (extra, param) in [
            (r#","max_tokens":100000"#, "max_tokens"),
            (r#","temperature":3"#, "temperature"),
            (r#","top_p":0"#, "top_p"),
            (r#","n":2"#, "n"),
            (r#","stop":["a","b","c","d","e"]"#, "stop"),
            (r#","stream_options":{"include_usage":true}"#, "stream_options"),
        ] {
            let err = chat_body(extra).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{extra}: {}", err.message);
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn unknown_model_is_404() {
        let req = br#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(chat(req, "m", &LIMITS).unwrap_err().status, 404);
    }

    #[test]
    fn image_parts_are_refused() {
        let req =
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert_eq!(chat(req, "m", &LIMITS).unwrap_err().param.as_deref(), Some("messages[0].content[0]"));
    }
}
