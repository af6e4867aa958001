//! Weight quantization and KV-cache data types, with what each costs in memory
//! and which engine can serve it. The CRD schema, the CEL rules and the memory-fit
//! check all read this one table, so they cannot disagree.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::EngineKind;

/// How a model's weights are stored and computed at serving time.
///
/// `none` serves the weights as stored (both engines). vLLM values: `bf16`, `fp16`,
/// `fp8`, `awq`, `gptq`, `int8`, `int4`. Built-in engine values are GGUF tensor
/// types: `q4_0`, `q4_1`, `q4_k_m`, `q5_k_m`, `q6_k`, `q8_0`, `f16`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    #[default]
    None,
    Bf16,
    Fp16,
    Fp8,
    Awq,
    Gptq,
    Int8,
    Int4,
    #[serde(rename = "q4_0")]
    Q4_0,
    #[serde(rename = "q4_1")]
    Q4_1,
    #[serde(rename = "q4_k_m")]
    Q4KM,
    #[serde(rename = "q5_k_m")]
    Q5KM,
    #[serde(rename = "q6_k")]
    Q6K,
    #[serde(rename = "q8_0")]
    Q8_0,
    F16,
}

impl Quantization {
    pub const ALL: [Quantization; 15] = [
        Quantization::None,
        Quantization::Bf16,
        Quantization::Fp16,
        Quantization::Fp8,
        Quantization::Awq,
        Quantization::Gptq,
        Quantization::Int8,
        Quantization::Int4,
        Quantization::Q4_0,
        Quantization::Q4_1,
        Quantization::Q4KM,
        Quantization::Q5KM,
        Quantization::Q6K,
        Quantization::Q8_0,
        Quantization::F16,
    ];

    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Bf16 => "bf16",
            Quantization::Fp16 => "fp16",
            Quantization::Fp8 => "fp8",
            Quantization::Awq => "awq",
            Quantization::Gptq => "gptq",
            Quantization::Int8 => "int8",
            Quantization::Int4 => "int4",
            Quantization::Q4_0 => "q4_0",
            Quantization::Q4_1 => "q4_1",
            Quantization::Q4KM => "q4_k_m",
            Quantization::Q5KM => "q5_k_m",
            Quantization::Q6K => "q6_k",
            Quantization::Q8_0 => "q8_0",
            Quantization::F16 => "f16",
        }
    }

    /// Whether `engine` can serve weights quantized this way. `none` (weights as
    /// stored) is served by both; the other values belong to one engine.
    pub fn served_by(self, engine: EngineKind) -> bool {
        match self {
            Quantization::None => true,
            Quantization::Bf16
            | Quantization::Fp16
            | Quantization::Fp8
            | Quantization::Awq
            | Quantization::Gptq
            | Quantization::Int8
            | Quantization::Int4 => engine == EngineKind::Vllm,
            Quantization::Q4_0
            | Quantization::Q4_1
            | Quantization::Q4KM
            | Quantization::Q5KM
            | Quantization::Q6K
            | Quantization::Q8_0
            | Quantization::F16 => engine == EngineKind::Builtin,
        }
    }

    /// Effective bits stored per weight, block scales included. `none` is taken as
    /// 16-bit, the dtype nearly every open-weight checkpoint ships in.
    ///
    /// GGUF figures are llama.cpp's bits-per-weight for each type; AWQ/GPTQ/int4 add
    /// one fp16 scale and zero point per group of 128 weights.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Quantization::None | Quantization::Bf16 | Quantization::Fp16 | Quantization::F16 => 16.0,
            Quantization::Fp8 | Quantization::Int8 => 8.0,
            Quantization::Awq | Quantization::Gptq | Quantization::Int4 => 4.25,
            Quantization::Q4_0 => 4.5,
            Quantization::Q4_1 => 5.0,
            Quantization::Q4KM => 4.85,
            Quantization::Q5KM => 5.69,
            Quantization::Q6K => 6.5625,
            Quantization::Q8_0 => 8.5,
        }
    }

    /// All quantization names the given engine serves, in declaration order.
    pub fn names_for(engine: EngineKind) -> Vec<&'static str> {
        Self::ALL.iter().filter(|q| q.served_by(engine)).map(|q| q.as_str()).collect()
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Data type of vLLM's KV cache. `auto` follows the model's dtype; fp8 variants
/// halve KV memory at a small accuracy cost. The built-in engine accepts `auto` only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheDtype {
    #[default]
    Auto,
    Fp8,
    Fp8E4m3,
    Fp8E5m2,
}

impl KvCacheDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Fp8 => "fp8",
            KvCacheDtype::Fp8E4m3 => "fp8_e4m3",
            KvCacheDtype::Fp8E5m2 => "fp8_e5m2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_round_trip_through_serde() {
        for q in Quantization::ALL {
            let json = serde_json::to_value(q).unwrap();
            assert_eq!(json, serde_json::Value::String(q.as_str().to_owned()));
            let back: Quantization = serde_json::from_value(json).unwrap();
            assert_eq!(back, q);
        }
    }

    #[test]
    fn every_quantization_is_served_by_some_engine_and_only_none_by_both() {
        let vllm = Quantization::names_for(EngineKind::Vllm);
        let builtin = Quantization::names_for(EngineKind::Builtin);
        assert_eq!(vllm, ["none", "bf16", "fp16", "fp8", "awq", "gptq", "int8", "int4"]);
        assert_eq!(builtin, ["none", "q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16"]);
        assert_eq!(vllm.len() + builtin.len(), Quantization::ALL.len() + 1);
    }

    #[test]
    fn lower_precision_never_costs_more_memory() {
        assert!(Quantization::Fp8.bits_per_weight() < Quantization::Bf16.bits_per_weight());
        assert!(Quantization::Awq.bits_per_weight() < Quantization::Fp8.bits_per_weight());
        assert!(Quantization::Q4_0.bits_per_weight() < Quantization::Q8_0.bits_per_weight());
    }
}
