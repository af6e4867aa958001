//! BERT-style sentence embeddings on candle (pure Rust, f32, CPU).

mod pooling;
mod tokenize;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use crate::{Embeddings, EngineError};
use tokenize::EmbedTokenizer;

/// Inputs per forward pass. Inputs are sorted by length first, so each pass pads little, and
/// attention memory (quadratic in length) stays bounded whatever the request size.
const INPUTS_PER_PASS: usize = 32;

pub(crate) struct Embedder {
    model: BertModel,
    tokenizer: EmbedTokenizer,
    dimensions: usize,
    device: Device,
    /// candle's CPU kernels (gemm) run on the current rayon pool; running each batch inside
    /// this pool is how `threads` is honoured without touching the process-wide pool.
    pool: rayon::ThreadPool,
}

impl Embedder {
    pub(crate) fn load(dir: &Path, threads: usize) -> Result<Self, EngineError> {
        let fail = |file: &str, reason: String| EngineError::Load { path: dir.join(file), reason };
        let config_text =
            std::fs::read_to_string(dir.join("config.json")).map_err(|e| fail("config.json", e.to_string()))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| fail("config.json", format!("not a BERT config: {e}")))?;
        let max_len = max_input_tokens(dir, &config);
        let tokenizer = EmbedTokenizer::load(&dir.join("tokenizer.json"), max_len, config_pad_id(&config))
            .map_err(|e| fail("tokenizer.json", e))?;

        let device = Device::Cpu;
        let weights_path = dir.join("model.safetensors");
        let weights = candle_core::safetensors::load(&weights_path, &device)
            .map_err(|e| fail("model.safetensors", e.to_string()))?;
        let model = BertModel::load(VarBuilder::from_tensors(weights, DType::F32, &device), &config)
            .map_err(|e| fail("model.safetensors", format!("weights do not fit config.json: {e}")))?;

        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("taimatsu-embed-{i}"))
            .build()
            .map_err(|e| EngineError::Load { path: dir.to_path_buf(), reason: format!("cannot start threads: {e}") })?;
        tracing::info!(path = %dir.display(), dimensions = config.hidden_size, max_len, threads, "embedding model loaded");
        Ok(Self { model, tokenizer, dimensions: config.hidden_size, device, pool })
    }

    pub(crate) fn dimensions(&self) -> usize {
        self.dimensions
    }

    pub(crate) fn embed(&self, inputs: &[String]) -> Result<Embeddings, EngineError> {
        let tokens = self.tokenizer.encode(inputs).map_err(EngineError::InvalidRequest)?;
        let prompt_tokens = tokens.iter().map(Vec::len).sum::<usize>();

        let mut order: Vec<usize> = (0..tokens.len()).collect();
        order.sort_by_key(|&i| tokens[i].len());
        let mut vectors = vec![Vec::new(); tokens.len()];
        for chunk in order.chunks(INPUTS_PER_PASS) {
            let batch: Vec<&Vec<u32>> = chunk.iter().map(|&i| &tokens[i]).collect();
            let rows = crate::guard::no_panic(|| self.pool.install(|| self.forward(&batch)))
                .map_err(EngineError::Inference)?
                .map_err(|err| EngineError::Inference(err.to_string()))?;
            for (&i, row) in chunk.iter().zip(rows) {
                vectors[i] = row;
            }
        }
        Ok(Embeddings { vectors, prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX) })
    }

    /// One padded pass: token states, then pooled unit vectors, one per input.
    fn forward(&self, batch: &[&Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
        let (ids, mask, width) = self.tokenizer.pad(batch);
        let shape = (batch.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        pooling::mean_pool_normalized(&hidden, &mask)?.to_vec2::<f32>()
    }
}

/// The longest input in tokens: sentence-transformers' `max_seq_length` when the directory has
/// a `sentence_bert_config.json` (what the reference pipeline truncates at: 256 for
/// all-MiniLM-L6-v2), otherwise the model's position limit.
fn max_input_tokens(dir: &Path, config: &Config) -> usize {
    let declared = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("max_seq_length")?.as_u64())
        .and_then(|n| usize::try_from(n).ok());
    declared.map_or(config.max_position_embeddings, |n| n.min(config.max_position_embeddings))
}

fn config_pad_id(config: &Config) -> u32 {
    u32::try_from(config.pad_token_id).unwrap_or(0)
}
