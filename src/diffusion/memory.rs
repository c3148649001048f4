//! Will a job fit in memory? An estimate made before any work starts, so that a size the
//! machine cannot hold is refused with a message that says what would fit, instead of the
//! process being killed by the OS halfway through.
//!
//! The estimate is a model of the working memory on top of the loaded weights, per latent pixel
//! for the UNet (the skip tensors kept for the way up, plus one block's working set at the top
//! level, both proportional to the first block's channels) and per image pixel for an untiled
//! VAE decode (its top level's channels). The constants come from `easel bench`'s peak RSS
//! above the loaded weights on SD 1.5 and carry a margin of about 25%.
//! Attention does not appear: the tiled kernel's buffers do not grow with the image.
//!
//! A tiled VAE decode (`Vae::decode_tiled`) needs one tile's worth at the top level instead
//! of the whole image's, plus its latent-resolution part, which runs untiled. When the untiled
//! decode does not fit and the tiled one does, the pipeline decodes in tiles ([`VaeTiling`]).

use crate::models::vae::TileConfig;

/// Working bytes of a UNet pass per latent pixel, per image in the batch, per channel of the
/// first block: ≈ 140 measured at 256² before the own kernels (an upper bound since: the
/// attention scores no longer grow with the image). Rarely the limit: the VAE decode needs more.
const UNET_BYTES_PER_PIXEL_CHANNEL: u64 = 150;

/// Working bytes of an untiled VAE decode per image pixel, per channel of its top level:
/// ≈ 23 measured (728 MiB above the weights at 512², 2 994 MiB at 1024²), plus the margin.
/// (≈ 30 before the convolutions normalised and padded their input on the fly.)
const VAE_BYTES_PER_PIXEL_CHANNEL: u64 = 29;

/// The same for one tile of a tiled decode, its halo included: ≈ 31–33 measured (see
/// [`vae_tiled_bytes`]), plus the margin. More than the untiled decode's: the tile's crops and
/// the statistics it records come on top.
const TILE_BYTES_PER_PIXEL_CHANNEL: u64 = 41;

/// The decoded image's copies alive at once at the end of a tiled decode (the cores, a row
/// of them, the whole, the pipeline's [0, 1] conversion), as bytes per pixel: 4 × 3 channels ×
/// f32.
const IMAGE_BYTES_PER_PIXEL: u64 = 4 * 3 * 4;

/// Whether the VAE decodes in tiles (`Vae::decode_tiled`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VaeTiling {
    /// In tiles only when the untiled decode would not fit in the free memory.
    #[default]
    Auto,
    On,
    Off,
}

/// What a generation needs on top of the loaded weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// One UNet step (batch 2 with classifier-free guidance).
    pub unet_bytes: u64,
    /// A VAE decode of the whole image at once.
    pub vae_bytes: u64,
    /// A tiled VAE decode with the default [`TileConfig`].
    pub vae_tiled_bytes: u64,
}

impl Estimate {
    /// The VAE decode's need when it runs as `tiling` says (auto: the smaller).
    pub fn vae(&self, tiling: VaeTiling) -> u64 {
        match tiling {
            VaeTiling::Auto => self.vae_bytes.min(self.vae_tiled_bytes),
            VaeTiling::On => self.vae_tiled_bytes,
            VaeTiling::Off => self.vae_bytes,
        }
    }

    /// The most the job needs at any one time (the stages run one after another).
    pub fn peak(&self, tiling: VaeTiling) -> u64 {
        self.unet_bytes.max(self.vae(tiling))
    }
}

/// The architecture numbers the estimate needs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Pixels per latent along each axis (8).
    pub vae_scale: usize,
    /// The UNet's first block's channels (320 for SD 1.x/2.x and SDXL).
    pub unet_channels: usize,
    /// The VAE decoder's top level's channels (128).
    pub vae_channels: usize,
    /// The VAE decoder's channels at latent resolution (512).
    pub vae_latent_channels: usize,
}

pub fn estimate(shape: Shape, width: usize, height: usize, batch: usize) -> Estimate {
    let pixels = (width as u64) * (height as u64);
    let latent = pixels / (shape.vae_scale.max(1) as u64).pow(2);
    Estimate {
        unet_bytes: latent
            * batch as u64
            * shape.unet_channels as u64
            * UNET_BYTES_PER_PIXEL_CHANNEL,
        vae_bytes: pixels * shape.vae_channels as u64 * VAE_BYTES_PER_PIXEL_CHANNEL,
        vae_tiled_bytes: vae_tiled_bytes(shape, width, height),
    }
}

/// A tiled decode runs its latent-resolution part on the whole map first (the mid block:
/// budgeted per pixel and channel like the untiled decode's top level), then one tile at a
/// time, each like an untiled decode of its size, while the latent map and the image being
/// assembled stay alive. SD 1.5, `easel bench --stages vae-decode --vae-tiling on`: 1 217 MiB
/// measured at 1024² (estimate 1 483), 1 400 MiB at 2048² (estimate 1 747).
fn vae_tiled_bytes(shape: Shape, width: usize, height: usize) -> u64 {
    let f = shape.vae_scale.max(1);
    let latent = ((width / f) * (height / f)) as u64;
    let latent_part = latent * shape.vae_latent_channels as u64 * VAE_BYTES_PER_PIXEL_CHANNEL;
    // A tile's core is at most `tile` latents a side; at the top level a few pixels of halo
    // are left around it (7 for SD: a latent pixel covers it).
    let side = |n: usize| n.min((TileConfig::default().tile + 2) * f) as u64;
    let tile =
        side(width) * side(height) * shape.vae_channels as u64 * TILE_BYTES_PER_PIXEL_CHANNEL;
    // The mid block's output and its half-size copy for the statistics, as f32.
    let kept = latent * shape.vae_latent_channels as u64 * 4 * 5 / 4
        + (width * height) as u64 * IMAGE_BYTES_PER_PIXEL;
    latent_part.max(tile) + kept
}

/// The largest size with `width`'s aspect ratio, in steps of `multiple`, whose stages all fit
/// in `available` bytes; `None` when nothing fits.
pub fn largest_fitting(
    shape: Shape,
    width: usize,
    height: usize,
    batch: usize,
    multiple: usize,
    available: u64,
    tiling: VaeTiling,
) -> Option<(usize, usize)> {
    let m = multiple.max(1);
    let need = estimate(shape, width, height, batch).peak(tiling).max(1);
    // Memory grows with the area: scale both sides by √(available / need), then step down
    // until it fits.
    let k = ((available as f64) / (need as f64)).sqrt().min(1.0);
    let (mut w, mut h) = (
        ((width as f64 * k) as usize / m) * m,
        ((height as f64 * k) as usize / m) * m,
    );
    while w >= m && h >= m {
        if estimate(shape, w, h, batch).peak(tiling) <= available {
            return Some((w, h));
        }
        if w >= h {
            w -= m;
        } else {
            h -= m;
        }
    }
    None
}

/// Whether the VAE decode of `width`×`height` should run in tiles as `tiling` asks (auto: only
/// when the untiled decode needs more than `available`); `Err` with a message for the user
/// when the job does not fit even so.
pub fn plan(
    shape: Shape,
    width: usize,
    height: usize,
    batch: usize,
    multiple: usize,
    available: u64,
    tiling: VaeTiling,
) -> Result<bool, String> {
    let need = estimate(shape, width, height, batch);
    if need.peak(tiling) <= available {
        return Ok(match tiling {
            VaeTiling::Auto => need.peak(VaeTiling::Off) > available,
            VaeTiling::On => true,
            VaeTiling::Off => false,
        });
    }
    let fits = largest_fitting(shape, width, height, batch, multiple, available, tiling)
        .map_or_else(
            || "no size fits: close other programs first".to_string(),
            |(w, h)| format!("{w}×{h} fits"),
        );
    let vae = match tiling {
        VaeTiling::Off => format!("{} for the untiled VAE decode", gib(need.vae_bytes)),
        _ => format!("{} for the tiled VAE decode", gib(need.vae_tiled_bytes)),
    };
    Err(format!(
        "{width}×{height} needs about {} of working memory beyond the model ({} for the UNet, \
         {vae}) and {} is free; {fits}",
        gib(need.peak(tiling)),
        gib(need.unet_bytes),
        gib(available),
    ))
}

/// Memory the system can give this process now without swapping: Linux's `MemAvailable`.
/// `None` elsewhere (and the guard then stays out of the way).
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Bytes as "3.2 GiB".
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD15: Shape = Shape {
        vae_scale: 8,
        unet_channels: 320,
        vae_channels: 128,
        vae_latent_channels: 512,
    };
    use VaeTiling::{Auto, Off, On};

    #[test]
    fn grows_with_the_area_and_the_batch() {
        let a = estimate(SD15, 512, 512, 2);
        let b = estimate(SD15, 1024, 1024, 2);
        assert_eq!(b.unet_bytes, 4 * a.unet_bytes);
        assert_eq!(b.vae_bytes, 4 * a.vae_bytes);
        assert_eq!(estimate(SD15, 512, 512, 1).unet_bytes * 2, a.unet_bytes);
        // SD 1.5 at 512² with CFG: a few hundred MiB for the UNet, ~0.9 GiB untiled decode (0.7 measured).
        assert!((100 << 20..1 << 30).contains(&a.unet_bytes), "{a:?}");
        assert!((512 << 20..2 << 30).contains(&a.vae_bytes), "{a:?}");
    }

    #[test]
    fn the_suggestion_fits_and_keeps_the_aspect_ratio() {
        let available = estimate(SD15, 1024, 768, 2).peak(Off);
        let (w, h) = largest_fitting(SD15, 2048, 1536, 2, 64, available, Off).unwrap();
        assert!(estimate(SD15, w, h, 2).peak(Off) <= available);
        assert_eq!((w % 64, h % 64), (0, 0));
        assert!(w >= 960 && h >= 704, "{w}×{h}");
        // A size that already fits is its own answer; nothing fits in no memory.
        assert_eq!(
            largest_fitting(SD15, 512, 512, 2, 64, u64::MAX, Off),
            Some((512, 512))
        );
        assert_eq!(largest_fitting(SD15, 512, 512, 2, 64, 0, Auto), None);
    }

    #[test]
    fn a_size_that_does_not_fit_is_refused_with_one_that_does() {
        let available = 3 << 30;
        let msg = plan(SD15, 4096, 2048, 2, 64, available, Off).unwrap_err();
        let (w, h) = largest_fitting(SD15, 4096, 2048, 2, 64, available, Off).unwrap();
        assert!(msg.contains(&format!("{w}×{h} fits")), "{msg}");
        assert!(
            msg.contains("4096×2048 needs about") && msg.contains("3.0 GiB is free"),
            "{msg}"
        );
        assert!(msg.contains("for the untiled VAE decode"), "{msg}");
        assert!(plan(SD15, 512, 512, 2, 64, available, Off).is_ok());
        assert!(plan(SD15, 512, 512, 2, 64, 1 << 20, Auto)
            .unwrap_err()
            .contains("no size fits"));
    }

    #[test]
    fn a_tiled_decode_needs_a_tile_not_the_image() {
        let e = estimate(SD15, 2048, 2048, 1);
        // SD 1.5 at 2048²: ~15 GiB untiled, under the 2 GB tiled.
        assert!(e.vae_bytes > 12 << 30, "{e:?}");
        assert!(e.vae_tiled_bytes < 2_000_000_000, "{e:?}");
        // Past one tile, only the latent-resolution part grows with the image.
        let big = estimate(SD15, 4096, 4096, 1);
        assert!(10 * big.vae_tiled_bytes < big.vae_bytes, "{big:?}");
        // Up to one tile it is the untiled decode (and auto picks that).
        let small = estimate(SD15, 512, 512, 1);
        assert!(small.vae_tiled_bytes >= small.vae_bytes);
        assert_eq!(small.vae(Auto), small.vae_bytes);
    }

    #[test]
    fn auto_tiles_the_decode_only_when_the_untiled_one_does_not_fit() {
        let e = estimate(SD15, 1024, 1024, 2);
        let plenty = e.peak(Off);
        assert_eq!(plan(SD15, 1024, 1024, 2, 64, plenty, Auto), Ok(false));
        assert_eq!(plan(SD15, 1024, 1024, 2, 64, plenty, On), Ok(true));
        let tight = e.peak(On);
        assert!(tight < plenty);
        assert_eq!(plan(SD15, 1024, 1024, 2, 64, tight, Auto), Ok(true));
        // Forced off, the same memory refuses the size.
        let msg = plan(SD15, 1024, 1024, 2, 64, tight, Off).unwrap_err();
        assert!(msg.contains("untiled VAE decode"), "{msg}");
        // And below even the tiled need, auto refuses, naming the tiled decode.
        let msg = plan(SD15, 1024, 1024, 2, 64, tight / 2, Auto).unwrap_err();
        assert!(
            msg.contains("tiled VAE decode") && msg.contains("fits"),
            "{msg}"
        );
    }

    #[test]
    fn this_machine_reports_its_memory() {
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
        }
    }
}
