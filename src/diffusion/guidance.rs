//! Classifier-free guidance: push the prediction away from the unconditional (negative-prompt)
//! one, towards the prompt. Scales ≤ 1 need no unconditional pass at all (diffusers' rule), which
//! halves the UNet work for Turbo/LCM-style models run at CFG 1.

use candle_core::{Result, Tensor};

/// Whether a scale needs the unconditional branch.
pub fn uses_uncond(scale: f64) -> bool {
    scale > 1.0
}

/// `uncond + scale · (cond − uncond)`.
pub fn combine(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    uncond + ((cond - uncond)? * scale)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn combine_extrapolates_from_uncond_through_cond() -> Result<()> {
        let u = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        let c = Tensor::new(&[3f32, 2.0], &Device::Cpu)?;
        assert_eq!(combine(&u, &c, 7.5)?.to_vec1::<f32>()?, vec![16.0, 2.0]);
        assert_eq!(combine(&u, &c, 1.0)?.to_vec1::<f32>()?, vec![3.0, 2.0]);
        assert!(!uses_uncond(1.0) && uses_uncond(1.5));
        Ok(())
    }
}
