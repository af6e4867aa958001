//! Verifying files on disk against a model manifest (sha256 and size of each file,
//! no missing and no extra files). Used by `inference-worker fetch` and again by
//! `inference-worker serve` before it loads anything.
//!
//! The model directory holds exactly the manifest's files, plus:
//! - [`STATE_DIR`] (`.taimatsu/`) at its top level, reserved for the fetcher's bookkeeping
//!   (partial downloads). It is never served and never checked; a manifest may not list
//!   a path inside it.
//! - a top-level `lost+found/` directory, which ext4 volumes carry and a non-root worker
//!   cannot even list.
//!
//! Anything else that is not a directory (a stray file, a symlink, a fifo) is unexpected:
//! the engine could pick it up, and we only serve what the manifest pins.
//!
//! Sizes are checked before any hashing (a stat is cheap, a hash reads the whole file),
//! and files are hashed in parallel, largest first, so the longest file starts first and
//! the wall time approaches that of the largest file.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::manifest::{ManifestEntry, ManifestError, ModelManifest};

/// The reserved top-level directory of a model directory for fetch bookkeeping.
pub const STATE_DIR: &str = ".taimatsu";

/// Bytes read per `read` call while hashing: large enough that syscall overhead is
/// negligible next to SHA-256, small enough to stay in L2/L3 while it is hashed.
const HASH_BUF: usize = 1 << 20;

/// At most this many unexpected paths are named in one error (the count says the rest).
const MAX_NAMED: usize = 10;

/// A directory that matched its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedModel {
    /// The manifest digest (`sha256:…`) the files were verified against.
    pub digest: String,
    pub files: usize,
    pub bytes: u64,
}

/// Why a model directory does not match its manifest.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error(
        "manifest file {path:?} lies inside the reserved state directory {STATE_DIR}/: rename the file in spec.files"
    )]
    ReservedPath { path: String },
    #[error("{path}: missing from {dir}: the file was never fetched or was deleted — re-run the fetch", dir = dir.display())]
    Missing { dir: PathBuf, path: String },
    #[error(
        "{path}: is {found}, not a regular file; the manifest pins regular files — replace it with the file itself"
    )]
    NotAFile { path: String, found: &'static str },
    #[error(
        "{path}: size is {actual} bytes but the manifest pins {expected}; the file is truncated or was replaced — re-fetch it from the source or fix spec.files"
    )]
    SizeMismatch { path: String, expected: u64, actual: u64 },
    #[error(
        "{path}: sha256 is {actual} but the manifest pins {expected}; the file was corrupted or replaced — re-fetch it from the source or fix spec.files"
    )]
    DigestMismatch { path: String, expected: String, actual: String },
    #[error(
        "{} not in the manifest: {}{}; remove {} or add {} to spec.files (the directory holds only the model's files and the reserved {STATE_DIR}/ directory)",
        if paths.len() == 1 { "a file is" } else { "files are" },
        paths.iter().take(MAX_NAMED).map(String::as_str).collect::<Vec<_>>().join(", "),
        if paths.len() > MAX_NAMED { format!(" and {} more", paths.len() - MAX_NAMED) } else { String::new() },
        if paths.len() == 1 { "it" } else { "them" },
        if paths.len() == 1 { "it" } else { "them" },
    )]
    Unexpected { paths: Vec<String> },
    #[error("{}: {source}; check the volume is mounted and readable by the worker", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl VerifyError {
    /// The fixed reason word for the termination message and the operator's condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Manifest(_) | Self::ReservedPath { .. } => "InvalidManifest",
            Self::Missing { .. } => "MissingFile",
            Self::NotAFile { .. } | Self::Unexpected { .. } => "UnexpectedFile",
            Self::SizeMismatch { .. } | Self::DigestMismatch { .. } => "DigestMismatch",
            Self::Io { .. } => "FetchFailed",
        }
    }
}

/// Lower-case hex SHA-256 of a file's content, read in large blocks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let (digest, _) = sha256_reader(File::open(path)?)?;
    Ok(digest)
}

/// Lower-case hex SHA-256 and length of everything `reader` yields.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUF];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

/// Threads worth using for hashing on this machine.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Verifies that `dir` holds exactly the manifest's files, each with its size and sha256.
///
/// Checks, cheapest first: the manifest itself, that every file exists with its size,
/// that no other file is present, then every hash (`threads` files at a time). Stops at
/// the first mismatching hash.
pub fn verify_dir(dir: &Path, manifest: &ModelManifest, threads: usize) -> Result<VerifiedModel, VerifyError> {
    check_manifest(manifest)?;
    for entry in &manifest.files {
        check_size(dir, entry)?;
    }
    let unexpected = unexpected_files(dir, manifest)?;
    if !unexpected.is_empty() {
        return Err(VerifyError::Unexpected { paths: unexpected });
    }
    let entries: Vec<&ManifestEntry> = manifest.files.iter().collect();
    for result in hash_files(dir, &entries, threads, true) {
        result?;
    }
    Ok(VerifiedModel {
        digest: manifest.digest.clone(),
        files: manifest.files.len(),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
    })
}

/// [`ModelManifest::validate`], plus: no path inside [`STATE_DIR`].
pub fn check_manifest(manifest: &ModelManifest) -> Result<(), VerifyError> {
    manifest.validate()?;
    if let Some(f) = manifest.files.iter().find(|f| f.path.split('/').next() == Some(STATE_DIR)) {
        return Err(VerifyError::ReservedPath { path: f.path.clone() });
    }
    Ok(())
}

/// Checks one file: it exists as a regular file with the pinned size, then its sha256.
/// The manifest must have passed [`check_manifest`] (so the path stays inside `dir`).
pub fn verify_file(dir: &Path, entry: &ManifestEntry) -> Result<(), VerifyError> {
    check_size(dir, entry)?;
    check_hash(dir, entry)
}

/// [`verify_file`] for many files, `threads` at a time; one result per entry, in order.
pub fn verify_files(dir: &Path, entries: &[&ManifestEntry], threads: usize) -> Vec<Result<(), VerifyError>> {
    let sized: Vec<Result<(), VerifyError>> = entries.iter().map(|e| check_size(dir, e)).collect();
    let to_hash: Vec<&ManifestEntry> = entries.iter().zip(&sized).filter(|(_, r)| r.is_ok()).map(|(e, _)| *e).collect();
    let mut hashed = hash_files(dir, &to_hash, threads, false).into_iter();
    sized.into_iter().map(|r| r.and_then(|()| hashed.next().unwrap_or(Ok(())))).collect()
}

/// Every path below `dir` that the manifest does not list and that is not a directory,
/// `/`-separated and sorted. Skips the top-level [`STATE_DIR`] and `lost+found`.
pub fn unexpected_files(dir: &Path, manifest: &ModelManifest) -> Result<Vec<String>, VerifyError> {
    let expected: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let mut found = Vec::new();
    walk(dir, "", &expected, &mut found)?;
    found.sort();
    Ok(found)
}

fn walk(dir: &Path, prefix: &str, expected: &BTreeSet<&str>, found: &mut Vec<String>) -> Result<(), VerifyError> {
    let io_err = |source| VerifyError::Io { path: dir.to_owned(), source };
    for item in std::fs::read_dir(dir).map_err(io_err)? {
        let item = item.map_err(io_err)?;
        let name = item.file_name();
        let rel = format!("{prefix}{}", name.to_string_lossy());
        // file_type() does not follow symlinks: a symlinked directory is reported, not walked.
        let kind = item.file_type().map_err(|source| VerifyError::Io { path: item.path(), source })?;
        if kind.is_dir() {
            if prefix.is_empty() && (rel == STATE_DIR || rel == "lost+found") {
                continue;
            }
            walk(&item.path(), &format!("{rel}/"), expected, found)?;
        } else if !(kind.is_file() && expected.contains(rel.as_str())) {
            // A non-UTF-8 name cannot be a manifest path, so the lossy name only ever names a stray file.
            found.push(rel);
        }
    }
    Ok(())
}

/// Exists, is a regular file (not through a symlink) and has the pinned size.
fn check_size(dir: &Path, entry: &ManifestEntry) -> Result<(), VerifyError> {
    let path = dir.join(&entry.path);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VerifyError::Missing { dir: dir.to_owned(), path: entry.path.clone() });
        }
        Err(source) => return Err(VerifyError::Io { path, source }),
    };
    let kind = meta.file_type();
    if !kind.is_file() {
        let found = if kind.is_symlink() {
            "a symlink"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "a special file"
        };
        return Err(VerifyError::NotAFile { path: entry.path.clone(), found });
    }
    if meta.len() != entry.size {
        return Err(VerifyError::SizeMismatch { path: entry.path.clone(), expected: entry.size, actual: meta.len() });
    }
    Ok(())
}

fn check_hash(dir: &Path, entry: &ManifestEntry) -> Result<(), VerifyError> {
    let path = dir.join(&entry.path);
    let io_err = |source| VerifyError::Io { path: path.clone(), source };
    let (actual, len) = sha256_reader(File::open(&path).map_err(io_err)?).map_err(io_err)?;
    // The file may have changed between the stat and the read.
    if len != entry.size {
        return Err(VerifyError::SizeMismatch { path: entry.path.clone(), expected: entry.size, actual: len });
    }
    if actual != entry.sha256 {
        return Err(VerifyError::DigestMismatch { path: entry.path.clone(), expected: entry.sha256.clone(), actual });
    }
    Ok(())
}

/// Hashes `entries` on up to `threads` scoped threads, largest file first. Results are in
/// `entries` order. With `stop_early`, threads take no new file after a failure, and the
/// files never hashed report `Ok` — the caller stops at the first error in order anyway.
fn hash_files(
    dir: &Path,
    entries: &[&ManifestEntry],
    threads: usize,
    stop_early: bool,
) -> Vec<Result<(), VerifyError>> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(entries[i].size));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Result<(), VerifyError>>> = entries.iter().map(|_| Mutex::new(Ok(()))).collect();
    let workers = threads.clamp(1, entries.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    if stop_early && failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else { return };
                    let result = check_hash(dir, entries[i]);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    // A poisoned slot only means another worker panicked; the scope re-raises that panic.
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = result;
                    }
                }
            });
        }
    });
    results.into_iter().map(|m| m.into_inner().unwrap_or(Ok(()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::manifest_digest;

    fn write(dir: &Path, rel: &str, content: &[u8]) -> ManifestEntry {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        ManifestEntry { path: rel.into(), size: content.len() as u64, sha256: hex::encode(Sha256::digest(content)) }
    }

    fn manifest(files: Vec<ManifestEntry>) -> ModelManifest {
        ModelManifest {
            model: "m".into(),
            source: "https://mirror.example/m/".into(),
            format: "safetensors".into(),
            digest: manifest_digest(&files),
            files,
        }
    }

    /// A model directory with three files, one nested, one larger than the hash buffer.
    fn model_dir() -> (tempfile::TempDir, ModelManifest) {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(HASH_BUF * 2 + 123)).map(|i| (i * 7 % 251) as u8).collect();
        let files = vec![
            write(dir.path(), "config.json", b"{\"a\":1}"),
            write(dir.path(), "weights/model.safetensors", &big),
            write(dir.path(), "empty.txt", b""),
        ];
        (dir, manifest(files))
    }

    #[test]
    fn matching_directory_verifies_with_any_thread_count() {
        let (dir, m) = model_dir();
        std::fs::create_dir_all(dir.path().join(STATE_DIR).join("partial")).unwrap();
        std::fs::write(dir.path().join(STATE_DIR).join("partial/x"), b"junk").unwrap();
        std::fs::create_dir_all(dir.path().join("empty-dir")).unwrap();
        for threads in [0, 1, 2, 8] {
            let v = verify_dir(dir.path(), &m, threads).unwrap();
            assert_eq!(
                v,
                VerifiedModel { digest: m.digest.clone(), files: 3, bytes: m.files.iter().map(|f| f.size).sum() }
            );
        }
    }

    #[test]
    fn sha256_matches_known_answers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("abc"), b"abc").unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        assert_eq!(
            sha256_file(&dir.path().join("abc")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_file(&dir.path().join("empty")).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn flipped_byte_names_file_and_both_digests() {
        let (dir, m) = model_dir();
        let path = dir.path().join("weights/model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HASH_BUF + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = verify_dir(dir.path(), &m, 2).unwrap_err();
        let actual = hex::encode(Sha256::digest(&bytes));
        match &err {
            VerifyError::DigestMismatch { path, expected, actual: got } => {
                assert_eq!(path, "weights/model.safetensors");
                assert_eq!(expected, &m.files[1].sha256);
                assert_eq!(got, &actual);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.reason(), "DigestMismatch");
        let msg = err.to_string();
        assert!(msg.starts_with("weights/model.safetensors: sha256 is "), "{msg}");
        assert!(msg.contains(&actual) && msg.contains(&m.files[1].sha256), "{msg}");
    }

    #[test]
    fn size_is_checked_before_hashing() {
        let (dir, m) = model_dir();
        std::fs::write(dir.path().join("config.json"), b"{\"a\":12}").unwrap();
        let err = verify_dir(dir.path(), &m, 2).unwrap_err();
        assert!(
            matches!(&err, VerifyError::SizeMismatch { path, expected: 7, actual: 8 } if path == "config.json"),
            "{err:?}"
        );
        assert_eq!(err.reason(), "DigestMismatch");
    }

    #[test]
    fn missing_file_is_named() {
        let (dir, m) = model_dir();
        std::fs::remove_file(dir.path().join("weights/model.safetensors")).unwrap();
        let err = verify_dir(dir.path(), &m, 2).unwrap_err();
        assert!(matches!(&err, VerifyError::Missing { path, .. } if path == "weights/model.safetensors"), "{err:?}");
        assert_eq!(err.reason(), "MissingFile");
    }

    #[test]
    fn unexpected_files_are_named_but_state_dir_is_not() {
        let (dir, m) = model_dir();
        std::fs::write(dir.path().join("weights/extra.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        std::fs::write(dir.path().join(STATE_DIR).join("state"), b"x").unwrap();
        let err = verify_dir(dir.path(), &m, 2).unwrap_err();
        assert!(
            matches!(&err, VerifyError::Unexpected { paths } if paths == &["notes.txt", "weights/extra.bin"]),
            "{err:?}"
        );
        assert_eq!(err.reason(), "UnexpectedFile");
        assert!(err.to_string().contains("notes.txt, weights/extra.bin"), "{err}");
    }

    #[test]
    fn symlinks_are_not_trusted() {
        let (dir, m) = model_dir();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("c.json"), b"{\"a\":1}").unwrap();
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("c.json"), dir.path().join("config.json")).unwrap();
        let err = verify_dir(dir.path(), &m, 1).unwrap_err();
        assert!(matches!(&err, VerifyError::NotAFile { path, found: "a symlink" } if path == "config.json"), "{err:?}");

        // A symlink at a path the manifest does not list is unexpected, and not followed.
        let (dir, m) = model_dir();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let err = verify_dir(dir.path(), &m, 1).unwrap_err();
        assert!(matches!(&err, VerifyError::Unexpected { paths } if paths == &["link"]), "{err:?}");
    }

    #[test]
    fn manifest_is_validated_and_state_dir_is_reserved() {
        let (dir, mut m) = model_dir();
        m.digest = "sha256:0".into();
        assert_eq!(verify_dir(dir.path(), &m, 1).unwrap_err().reason(), "InvalidManifest");

        let files = vec![write(dir.path(), ".taimatsu/x", b"x")];
        let err = verify_dir(dir.path(), &manifest(files), 1).unwrap_err();
        assert!(matches!(&err, VerifyError::ReservedPath { path } if path == ".taimatsu/x"), "{err:?}");
    }

    #[test]
    fn verify_files_reports_each_file() {
        let (dir, m) = model_dir();
        std::fs::write(dir.path().join("config.json"), b"{\"a\":2}").unwrap();
        std::fs::remove_file(dir.path().join("empty.txt")).unwrap();
        let entries: Vec<&ManifestEntry> = m.files.iter().collect();
        let results = verify_files(dir.path(), &entries, 3);
        assert!(matches!(&results[0], Err(VerifyError::DigestMismatch { path, .. }) if path == "config.json"));
        assert!(results[1].is_ok());
        assert!(matches!(&results[2], Err(VerifyError::Missing { path, .. }) if path == "empty.txt"));
    }

    #[test]
    fn many_unexpected_files_are_counted() {
        let (dir, m) = model_dir();
        for i in 0..(MAX_NAMED + 3) {
            std::fs::write(dir.path().join(format!("x{i:02}")), b"x").unwrap();
        }
        let msg = verify_dir(dir.path(), &m, 1).unwrap_err().to_string();
        assert!(msg.contains("x09 and 3 more;"), "{msg}");
        assert!(!msg.contains("x10"), "{msg}");
    }
}
