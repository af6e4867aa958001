//! `hf://<org>/<name>@<revision>`: a Hugging Face Hub repository at a revision, as a Model's
//! source names it. Parsed here, once, for the operator (is the revision pinned?), the
//! worker's fetch step (which URLs to ask the mirror) and the kubectl plugin.
//!
//! A revision is *pinned* only when it is a full 40-hex commit id. Branches move by design,
//! and Hub tags can be deleted and re-created on another commit, so neither identifies the
//! files: in namespaces that require pinning only a commit is accepted.

/// A parsed `hf://` source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HfSource {
    /// The repository owner (user or organisation), e.g. `HuggingFaceTB`.
    pub org: String,
    /// The repository name, e.g. `SmolLM2-135M-Instruct-GGUF`.
    pub name: String,
    /// A commit id, branch or tag, e.g. `main` or `refs/pr/1`.
    pub revision: String,
}

/// Why a string is not an `hf://` source.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{uri:?} is not an hf:// source ({why}): give it as hf://<org>/<name>@<40-hex commit id>")]
pub struct HfParseError {
    uri: String,
    why: &'static str,
}

/// The scheme prefix of Hub sources.
pub const SCHEME: &str = "hf://";

impl HfSource {
    /// Parses `hf://<org>/<name>@<revision>`, with the same characters as the CRD allows
    /// (letters, digits, `.`, `_`, `-`; `/` also in the revision), and no `.`/`..` segments,
    /// which would change the meaning of the URLs built from them.
    pub fn parse(uri: &str) -> Result<HfSource, HfParseError> {
        let bad = |why| HfParseError { uri: uri.to_owned(), why };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| bad("it does not start with hf://"))?;
        let (repo, revision) = rest.split_once('@').ok_or_else(|| bad("it names no @revision"))?;
        let (org, name) = repo.split_once('/').ok_or_else(|| bad("the repository is not <org>/<name>"))?;
        let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        for part in [org, name] {
            if part.is_empty() || !plain(part) || part == "." || part == ".." {
                return Err(bad("the organisation and name are letters, digits, '.', '_' and '-'"));
            }
        }
        if revision.is_empty() || revision.split('/').any(|s| s.is_empty() || s == "." || s == ".." || !plain(s)) {
            return Err(bad("the revision is a commit id, branch or tag"));
        }
        Ok(HfSource { org: org.to_owned(), name: name.to_owned(), revision: revision.to_owned() })
    }

    /// `<org>/<name>`, as the Hub's URLs and APIs name the repository.
    pub fn repo_id(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// Whether the revision is a full commit id, the only revision that cannot move.
    pub fn is_pinned(&self) -> bool {
        is_commit(&self.revision)
    }

    /// The same repository at `commit`: what to pin a moving revision to.
    pub fn at(&self, commit: &str) -> HfSource {
        HfSource { revision: commit.to_owned(), ..self.clone() }
    }
}

impl std::fmt::Display for HfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}@{}", self.org, self.name, self.revision)
    }
}

/// A full git commit id: 40 lower-case hex characters, as the Hub reports them.
pub fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn parses_repository_and_revision() {
        let source = HfSource::parse(&format!("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@{COMMIT}")).unwrap();
        assert_eq!(source.repo_id(), "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
        assert!(source.is_pinned());
        assert_eq!(source.to_string(), format!("hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@{COMMIT}"));
        let pr = HfSource::parse("hf://org/m@refs/pr/1").unwrap();
        assert_eq!(pr.revision, "refs/pr/1");
        assert!(!pr.is_pinned());
        assert_eq!(pr.at(COMMIT).to_string(), format!("hf://org/m@{COMMIT}"));
    }

    #[test]
    fn only_a_full_lower_case_commit_is_pinned() {
        for revision in ["main", "v1.0", &COMMIT[..39], &COMMIT.to_uppercase(), &format!("{COMMIT}0")] {
            assert!(!is_commit(revision), "{revision}");
        }
        assert!(is_commit(COMMIT));
    }

    #[test]
    fn refuses_what_would_change_the_urls() {
        for uri in [
            "hf://org/m",
            "hf://m@main",
            "hf://org/m/x@main",
            "hf://../m@main",
            "hf://org/..@main",
            "hf://org/m@",
            "hf://org/m@a/../b",
            "hf://org/m@a//b",
            "hf://org/m@ma in",
            "hf://org/m@ma%2Fin",
            "https://org/m@main",
        ] {
            let err = HfSource::parse(uri).unwrap_err();
            assert!(err.to_string().contains("hf://<org>/<name>@"), "{uri}: {err}");
        }
    }
}
