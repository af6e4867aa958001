//! The built-in CPU engine (`taimatsu-cpu-engine`), in-process: a GGUF text model for chat
//! and completions, a BERT-style model for embeddings, or (rarely) both. This module
//! loads and warms them up; `serve::builtin` answers requests with them.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use taimatsu_core::ModelManifest;
use taimatsu_cpu_engine::{EmbeddingEngine, EngineError, GenerationEvent, TextEngine};

/// The loaded models. Filled once loading finishes; requests are refused (not ready) until then.
#[derive(Default)]
pub struct Builtin {
    text: OnceLock<Arc<TextEngine>>,
    embed: OnceLock<Arc<EmbeddingEngine>>,
}

impl Builtin {
    /// The text-generation model, if this deployment serves one.
    pub fn text(&self) -> Option<&Arc<TextEngine>> {
        self.text.get()
    }

    /// The embedding model, if this deployment serves one.
    pub fn embeddings(&self) -> Option<&Arc<EmbeddingEngine>> {
        self.embed.get()
    }
}

/// How the models are loaded (the built-in engine's `serve` flags).
#[derive(Clone, Debug)]
pub struct BuiltinConfig {
    /// The verified model files.
    pub model_dir: PathBuf,
    /// CPU threads.
    pub threads: usize,
    /// Sequences decoded together.
    pub parallel: usize,
    /// Context per sequence (0 = the model's).
    pub context_len: u32,
    /// The GGUF quantization the deployment declares, logged as the model loads.
    pub gguf_type: Option<String>,
}

/// Why the model could not be loaded or warmed up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

impl Builtin {
    /// Loads the model the manifest describes — a `.gguf` for text, a BERT-style
    /// safetensors directory for embeddings — and warms it up with one tiny request.
    pub async fn load(&self, cfg: &BuiltinConfig, manifest: &ModelManifest) -> Result<(), LoadError> {
        let failed = LoadError;
        match manifest.format.as_str() {
            "gguf" => {
                let file = manifest
                    .files
                    .iter()
                    .find(|f| f.path.ends_with(".gguf"))
                    .ok_or_else(|| failed("the manifest of a gguf model lists no .gguf file".into()))?;
                let config = taimatsu_cpu_engine::EngineConfig {
                    model_path: cfg.model_dir.join(&file.path),
                    threads: cfg.threads.max(1),
                    parallel: cfg.parallel.max(1),
                    context_len: cfg.context_len,
                };
                if let Some(declared) = &cfg.gguf_type {
                    tracing::info!(gguf_type = %declared, file = %file.path, "loading GGUF model");
                }
                let engine = tokio::task::spawn_blocking(move || TextEngine::load(config))
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(e.to_string()))?;
                let warm = taimatsu_cpu_engine::GenerateRequest {
                    prompt: "Hello".into(),
                    max_tokens: 1,
                    temperature: 0.0,
                    top_p: 1.0,
                    seed: Some(0),
                    stop: vec![],
                };
                let mut generation = engine.generate(warm).map_err(|e| failed(format!("warm-up: {e}")))?;
                loop {
                    match generation.events.recv().await {
                        Some(GenerationEvent::Finished { .. }) => break,
                        Some(GenerationEvent::Text(_)) => {}
                        Some(GenerationEvent::Failed(e)) => return Err(failed(format!("warm-up: {e}"))),
                        None => return Err(failed("warm-up: the engine stopped".into())),
                    }
                }
                let _ = self.text.set(Arc::new(engine));
            }
            "safetensors" => {
                let dir = cfg.model_dir.clone();
                let threads = cfg.threads.max(1);
                let engine = tokio::task::spawn_blocking(move || {
                    let engine = EmbeddingEngine::load(&dir, threads)?;
                    engine.embed(&["warm up".to_owned()])?;
                    Ok::<_, EngineError>(engine)
                })
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
                let _ = self.embed.set(Arc::new(engine));
            }
            other => {
                return Err(failed(format!("the built-in engine serves gguf and safetensors models, not {other:?}")));
            }
        }
        Ok(())
    }
}
