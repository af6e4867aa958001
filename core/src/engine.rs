//! Which inference engine serves a deployment.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The engine that serves a model inside the inference-worker pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// vLLM on GPUs, supervised by the worker as a child process.
    #[default]
    Vllm,
    /// The worker's built-in CPU engine for small GGUF models (laptops, CI, edge).
    Builtin,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Vllm, EngineKind::Builtin];

    /// The name used in manifests, arguments and CEL rules.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Builtin => "builtin",
        }
    }

    /// Whether this engine runs on GPUs (and so needs an accelerator profile).
    pub fn uses_gpus(self) -> bool {
        matches!(self, EngineKind::Vllm)
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
