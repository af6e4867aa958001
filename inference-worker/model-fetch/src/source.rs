//! Parsing `--source`: which kind of source, and where each manifest file lives in it.

use std::path::{Path, PathBuf};

use reqwest::Url;
use taimatsu_core::{HfSource, OciSource};

use crate::FetchError;
use crate::sigv4::uri_encode;

/// Where `pvc://<claim>/<path>` sources are read from: the pod mounts claim `<claim>`
/// read-only at `<PVC_MOUNT_ROOT>/<claim>`, so the source is `<PVC_MOUNT_ROOT>/<claim>/<path>`.
pub const PVC_MOUNT_ROOT: &str = "/mnt/taimatsu/pvc";

/// A parsed `--source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An http(s) mirror; the base always ends with `/`.
    Http(Url),
    /// An S3 bucket and key prefix (empty, or ending with `/`).
    S3 { bucket: String, prefix: String },
    /// A mounted directory, copied from.
    Local(PathBuf),
    /// A Hugging Face Hub repository at a revision, fetched from the configured mirror.
    Hf(HfSource),
    /// An OCI artifact in a registry, pinned by its manifest digest.
    Oci(OciSource),
}

impl Source {
    pub fn parse(uri: &str) -> Result<Source, FetchError> {
        let bad = |reason: String| FetchError::SourceUnsupported { uri: uri.to_owned(), reason };
        let (scheme, rest) = uri.split_once("://").unwrap_or(("", uri));
        match scheme {
            "http" | "https" => {
                let mut url = Url::parse(uri).map_err(|e| bad(format!("not a valid URL ({e})")))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("the URL has no host: give the mirror as https://host/prefix/".into()));
                }
                if url.query().is_some() || url.fragment().is_some() {
                    return Err(bad("the URL carries a query or fragment: give the mirror's base URL only".into()));
                }
                // A base without a trailing slash still names a directory: file paths are appended to it.
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                Ok(Source::Http(url))
            }
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
                if bucket.is_empty() || !bucket.chars().all(valid) {
                    return Err(bad(format!("bucket {bucket:?} is not a bucket name: give s3://<bucket>/<prefix>/")));
                }
                let prefix = prefix.trim_matches('/');
                let prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
                Ok(Source::S3 { bucket: bucket.to_owned(), prefix })
            }
            "pvc" if rest.starts_with('/') => Ok(Source::Local(PathBuf::from(rest))),
            "pvc" if !rest.is_empty() => Ok(Source::Local(Path::new(PVC_MOUNT_ROOT).join(rest))),
            "" if uri.starts_with('/') => Ok(Source::Local(PathBuf::from(uri))),
            "hf" => HfSource::parse(uri).map(Source::Hf).map_err(|e| bad(e.to_string())),
            "oci" => OciSource::parse(uri).map(Source::Oci).map_err(|e| bad(e.to_string())),
            _ => Err(bad("unknown kind of source: use https://<mirror>/<prefix>/, s3://<bucket>/<prefix>/, \
                 pvc://<claim>/<path>, hf://<org>/<name>@<commit>, oci://<registry>/<repository>@sha256:<digest> or an \
                 absolute directory path"
                .into())),
        }
    }
}

/// `base` + each `/`-separated segment of `path` URI-encoded, e.g. `a b/c.json` → `base/a%20b/c.json`.
pub fn join_url(base: &Url, path: &str) -> Result<Url, FetchError> {
    let encoded: Vec<String> = path.split('/').map(uri_encode).collect();
    let joined = format!("{}{}", base.as_str(), encoded.join("/"));
    Url::parse(&joined).map_err(|e| FetchError::SourceUnsupported {
        uri: base.to_string(),
        reason: format!("cannot form a URL for {path:?} ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_bases_always_end_with_a_slash() {
        assert_eq!(
            Source::parse("https://mirror.example/models/m").unwrap(),
            Source::Http(Url::parse("https://mirror.example/models/m/").unwrap())
        );
        let Source::Http(base) = Source::parse("http://127.0.0.1:8080/").unwrap() else { panic!() };
        assert_eq!(join_url(&base, "w/a b+c.json").unwrap().as_str(), "http://127.0.0.1:8080/w/a%20b%2Bc.json");
        assert!(Source::parse("https://mirror.example/m/?token=x").is_err());
    }

    #[test]
    fn s3_and_local_sources() {
        assert_eq!(
            Source::parse("s3://bucket/a/b/").unwrap(),
            Source::S3 { bucket: "bucket".into(), prefix: "a/b/".into() }
        );
        assert_eq!(Source::parse("s3://bucket").unwrap(), Source::S3 { bucket: "bucket".into(), prefix: "".into() });
        assert!(Source::parse("s3:///x").is_err());
        assert_eq!(Source::parse("pvc:///mnt/models/m").unwrap(), Source::Local("/mnt/models/m".into()));
        assert_eq!(Source::parse("pvc://store/org/m").unwrap(), Source::Local("/mnt/taimatsu/pvc/store/org/m".into()));
        assert_eq!(Source::parse("/models/m").unwrap(), Source::Local("/models/m".into()));
    }

    #[test]
    fn hf_sources_name_a_repository_and_revision() {
        let Source::Hf(hf) = Source::parse("hf://org/m@main").unwrap() else { panic!() };
        assert_eq!((hf.repo_id().as_str(), hf.revision.as_str()), ("org/m", "main"));
        let err = Source::parse("hf://org/m").unwrap_err();
        assert_eq!(err.reason(), "SourceUnsupported");
        assert!(err.to_string().contains("hf://<org>/<name>@"), "{err}");
    }

    #[test]
    fn oci_sources_are_pinned_by_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let Source::Oci(oci) = Source::parse(&format!("oci://r.internal:5000/models/m@{digest}")).unwrap() else {
            panic!()
        };
        assert_eq!(
            (oci.registry.as_str(), oci.repository.as_str(), oci.digest()),
            ("r.internal:5000", "models/m", digest)
        );
        let err = Source::parse("oci://registry/m:1").unwrap_err();
        assert_eq!(err.reason(), "SourceUnsupported");
        assert!(err.to_string().contains("not pinned by @sha256:<digest>"), "{err}");
    }

    #[test]
    fn unsupported_sources_say_what_to_use() {
        for uri in ["ftp://x/", "models/m"] {
            let err = Source::parse(uri).unwrap_err();
            assert_eq!(err.reason(), "SourceUnsupported", "{uri}");
            assert!(err.to_string().contains("https://"), "{err}");
        }
    }
}
