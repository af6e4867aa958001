//! How much one worker pod needs: GPUs, the built-in engine's context and memory, and
//! the model cache.

use taimatsu_core::{EngineKind, ParameterCount, memory_fit};

use super::Inputs;

/// GPUs (or MIG slices) per replica; 0 for the builtin engine.
pub fn gpus_per_replica(inputs: &Inputs<'_>) -> i32 {
    if inputs.deployment.spec.engine.kind == EngineKind::Builtin {
        return 0;
    }
    inputs.deployment.spec.placement.as_ref().map_or(1, |p| p.gpus())
}

/// Sequences the built-in engine decodes together.
pub const BUILTIN_SLOTS: u32 = 8;

/// The built-in engine's context per sequence: `engine.maxModelLen`, else the model's, at
/// most 4096 (the worker's own default).
pub fn builtin_context(inputs: &Inputs<'_>) -> u32 {
    let model = u32::try_from(inputs.model.spec.context_length).unwrap_or(4096).min(4096);
    inputs.deployment.spec.engine.max_model_len.and_then(|n| u32::try_from(n).ok()).unwrap_or(model).max(1)
}

/// The built-in worker's memory request and limit, e.g. `1253Mi`, for `context` tokens in
/// every slot (see `memory_fit::builtin_worker_mib`).
pub fn builtin_memory(inputs: &Inputs<'_>, context: u32) -> String {
    let parameters = inputs.model.spec.parameters.parse().unwrap_or(ParameterCount(0));
    let bytes = u64::try_from(model_bytes(inputs)).unwrap_or(0);
    format!("{}Mi", memory_fit::builtin_worker_mib(parameters, bytes, BUILTIN_SLOTS, context))
}

fn model_bytes(inputs: &Inputs<'_>) -> i64 {
    inputs.model.spec.files.iter().map(|f| f.size).sum()
}

/// The model cache holds the files plus 10% for partial downloads.
pub fn model_cache_size(inputs: &Inputs<'_>) -> String {
    let bytes = model_bytes(inputs);
    if bytes == 0 {
        // Unpinned models: size unknown.
        return "1Ti".to_owned();
    }
    format!("{}Mi", (bytes + bytes / 10) / (1 << 20) + 64)
}
