//! Turns the caller's `EngineConfig` into the concrete numbers the llama.cpp context needs,
//! filling in defaults and rejecting what llama.cpp would abort on.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::model::LlamaModel;

use crate::EngineConfig;

/// Context length used when the config says 0 and the model was trained on more (or says 0).
const DEFAULT_MAX_CONTEXT: u32 = 8192;
/// llama.cpp's `LLAMA_MAX_SEQ`: more sequences in one context make it fail.
const MAX_PARALLEL: u32 = 256;
/// Tokens per decode call. One ubatch, so a long prompt is prefilled in chunks of this size
/// between decode steps of the other sequences, which keeps their latency bounded.
const BATCH_TOKENS: u32 = 512;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub threads: i32,
    pub parallel: u32,
    /// Tokens per sequence (prompt plus completion).
    pub context_len: u32,
    pub batch_tokens: u32,
}

impl Settings {
    pub(crate) fn resolve(config: &EngineConfig, model: &LlamaModel) -> Result<Self, String> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let threads = i32::try_from(threads).map_err(|_| format!("{threads} threads is too many"))?;
        let parallel = u32::try_from(config.parallel.max(1)).unwrap_or(u32::MAX);
        if parallel > MAX_PARALLEL {
            return Err(format!("parallel is {parallel}, llama.cpp supports at most {MAX_PARALLEL} sequences"));
        }
        let context_len = match config.context_len {
            0 => match model.n_ctx_train() {
                0 => DEFAULT_MAX_CONTEXT,
                trained => trained.min(DEFAULT_MAX_CONTEXT),
            },
            n => n,
        };
        if context_len < 2 {
            return Err(format!("context length {context_len} leaves no room for a prompt and an answer"));
        }
        context_len
            .checked_mul(parallel)
            .filter(|n| i32::try_from(*n).is_ok())
            .ok_or_else(|| format!("context length {context_len} × parallel {parallel} is too large"))?;
        Ok(Self { threads, parallel, context_len, batch_tokens: BATCH_TOKENS })
    }

    /// One context for all sequences. The KV cache is unified: llama.cpp then batches tokens of
    /// any mix of sequences into one ubatch (a split cache would cut the batch at every gap in
    /// sequence ids). Each sequence is still held to `context_len` by the batch loop, and the
    /// cache holds `context_len × parallel` tokens, so it never runs out.
    pub(crate) fn context_params(&self) -> LlamaContextParams {
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(self.context_len * self.parallel))
            .with_n_batch(self.batch_tokens)
            .with_n_ubatch(self.batch_tokens)
            .with_n_seq_max(self.parallel)
            .with_kv_unified(true)
            // Both must be set: with only `n_threads`, decode runs at a fraction of the speed.
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_no_perf(true)
    }
}
