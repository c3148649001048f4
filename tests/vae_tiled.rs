//! Tiled VAE decode and encode against the untiled ones (which the reference tests check
//! against diffusers).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use easel::diffusion::Pipeline;
use easel::models::vae::{NormStats, TileConfig, Vae};

/// A non-stationary scene in [-1, 1]: a sky gradient over textured ground, with a disc across
/// the horizon (tiles in the sky and on the ground see very different statistics).
fn landscape(h: usize, w: usize) -> Tensor {
    let mut v = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
            let mut rgb = if fy < 0.45 {
                [0.3 + 0.6 * fy, 0.5 + 0.5 * fy, 0.95]
            } else {
                let t = 0.5 + 0.5 * ((fx * 40.0).sin() * (fy * 33.0).cos());
                [0.15 + 0.1 * t, 0.35 + 0.25 * t, 0.1]
            };
            let (dy, dx) = (fy - 0.45, fx - 0.7);
            if dy * dy + dx * dx < 0.02 {
                rgb = [0.9, 0.15, 0.1];
            }
            for c in 0..3 {
                v[c * h * w + y * w + x] = rgb[c] * 2.0 - 1.0;
            }
        }
    }
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

/// The image as the pipeline keeps it: [-1, 1] → [0, 1], clamped.
fn to_unit(x: &Tensor) -> Tensor {
    ((x / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
}

/// (mean, max) absolute difference.
fn diffs(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let mean = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (mean, max_abs_diff(a, b))
}

/// The bundled model's VAE: trained (on plain scenes), so its group norms see the statistics
/// of real images, where the random fixtures' outputs saturate. Factor 4, three levels.
fn trained_vae() -> Vae {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    Pipeline::load(&dir, &Device::Cpu).unwrap().model.vae
}

/// Decodes `side`² latents of the landscape untiled and in tiles of `tile` latents with each
/// of `stats`: the [0, 1] images' (mean, max) differences from the untiled one.
fn decode_diffs<const N: usize>(
    vae: &Vae,
    side: usize,
    tile: usize,
    stats: [NormStats; N],
) -> [(f32, f32); N] {
    let latents = vae.encode(&landscape(side, side)).unwrap();
    let want = to_unit(&vae.decode(&latents).unwrap());
    stats.map(|stats| {
        let cfg = TileConfig { tile, stats };
        diffs(&to_unit(&vae.decode_tiled(&latents, &cfg).unwrap()), &want)
    })
}

fn assert_within_the_issues_tolerance((mean, max): (f32, f32), what: &str) {
    eprintln!(
        "{what}: mean {:.2}/255, max {:.2}/255",
        mean * 255.0,
        max * 255.0
    );
    assert!(
        mean <= 2.0 / 255.0 && max <= 8.0 / 255.0,
        "{what}: mean {mean}, max {max}"
    );
}

/// 2×2 tiles over a sky above textured ground: within the issue's tolerance of the untiled
/// decode with the whole image's statistics, measured or estimated (measured 1.3/255 mean,
/// 4.7/255 max; 1.0/255, 4.0/255); with each tile's own, as diffusers tiles, the sky and ground
/// tiles shift tone (10/255, 79/255).
#[test]
fn tiled_decode_matches_the_untiled_one_on_a_sky_over_ground() {
    let vae = trained_vae();
    let stats = [NormStats::Measured, NormStats::Estimated, NormStats::Tile];
    let [measured, estimated, own] = decode_diffs(&vae, 256, 32, stats);
    assert_within_the_issues_tolerance(measured, "measured statistics, 2×2 tiles");
    assert_within_the_issues_tolerance(estimated, "estimated statistics, 2×2 tiles");
    eprintln!(
        "each tile's own statistics: mean {:.2}/255, max {:.2}/255",
        own.0 * 255.0,
        own.1 * 255.0
    );
    assert!(
        own.0 > 5.0 * measured.0 && own.0 > 5.0 / 255.0,
        "{own:?} vs {measured:?}"
    );
}

/// 4×4 tiles, whose half-size estimate is itself decoded in 2×2 tiles (measured 1.1/255 mean,
/// 4.3/255 max).
#[test]
fn tiled_decode_with_a_tiled_estimate_stays_within_the_tolerance() {
    let vae = trained_vae();
    let [measured] = decode_diffs(&vae, 512, 32, [NormStats::Measured]);
    assert_within_the_issues_tolerance(measured, "measured statistics, 4×4 tiles");
}

/// The encoder in 2×2 tiles: its latents are close to the untiled encode's (measured 0.003
/// mean, 0.03 max, for latents of standard deviation 1.1) and decode to the same image within
/// the tolerance; with each tile's own statistics they are 30× further off.
#[test]
fn tiled_encode_matches_the_untiled_one() {
    let vae = trained_vae();
    let image = landscape(256, 256);
    let want = vae.encode(&image).unwrap();
    let encode = |stats| {
        let cfg = TileConfig { tile: 32, stats };
        vae.encode_tiled(&image, &cfg).unwrap()
    };
    let got = encode(NormStats::Measured);
    let (mean, max) = diffs(&got, &want);
    eprintln!("encode, measured statistics: latents differ by mean {mean:.4}, max {max:.4}");
    assert!(mean < 0.01 && max < 0.05, "mean {mean}, max {max}");
    let (own_mean, _) = diffs(&encode(NormStats::Tile), &want);
    assert!(own_mean > 10.0 * mean, "own statistics: mean {own_mean}");
    let decoded = |l: &Tensor| to_unit(&vae.decode(l).unwrap());
    assert_within_the_issues_tolerance(
        diffs(&decoded(&got), &decoded(&want)),
        "decode of the tiled encode",
    );
}

/// SD 1.5's architecture (four levels, 512 channels at latent size, 32 groups) with the random
/// weights `easel bench` makes (/tmp/easel-bench/sd15-random): how far a 1024² tiled decode
/// is from the untiled one, with each kind of statistics. Random weights saturate much
/// of the image, so this is a check of the architecture's path, not of the tolerance: run with
/// `cargo test --release --test vae_tiled -- --ignored --nocapture`.
#[test]
#[ignore]
fn sd15_sized_random_vae_at_1024() {
    let dir = std::path::Path::new("/tmp/easel-bench/sd15-random/vae");
    if !dir.is_dir() {
        eprintln!("{} is missing: run `easel bench` once", dir.display());
        return;
    }
    let vae =
        easel::models::checkpoint::load_vae(dir, 4, &Device::Cpu, candle_core::DType::F32, false)
            .unwrap();
    // Two regions of different latent statistics, top and bottom, with noise on both.
    let noise = Tensor::randn(0f32, 0.5, (1, 4, 128, 128), &Device::Cpu).unwrap();
    let top = Tensor::new(&[1.0f32, -0.5, 0.3, 0.8], &Device::Cpu).unwrap();
    let bottom = Tensor::new(&[-0.7f32, 0.6, -0.2, -1.0], &Device::Cpu).unwrap();
    let level = |v: &Tensor, rows| {
        v.reshape((1, 4, 1, 1))
            .unwrap()
            .broadcast_as((1, 4, rows, 128))
            .unwrap()
    };
    let latents =
        (Tensor::cat(&[level(&top, 56), level(&bottom, 72)], 2).unwrap() + noise).unwrap();
    let t = std::time::Instant::now();
    let raw = vae.decode(&latents).unwrap();
    eprintln!("untiled: {:.1}s", t.elapsed().as_secs_f64());
    let want = to_unit(&raw);
    let spread = raw.flatten_all().unwrap().var(0).unwrap().sqrt().unwrap();
    eprintln!(
        "untiled output std (in [-1, 1] units): {}",
        spread.to_scalar::<f32>().unwrap()
    );
    for stats in [NormStats::Measured, NormStats::Estimated, NormStats::Tile] {
        let t = std::time::Instant::now();
        let cfg = TileConfig { tile: 64, stats };
        let got = vae.decode_tiled(&latents, &cfg).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let (mean, max) = diffs(&to_unit(&got), &want);
        let (raw_mean, raw_max) = diffs(&got, &raw);
        eprintln!(
            "{stats:?}: {secs:.1}s, [0, 1] image mean {:.2}/255 max {:.2}/255; unclamped mean {raw_mean:.4} max {raw_max:.4}",
            mean * 255.0,
            max * 255.0
        );
    }
}
