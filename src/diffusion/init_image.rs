//! img2img: a generation that starts from a picture instead of pure noise.
//!
//! The picture is encoded by the VAE (the latent distribution's mean, deterministic as in
//! ComfyUI), noised to the level of a step part-way down the schedule, and the sampler runs
//! from there: with S steps and strength F, the last ⌊S·F⌋ steps run (diffusers' `strength`),
//! so F = 1 repaints everything and small F keeps the picture nearly as it was.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{ImageBuffer, Pixel, RgbImage};

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

/// A1111's default denoising strength for img2img (the CLI's and the studio's default).
pub const DEFAULT_STRENGTH: f64 = 0.75;

/// Pictures larger than this a side are refused before decoding (a header may claim any size).
pub const MAX_SIDE: u32 = 16384;

/// Why a picture could not be read; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the file is empty (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: not an image (no known picture format)")]
    NotAnImage { path: PathBuf },
    #[error("{path}: not a readable image ({source})")]
    Unreadable {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{path}: {width}×{height} is larger than {MAX_SIDE} px a side")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
}

/// Any picture the image crate reads (PNG, JPEG, WebP), as RGB (alpha dropped). The size is
/// checked from the header before the pixels are decoded.
pub fn read(path: &Path) -> Result<RgbImage, ReadError> {
    let p = || path.to_path_buf();
    let io = |source| ReadError::Io { path: p(), source };
    let unreadable = |source| ReadError::Unreadable { path: p(), source };
    if std::fs::metadata(path).map_err(io)?.len() == 0 {
        return Err(ReadError::Empty { path: p() });
    }
    let open = || -> Result<image::ImageReader<_>, ReadError> {
        let reader = image::ImageReader::open(path).map_err(io)?;
        let reader = reader.with_guessed_format().map_err(io)?;
        match reader.format() {
            Some(_) => Ok(reader),
            None => Err(ReadError::NotAnImage { path: p() }),
        }
    };
    let (width, height) = open()?.into_dimensions().map_err(unreadable)?;
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ReadError::TooLarge {
            path: p(),
            width,
            height,
        });
    }
    Ok(open()?.decode().map_err(unreadable)?.to_rgb8())
}

/// The size to generate at from a picture when none is asked: its own, scaled down to the
/// model's native area when larger (SD 1.x at 512², SDXL at 1024²), rounded down to `multiple`.
pub fn natural_size(picture: &RgbImage, native: usize, multiple: usize) -> (usize, usize) {
    let (w, h) = (f64::from(picture.width()), f64::from(picture.height()));
    let scale = ((native * native) as f64 / (w * h).max(1.0))
        .sqrt()
        .min(1.0);
    let multiple = multiple.max(1);
    let snap = |v: f64| ((v * scale) as usize / multiple * multiple).max(multiple);
    (snap(w), snap(h))
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
/// already that size is returned as it is. Masks go through the same, so they stay on their
/// picture.
pub fn fit<P>(
    picture: &ImageBuffer<P, Vec<P::Subpixel>>,
    width: u32,
    height: u32,
) -> ImageBuffer<P, Vec<P::Subpixel>>
where
    P: Pixel + 'static,
{
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
    fn natural_size_keeps_small_pictures_and_shrinks_large_ones_to_the_native_area() {
        let small = RgbImage::new(300, 200);
        assert_eq!(natural_size(&small, 512, 8), (296, 200));
        let big = RgbImage::new(2048, 1024);
        let (w, h) = natural_size(&big, 512, 8);
        assert_eq!((w, h), (720, 360));
        assert!(w * h <= 512 * 512);
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
