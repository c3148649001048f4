//! Hires fix (A1111's name): generate at the size the model knows, enlarge, then repaint the
//! enlarged image with img2img at the larger size. Models trained at 512² draw repeated
//! subjects when asked for 1024² directly; the first pass settles the composition at 512², the
//! second adds detail at 1024².
//!
//! The enlargement is either of the latents (bilinear, as A1111's "Latent" upscaler and
//! `torch.nn.functional.interpolate(mode="bilinear")`: cheap, but soft, so it wants a
//! denoising strength around 0.5–0.7) or of the decoded picture (Lanczos, then encoded again:
//! sharper, works from 0.3). The second pass draws its noise from the seed again, as A1111
//! does, so a hires image equals the base image enlarged and put through img2img by hand.

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;

/// How the first pass's result is enlarged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upscaler {
    /// The latents, bilinearly (A1111's "Latent").
    Latent,
    /// The decoded picture, with a Lanczos filter (A1111's "Lanczos").
    Lanczos,
}

impl Upscaler {
    pub const ALL: [Upscaler; 2] = [Upscaler::Latent, Upscaler::Lanczos];

    /// The name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Upscaler::Latent => "latent",
            Upscaler::Lanczos => "lanczos",
        }
    }

    /// The name A1111 writes (`Hires upscaler: Latent`).
    pub fn a1111_name(&self) -> &'static str {
        match self {
            Upscaler::Latent => "Latent",
            Upscaler::Lanczos => "Lanczos",
        }
    }

    /// The upscaler an A1111 infotext names, if it is one of ours.
    pub fn from_a1111_name(name: &str) -> Option<Upscaler> {
        Upscaler::ALL.into_iter().find(|u| u.a1111_name() == name)
    }
}

impl fmt::Display for Upscaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Upscaler {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Upscaler::ALL
            .into_iter()
            .find(|u| u.name() == s)
            .ok_or_else(|| format!("{s:?}: use latent or lanczos"))
    }
}

/// The largest hires scale accepted (A1111's slider stops at 4).
pub const MAX_SCALE: f64 = 4.0;

/// The second pass of a hires-fix request.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hires {
    /// The enlargement, 1 < scale ≤ [`MAX_SCALE`].
    pub scale: f64,
    /// The second pass's steps; 0 = the first pass's (A1111's rule).
    pub steps: usize,
    /// The second pass's strength (A1111's "Denoising strength").
    pub denoise: f64,
    pub upscaler: Upscaler,
}

/// A1111's defaults: 2×, the first pass's steps, strength 0.7, latent.
impl Default for Hires {
    fn default() -> Self {
        Self {
            scale: 2.0,
            steps: 0,
            denoise: 0.7,
            upscaler: Upscaler::Latent,
        }
    }
}

impl Hires {
    /// The second pass's size: each side times the scale, rounded down to `multiple`.
    pub fn size(&self, width: usize, height: usize, multiple: usize) -> (usize, usize) {
        let multiple = multiple.max(1);
        let side =
            |v: usize| ((v as f64 * self.scale) as usize / multiple * multiple).max(multiple);
        (side(width), side(height))
    }

    /// The second pass's steps for a first pass of `base_steps`.
    pub fn steps_for(&self, base_steps: usize) -> usize {
        if self.steps == 0 {
            base_steps
        } else {
            self.steps
        }
    }
}

/// Latents [N, C, h, w] enlarged to `height` × `width` bilinearly, with half-pixel centres and
/// edges clamped: `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`.
pub fn upscale_latents(
    latents: &Tensor,
    height: usize,
    width: usize,
) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = latents.dims4()?;
    let src: Vec<f32> = latents
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    // For each output coordinate: the two source indices and the weight of the second.
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let x = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let lo = (x as usize).min(inp - 1);
                let hi = (lo + 1).min(inp - 1);
                (lo, hi, x - lo as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(height, h), axis(width, w));
    let mut out = Vec::with_capacity(n * c * height * width);
    for plane in src.chunks_exact(h * w) {
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let at = |y: usize, x: usize| plane[y * w + x];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    Tensor::from_vec(out, (n, c, height, width), latents.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matches_torch_on_a_known_case() {
        // torch.nn.functional.interpolate([[0, 1], [2, 3]], size=4, mode="bilinear").
        let x = Tensor::from_vec(
            vec![0f32, 1., 2., 3.],
            (1, 1, 2, 2),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let y: Vec<f32> = upscale_latents(&x, 4, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        assert_eq!(y, want);
    }

    #[test]
    fn sizes_and_steps_follow_a1111() {
        let h = Hires {
            scale: 1.5,
            steps: 0,
            denoise: 0.5,
            upscaler: Upscaler::Latent,
        };
        assert_eq!(h.size(512, 344, 8), (768, 512));
        assert_eq!(h.steps_for(20), 20);
        assert_eq!(Hires { steps: 8, ..h }.steps_for(20), 8);
        assert_eq!("lanczos".parse::<Upscaler>(), Ok(Upscaler::Lanczos));
        assert_eq!(Upscaler::from_a1111_name("Latent"), Some(Upscaler::Latent));
    }
}
