//! vLLM command-line flags for a quantization and KV-cache dtype.

use crate::{KvCacheDtype, Quantization};

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
}
