//! Files already at their final path: re-hashed, never trusted by name.

use std::path::Path;

use taimatsu_core::file_verify::{self, VerifyError};
use taimatsu_core::{ManifestEntry, ModelManifest};
use tracing::warn;

use crate::{FetchError, blocking};

/// What the cache holds.
pub(crate) struct Plan {
    /// Files present and matching the manifest.
    pub cached: usize,
    /// Files to fetch: absent, or present but not matching (and now deleted).
    pub missing: Vec<ManifestEntry>,
}

/// Hashes every file already in `dest` (`threads` at a time). A file with the wrong size
/// or sha256 is deleted and fetched again: the cache is ours, a mismatch there means
/// tampering or a crash mid-write, and the source is the authority. Anything that is not
/// a regular file where a model file belongs (a directory, a symlink) fails the fetch.
pub(crate) async fn check(dest: &Path, manifest: &ModelManifest, threads: usize) -> Result<Plan, FetchError> {
    let results = blocking({
        let (dest, files) = (dest.to_owned(), manifest.files.clone());
        move || {
            let entries: Vec<&ManifestEntry> = files.iter().collect();
            file_verify::verify_files(&dest, &entries, threads)
        }
    })
    .await;
    let mut plan = Plan { cached: 0, missing: Vec::new() };
    for (entry, result) in manifest.files.iter().zip(results) {
        match result {
            Ok(()) => plan.cached += 1,
            Err(VerifyError::Missing { .. }) => plan.missing.push(entry.clone()),
            Err(error @ (VerifyError::SizeMismatch { .. } | VerifyError::DigestMismatch { .. })) => {
                warn!(
                    file = %entry.path,
                    %error,
                    "cached file does not match the manifest; deleting it and fetching it again"
                );
                let path = dest.join(&entry.path);
                tokio::fs::remove_file(&path).await.map_err(|e| FetchError::io(&path, e))?;
                plan.missing.push(entry.clone());
            }
            Err(error) => return Err(FetchError::Verify { dir: dest.to_owned(), error }),
        }
    }
    Ok(plan)
}
