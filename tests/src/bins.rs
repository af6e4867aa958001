//! Finding the control-plane binaries built from Go modules.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The directory holding kube-apiserver, etcd, kwok and friends.
///
/// `TAIMATSU_CLUSTER_BIN_DIR` wins when set (hack/test.sh sets it). Otherwise
/// `hack/build-cluster-bins.sh` is run: it returns at once when the binaries are
/// cached, and builds them (a one-off ~20 minutes) when they are not.
pub fn cluster_bin_dir() -> anyhow::Result<PathBuf> {
    dir_from_env_or_script("TAIMATSU_CLUSTER_BIN_DIR", "hack/build-cluster-bins.sh")
}

/// The directory holding the OCI `registry` (CNCF Distribution) and the `oras` client.
///
/// `TAIMATSU_OCI_BIN_DIR` wins when set (hack/test.sh sets it). Otherwise
/// `hack/oci-bins.sh` is run: it returns at once when both are cached, and builds them
/// from their Go modules (about 3 minutes) when they are not.
pub fn oci_bin_dir() -> anyhow::Result<PathBuf> {
    dir_from_env_or_script("TAIMATSU_OCI_BIN_DIR", "hack/oci-bins.sh")
}

/// The directory named by `variable`, or else the one the repository's `script` prints
/// (its progress goes to this process's stderr).
fn dir_from_env_or_script(variable: &str, script: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(variable) {
        return Ok(PathBuf::from(dir));
    }
    let script = crate::repo_root().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed; see its output above", script.display());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}
