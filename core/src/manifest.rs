//! A model's file manifest (path, size, sha256 of every file) and its digest.
//!
//! The manifest digest identifies *what* is served: the operator records it in
//! revisions and status, the worker prints it after verifying the files, and the
//! audit trail carries it. It is computed the same way everywhere, here.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One file of a model, pinned by size and content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the model's root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the file's content.
    pub sha256: String,
}

/// Why a manifest path cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestPathError {
    #[error("path is empty: give the file's path relative to the model root")]
    Empty,
    #[error("path {0:?} is absolute: give it relative to the model root, without a leading '/'")]
    Absolute(String),
    #[error(
        "path {0:?} has an empty, '.' or '..' segment: give a plain relative path such as 'tokenizer.json' or 'weights/model-00001.safetensors'"
    )]
    BadSegment(String),
}

/// Checks that a manifest path stays inside the model directory once joined to it.
pub fn validate_relative_path(path: &str) -> Result<(), ManifestPathError> {
    if path.is_empty() {
        return Err(ManifestPathError::Empty);
    }
    if path.starts_with('/') {
        return Err(ManifestPathError::Absolute(path.to_owned()));
    }
    if path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(ManifestPathError::BadSegment(path.to_owned()));
    }
    Ok(())
}

/// The digest of a whole manifest: `sha256:` + hex SHA-256 over one line per file,
/// sorted by path, each `"<sha256>  <size>  <path>\n"` (the `sha256sum` layout plus size).
///
/// Order-independent, so reordering the manifest in YAML does not make a new revision,
/// while any change to a path, size or hash does.
pub fn manifest_digest<'a>(entries: impl IntoIterator<Item = &'a ManifestEntry>) -> String {
    let mut lines: Vec<String> =
        entries.into_iter().map(|e| format!("{}  {}  {}\n", e.sha256, e.size, e.path)).collect();
    lines.sort_by(|a, b| line_path(a).cmp(line_path(b)));
    let mut hasher = Sha256::new();
    for line in &lines {
        hasher.update(line.as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn line_path(line: &str) -> &str {
    line.splitn(3, "  ").nth(2).unwrap_or(line)
}

/// The manifest document the operator renders into each revision's ConfigMap
/// (`manifest.json`) and the worker verifies against, in `fetch` and again in `serve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Name of the Model object.
    pub model: String,
    /// Where the files come from (`https://…/`, `s3://bucket/prefix/`, `pvc://claim/path`).
    pub source: String,
    /// `gguf` or `safetensors`.
    pub format: String,
    /// [`manifest_digest`] of `files`, as the operator computed it.
    pub digest: String,
    /// Every file, pinned by size and sha256.
    pub files: Vec<ManifestEntry>,
}

/// Why a manifest document cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest lists no files: a Model must pin every file it serves")]
    NoFiles,
    #[error("manifest file {path:?}: {source}")]
    BadPath { path: String, source: ManifestPathError },
    #[error("manifest lists {0:?} twice: each file appears once")]
    Duplicate(String),
    #[error("manifest file {path:?}: sha256 {sha256:?} is not 64 lower-case hex characters")]
    BadHash { path: String, sha256: String },
    #[error(
        "manifest digest {declared} does not match its files ({computed}): the manifest was edited after the operator rendered it"
    )]
    DigestMismatch { declared: String, computed: String },
}

impl ModelManifest {
    /// Checks paths, hashes, duplicates and that `digest` matches `files`.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.files.is_empty() {
            return Err(ManifestError::NoFiles);
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.files {
            validate_relative_path(&f.path)
                .map_err(|source| ManifestError::BadPath { path: f.path.clone(), source })?;
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                return Err(ManifestError::BadHash { path: f.path.clone(), sha256: f.sha256.clone() });
            }
            if !seen.insert(f.path.as_str()) {
                return Err(ManifestError::Duplicate(f.path.clone()));
            }
        }
        let computed = manifest_digest(&self.files);
        if computed != self.digest {
            return Err(ManifestError::DigestMismatch { declared: self.digest.clone(), computed });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, size: u64, fill: char) -> ManifestEntry {
        ManifestEntry { path: path.into(), size, sha256: fill.to_string().repeat(64) }
    }

    #[test]
    fn digest_ignores_order_but_not_content() {
        let a = entry("config.json", 10, 'a');
        let b = entry("model.safetensors", 20, 'b');
        let d1 = manifest_digest([&a, &b]);
        assert_eq!(d1, manifest_digest([&b, &a]));
        assert!(d1.starts_with("sha256:") && d1.len() == 7 + 64);

        let b_resized = entry("model.safetensors", 21, 'b');
        assert_ne!(d1, manifest_digest([&a, &b_resized]));
        let b_rehashed = entry("model.safetensors", 20, 'c');
        assert_ne!(d1, manifest_digest([&a, &b_rehashed]));
        let b_moved = entry("weights/model.safetensors", 20, 'b');
        assert_ne!(d1, manifest_digest([&a, &b_moved]));
    }

    #[test]
    fn digest_of_known_manifest_is_stable() {
        // sha256 of "aaaa…a  10  config.json\n", fixed so a change of layout is noticed.
        let d = manifest_digest([&entry("config.json", 10, 'a')]);
        let line = format!("{}  10  config.json\n", "a".repeat(64));
        assert_eq!(d, format!("sha256:{}", hex::encode(Sha256::digest(line.as_bytes()))));
    }

    #[test]
    fn paths_must_stay_inside_the_model_root() {
        assert_eq!(validate_relative_path("model.gguf"), Ok(()));
        assert_eq!(validate_relative_path("a/b/c.safetensors"), Ok(()));
        assert!(matches!(validate_relative_path(""), Err(ManifestPathError::Empty)));
        assert!(matches!(validate_relative_path("/etc/passwd"), Err(ManifestPathError::Absolute(_))));
        for bad in ["../x", "a/../b", "a//b", "./a", "a/"] {
            assert!(matches!(validate_relative_path(bad), Err(ManifestPathError::BadSegment(_))), "{bad}");
        }
    }
}
