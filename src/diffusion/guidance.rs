//! Classifier-free guidance: push the prediction away from the unconditional (negative-prompt)
//! one, towards the prompt. Scales ≤ 1 need no unconditional pass at all (diffusers' rule), which
//! halves the UNet work for Turbo/LCM-style models run at CFG 1.
//!
//! LCM-distilled UNets (`time_cond_proj_dim`) learned the guided prediction itself: the scale
//! goes in as an embedding ([`scale_embedding`]) and there is no unconditional pass at any scale,
//! as in diffusers' `LatentConsistencyModelPipeline`.

use candle_core::{Device, Result, Tensor};

/// Whether a scale needs the unconditional branch.
pub fn uses_uncond(scale: f64) -> bool {
    scale > 1.0
}

/// `uncond + scale · (cond − uncond)`.
pub fn combine(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    uncond + ((cond - uncond)? * scale)?
}

/// diffusers' `get_guidance_scale_embedding(w, dim)` for w = scale − 1: sin and cos of
/// 1000·w at `dim / 2` geometric frequencies (float32, as there), [1, dim].
pub fn scale_embedding(scale: f64, dim: usize, device: &Device) -> Result<Tensor> {
    let w = (scale - 1.0) as f32 * 1000.0;
    let half = dim / 2;
    let step = 10000f32.ln() / (half as f32 - 1.0).max(1.0);
    let args: Vec<f32> = (0..half).map(|i| w * (i as f32 * -step).exp()).collect();
    let mut emb: Vec<f32> = args.iter().map(|a| a.sin()).collect();
    emb.extend(args.iter().map(|a| a.cos()));
    // An odd width gets a zero at the end.
    emb.resize(dim, 0.0);
    Tensor::from_vec(emb, (1, dim), device)
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

    #[test]
    fn scale_embedding_matches_diffusers_values() -> Result<()> {
        // At scale 1 (w = 0): sin 0 = 0, cos 0 = 1.
        let e = scale_embedding(1.0, 4, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(e, vec![vec![0.0, 0.0, 1.0, 1.0]]);
        // w = 0.5 → 500: frequencies 1 and 1e-4 (half = 2), as torch computes them.
        let e = scale_embedding(1.5, 4, &Device::Cpu)?.to_vec2::<f32>()?;
        let want = [500f32.sin(), 0.05f32.sin(), 500f32.cos(), 0.05f32.cos()];
        for (a, b) in e[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {want:?}", e[0]);
        }
        assert_eq!(scale_embedding(2.0, 5, &Device::Cpu)?.dims(), &[1, 5]);
        Ok(())
    }
}
