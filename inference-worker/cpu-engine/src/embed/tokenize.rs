//! Tokenization for the embedding model. Sentence-transformers exports fix padding and
//! truncation in tokenizer.json (all-MiniLM-L6-v2: pad everything to 128, cut at 128). That
//! would waste compute on short inputs and silently cut longer ones below the model's limit,
//! so padding is done here per sub-batch (to its longest input) and truncation is reset to
//! the model's own limit.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

/// Token ids of one input, already truncated, without padding.
pub(crate) type TokenIds = Vec<u32>;

pub(crate) struct EmbedTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
}

impl EmbedTokenizer {
    /// `max_len` is the longest input in tokens, special tokens included.
    pub(crate) fn load(path: &Path, max_len: usize, config_pad_id: u32) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|err| format!("{}: {err}", path.display()))?;
        let pad_id = tokenizer.get_padding().map_or(config_pad_id, |p| p.pad_id);
        tokenizer.with_padding(None);
        let truncation =
            TruncationParams { max_length: max_len, ..tokenizer.get_truncation().cloned().unwrap_or_default() };
        tokenizer.with_truncation(Some(truncation)).map_err(|err| format!("{}: {err}", path.display()))?;
        Ok(Self { tokenizer, pad_id })
    }

    /// Tokenizes every input with the model's special tokens (`[CLS] … [SEP]`).
    pub(crate) fn encode(&self, inputs: &[String]) -> Result<Vec<TokenIds>, String> {
        let encodings = self
            .tokenizer
            .encode_batch(inputs.iter().map(String::as_str).collect(), true)
            .map_err(|err| format!("tokenization failed: {err}"))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Right-pads `inputs` to the longest one: row-major ids and attention mask (1 = token).
    pub(crate) fn pad(&self, inputs: &[&TokenIds]) -> (Vec<u32>, Vec<u32>, usize) {
        let width = inputs.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(inputs.len() * width);
        let mut mask = Vec::with_capacity(inputs.len() * width);
        for input in inputs {
            ids.extend_from_slice(input);
            ids.resize(ids.len() + width - input.len(), self.pad_id);
            mask.resize(mask.len() + input.len(), 1);
            mask.resize(mask.len() + width - input.len(), 0);
        }
        (ids, mask, width)
    }
}
