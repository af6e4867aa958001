//! Will a model fit in the GPU memory a placement gives it?
//!
//! weights  = parameters × bits per weight / 8
//! kv cache = one full-length sequence: max_model_len × bytes per token, where
//!            bytes per token = 2 (K and V) × layers × kv width × kv bytes. The
//!            manifest does not say layers × kv width, so it is estimated as
//!            0.4 × √parameters, a slight over-estimate for current GQA models
//!            (Llama-3-8B 0.37, Llama-3-70B 0.31, Mistral-7B 0.38, Qwen2.5-7B 0.16).
//! runtime  = 2 GiB per GPU (CUDA context, activations, NCCL buffers)
//! usable   = GPU memory × GPUs × gpu_memory_utilization (vLLM's default 0.9)

use crate::{KvCacheDtype, ParameterCount, Quantization};

const GIB: f64 = (1u64 << 30) as f64;
const RUNTIME_GIB_PER_GPU: f64 = 2.0;
const KV_WIDTH_PER_SQRT_PARAM: f64 = 0.4;
/// vLLM's default share of GPU memory it may use.
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// What is being placed.
#[derive(Clone, Copy, Debug)]
pub struct FitInput {
    pub parameters: ParameterCount,
    pub quantization: Quantization,
    pub kv_cache_dtype: KvCacheDtype,
    pub max_model_len: u32,
    /// Memory of one GPU (or MIG slice), GiB.
    pub gpu_memory_gib: u32,
    pub gpus: u32,
    pub gpus_per_node: u32,
    pub gpu_memory_utilization: f64,
}

/// The estimate, in GiB.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FitEstimate {
    pub weights_gib: f64,
    pub kv_cache_gib: f64,
    pub runtime_gib: f64,
    pub needed_gib: f64,
    pub usable_gib: f64,
}

impl FitEstimate {
    pub fn fits(&self) -> bool {
        self.needed_gib <= self.usable_gib
    }
}

/// Estimates memory needed against memory available.
pub fn estimate(input: &FitInput) -> FitEstimate {
    let params = input.parameters.0 as f64;
    let weights_gib = params * input.quantization.bits_per_weight() / 8.0 / GIB;
    let kv_bytes = match (input.kv_cache_dtype, input.quantization) {
        (KvCacheDtype::Auto, Quantization::Fp8) => 1.0,
        (KvCacheDtype::Auto, _) => 2.0,
        _ => 1.0,
    };
    let bytes_per_token = 2.0 * KV_WIDTH_PER_SQRT_PARAM * params.sqrt() * kv_bytes;
    let kv_cache_gib = bytes_per_token * f64::from(input.max_model_len) / GIB;
    let runtime_gib = RUNTIME_GIB_PER_GPU * f64::from(input.gpus);
    let needed_gib = weights_gib + kv_cache_gib + runtime_gib;
    let usable_gib = f64::from(input.gpu_memory_gib) * f64::from(input.gpus) * input.gpu_memory_utilization;
    FitEstimate { weights_gib, kv_cache_gib, runtime_gib, needed_gib, usable_gib }
}

/// KV-cache width (layers × KV heads × head size) per √parameters assumed for the built-in
/// CPU engine's small models, which are wider for their size than the large GQA models
/// above (SmolLM2-135M: 30 × 3 × 64 = 5760, 0.50 × √135M).
const CPU_KV_WIDTH_PER_SQRT_PARAM: f64 = 0.6;
/// The built-in engine's process beyond weights and cache: runtime, HTTP server, buffers.
const CPU_RUNTIME_MIB: f64 = 256.0;

/// Memory a built-in (CPU) engine worker needs, MiB: the model file (mapped and partly
/// copied while loading: × 1.25), an f16 KV cache for every slot at full context, and the
/// runtime. SmolLM2-135M with 8 slots × 4096 tokens peaked at 748 MiB in its container's
/// memory cgroup on a real node; this gives 1245 MiB.
pub fn builtin_worker_mib(parameters: ParameterCount, file_bytes: u64, slots: u32, context: u32) -> u64 {
    let mib = (1u64 << 20) as f64;
    let kv_bytes_per_token = 2.0 * CPU_KV_WIDTH_PER_SQRT_PARAM * (parameters.0 as f64).sqrt() * 2.0;
    let kv_mib = kv_bytes_per_token * f64::from(slots) * f64::from(context) / mib;
    let weights_mib = file_bytes as f64 * 1.25 / mib;
    (CPU_RUNTIME_MIB + weights_mib + kv_mib).ceil() as u64
}

/// Checks the fit and, when it fails, explains it with a concrete way out: the
/// smallest tensor-parallel degree on this hardware that fits, and fp8 where that
/// alone would do.
pub fn check(input: &FitInput) -> Result<FitEstimate, String> {
    let est = estimate(input);
    if est.fits() {
        return Ok(est);
    }
    let mut fixes = Vec::new();
    let mut tp = input.gpus * 2;
    while tp <= input.gpus_per_node {
        if estimate(&FitInput { gpus: tp, ..*input }).fits() {
            fixes.push(format!("set placement.tensorParallel to {tp}"));
            break;
        }
        tp *= 2;
    }
    // GPUs mean vLLM, so only vLLM quantizations are suggested.
    let smaller = [Quantization::Fp8, Quantization::Awq].into_iter().find(|q| {
        q.bits_per_weight() < input.quantization.bits_per_weight()
            && estimate(&FitInput { quantization: *q, ..*input }).fits()
    });
    if let Some(q) = smaller {
        fixes.push(format!("quantization to {q}"));
    }
    if fixes.is_empty() {
        fixes.push("choose an AcceleratorProfile with more memory, or lower engine.maxModelLen".to_owned());
    }
    Err(format!(
        "{} parameters at {} need ≈{:.0} GiB ({:.0} weights + {:.0} KV cache for {} tokens + {:.0} runtime); {} × {} GiB gives {:.0} GiB usable: {}",
        input.parameters,
        input.quantization,
        est.needed_gib,
        est.weights_gib,
        est.kv_cache_gib,
        input.max_model_len,
        est.runtime_gib,
        input.gpus,
        input.gpu_memory_gib,
        est.usable_gib,
        fixes.join(" or "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(params: &str, quantization: Quantization, gpu_memory_gib: u32, gpus: u32) -> FitInput {
        FitInput {
            parameters: params.parse().expect("valid count"),
            quantization,
            kv_cache_dtype: KvCacheDtype::Auto,
            max_model_len: 8192,
            gpu_memory_gib,
            gpus,
            gpus_per_node: 8,
            gpu_memory_utilization: DEFAULT_GPU_MEMORY_UTILIZATION,
        }
    }

    #[test]
    fn seventy_two_b_bf16_does_not_fit_one_h100_and_says_how_to_fix_it() {
        let err = check(&input("72B", Quantization::Bf16, 80, 1)).expect_err("134 GiB of weights cannot fit 80");
        assert!(err.starts_with("72B parameters at bf16 need ≈"), "{err}");
        assert!(err.contains("1 × 80 GiB gives 72 GiB usable"), "{err}");
        assert!(err.contains("set placement.tensorParallel to 2"), "{err}");
        assert!(err.contains("quantization to fp8") || err.contains("quantization to awq"), "{err}");
    }

    #[test]
    fn realistic_deployments_fit() {
        check(&input("7.6B", Quantization::Awq, 24, 1)).expect("Qwen2.5-7B AWQ on an L4");
        check(&input("70.6B", Quantization::Fp8, 80, 4)).expect("Llama-70B fp8 on 4 × H100");
        check(&input("7.25B", Quantization::Bf16, 40, 1)).expect("Mistral-7B bf16 on a 3g.40gb slice");
    }

    #[test]
    fn weights_follow_bits_per_weight() {
        let est = estimate(&input("8B", Quantization::Fp8, 80, 1));
        assert!((est.weights_gib - 8e9 / GIB).abs() < 1e-9);
        let est = estimate(&input("8B", Quantization::Bf16, 80, 1));
        assert!((est.weights_gib - 16e9 / GIB).abs() < 1e-9);
    }

    #[test]
    fn fp8_kv_cache_halves_the_kv_estimate() {
        let auto = estimate(&input("8B", Quantization::Bf16, 80, 1));
        let fp8 = estimate(&FitInput { kv_cache_dtype: KvCacheDtype::Fp8, ..input("8B", Quantization::Bf16, 80, 1) });
        assert!((auto.kv_cache_gib - 2.0 * fp8.kv_cache_gib).abs() < 1e-9);
    }

    #[test]
    fn without_a_fix_on_this_hardware_the_message_says_so() {
        let err =
            check(&FitInput { gpus_per_node: 1, ..input("400B", Quantization::Int4, 24, 1) }).expect_err("too big");
        assert!(err.contains("choose an AcceleratorProfile with more memory"), "{err}");
    }

    #[test]
    fn a_builtin_worker_gets_room_for_its_kv_cache() {
        // SmolLM2-135M Q8_0 (98 MB): measured peak 748 MiB with 8 × 4096 tokens.
        let mib = builtin_worker_mib(ParameterCount(135_000_000), 98_362_432, 8, 4096);
        assert_eq!(mib, 1245);
        // Fewer slots or a shorter context need less.
        assert!(builtin_worker_mib(ParameterCount(135_000_000), 98_362_432, 1, 4096) < 500);
    }
}
