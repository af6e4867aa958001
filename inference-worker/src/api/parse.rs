//! Body parsing that never panics and names the offending field: malformed JSON and
//! wrong types become a 400 in OpenAI's error format.

use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Parses a JSON body into `T`; on a type error the message carries the field's path,
/// e.g. `messages[0].content: invalid type: integer `3`, expected …`.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::malformed("The request body is empty: send a JSON object."));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::malformed(format!("The request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::malformed(format!("Invalid request body: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("Invalid value for `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{ChatCompletionRequest, Sampling};

    #[test]
    fn wrong_type_names_the_field() {
        let err = json_body::<ChatCompletionRequest>(br#"{"model":"m","messages":[{"role":"user","content":3}]}"#)
            .unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(err.param.as_deref(), Some("messages[0].content"), "{}", err.message);
    }

    #[test]
    fn missing_field_is_named() {
        let err = json_body::<ChatCompletionRequest>(br#"{"model":"m"}"#).unwrap_err();
        assert!(err.message.contains("messages"), "{}", err.message);
    }

    #[test]
    fn syntax_error_is_malformed() {
        let err = json_body::<ChatCompletionRequest>(b"{\"model\": ").unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
    }

    #[test]
    fn max_tokens_negative_is_refused() {
        let err = json_body::<Sampling>(br#"{"model":"m","messages":[],"max_tokens":-1}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("max_tokens"));
    }
}
