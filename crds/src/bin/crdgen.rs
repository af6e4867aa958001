//! Writes the CRD YAML for every Taimatsu resource into the repository.
//!
//! Usage: `cargo run -p taimatsu-crds --bin crdgen [REPO_ROOT]` (default: the
//! workspace root). The drift test in crds/tests fails when the committed files
//! differ from what this writes.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = match std::env::args_os().nth(1) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    for (path, yaml) in taimatsu_crds::generate::rendered_files(&root)? {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
