//! API keys and per-key rate limits.
//!
//! Keys come from a mounted Secret: one key per line, `#` comments, optionally followed by
//! ` rpm=<requests per minute>`. Only their SHA-256 is kept in memory; a caller is named
//! in logs, metrics and audit records by a key id derived from that hash (`key-<12 hex>`),
//! never by the key. The file is re-read when it changes (Secret rotation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::api::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
struct KeyInfo {
    id: String,
    rpm: Option<u32>,
}

/// Who made a request: `None` when auth is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Option<String>,
}

/// The key file's raw bytes (to notice changes) and the keys parsed from it.
type KeyTable = (Vec<u8>, HashMap<[u8; 32], KeyInfo>);

pub struct Auth {
    path: Option<PathBuf>,
    default_rpm: Option<u32>,
    keys: RwLock<KeyTable>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read API keys from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {problem}")]
    Line { path: PathBuf, line: usize, problem: String },
    #[error("{0} holds no API keys: add one key per line, or drop --api-keys to serve without authentication")]
    Empty(PathBuf),
}

pub fn key_id(key: &str) -> String {
    format!("key-{}", &hex::encode(Sha256::digest(key.as_bytes()))[..12])
}

fn parse_keys(path: &Path, text: &str) -> Result<HashMap<[u8; 32], KeyInfo>, KeysError> {
    let mut keys = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |problem: String| KeysError::Line { path: path.to_owned(), line: i + 1, problem };
        let mut parts = line.split_whitespace();
        let key = parts.next().unwrap_or_default();
        if key.len() < 16 {
            return Err(bad("key is shorter than 16 characters: use a long random key".into()));
        }
        let mut rpm = None;
        for opt in parts {
            match opt.strip_prefix("rpm=").map(str::parse::<u32>) {
                Some(Ok(n)) if n > 0 => rpm = Some(n),
                _ => return Err(bad(format!("unknown option {opt:?}: the only option is rpm=<positive integer>"))),
            }
        }
        keys.insert(Sha256::digest(key.as_bytes()).into(), KeyInfo { id: key_id(key), rpm });
    }
    if keys.is_empty() {
        return Err(KeysError::Empty(path.to_owned()));
    }
    Ok(keys)
}

impl Auth {
    /// No authentication; rate limits do not apply (there is no caller to limit).
    pub fn disabled() -> Self {
        Self { path: None, default_rpm: None, keys: RwLock::default(), buckets: Mutex::default() }
    }

    pub fn from_file(path: &Path, default_rpm: Option<u32>) -> Result<Self, KeysError> {
        let raw = std::fs::read(path).map_err(|source| KeysError::Read { path: path.to_owned(), source })?;
        let keys = parse_keys(path, &String::from_utf8_lossy(&raw))?;
        Ok(Self { path: Some(path.to_owned()), default_rpm, keys: RwLock::new((raw, keys)), buckets: Mutex::default() })
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Re-reads the key file if its content changed. A broken new file keeps the old keys.
    pub fn reload(&self) -> Result<bool, KeysError> {
        let Some(path) = &self.path else { return Ok(false) };
        let raw = std::fs::read(path).map_err(|source| KeysError::Read { path: path.clone(), source })?;
        if self.keys.read().map(|k| k.0 == raw).unwrap_or(false) {
            return Ok(false);
        }
        let keys = parse_keys(path, &String::from_utf8_lossy(&raw))?;
        if let Ok(mut guard) = self.keys.write() {
            *guard = (raw, keys);
        }
        Ok(true)
    }

    /// Checks the bearer key and the key's rate limit.
    pub fn check(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::default());
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("You didn't provide an API key: send it as `Authorization: Bearer <key>`.")
            })?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let info = self
            .keys
            .read()
            .ok()
            .and_then(|k| k.1.get(&hash).cloned())
            .ok_or_else(|| ApiError::unauthorized("Incorrect API key provided."))?;
        if let Some(rpm) = info.rpm.or(self.default_rpm) {
            let mut buckets = self.buckets.lock().map_err(|_| ApiError::internal("rate limiter poisoned"))?;
            let bucket = buckets.entry(info.id.clone()).or_insert_with(|| Bucket::full(rpm));
            bucket.take(rpm, Instant::now()).map_err(ApiError::rate_limited)?;
        }
        Ok(Caller { key_id: Some(info.id) })
    }
}

/// A token bucket holding up to `rpm` requests, refilled at `rpm` per minute.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rpm: u32) -> Self {
        Self { tokens: f64::from(rpm), at: Instant::now() }
    }

    /// Takes one token, or says in how many whole seconds one will be there.
    fn take(&mut self, rpm: u32, now: Instant) -> Result<(), u64> {
        let per_sec = f64::from(rpm) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(rpm));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_keys_and_options() {
        let keys = parse_keys(Path::new("k"), "# team a\nsk-aaaaaaaaaaaaaaaa rpm=10\n\nsk-bbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(keys.len(), 2);
        let a: [u8; 32] = Sha256::digest(b"sk-aaaaaaaaaaaaaaaa").into();
        assert_eq!(keys[&a].rpm, Some(10));
        assert!(keys[&a].id.starts_with("key-"));
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_keys(Path::new("/k"), "sk-aaaaaaaaaaaaaaaa\nshort\n").unwrap_err();
        assert!(err.to_string().contains("/k line 2"), "{err}");
        let err = parse_keys(Path::new("/k"), "sk-aaaaaaaaaaaaaaaa burst=3\n").unwrap_err();
        assert!(err.to_string().contains("rpm="), "{err}");
        assert!(matches!(parse_keys(Path::new("/k"), "# nothing\n"), Err(KeysError::Empty(_))));
    }

    #[test]
    fn bucket_refills_at_the_configured_rate() {
        let start = Instant::now();
        let mut b = Bucket { tokens: 2.0, at: start };
        assert!(b.take(60, start).is_ok());
        assert!(b.take(60, start).is_ok());
        assert_eq!(b.take(60, start), Err(1));
        assert!(b.take(60, start + Duration::from_secs(1)).is_ok());
    }
}
