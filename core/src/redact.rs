//! The one redaction applied to every string the operator writes where it cannot be taken
//! back: audit records (a chained record cannot be erased), status condition messages and
//! Events (readable by everyone who may read the object). Error texts of HTTP clients and
//! of the fetch step echo URLs, and a URL can carry a credential: user info
//! (`https://user:token@host/`), a pre-signed query (`?X-Amz-Signature=…`), or a header
//! quoted back (`Authorization: Bearer …`). Each is replaced by [`MASK`]; the rest of the
//! text (host, path, the error itself) is kept, since that is what an operator needs.

use std::borrow::Cow;

/// What a credential is replaced with.
pub const MASK: &str = "***";

/// Query or form parameters whose value is a credential (compared case-insensitively):
/// AWS SigV4 and Google pre-signed URLs, Azure SAS, and the common token parameters.
const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "sig",
    "signature",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "password",
    "client_secret",
];

/// Headers whose value is a credential, as an error text may quote them (`Name: value`).
const SECRET_HEADERS: &[&str] = &["authorization", "proxy-authorization", "x-amz-security-token", "x-api-key"];

/// `text` with every credential it carries replaced by [`MASK`] (borrowed when there is none).
pub fn redact(text: &str) -> Cow<'_, str> {
    let out = redact_userinfo(text);
    let out = redact_params(&out);
    let out = redact_headers(&out);
    let out = redact_bearer(&out);
    if out == text { Cow::Borrowed(text) } else { Cow::Owned(out) }
}

/// Redacts every string inside a JSON value (object keys are left: they are field names).
pub fn redact_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(clean) = redact(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json),
        serde_json::Value::Object(map) => map.values_mut().for_each(redact_json),
        _ => {}
    }
}

/// Ends a URL's authority, a parameter's or a token's value.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\' | ')' | ']' | '}' | ',' | ';')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// `scheme://user:password@host…` → `scheme://***@host…`.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after.find(|c: char| ends_value(c) || matches!(c, '/' | '?' | '#')).unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(userinfo_end) => {
                out.push_str(MASK);
                rest = &after[userinfo_end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// The byte length up to and including the separator, when `text` starts with one of
/// `names` followed by one of `sep` (spaces allowed before a separator other than a space).
fn secret_name_at(text: &str, names: &[&str], sep: &[char]) -> Option<usize> {
    let name_len = text.find(|c: char| !is_name_char(c)).unwrap_or(text.len());
    let after = &text[name_len..];
    // A JSON key (`"authorization": …`) closes its quote before the separator.
    let after =
        if sep.contains(&' ') { after } else { after.strip_prefix('"').unwrap_or(after).trim_start_matches(' ') };
    let known = names.iter().any(|n| n.eq_ignore_ascii_case(&text[..name_len]));
    (known && after.starts_with(sep)).then(|| text.len() - after.len() + 1)
}

/// Walks `text`, and where one of `names` starts (at a name boundary) followed by one of
/// `sep`, keeps the name and separator (and an opening quote), then `value` says how many
/// bytes of the rest to keep and how many to mask after those.
fn mask_after_names(text: &str, names: &[&str], sep: &[char], value: impl Fn(&str) -> (usize, usize)) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while i < text.len() {
        if !prev.is_some_and(is_name_char)
            && let Some(name_and_sep) = secret_name_at(&text[i..], names, sep)
        {
            let rest = &text[i + name_and_sep..];
            let spaces = rest.len() - rest.trim_start_matches(' ').len();
            let quote = usize::from(rest[spaces..].starts_with('"'));
            let start = i + name_and_sep + spaces + quote;
            let (keep, mask) = value(&text[start..]);
            out.push_str(&text[i..start + keep]);
            if mask > 0 {
                out.push_str(MASK);
            }
            i = start + keep + mask;
            prev = text[..i].chars().next_back();
            continue;
        }
        let c = text[i..].chars().next().unwrap_or_default();
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// `?X-Amz-Signature=abc&x=1` → `?X-Amz-Signature=***&x=1`.
fn redact_params(text: &str) -> String {
    mask_after_names(text, SECRET_PARAMS, &['='], |v| {
        (0, v.find(|c: char| ends_value(c) || matches!(c, '&' | '#' | ':')).unwrap_or(v.len()))
    })
}

/// `Authorization: Bearer abc` → `Authorization: Bearer ***`: the scheme is kept, the rest
/// of the value masked up to the end of the line or a closing quote (an AWS SigV4 value
/// holds commas and spaces).
fn redact_headers(text: &str) -> String {
    mask_after_names(text, SECRET_HEADERS, &[':'], |v| {
        let end = v.find(['\n', '\r', '"']).unwrap_or(v.len());
        let scheme = v[..end]
            .find(' ')
            .filter(|s| *s > 0 && v[..*s].chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .map_or(0, |s| s + 1);
        (scheme, end - scheme)
    })
}

/// `bearer abc` anywhere (an error quoting its request) → `bearer ***`.
fn redact_bearer(text: &str) -> String {
    mask_after_names(text, &["bearer"], &[' '], |v| {
        let token =
            v.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')));
        (0, token.unwrap_or(v.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: &str) {
        assert_eq!(redact(text), expected, "{text}");
    }

    #[test]
    fn user_info_in_urls_is_masked() {
        check(
            "GET https://bot:s3cr3t@mirror.internal/q/config.json: 401",
            "GET https://***@mirror.internal/q/config.json: 401",
        );
        check(
            "fetch https://token@mirror/a and https://u:p@other:8443",
            "fetch https://***@mirror/a and https://***@other:8443",
        );
        check("s3://bucket/a@b/c", "s3://bucket/a@b/c");
        check("error sending request for url (https://a:b@m/x)", "error sending request for url (https://***@m/x)");
    }

    #[test]
    fn pre_signed_query_parameters_are_masked_and_the_rest_is_kept() {
        check(
            "GET https://mirror/m/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=abc123&X-Amz-Security-Token=FQo: 403 Forbidden",
            "GET https://mirror/m/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***: 403 Forbidden",
        );
        check("https://blob/x?sv=2024&sig=AbC%3D&se=1", "https://blob/x?sv=2024&sig=***&se=1");
        check("url=https://m/f?access_token=ya29.x#frag", "url=https://m/f?access_token=***#frag");
        check("?Signature=x&token=y", "?Signature=***&token=***");
        // Only whole parameter names: these are not secrets.
        check("?design=a&tokens=5&mytoken2=z", "?design=a&tokens=5&mytoken2=z");
    }

    #[test]
    fn authorization_values_are_masked_keeping_the_scheme() {
        check("request had Authorization: Bearer eyJhbGciOi.x.y", "request had Authorization: Bearer ***");
        check("{\"authorization\": \"Basic dXNlcjpw\"}", "{\"authorization\": \"Basic ***\"}");
        check(
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, Signature=ff\nnext line",
            "Authorization: AWS4-HMAC-SHA256 ***\nnext line",
        );
        check("sent bearer abc.def-ghi to the mirror", "sent bearer *** to the mirror");
        check("x-api-key: k123", "x-api-key: ***");
    }

    #[test]
    fn text_without_credentials_is_borrowed_unchanged() {
        let text = "DigestMismatch: model.safetensors: sha256 is 9f2c… but the manifest says 2222… (https://mirror/q/)";
        assert!(matches!(redact(text), Cow::Borrowed(_)));
        assert!(matches!(redact("ünïcode — token"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_string_of_a_json_value_is_redacted() {
        let mut v =
            serde_json::json!({ "message": "https://u:p@m/", "nested": ["Bearer t"], "n": 1, "https://u:p@k": "key" });
        redact_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({ "message": "https://***@m/", "nested": ["Bearer ***"], "n": 1, "https://u:p@k": "key" })
        );
    }
}
