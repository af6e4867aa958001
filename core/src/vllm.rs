//! vLLM's command-line flags as the operator renders them (after `--` on the worker's
//! command line). Here, not in the operator, so that the worker's tests start real vLLM
//! with exactly these flags (inference-worker/tests/vllm_real.rs).

use crate::{KvCacheDtype, Quantization};

/// What a ModelDeployment decides about its vLLM server.
#[derive(Clone, Debug)]
pub struct ServerSettings<'a> {
    /// `--served-model-name`: the name clients send, and the `model_name` metric label.
    pub served_model_name: &'a str,
    pub tensor_parallel: i32,
    pub pipeline_parallel: i32,
    pub max_model_len: i32,
    pub gpu_memory_utilization: f64,
    pub kv_cache_dtype: KvCacheDtype,
    pub quantization: Quantization,
    /// The deployment's `engine.args`, appended last so they can override.
    pub extra: &'a [String],
}

/// vLLM's flags for `settings`, in the order the operator renders them.
pub fn server_args(settings: &ServerSettings<'_>) -> Vec<String> {
    let mut args = vec![
        format!("--served-model-name={}", settings.served_model_name),
        format!("--tensor-parallel-size={}", settings.tensor_parallel),
        format!("--pipeline-parallel-size={}", settings.pipeline_parallel),
        format!("--max-model-len={}", settings.max_model_len),
        format!("--gpu-memory-utilization={}", settings.gpu_memory_utilization),
        format!("--kv-cache-dtype={}", kv_cache_dtype_flag(settings.kv_cache_dtype)),
    ];
    args.extend(quantization_flags(settings.quantization).unwrap_or_default());
    args.extend(settings.extra.iter().cloned());
    args
}

/// `--quantization` and `--dtype` values for vLLM, or `None` for a quantization
/// vLLM does not serve.
pub fn quantization_flags(q: Quantization) -> Option<Vec<String>> {
    let (quantization, dtype) = match q {
        Quantization::None => (None, "auto"),
        Quantization::Bf16 => (None, "bfloat16"),
        Quantization::Fp16 => (None, "float16"),
        Quantization::Fp8 => (Some("fp8"), "auto"),
        Quantization::Awq => (Some("awq_marlin"), "auto"),
        Quantization::Gptq => (Some("gptq_marlin"), "auto"),
        // Pre-quantized int8/int4 checkpoints (w8a8, w4a16) load through compressed-tensors.
        Quantization::Int8 | Quantization::Int4 => (Some("compressed-tensors"), "auto"),
        _ => return None,
    };
    let mut flags = Vec::new();
    if let Some(method) = quantization {
        flags.extend(["--quantization".to_owned(), method.to_owned()]);
    }
    flags.extend(["--dtype".to_owned(), dtype.to_owned()]);
    Some(flags)
}

/// `--kv-cache-dtype` value.
pub fn kv_cache_dtype_flag(kv: KvCacheDtype) -> &'static str {
    kv.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineKind;

    #[test]
    fn every_vllm_quantization_has_flags_and_no_gguf_type_does() {
        for q in Quantization::ALL {
            assert_eq!(quantization_flags(q).is_some(), q.served_by(EngineKind::Vllm), "{q}");
        }
        assert_eq!(quantization_flags(Quantization::Fp8).expect("fp8"), ["--quantization", "fp8", "--dtype", "auto"]);
        assert_eq!(quantization_flags(Quantization::Bf16).expect("bf16"), ["--dtype", "bfloat16"]);
    }

    #[test]
    fn server_args_in_the_order_the_operator_renders_them() {
        let extra = ["--enable-prefix-caching".to_owned()];
        let args = server_args(&ServerSettings {
            served_model_name: "smollm2",
            tensor_parallel: 2,
            pipeline_parallel: 1,
            max_model_len: 2048,
            gpu_memory_utilization: 0.9,
            kv_cache_dtype: KvCacheDtype::Auto,
            quantization: Quantization::Bf16,
            extra: &extra,
        });
        assert_eq!(
            args,
            [
                "--served-model-name=smollm2",
                "--tensor-parallel-size=2",
                "--pipeline-parallel-size=1",
                "--max-model-len=2048",
                "--gpu-memory-utilization=0.9",
                "--kv-cache-dtype=auto",
                "--dtype",
                "bfloat16",
                "--enable-prefix-caching",
            ]
        );
    }
}
