//! S3 sources: credentials, region and endpoint from the standard environment variables,
//! object URLs, and a signed GET for each.
//!
//! Only static credentials are read. Web identity, instance profiles and SSO would make
//! the worker call STS or the instance metadata service — hosts other than the source.

use std::time::SystemTime;

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HOST, HeaderMap, HeaderValue, RANGE};

use crate::sigv4::{self, Credentials, EMPTY_PAYLOAD_SHA256};
use crate::{FetchError, SourceEnv};

/// Where and how to reach one bucket.
#[derive(Clone, Debug)]
pub struct S3 {
    credentials: Credentials,
    region: String,
    /// Bucket root: `https://<bucket>.s3.<region>.amazonaws.com/` or, path-style,
    /// `<endpoint>/<bucket>/` for AWS_ENDPOINT_URL(_S3) (MinIO, Ceph) and dotted bucket names.
    base: Url,
    prefix: String,
}

impl S3 {
    pub fn from_env(uri: &str, bucket: &str, prefix: &str, env: &SourceEnv) -> Result<S3, FetchError> {
        let (Some(access_key_id), Some(secret_access_key)) =
            (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(FetchError::Config {
                what: format!("source {uri}"),
                message: "needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment: put them in the \
                          Secret that spec.source.credentialsSecretRef names"
                    .into(),
            });
        };
        let credentials = Credentials {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret_access_key.to_owned(),
            session_token: env.get("AWS_SESSION_TOKEN").map(str::to_owned),
        };
        let region = env.get("AWS_REGION").or_else(|| env.get("AWS_DEFAULT_REGION")).unwrap_or("us-east-1").to_owned();
        let endpoint = env.get("AWS_ENDPOINT_URL_S3").or_else(|| env.get("AWS_ENDPOINT_URL"));
        let base = match endpoint {
            Some(endpoint) => {
                let mut url = Url::parse(endpoint).map_err(|e| FetchError::Config {
                    what: "AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL".into(),
                    message: format!("{endpoint:?} is not a URL ({e}): give it as https://host[:port]"),
                })?;
                if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                    return Err(FetchError::Config {
                        what: "AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL".into(),
                        message: format!("{endpoint:?} is not an http(s) URL: give it as https://host[:port]"),
                    });
                }
                let path = url.path().trim_end_matches('/').to_owned();
                url.set_path(&format!("{path}/{}/", sigv4::uri_encode(bucket)));
                url
            }
            // Dotted names do not match the wildcard certificate of virtual-hosted style.
            None if bucket.contains('.') => parse_base(&format!("https://s3.{region}.amazonaws.com/{bucket}/"))?,
            None => parse_base(&format!("https://{bucket}.s3.{region}.amazonaws.com/"))?,
        };
        Ok(S3 { credentials, region, base, prefix: prefix.to_owned() })
    }

    /// The object URL of a manifest path.
    pub fn url(&self, path: &str) -> Result<Url, FetchError> {
        crate::source::join_url(&self.base, &format!("{}{path}", self.prefix))
    }

    /// Headers of a signed GET of `url`, from byte `from` on when it is not 0. Signed anew
    /// for each attempt, since the signature covers the time and the range.
    pub fn signed_headers(&self, url: &Url, from: u64, now: SystemTime) -> Result<HeaderMap, FetchError> {
        // reqwest sends the port in Host only when it is not the scheme's default; sign the same.
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => String::new(),
        };
        let amz_date = sigv4::amz_datetime(now);
        let range = (from > 0).then(|| format!("bytes={from}-"));
        let mut signed: Vec<(&str, &str)> =
            vec![("host", &host), ("x-amz-content-sha256", EMPTY_PAYLOAD_SHA256), ("x-amz-date", &amz_date)];
        if let Some(range) = &range {
            signed.push(("range", range));
        }
        if let Some(token) = &self.credentials.session_token {
            signed.push(("x-amz-security-token", token));
        }
        let request = sigv4::Request {
            method: "GET",
            path: url.path(),
            query: "",
            headers: &signed,
            payload_sha256: EMPTY_PAYLOAD_SHA256,
        };
        let authorization = sigv4::authorization(&self.credentials, &self.region, "s3", &amz_date, &request);
        let mut headers = HeaderMap::new();
        for (name, value) in signed.iter().chain([&("authorization", authorization.as_str())]) {
            let value = HeaderValue::from_str(value).map_err(|_| FetchError::Config {
                what: format!("S3 header {name}"),
                message: "holds characters not allowed in an HTTP header: check the AWS_* variables".into(),
            })?;
            match *name {
                "host" => headers.insert(HOST, value),
                "range" => headers.insert(RANGE, value),
                "authorization" => headers.insert(AUTHORIZATION, value),
                other => headers.insert(reqwest::header::HeaderName::from_static(other), value),
            };
        }
        Ok(headers)
    }
}

fn parse_base(url: &str) -> Result<Url, FetchError> {
    Url::parse(url).map_err(|e| FetchError::Config {
        what: "S3 URL".into(),
        message: format!("{url} is not a URL ({e}): check the bucket name and AWS_REGION"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> SourceEnv {
        SourceEnv::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    const KEYS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "AKID"), ("AWS_SECRET_ACCESS_KEY", "secret")];

    #[test]
    fn urls_follow_the_addressing_style() {
        let aws = S3::from_env("s3://b/p/", "b", "p/", &env(&KEYS)).unwrap();
        assert_eq!(aws.url("w/m.gguf").unwrap().as_str(), "https://b.s3.us-east-1.amazonaws.com/p/w/m.gguf");

        let mut pairs = KEYS.to_vec();
        pairs.push(("AWS_REGION", "eu-west-1"));
        let dotted = S3::from_env("s3://b.c/", "b.c", "", &env(&pairs)).unwrap();
        assert_eq!(dotted.url("m.gguf").unwrap().as_str(), "https://s3.eu-west-1.amazonaws.com/b.c/m.gguf");

        pairs.push(("AWS_ENDPOINT_URL", "http://minio.local:9000"));
        let minio = S3::from_env("s3://b/p/", "b", "p/", &env(&pairs)).unwrap();
        assert_eq!(minio.url("a b.json").unwrap().as_str(), "http://minio.local:9000/b/p/a%20b.json");
    }

    #[test]
    fn credentials_are_required() {
        let err = S3::from_env("s3://b/", "b", "", &env(&KEYS[..1])).unwrap_err();
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        assert_eq!(err.reason(), "FetchFailed");
    }

    #[test]
    fn requests_are_signed_with_host_port_and_range() {
        let mut pairs = KEYS.to_vec();
        pairs.push(("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"));
        pairs.push(("AWS_SESSION_TOKEN", "tok"));
        let s3 = S3::from_env("s3://b/", "b", "", &env(&pairs)).unwrap();
        let url = s3.url("m.gguf").unwrap();
        let headers = s3.signed_headers(&url, 10, std::time::UNIX_EPOCH).unwrap();
        assert_eq!(headers["host"], "127.0.0.1:9000");
        assert_eq!(headers["range"], "bytes=10-");
        assert_eq!(headers["x-amz-date"], "19700101T000000Z");
        assert_eq!(headers["x-amz-security-token"], "tok");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKID/19700101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
            ),
            "{auth}"
        );
    }
}
