//! img2img: a generation that starts from a picture instead of pure noise.
//!
//! The picture is encoded by the VAE (the latent distribution's mean, deterministic as in
//! ComfyUI), noised to the level of a step part-way down the schedule, and the sampler runs
//! from there: with S steps and strength F, the last ⌊S·F⌋ steps run (diffusers' `strength`),
//! so F = 1 repaints everything and small F keeps the picture nearly as it was.

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::RgbImage;

/// The picture an img2img request starts from.
#[derive(Clone)]
pub struct InitImage {
    /// RGB at the request's width × height ([`fit`] makes any picture so).
    pub image: RgbImage,
    /// How much of the schedule runs: 0 < strength ≤ 1.
    pub strength: f64,
}

impl std::fmt::Debug for InitImage {
    /// The size, not the pixels.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitImage")
            .field("width", &self.image.width())
            .field("height", &self.image.height())
            .field("strength", &self.strength)
            .finish()
    }
}

/// The index of the first step that runs with `strength` over `steps` steps (diffusers'
/// `get_timesteps`: ⌊steps·strength⌋ steps run, the last ones). `None` when none would.
pub fn first_step(steps: usize, strength: f64) -> Option<usize> {
    let run = ((steps as f64 * strength).floor() as usize).min(steps);
    (run > 0).then(|| steps - run)
}

/// The smallest strength that runs at least one of `steps` steps.
pub fn min_strength(steps: usize) -> f64 {
    1.0 / steps.max(1) as f64
}

/// `picture` at exactly `width` × `height`: scaled (Lanczos) until it covers the size, then
/// cropped around its centre, so nothing is stretched (A1111's "Crop and resize"). A picture
/// already that size is returned as it is.
pub fn fit(picture: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = picture.dimensions();
    if (w, h) == (width, height) {
        return picture.clone();
    }
    let scale = (f64::from(width) / f64::from(w)).max(f64::from(height) / f64::from(h));
    let sw = ((f64::from(w) * scale).round() as u32).max(width);
    let sh = ((f64::from(h) * scale).round() as u32).max(height);
    let scaled = image::imageops::resize(picture, sw, sh, FilterType::Lanczos3);
    let (x, y) = ((sw - width) / 2, (sh - height) / 2);
    image::imageops::crop_imm(&scaled, x, y, width, height).to_image()
}

/// The picture as the VAE takes it: [1, 3, H, W] in [-1, 1] (diffusers: `x / 255 · 2 − 1` in
/// float32).
pub fn to_tensor(picture: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = picture.dimensions();
    let data: Vec<f32> = picture
        .as_raw()
        .iter()
        .map(|&v| 2.0 * (f32::from(v) / 255.0) - 1.0)
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?
        .to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_picks_the_last_steps_as_diffusers() {
        assert_eq!(first_step(20, 1.0), Some(0));
        assert_eq!(first_step(20, 0.5), Some(10));
        assert_eq!(first_step(20, 0.75), Some(5));
        assert_eq!(first_step(10, 0.55), Some(5));
        assert_eq!(first_step(20, 0.04), None);
        assert_eq!(first_step(20, min_strength(20)), Some(19));
    }

    #[test]
    fn fitting_covers_then_crops_the_centre() {
        // A 40×20 picture, left half black, right half white, into 20×20: the centre crop
        // keeps both halves.
        let picture = RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let fitted = fit(&picture, 20, 20);
        assert_eq!(fitted.dimensions(), (20, 20));
        assert_eq!(fitted.get_pixel(2, 10).0, [0, 0, 0]);
        assert_eq!(fitted.get_pixel(17, 10).0, [255, 255, 255]);
        // Upscaling a 10×10 to 30×20: scaled to 30×30, cropped to 30×20.
        let small = RgbImage::from_pixel(10, 10, image::Rgb([9, 99, 199]));
        let big = fit(&small, 30, 20);
        assert_eq!(big.dimensions(), (30, 20));
        assert_eq!(big.get_pixel(15, 10).0, [9, 99, 199]);
    }

    #[test]
    fn pixels_map_to_minus_one_one() {
        let picture = RgbImage::from_fn(2, 1, |x, _| {
            image::Rgb([0, 255, if x == 0 { 0 } else { 51 }])
        });
        let t = to_tensor(&picture, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v[..4], [-1.0, -1.0, 1.0, 1.0]);
        assert!((v[5] - (2.0 * 0.2 - 1.0)).abs() < 1e-6);
    }
}
