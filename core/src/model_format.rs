//! On-disk formats of model weights.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::EngineKind;

/// The file format of a model's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// Hugging Face safetensors shards plus config and tokenizer files (vLLM).
    Safetensors,
    /// A single GGUF file carrying weights, tokenizer and chat template (built-in engine).
    Gguf,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Safetensors => "safetensors",
            ModelFormat::Gguf => "gguf",
        }
    }

    /// Whether `engine` can load weights in this format.
    ///
    /// vLLM serves safetensors checkpoints (its GGUF support is experimental, so
    /// Taimatsu does not offer it). The built-in engine generates from GGUF files and
    /// embeds with BERT-style safetensors models.
    pub fn served_by(self, engine: EngineKind) -> bool {
        !matches!((self, engine), (ModelFormat::Gguf, EngineKind::Vllm))
    }
}

impl std::fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_never_gets_gguf_and_builtin_reads_both() {
        assert!(ModelFormat::Safetensors.served_by(EngineKind::Vllm));
        assert!(!ModelFormat::Gguf.served_by(EngineKind::Vllm));
        assert!(ModelFormat::Gguf.served_by(EngineKind::Builtin));
        assert!(ModelFormat::Safetensors.served_by(EngineKind::Builtin));
    }
}
