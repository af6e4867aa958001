//! Per-sequence token samplers. Each sequence gets its own llama.cpp sampler chain, so one
//! request's seed and settings never affect another's, whatever the batch holds.

use llama_cpp_2::sampling::LlamaSampler;

/// llama.cpp draws a random seed when given this value (`LLAMA_DEFAULT_SEED`).
const RANDOM_SEED: u32 = u32::MAX;

/// Builds the sampler for one request. Temperature 0 is greedy; otherwise the order follows
/// llama.cpp's own default chain: nucleus filter, then temperature, then the seeded draw.
pub(crate) fn sampler_for(temperature: f32, top_p: f32, seed: Option<u64>) -> LlamaSampler {
    if temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    let mut chain = Vec::with_capacity(3);
    if top_p < 1.0 {
        chain.push(LlamaSampler::top_p(top_p, 1));
    }
    chain.push(LlamaSampler::temp(temperature));
    chain.push(LlamaSampler::dist(seed.map_or(RANDOM_SEED, fold_seed)));
    LlamaSampler::chain_simple(chain)
}

/// llama.cpp seeds are 32-bit. Fold both halves in so that seeds differing only in the high
/// bits still differ, and avoid the value that means "random".
fn fold_seed(seed: u64) -> u32 {
    let folded = (seed as u32) ^ ((seed >> 32) as u32);
    if folded == RANDOM_SEED { folded - 1 } else { folded }
}

/// Checks the sampling settings of a request; the message names the bad field.
pub(crate) fn validate(temperature: f32, top_p: f32) -> Result<(), String> {
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(format!("temperature must be a number ≥ 0, got {temperature}"));
    }
    if !top_p.is_finite() || !(0.0..=1.0).contains(&top_p) {
        return Err(format!("top_p must be a number between 0 and 1, got {top_p}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_fold_to_32_bits() {
        assert_eq!(fold_seed(42), 42);
        assert_ne!(fold_seed(1 << 32), fold_seed(0));
        assert_ne!(fold_seed(u64::from(u32::MAX)), RANDOM_SEED);
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(validate(0.0, 1.0).is_ok());
        assert!(validate(0.7, 0.9).is_ok());
        assert!(validate(f32::NAN, 1.0).is_err());
        assert!(validate(-1.0, 1.0).is_err());
        assert!(validate(1.0, 1.5).is_err());
    }
}
