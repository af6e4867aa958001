//! Sentence vectors from token states, as sentence-transformers' Pooling(mean) + Normalize
//! modules do: the mean over real tokens only (padding masked out), scaled to unit length so
//! that a dot product is the cosine similarity.

use candle_core::{D, DType, Result, Tensor};

/// `hidden`: [batch, seq, dim] f32; `mask`: [batch, seq] with 1 for tokens, 0 for padding.
/// Returns [batch, dim], each row of L2 norm 1 (or all zeros for an all-zero row).
pub(crate) fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // [batch, seq, 1]
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // [batch, dim]
    let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?; // [batch, 1]
    let mean = summed.broadcast_div(&counts)?;
    let norms = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    mean.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_is_ignored_and_rows_are_unit_length() -> Result<()> {
        let dev = Device::Cpu;
        // Two tokens [3,4] and [1,0] (mean [2,2]); the third row is padding with junk.
        let hidden = Tensor::new(&[[[3f32, 4.], [1., 0.], [100., -100.]]], &dev)?;
        let mask = Tensor::new(&[[1u32, 1, 0]], &dev)?;
        let pooled = mean_pool_normalized(&hidden, &mask)?.to_vec2::<f32>()?;
        let expected = 1.0 / 2f32.sqrt();
        assert!((pooled[0][0] - expected).abs() < 1e-6 && (pooled[0][1] - expected).abs() < 1e-6);
        Ok(())
    }
}
