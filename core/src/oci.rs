//! `oci://<registry>/<repository>@sha256:<digest>`: a model stored as an OCI artifact in a
//! registry, pinned by its manifest's digest. Parsed here, once, for the operator (which
//! shapes does the fetch step support?) and the worker's fetch step (which URLs to ask).
//!
//! Only a digest pins an artifact: a tag can be pushed over at any time. A reference that
//! carries both (`repo:v1@sha256:…`, which Docker's tools accept and then ignore the tag)
//! is refused, so nobody reads a tag into a Model that the fetch would not honour.

/// A parsed `oci://` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciSource {
    /// The registry's host and optional port, e.g. `registry.internal:5000` (fetched over https).
    pub registry: String,
    /// The repository inside the registry, e.g. `models/smollm2`.
    pub repository: String,
    /// The manifest digest's 64 lower-case hex characters (algorithm sha256).
    pub sha256: String,
}

/// Why a string is not an `oci://` source the fetch step supports.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{uri:?} is not an oci:// source the fetch step supports ({why}): give it as oci://<registry>[:port]/<repository>@sha256:<64 hex characters>"
)]
pub struct OciParseError {
    uri: String,
    why: &'static str,
}

/// The scheme prefix of OCI sources.
pub const SCHEME: &str = "oci://";

impl OciSource {
    /// Parses `oci://<registry>[:port]/<repository>@sha256:<hex>`, with the repository
    /// grammar of the OCI distribution spec (lower-case components of letters and digits
    /// joined by `.`, `_`, `__` or dashes) and no tag.
    pub fn parse(uri: &str) -> Result<OciSource, OciParseError> {
        let bad = |why| OciParseError { uri: uri.to_owned(), why };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| bad("it does not start with oci://"))?;
        let (name, digest) = rest.rsplit_once('@').ok_or_else(|| bad("it is not pinned by @sha256:<digest>"))?;
        let sha256 = digest.strip_prefix("sha256:").ok_or_else(|| bad("the digest's algorithm is not sha256"))?;
        if !is_sha256_hex(sha256) {
            return Err(bad("the digest is not 64 lower-case hex characters"));
        }
        let (registry, repository) = name.split_once('/').ok_or_else(|| bad("it names no repository"))?;
        let (host, port) = registry.split_once(':').map_or((registry, None), |(h, p)| (h, Some(p)));
        let label_ok =
            |l: &str| !l.is_empty() && !l.starts_with('-') && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if !host.split('.').all(label_ok) || !port_ok {
            return Err(bad("the registry is not <host>[:port]"));
        }
        if repository.contains(':') {
            return Err(bad("it names a tag as well as a digest: drop the :<tag>, the digest alone pins the artifact"));
        }
        if !repository.split('/').all(is_path_component) {
            return Err(bad("the repository is lower-case letters and digits, joined by '.', '_', '__' or '-'"));
        }
        Ok(OciSource { registry: registry.to_owned(), repository: repository.to_owned(), sha256: sha256.to_owned() })
    }

    /// `sha256:<hex>`, as the registry names the manifest.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

impl std::fmt::Display for OciSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}@sha256:{}", self.registry, self.repository, self.sha256)
    }
}

/// 64 lower-case hex characters.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, the distribution spec's path component.
fn is_path_component(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let separator = |c: char| matches!(c, '.' | '_' | '-');
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else { return false };
    if !alnum(first) || !alnum(last) || !s.chars().all(|c| alnum(c) || separator(c)) {
        return false;
    }
    // Between two alphanumeric runs: one '.', one or two '_', or any number of '-'.
    s.split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_registry_repository_and_digest() {
        let s = OciSource::parse(&format!("oci://registry.internal:5000/models/smol-lm2@sha256:{HEX}")).unwrap();
        assert_eq!((s.registry.as_str(), s.repository.as_str()), ("registry.internal:5000", "models/smol-lm2"));
        assert_eq!(s.digest(), format!("sha256:{HEX}"));
        assert_eq!(s.to_string(), format!("oci://registry.internal:5000/models/smol-lm2@sha256:{HEX}"));
        assert!(OciSource::parse(&format!("oci://127.0.0.1/a__b.c-d/e@sha256:{HEX}")).is_ok());
    }

    #[test]
    fn refuses_unpinned_tagged_and_malformed_references() {
        for (uri, why) in [
            ("oci://r.example/m:v1".to_owned(), "not pinned"),
            (format!("oci://r.example/m:v1@sha256:{HEX}"), "names a tag"),
            (format!("oci://r.example/m@sha512:{HEX}"), "not sha256"),
            (format!("oci://r.example/m@sha256:{}", &HEX[..63]), "64 lower-case hex"),
            (format!("oci://r.example/m@sha256:{}", HEX.to_uppercase()), "64 lower-case hex"),
            (format!("oci://r.example@sha256:{HEX}"), "no repository"),
            (format!("oci://r.example:0/m@sha256:{HEX}"), "<host>[:port]"),
            (format!("oci://user@r.example/m@sha256:{HEX}"), "<host>[:port]"),
            (format!("oci://r.example/Models/m@sha256:{HEX}"), "lower-case"),
            (format!("oci://r.example/m/../x@sha256:{HEX}"), "lower-case"),
            (format!("oci://r.example/m//x@sha256:{HEX}"), "lower-case"),
            (format!("oci://r.example/a...b@sha256:{HEX}"), "lower-case"),
            (format!("https://r.example/m@sha256:{HEX}"), "oci://"),
        ] {
            let err = OciSource::parse(&uri).unwrap_err().to_string();
            assert!(err.contains(why), "{uri}: {err}");
            assert!(err.contains("oci://<registry>[:port]/<repository>@sha256:"), "{uri}: {err}");
        }
    }
}
