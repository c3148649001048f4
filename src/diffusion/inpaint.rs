//! Inpainting: repaint only where a mask is white, keep the rest of the starting picture.
//!
//! Masks are read as diffusers' inpainting pipeline reads them: grey levels, white (≥ 0.5)
//! repaints, black keeps; the latent-size mask takes every f-th pixel (`interpolate`'s
//! nearest). With an ordinary (4-channel) model the kept part is put back at every step,
//! noised to that step's level, so the new part grows into it. Inpainting models (a 9-channel
//! UNet: latents, mask and the masked picture's latents) are shown what to keep instead.
//!
//! Here too: the pipeline's inpainting inputs, A1111's mask-blur overlay, and its "Only masked"
//! area (the box around the mask generated at full size and put back).

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use image::GrayImage;

use super::init_image::{self, InitImage};
use super::noise::NoiseSource;
use super::pipeline::{
    compute, GenerateRequest, GeneratedImage, Outcome, Pipeline, PipelineError, StepProgress,
};

/// A mask at the request's size.
#[derive(Clone)]
pub struct Mask {
    /// White = repaint, black = keep; grey levels are binarised at half.
    pub image: GrayImage,
    /// A1111's "Mask blur", in pixels: above 0, the finished image keeps the starting picture's
    /// own pixels where the mask is black, blended into the new ones across a blurred edge
    /// (A1111's overlay). 0: the image as decoded (diffusers' inpainting pipeline).
    pub blur: u32,
}

impl std::fmt::Debug for Mask {
    /// The size, not the pixels.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mask")
            .field("size", &self.image.dimensions())
            .field("blur", &self.blur)
            .finish()
    }
}

impl Mask {
    /// Whether a pixel repaints (diffusers' binarisation: `v / 255 ≥ 0.5`).
    fn repaints(v: u8) -> bool {
        f32::from(v) / 255.0 >= 0.5
    }

    /// The share of pixels that repaint.
    pub fn coverage(&self) -> f64 {
        let n = self.image.as_raw().len().max(1);
        let white = self
            .image
            .as_raw()
            .iter()
            .filter(|&&v| Self::repaints(v))
            .count();
        white as f64 / n as f64
    }

    /// The mask at pixel size, binarised: [1, 1, H, W] of 0 and 1.
    pub fn pixels(&self, device: &Device) -> candle_core::Result<Tensor> {
        let (w, h) = self.image.dimensions();
        let data: Vec<f32> = (self.image.as_raw().iter())
            .map(|&v| if Self::repaints(v) { 1.0 } else { 0.0 })
            .collect();
        Tensor::from_vec(data, (1, 1, h as usize, w as usize), device)
    }

    /// The mask at latent size (every `factor`-th pixel, binarised): [1, 1, H/f, W/f].
    pub fn latents(&self, factor: usize, device: &Device) -> candle_core::Result<Tensor> {
        let (w, h) = (self.image.width() as usize, self.image.height() as usize);
        let (lw, lh) = (w / factor, h / factor);
        let mut data = Vec::with_capacity(lw * lh);
        for y in 0..lh {
            for x in 0..lw {
                let v = self
                    .image
                    .get_pixel((x * factor) as u32, (y * factor) as u32)
                    .0[0];
                data.push(if Self::repaints(v) { 1f32 } else { 0.0 });
            }
        }
        Tensor::from_vec(data, (1, 1, lh, lw), device)
    }
}

/// A rectangle of a picture, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A1111's "Only masked" area (diffusers' `padding_mask_crop`): the box around every non-black
/// mask pixel, grown by `pad` on each side, then widened or heightened (staying inside the
/// picture where it can) to the proportions of the `width` × `height` it is generated at.
/// `None` for a black mask.
pub fn crop_region(mask: &GrayImage, width: usize, height: usize, pad: u32) -> Option<Region> {
    let (w, h) = mask.dimensions();
    let (mut x1, mut y1, mut x2, mut y2) = (w, h, 0u32, 0u32);
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] != 0 {
            (x1, y1) = (x1.min(x), y1.min(y));
            (x2, y2) = (x2.max(x + 1), y2.max(y + 1));
        }
    }
    if x2 == 0 {
        return None;
    }
    let (mut x1, mut y1) = (
        i64::from(x1.saturating_sub(pad)),
        i64::from(y1.saturating_sub(pad)),
    );
    let (mut x2, mut y2) = (i64::from((x2 + pad).min(w)), i64::from((y2 + pad).min(h)));
    let ratio = width as f64 / height.max(1) as f64;
    // Grow the short side around its centre; shift back inside the picture; clamp.
    let grow = |a1: &mut i64, a2: &mut i64, want: f64, limit: i64| {
        let diff = (want - (*a2 - *a1) as f64) as i64;
        *a1 -= diff / 2;
        *a2 += diff - diff / 2;
        if *a2 >= limit {
            let over = *a2 - limit;
            *a2 -= over;
            *a1 -= over;
        }
        if *a1 < 0 {
            *a2 -= *a1;
            *a1 = 0;
        }
        *a2 = (*a2).min(limit);
    };
    if (x2 - x1) as f64 / (y2 - y1) as f64 > ratio {
        grow(&mut y1, &mut y2, (x2 - x1) as f64 / ratio, i64::from(h));
    } else {
        grow(&mut x1, &mut x2, (y2 - y1) as f64 * ratio, i64::from(w));
    }
    Some(Region {
        x: x1 as u32,
        y: y1 as u32,
        width: (x2 - x1).max(1) as u32,
        height: (y2 - y1).max(1) as u32,
    })
}

/// A1111's default "Only masked padding", in pixels.
pub const DEFAULT_PADDING: u32 = 32;

/// A1111's default mask blur, in pixels.
pub const DEFAULT_BLUR: u32 = 4;

/// The finished image with the starting picture's pixels put back where `mask` keeps them,
/// through its edge blurred by `mask.blur` pixels (A1111's overlay). `rgb` is `picture`'s size.
pub fn overlay(rgb: &mut [u8], picture: &image::RgbImage, mask: &Mask) {
    if mask.blur == 0 {
        return;
    }
    let alpha = image::imageops::blur(&mask.image, mask.blur as f32);
    for ((out, &orig), &a) in rgb
        .chunks_exact_mut(3)
        .zip(picture.pixels())
        .zip(alpha.as_raw())
    {
        let a = f32::from(a) / 255.0;
        for (o, &p) in out.iter_mut().zip(&orig.0) {
            let v = f32::from(p) * (1.0 - a) + f32::from(*o) * a;
            *o = v.round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// What an inpainting pass reads besides the prompt.
pub(super) struct Inpaint {
    /// [1, 1, h, w]: 1 repaints, 0 keeps.
    pub mask: Tensor,
    /// The starting picture's latents (what is kept, for an ordinary UNet).
    pub kept: Tensor,
    /// An inpainting UNet's extra input: the masked picture's latents.
    pub masked: Option<Tensor>,
}

impl Pipeline {
    /// An inpainting request's mask and latents; for an inpainting UNet without a mask,
    /// A1111's text-to-image conditioning (everything repaints, the "picture" is mid-grey).
    pub(super) fn inpaint_inputs(
        &self,
        req: &GenerateRequest,
        tiled: bool,
    ) -> Result<Option<Inpaint>, PipelineError> {
        let device = &self.model.device;
        let f = self.model.vae_scale();
        let inpainting_unet = self.model.is_inpainting();
        let err = compute("inpainting mask");
        let (Some(mask), Some(init)) = (&req.mask, &req.init_image) else {
            if !inpainting_unet {
                return Ok(None);
            }
            let zeros = Tensor::zeros((1, 3, req.height, req.width), DType::F32, device)
                .map_err(compute("inpainting mask"))?;
            let masked = self.encode_tensor(&zeros, tiled)?;
            let ones = Tensor::ones((1, 1, req.height / f, req.width / f), DType::F32, device)
                .map_err(err)?;
            return Ok(Some(Inpaint {
                mask: ones,
                kept: masked.clone(),
                masked: Some(masked),
            }));
        };
        let kept = self.encode_image(&init.image, tiled)?;
        let latent_mask = mask
            .latents(f, device)
            .map_err(compute("inpainting mask"))?;
        let masked = if inpainting_unet {
            let keep = (1.0 - mask.pixels(device).map_err(compute("inpainting mask"))?)
                .map_err(compute("inpainting mask"))?;
            let picture = init_image::to_tensor(&init.image, device)
                .and_then(|x| x.broadcast_mul(&keep))
                .map_err(compute("inpainting mask"))?;
            Some(self.encode_tensor(&picture, tiled)?)
        } else {
            None
        };
        Ok(Some(Inpaint {
            mask: latent_mask,
            kept,
            masked,
        }))
    }

    /// A1111's "only masked" inpainting: the box around the mask, cut from the picture and the
    /// mask, is generated at the request's size, scaled back (Lanczos) and put into the picture
    /// where the mask (blurred by its blur) says.
    pub(super) fn generate_only_masked(
        &self,
        req: &GenerateRequest,
        pad: u32,
        noise: &mut dyn NoiseSource,
        cancel: &AtomicBool,
        on_step: &mut dyn FnMut(&StepProgress),
    ) -> Result<Outcome, PipelineError> {
        self.plan(req)?;
        let (Some(init), Some(mask)) = (&req.init_image, &req.mask) else {
            return Err(PipelineError::InvalidRequest {
                arg: "inpaint-area",
                msg: "\"only masked\" needs a picture and a mask".to_string(),
            });
        };
        let region = crop_region(&mask.image, req.width, req.height, pad).ok_or_else(|| {
            PipelineError::InvalidRequest {
                arg: "mask",
                msg: "the mask is all black: nothing to repaint".to_string(),
            }
        })?;
        let (w, h) = (req.width as u32, req.height as u32);
        let (x, y, rw, rh) = (region.x, region.y, region.width, region.height);
        let picture = image::imageops::crop_imm(&init.image, x, y, rw, rh).to_image();
        let part_mask = image::imageops::crop_imm(&mask.image, x, y, rw, rh).to_image();
        let lanczos = image::imageops::FilterType::Lanczos3;
        let inner = GenerateRequest {
            init_image: Some(InitImage {
                image: image::imageops::resize(&picture, w, h, lanczos),
                strength: init.strength,
            }),
            mask: Some(Mask {
                image: image::imageops::resize(&part_mask, w, h, lanczos),
                // The blend happens once, into the whole picture, below.
                blur: 0,
            }),
            only_masked: None,
            ..req.clone()
        };
        let done = match self.generate_with_noise(&inner, noise, cancel, on_step)? {
            Outcome::Finished(image) => image,
            cancelled => return Ok(cancelled),
        };
        let warnings = done.warnings;
        let generated = image::RgbImage::from_raw(w, h, done.rgb).ok_or_else(|| {
            compute("inpainting paste")(candle_core::Error::Msg("wrong image size".into()))
        })?;
        let mut pasted = init.image.clone();
        image::imageops::replace(
            &mut pasted,
            &image::imageops::resize(&generated, rw, rh, lanczos),
            i64::from(x),
            i64::from(y),
        );
        // Keep the picture outside the mask: its blur, or at least its hard edge.
        let mut rgb = pasted.into_raw();
        let keep = Mask {
            image: mask.image.clone(),
            blur: mask.blur,
        };
        if keep.blur == 0 {
            let px = init.image.as_raw();
            for (i, m) in mask.image.as_raw().iter().enumerate() {
                if *m < 128 {
                    rgb[i * 3..i * 3 + 3].copy_from_slice(&px[i * 3..i * 3 + 3]);
                }
            }
        } else {
            overlay(&mut rgb, &init.image, &keep);
        }
        let (pw, ph) = init.image.dimensions();
        let data: Vec<f32> = rgb.iter().map(|&v| f32::from(v) / 255.0).collect();
        let pixels = Tensor::from_vec(data, (1, ph as usize, pw as usize, 3), &self.model.device)
            .and_then(|t| t.permute((0, 3, 1, 2)))
            .map_err(compute("inpainting paste"))?;
        Ok(Outcome::Finished(GeneratedImage {
            width: pw as usize,
            height: ph as usize,
            rgb,
            pixels,
            warnings,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binarises_at_half_and_samples_every_fth_pixel() {
        let image = GrayImage::from_fn(4, 2, |x, y| {
            image::Luma([[0, 127, 128, 255][x as usize] * (1 - y as u8)])
        });
        let mask = Mask { image, blur: 0 };
        let px: Vec<f32> = mask
            .pixels(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(px, [0., 0., 1., 1., 0., 0., 0., 0.]);
        let lat: Vec<f32> = mask
            .latents(2, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(lat, [0., 1.]);
        assert_eq!(mask.coverage(), 0.25);
    }

    #[test]
    fn the_only_masked_region_pads_and_takes_the_generation_proportions() {
        let mut mask = GrayImage::new(200, 100);
        for y in 40..50 {
            for x in 100..120 {
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
        // Box 100..120 × 40..50, padded by 4: 96..124 × 36..54 (28 × 18); square target:
        // widened to 28 × 28 around its centre.
        let r = crop_region(&mask, 512, 512, 4).unwrap();
        assert_eq!((r.x, r.y, r.width, r.height), (96, 31, 28, 28));
        // Near an edge the box shifts back inside the picture.
        let mut edge = GrayImage::new(100, 100);
        edge.put_pixel(99, 0, image::Luma([255]));
        let r = crop_region(&edge, 64, 64, 0).unwrap();
        assert!(r.x + r.width <= 100 && r.y + r.height <= 100, "{r:?}");
        assert!(crop_region(&GrayImage::new(8, 8), 64, 64, 4).is_none());
    }

    #[test]
    fn overlay_keeps_the_picture_outside_the_mask_and_blends_its_edge() {
        let picture = image::RgbImage::from_pixel(40, 8, image::Rgb([10, 20, 30]));
        let image = GrayImage::from_fn(40, 8, |x, _| image::Luma([if x >= 20 { 255 } else { 0 }]));
        let mut rgb = vec![200u8; 40 * 8 * 3];
        overlay(
            &mut rgb,
            &picture,
            &Mask {
                image: image.clone(),
                blur: 0,
            },
        );
        assert!(rgb.iter().all(|&v| v == 200), "blur 0 leaves the image");
        overlay(&mut rgb, &picture, &Mask { image, blur: 2 });
        let px = |x: usize| &rgb[(4 * 40 + x) * 3..(4 * 40 + x) * 3 + 3];
        assert_eq!(px(0), [10, 20, 30]);
        assert_eq!(px(39), [200, 200, 200]);
        assert!(px(19)[0] > 10 && px(19)[0] < 200, "{:?}", px(19));
    }
}
