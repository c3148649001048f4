//! Image file → CLIP's pixel tensor, as OpenAI's CLIP and transformers' CLIP image processor do.
//!
//! The steps and their order are those of transformers' `CLIPImageProcessor` (Pillow backend,
//! the same arithmetic as OpenAI's `preprocess`): convert to RGB, bicubic-resize so the short
//! side is `shortest_edge` (the long side truncated, `int(size * long / short)`), centre-crop
//! (offsets floor((side − crop) / 2)), scale to [0, 1], then (x − mean) / std with CLIP's mean
//! and std. DESIGN.md: candle's example scales to [−1, 1] instead, which is a different input
//! distribution for the model; not that.
//!
//! Decoding is defensive because gallery folders hold anything: the header is read first and an
//! image over [`MAX_SIDE`] or [`MAX_PIXELS`] is refused before any pixel buffer is allocated (a
//! 20000×20000 PNG would need 1.6 GB), and decoders run under `image::Limits`.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use serde::Deserialize;

use super::resample::{resize_bicubic_rgb, Window};
use crate::models::ModelError;

/// Longest side Easel decodes; larger images are skipped (counted), not decoded.
pub const MAX_SIDE: u32 = 16_384;
/// Most pixels Easel decodes (100 MP: a 12k×8k photo passes, a decompression bomb does not).
pub const MAX_PIXELS: u64 = 100_000_000;

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`), written
/// digit for digit as OpenAI publishes them so they can be checked by eye; f32 rounds them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Why an image file could not be turned into pixels. Kept apart from [`super::GalleryError`]
/// because the indexer counts these and goes on, while a query reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageProblem {
    #[error("not an image (unrecognised format)")]
    NotImage,
    #[error(
        "{width}x{height} is larger than Easel decodes ({MAX_SIDE} px a side, {MAX_PIXELS} pixels)"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// How images are resized and normalised for one CLIP model (its `preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// The short side after resizing.
    pub shortest_edge: usize,
    /// The centre crop, (height, width): the vision tower's input size.
    pub crop: (usize, usize),
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PreprocessConfig {
    /// OpenAI's preprocessing for a vision tower taking `image_size`² pixels.
    pub fn openai(image_size: usize) -> Self {
        Self {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json` when the folder has one (sizes, mean, std), else
    /// OpenAI's preprocessing at `image_size`. The crop must equal the tower's input size.
    pub fn for_model(dir: &Path, image_size: usize) -> Result<Self, ModelError> {
        let path = dir.join("preprocessor_config.json");
        if !path.is_file() {
            return Ok(Self::openai(image_size));
        }
        let raw: RawPreprocessor = crate::models::weights::read_json(&path)?;
        let bad = |msg: String| ModelError::BadConfig {
            path: path.clone(),
            msg,
        };
        let shortest_edge = match raw.size {
            Some(SizeSpec::Int(n)) => n,
            Some(SizeSpec::Dict {
                shortest_edge: Some(n),
                ..
            }) => n,
            Some(SizeSpec::Dict {
                height: Some(h),
                width: Some(w),
                ..
            }) if h == w => h,
            Some(other) => return Err(bad(format!("size {other:?} is not a shortest edge"))),
            None => image_size,
        };
        let crop = match raw.crop_size {
            Some(SizeSpec::Int(n)) => (n, n),
            Some(SizeSpec::Dict {
                height: Some(h),
                width: Some(w),
                ..
            }) => (h, w),
            Some(other) => return Err(bad(format!("crop_size {other:?} has no height/width"))),
            None => (image_size, image_size),
        };
        if crop != (image_size, image_size) {
            return Err(bad(format!(
                "crop {}x{} differs from the vision model's image_size {image_size}",
                crop.1, crop.0
            )));
        }
        if shortest_edge < crop.0.max(crop.1) {
            return Err(bad(format!(
                "shortest_edge {shortest_edge} is smaller than the crop (padding is not supported)"
            )));
        }
        if raw.resample.is_some_and(|r| r != 3) {
            return Err(bad("only bicubic resampling (3) is supported".into()));
        }
        let three = |v: Option<Vec<f32>>, default: [f32; 3], name: &str| match v {
            None => Ok(default),
            Some(v) => <[f32; 3]>::try_from(v.as_slice())
                .map_err(|_| bad(format!("{name} needs three values"))),
        };
        Ok(Self {
            shortest_edge,
            crop,
            mean: three(raw.image_mean, CLIP_MEAN, "image_mean")?,
            std: three(raw.image_std, CLIP_STD, "image_std")?,
        })
    }

    /// Floats per preprocessed image (3 × crop).
    pub fn pixels_len(&self) -> usize {
        3 * self.crop.0 * self.crop.1
    }

    /// Resize + crop + normalise a decoded RGB image into CHW floats (`pixels_len` of them).
    pub fn pixels(&self, img: &image::RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (out_w, out_h) = resized_size(w, h, self.shortest_edge);
        let (crop_h, crop_w) = self.crop;
        let window = Window {
            x: (out_w - crop_w) / 2,
            y: (out_h - crop_h) / 2,
            width: crop_w,
            height: crop_h,
        };
        let rgb = resize_bicubic_rgb(img.as_raw(), (w, h), (out_w, out_h), window);
        let plane = crop_h * crop_w;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = (f32::from(px[c]) / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `short`, the long side `int(short * long / short_side)` (truncated).
pub fn resized_size(w: usize, h: usize, short: usize) -> (usize, usize) {
    if w <= h {
        (short, (short as f64 * h as f64 / w as f64) as usize)
    } else {
        ((short as f64 * w as f64 / h as f64) as usize, short)
    }
}

#[derive(Deserialize)]
struct RawPreprocessor {
    size: Option<SizeSpec>,
    crop_size: Option<SizeSpec>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    resample: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Int(usize),
    Dict {
        shortest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

/// Decodes an image file's bytes to RGB8, checking its size from the header first and
/// applying its EXIF orientation (a phone photo shows upright, as in every viewer).
pub fn decode_rgb(bytes: &[u8]) -> Result<image::RgbImage, ImageProblem> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageProblem::Corrupt(e.to_string()))?;
    match reader.format() {
        None => return Err(ImageProblem::NotImage),
        Some(ImageFormat::Jpeg) if !jpeg_has_end(bytes) => {
            return Err(ImageProblem::Corrupt(
                "truncated JPEG (no end-of-image marker after the last scan)".into(),
            ))
        }
        Some(_) => {}
    }
    // The header alone is read here (no pixel buffer yet), so the size check below comes
    // before any allocation; the limits then bound what decoding may allocate.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(classify)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageProblem::TooLarge { width, height });
    }
    if width == 0 || height == 0 {
        return Err(ImageProblem::Corrupt("the image has no pixels".into()));
    }
    let mut limits = Limits::default();
    // RGBA16 at the pixel cap, plus room for the decoder's own buffers.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    decoder.set_limits(limits).map_err(classify)?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(classify)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

/// Whether a JPEG's last scan is followed by an end-of-image marker. The JPEG decoder fills a
/// cut-off scan with grey and reports success, which would index half a picture; Pillow refuses
/// such files. Entropy-coded data escapes 0xFF as FF 00, so FF D9 after the last start-of-scan
/// (FF DA) is the real end marker, and data appended after it (camera trailers) is allowed.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    match last_sos {
        Some(i) => bytes[i..].windows(2).any(|w| w == [0xff, 0xd9]),
        None => false,
    }
}

/// Sorts the `image` crate's errors into the problems the indexer counts.
fn classify(e: image::ImageError) -> ImageProblem {
    match e {
        image::ImageError::Unsupported(_) => ImageProblem::NotImage,
        e => ImageProblem::Corrupt(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_the_long_side() {
        assert_eq!(resized_size(120, 90, 64), (85, 64));
        assert_eq!(resized_size(70, 150, 64), (64, 137));
        assert_eq!(resized_size(64, 64, 64), (64, 64));
    }

    #[test]
    fn random_bytes_are_not_an_image() {
        assert_eq!(
            decode_rgb(b"hello, this is a text file"),
            Err(ImageProblem::NotImage)
        );
    }
}
