//! Mounted-volume sources (`pvc://…`, a directory path): copy each file into its partial,
//! hashing as it goes. No resume: a local copy that was cut is simply redone.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use taimatsu_core::ManifestEntry;

use crate::progress::Progress;
use crate::{FetchError, Transferred, blocking};

const COPY_BUF: usize = 1 << 20;

pub(crate) async fn copy(
    root: &Path,
    entry: &ManifestEntry,
    partial: &Path,
    progress: &Arc<Progress>,
) -> Result<Transferred, FetchError> {
    let (source, partial, entry, progress) =
        (root.join(&entry.path), partial.to_owned(), entry.clone(), progress.clone());
    blocking(move || copy_blocking(&source, &partial, &entry, &progress)).await
}

fn copy_blocking(
    source: &Path,
    partial: &Path,
    entry: &ManifestEntry,
    progress: &Progress,
) -> Result<Transferred, FetchError> {
    let location = source.display().to_string();
    let mut input = match File::open(source) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(FetchError::SourceMissing { path: entry.path.clone(), location });
        }
        Err(e) => return Err(FetchError::io(source, e)),
    };
    // Symlinks in the source are followed (Hugging Face caches link into blobs/); the copy is a regular file.
    let len = input.metadata().map_err(|e| FetchError::io(source, e))?.len();
    if len != entry.size {
        let path = entry.path.clone();
        return Err(FetchError::SizeMismatch { path, location, expected: entry.size, actual: len.to_string() });
    }
    if let Some(parent) = partial.parent() {
        std::fs::create_dir_all(parent).map_err(|e| FetchError::io(parent, e))?;
    }
    let mut output = File::create(partial).map_err(|e| FetchError::io(partial, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut copied = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::io(source, e)),
        };
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(|e| FetchError::io(partial, e))?;
        copied += n as u64;
        progress.add_bytes(n as u64);
    }
    if copied != entry.size {
        // The source file changed while it was copied.
        let path = entry.path.clone();
        return Err(FetchError::SizeMismatch { path, location, expected: entry.size, actual: copied.to_string() });
    }
    Ok(Transferred { sha256: hex::encode(hasher.finalize()), location, resumed_from: 0, network_bytes: copied })
}
