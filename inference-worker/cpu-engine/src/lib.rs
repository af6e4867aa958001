//! The built-in CPU engine: real inference in-process, for laptops, CI and edge boxes.
//!
//! Text generation runs GGUF models; embeddings run a BERT-style safetensors model.
//! The worker's HTTP layer talks to this crate only through the API below.
//!
//! API CONTRACT (fixed; the worker depends on it):
//! - `TextEngine::load(config)` loads a GGUF file and starts the engine's own thread(s).
//!   `TextEngine` is `Send + Sync` and cheap to share (`Arc` inside or wrap it).
//! - `TextEngine::generate(request)` returns at once with the prompt token count and a
//!   receiver of `GenerationEvent`s. Dropping the receiver cancels the generation
//!   (client went away); the engine notices within one decode step.
//! - Several generations run concurrently (up to `EngineConfig::parallel`), batched.
//! - `EmbeddingEngine` is synchronous; callers run it on a blocking thread.

use std::path::PathBuf;
use std::sync::Arc;

mod embed;
mod guard;
mod text;

/// How to load a GGUF model for generation.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The `.gguf` file.
    pub model_path: PathBuf,
    /// CPU threads for decode and prompt processing; 0 = all available cores.
    pub threads: usize,
    /// Sequences decoded together (concurrent requests served at once); 0 counts as 1.
    /// Further requests wait in a queue for a free sequence.
    pub parallel: usize,
    /// Context length per sequence, in tokens; 0 = the model's trained context (capped at 8192).
    pub context_len: u32,
}

/// One chat message, OpenAI-style roles: `system`, `user`, `assistant`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// The full prompt text (for chat: the output of `apply_chat_template`).
    pub prompt: String,
    /// At most this many new tokens.
    pub max_tokens: u32,
    /// 0.0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling; 1.0 = off.
    pub top_p: f32,
    /// Sampling seed; `None` = random.
    pub seed: Option<u64>,
    /// Stop strings: generation ends before any of them, which is not emitted.
    pub stop: Vec<String>,
}

/// Why a generation ended, as OpenAI's `finish_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` or the context is full.
    Length,
}

/// What the engine sends while generating.
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
    /// New text (valid UTF-8; multi-byte characters are never split across events).
    Text(String),
    /// The last event of a successful generation.
    Finished { reason: FinishReason, completion_tokens: u32 },
    /// The generation failed; no further events.
    Failed(String),
}

/// A running generation.
#[derive(Debug)]
pub struct Generation {
    /// Tokens in the prompt after tokenization.
    pub prompt_tokens: u32,
    /// Events until `Finished` or `Failed`. Drop it to cancel.
    pub events: tokio::sync::mpsc::Receiver<GenerationEvent>,
}

/// Facts about the loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// `general.architecture` from the GGUF (llama, qwen2, qwen3, gemma3, …).
    pub architecture: String,
    /// Context length per sequence actually configured.
    pub context_len: u32,
    /// Whether the GGUF carries a chat template.
    pub has_chat_template: bool,
}

/// Errors of the engine. Messages name the file or the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("prompt has {prompt_tokens} tokens but the context holds {context_len}: shorten the prompt")]
    PromptTooLong { prompt_tokens: u32, context_len: u32 },
    #[error("chat template: {0}")]
    Template(String),
    #[error("the engine stopped: {0}")]
    Stopped(String),
    /// The request itself is unusable (empty prompt, temperature not a number, …).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Running the model failed (embeddings; generation reports failures as events).
    #[error("inference failed: {0}")]
    Inference(String),
}

/// GGUF text generation.
///
/// Cloning is cheap and every clone drives the same engine thread; the thread stops once the
/// last clone is dropped and its running generations have ended.
#[derive(Clone)]
pub struct TextEngine {
    inner: Arc<text::TextEngineInner>,
}

impl TextEngine {
    /// Loads the GGUF file and starts the engine thread. Blocks while the model loads.
    pub fn load(config: EngineConfig) -> Result<Self, EngineError> {
        Ok(Self { inner: Arc::new(text::TextEngineInner::load(config)?) })
    }

    pub fn info(&self) -> ModelInfo {
        self.inner.info().clone()
    }

    /// Renders messages with the chat template from the GGUF metadata, ending with the
    /// assistant turn's opening so the model answers.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        self.inner.apply_chat_template(messages)
    }

    /// Number of tokens `text` tokenizes to (no BOS added).
    pub fn count_tokens(&self, text: &str) -> Result<u32, EngineError> {
        self.inner.count_tokens(text)
    }

    /// Queues a generation. Returns at once; the events arrive as the engine thread decodes.
    /// The event channel is sized so that the engine never waits for a slow reader.
    pub fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        self.inner.generate(request)
    }
}

impl std::fmt::Debug for TextEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEngine").field("info", self.inner.info()).finish_non_exhaustive()
    }
}

/// Sentence embeddings from a BERT-style safetensors model directory
/// (`config.json`, `model.safetensors`, `tokenizer.json`): mean pooling, L2-normalised.
///
/// Inputs longer than the model's limit are truncated (`max_seq_length` of
/// `sentence_bert_config.json` when present, else `max_position_embeddings`).
/// Cloning is cheap and clones share the weights.
#[derive(Clone)]
pub struct EmbeddingEngine {
    inner: Arc<embed::Embedder>,
}

/// Embeddings of a batch of inputs.
#[derive(Clone, Debug)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
}

impl EmbeddingEngine {
    /// Loads the model; `threads` CPU threads compute each batch (0 = all available cores).
    pub fn load(model_dir: &std::path::Path, threads: usize) -> Result<Self, EngineError> {
        Ok(Self { inner: Arc::new(embed::Embedder::load(model_dir, threads)?) })
    }

    /// Dimension of the vectors.
    pub fn dimensions(&self) -> usize {
        self.inner.dimensions()
    }

    /// One unit-length vector per input, in input order.
    pub fn embed(&self, inputs: &[String]) -> Result<Embeddings, EngineError> {
        self.inner.embed(inputs)
    }
}

impl std::fmt::Debug for EmbeddingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingEngine").field("dimensions", &self.dimensions()).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod contract_tests {
    use super::*;

    /// The worker shares engines across tasks and blocking threads.
    #[test]
    fn engines_are_shareable() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        shareable::<TextEngine>();
        shareable::<EmbeddingEngine>();
    }
}
