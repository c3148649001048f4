//! Cheap RGB previews of latents, shown after every sampler step.
//!
//! A 4-channel SD latent maps to RGB almost linearly, so a 4×3 projection of the predicted clean
//! latents (x0) gives a recognisable thumbnail for the price of a few thousand multiply-adds —
//! nothing next to a UNet step. The SD 1.x and SDXL factors (SDXL's VAE has its own latent
//! space) are the ones ComfyUI publishes. Latents with another channel count (or an unknown model family) fall back to
//! grouping channels into R, G and B and stretching each image to its own range: not faithful
//! colours, but the composition shows.

use candle_core::{DType, Result, Tensor};

use crate::models::taesd::Taesd;

/// A linear latent → RGB map: rows are latent channels, columns R, G, B; then the bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentRgb {
    pub factors: [[f32; 3]; 4],
    pub bias: [f32; 3],
}

/// SD 1.x and 2.x latents (their VAEs share one latent space).
pub const SD1_LATENT_RGB: LatentRgb = LatentRgb {
    factors: [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ],
    bias: [0.0; 3],
};

/// SDXL latents.
pub const SDXL_LATENT_RGB: LatentRgb = LatentRgb {
    factors: [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
    bias: [0.1084, -0.0175, -0.0011],
};

/// An 8-bit RGB image at latent resolution (the UI scales it up).
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

/// Projects the first latent of a [batch, channels, h, w] tensor to RGB with `map`.
pub fn latent_preview(latents: &Tensor, map: &LatentRgb) -> Result<Preview> {
    let (_, c, h, w) = latents.dims4()?;
    let data: Vec<f32> = latents
        .get(0)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let plane = h * w;
    let mut rgb = vec![0u8; plane * 3];
    if c == map.factors.len() {
        for p in 0..plane {
            for (k, out) in rgb[p * 3..p * 3 + 3].iter_mut().enumerate() {
                let v: f32 = (0..c)
                    .map(|ch| data[ch * plane + p] * map.factors[ch][k])
                    .sum::<f32>()
                    + map.bias[k];
                *out = to_u8((v + 1.0) * 0.5);
            }
        }
    } else {
        fallback(&data, c, plane, &mut rgb);
    }
    Ok(Preview {
        width: w,
        height: h,
        rgb,
    })
}

/// Channel `ch` feeds colour `ch % 3`; each colour is stretched to [0, 1] over the image.
fn fallback(data: &[f32], channels: usize, plane: usize, rgb: &mut [u8]) {
    let mut colour = vec![0f32; plane * 3];
    for ch in 0..channels {
        let k = ch % 3;
        for p in 0..plane {
            colour[p * 3 + k] += data[ch * plane + p];
        }
    }
    for k in 0..3 {
        let (lo, hi) = (0..plane)
            .map(|p| colour[p * 3 + k])
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        let range = if hi > lo { hi - lo } else { 1.0 };
        for p in 0..plane {
            rgb[p * 3 + k] = to_u8((colour[p * 3 + k] - lo) / range);
        }
    }
}

/// The longest side of a TAESD preview, in pixels: the latents are averaged down (2×, 4×…)
/// until the image fits. A full-size TAESD decode at 512² costs ~8% of an SD 1.5 UNet step with
/// CFG on a CPU; at 256² it is a quarter of that, inside the "small fraction of a step" budget,
/// and the canvas scales it up like the latent projection.
pub const TAESD_PREVIEW_MAX_SIDE: usize = 256;

/// A real preview of the first latent of the batch through TAESD, its longest side at most
/// [`TAESD_PREVIEW_MAX_SIDE`] (see [`taesd_preview_at`]).
pub fn taesd_preview(taesd: &Taesd, latents: &Tensor) -> Result<Preview> {
    taesd_preview_at(taesd, latents, TAESD_PREVIEW_MAX_SIDE)
}

/// [`taesd_preview`] with another size limit; `usize::MAX` decodes at full image size.
pub fn taesd_preview_at(taesd: &Taesd, latents: &Tensor, max_side: usize) -> Result<Preview> {
    let z = latents.narrow(0, 0, 1)?;
    let (_, _, h, w) = z.dims4()?;
    let mut f = 1;
    while h.max(w) / f * taesd.scale() > max_side && h % (2 * f) == 0 && w % (2 * f) == 0 {
        f *= 2;
    }
    let z = if f > 1 { z.avg_pool2d(f)? } else { z };
    let x = taesd.decode(&z)?;
    let (_, _, h, w) = x.dims4()?;
    let hwc: Vec<f32> = ((x.get(0)? + 1.0)? * 0.5)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1()?;
    Ok(Preview {
        width: w,
        height: h,
        rgb: hwc.into_iter().map(to_u8).collect(),
    })
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn projection_uses_the_published_factors_and_bias() -> Result<()> {
        // One pixel whose latent is (1, 0, 0, 0) previews as the first factor row plus the bias.
        let t = Tensor::new(&[1f32, 0., 0., 0.], &Device::Cpu)?.reshape((1, 4, 1, 1))?;
        for map in [SD1_LATENT_RGB, SDXL_LATENT_RGB] {
            let p = latent_preview(&t, &map)?;
            let expect: Vec<u8> = (0..3)
                .map(|k| to_u8((map.factors[0][k] + map.bias[k] + 1.0) * 0.5))
                .collect();
            assert_eq!(p.rgb, expect);
            assert_eq!((p.width, p.height), (1, 1));
        }
        // The two families' maps differ: an SDXL latent shown with SD 1.x colours is wrong.
        let sd1 = latent_preview(&t, &SD1_LATENT_RGB)?;
        assert_ne!(sd1.rgb, latent_preview(&t, &SDXL_LATENT_RGB)?.rgb);
        Ok(())
    }

    #[test]
    fn other_channel_counts_fall_back_to_a_stretched_image() -> Result<()> {
        // 8 channels, 2 pixels: the brighter pixel must come out brighter in every colour.
        let mut v = vec![0f32; 16];
        for ch in 0..8 {
            v[ch * 2 + 1] = 1.0;
        }
        let t = Tensor::from_vec(v, (1, 8, 1, 2), &Device::Cpu)?;
        let p = latent_preview(&t, &SD1_LATENT_RGB)?;
        assert_eq!(p.rgb, vec![0, 0, 0, 255, 255, 255]);
        Ok(())
    }
}
