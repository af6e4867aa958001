//! Fetch throughput of the same files from an https:// mirror, an hf:// Hub mirror and an
//! oci:// registry (`benchmarks/fetch.sh` runs it in release mode): the test mirrors of
//! `taimatsu_tests` and the real Distribution registry (token auth, the files pushed with
//! ORAS) on loopback over TLS, serving the real SmolLM2 and MiniLM files, each
//! fetched `ROUNDS` times (default 3) into an empty directory with the library the worker's
//! fetch step runs, every file hashed and verified. Prints a markdown table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use taimatsu_core::{ManifestEntry, ModelManifest, manifest_digest};
use taimatsu_model_fetch::{FetchOptions, SourceEnv, fetch_with_env};
use taimatsu_model_fetch::{OCI_PASSWORD, OCI_USERNAME};
use taimatsu_tests::hub_mirror::{HubMirror, HubRepoName, Listen, MINILM, SMOLLM2};
use taimatsu_tests::mirror::Mirror;
use taimatsu_tests::oci_registry::{OciRegistry, RegistryOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let models = PathBuf::from(std::env::var("TAIMATSU_MODELS_DIR").map_err(|_| {
        anyhow::anyhow!("set TAIMATSU_MODELS_DIR to hack/models.sh's output (benchmarks/fetch.sh does)")
    })?);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let work = tempfile::tempdir()?;
    let https = Mirror::serve(models.clone(), None).await?;
    let hub = HubMirror::models(&models, Listen::TlsLoopback).await?;
    let https_ca = work.path().join("https-ca.pem");
    let hub_ca = work.path().join("hub-ca.pem");
    std::fs::write(&https_ca, &https.ca_pem)?;
    std::fs::write(&hub_ca, hub.ca_pem.as_deref().unwrap_or_default())?;
    let registry = OciRegistry::start(&work.path().join("registry"), RegistryOptions::default()).await?;
    let registry_ca = registry.ca_file()?;
    let registry_env = SourceEnv::from_pairs([
        (OCI_USERNAME.to_owned(), registry.username.clone()),
        (OCI_PASSWORD.to_owned(), registry.password.clone()),
    ]);

    println!("| model | source | bytes | best s | median s | best MB/s |");
    println!("|---|---|---:|---:|---:|---:|");
    let cases: [(HubRepoName, &str); 2] = [(SMOLLM2, "smollm2-135m-instruct"), (MINILM, "all-minilm-l6-v2")];
    for (repo, mirrored) in cases {
        let manifest_path = work.path().join(format!("{}.json", repo.dir));
        let manifest = manifest_of(&models.join(repo.dir))?;
        let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
        let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        let repository = format!("models/{}", repo.dir);
        let pushed = registry.push(&models.join(repo.dir), &paths, &repository, "bench").await?;
        let (none, oci) = (SourceEnv::default(), &registry_env);
        let sources = [
            ("https://", format!("{}/{mirrored}/", https.url), None, https_ca.clone(), &none),
            ("hf://", repo.source(), Some(hub.url.clone()), hub_ca.clone(), &none),
            ("oci://", registry.uri(&repository, &pushed.digest), None, registry_ca.clone(), oci),
        ];
        for (kind, source, hf_mirror, ca, env) in sources {
            let mut times = Vec::new();
            for round in 0..rounds {
                let dest = work.path().join(format!("dest-{}-{round}", kind.trim_end_matches("://")));
                let options = FetchOptions {
                    source: source.clone(),
                    manifest: manifest_path.clone(),
                    dest: dest.clone(),
                    ca_bundle: Some(ca.clone()),
                    parallel: 4,
                    hf_mirror: hf_mirror.clone(),
                    allow_branch_revision: false,
                };
                let started = Instant::now();
                let report = fetch_with_env(&options, env).await?;
                times.push(started.elapsed());
                anyhow::ensure!(report.downloaded_bytes == bytes, "{kind} {}: a cached file was not fetched", repo.dir);
                std::fs::remove_dir_all(&dest)?;
            }
            times.sort();
            let (best, median) = (times[0], times[times.len() / 2]);
            let mb_s = bytes as f64 / best.as_secs_f64() / 1e6;
            println!("| {} | {kind} | {bytes} | {:.3} | {:.3} | {mb_s:.0} |", repo.dir, secs(best), secs(median));
        }
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Every file under `dir` with its size and sha256, as the Model's manifest pins them.
fn manifest_of(dir: &Path) -> anyhow::Result<ModelManifest> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort_by(|a: &ManifestEntry, b| a.path.cmp(&b.path));
    let gguf = files.iter().any(|f| f.path.ends_with(".gguf"));
    Ok(ModelManifest {
        model: "bench".into(),
        source: "bench".into(),
        format: if gguf { "gguf" } else { "safetensors" }.into(),
        digest: manifest_digest(&files),
        files,
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<ManifestEntry>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            out.push(ManifestEntry {
                path: path.strip_prefix(root)?.to_string_lossy().replace('\\', "/"),
                size: std::fs::metadata(&path)?.len(),
                sha256: taimatsu_core::file_verify::sha256_file(&path)?,
            });
        }
    }
    Ok(())
}
