//! Finds the real models the tests run: `TAIMATSU_MODELS_DIR`, or else whatever
//! `hack/models.sh` prints (it downloads them on a fresh clone and is a no-op afterwards).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use taimatsu_cpu_engine::{FinishReason, Generation, GenerationEvent};

pub fn models_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("TAIMATSU_MODELS_DIR") {
            return PathBuf::from(dir);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/models.sh");
        let output = std::process::Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", script.display()));
        assert!(output.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8(output.stdout).expect("models.sh prints a path").trim())
    })
}

pub fn smollm2() -> PathBuf {
    models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn minilm() -> PathBuf {
    models_dir().join("minilm")
}

/// Everything one generation produced.
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    pub reason: FinishReason,
    pub completion_tokens: u32,
}

/// Reads events until `Finished`; panics on `Failed`, a closed channel or a stall.
pub fn collect(mut generation: Generation) -> Outcome {
    let mut text = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(std::time::Instant::now() < deadline, "generation took too long");
        match generation.events.blocking_recv() {
            Some(GenerationEvent::Text(piece)) => text.push_str(&piece),
            Some(GenerationEvent::Finished { reason, completion_tokens }) => {
                return Outcome { text, reason, completion_tokens };
            }
            Some(GenerationEvent::Failed(message)) => panic!("generation failed: {message}"),
            None => panic!("event channel closed without Finished"),
        }
    }
}

/// Text-generation tests hold this while they run: several llama.cpp engines decoding at once
/// on a small machine would only slow each other down (OpenMP threads spin while waiting).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
