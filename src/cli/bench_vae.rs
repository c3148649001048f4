//! `easel bench --stages vae-decode,vae-encode`: the VAE alone at any size, untiled or in
//! tiles: time, and the peak memory above its loaded weights (what the memory guard's VAE
//! constants model, and issue 11's "a 2048² decode fits in ≤ 2 GB of extra memory").
//!
//! Only the VAE is loaded, so the peak is the stage's own: after a small warm-up decode (which
//! touches every weight), the process's peak RSS is reset (`/proc/self/clear_refs`), and the
//! stage's peak is read against the RSS just before it.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::bench::{ms, peak_rss_mib, proc_status_mib, BenchArgs, Stage};
use crate::diffusion::memory::{self, VaeTiling};
use crate::models::vae::{TileConfig, Vae, VaeConfig};

pub fn run(args: &BenchArgs, dir: &Path, device: &Device) -> Result<()> {
    let vae_dir = dir.join("vae");
    let config = VaeConfig::from_file(&vae_dir.join("config.json"))
        .with_context(|| format!("--stages vae-…: {} needs a vae/ folder", dir.display()))?;
    let t = Instant::now();
    let vae = crate::models::checkpoint::load_vae(
        &vae_dir,
        config.latent_channels,
        device,
        DType::F32,
        false,
    )?;
    let load_ms = ms(t);
    let f = config.downscale_factor();
    let side = args.size;
    let tiled = match args.vae_tiling {
        VaeTiling::On => true,
        VaeTiling::Off => false,
        VaeTiling::Auto => {
            // As the pipeline decides: in tiles when the untiled decode would not fit.
            let shape = memory::Shape {
                vae_scale: f,
                unet_channels: 0,
                vae_channels: config.block_out_channels.first().copied().unwrap_or(128),
                vae_latent_channels: config.block_out_channels.last().copied().unwrap_or(512),
            };
            let need = memory::estimate(shape, side, side, 1).vae_bytes;
            memory::available_bytes().is_some_and(|free| need > free)
        }
    };
    let tiles = TileConfig::default();
    let latents = |side: usize| {
        Tensor::randn(
            0f32,
            1f32,
            (1, config.latent_channels, side / f, side / f),
            device,
        )
    };
    // Warm-up: every weight touched (and faulted in) before the baseline is read.
    vae.decode(&latents(8 * f)?)?;
    vae.encode(&Tensor::zeros((1, 3, 8 * f, 8 * f), DType::F32, device)?)?;

    let mut rows = Vec::new();
    for &stage in &args.stages {
        let input = match stage {
            Stage::VaeDecode => latents(side)?,
            Stage::VaeEncode => Tensor::rand(-1f32, 1f32, (1, 3, side, side), device)?,
            Stage::All | Stage::Text | Stage::Unet => continue,
        };
        let run = |vae: &Vae| -> candle_core::Result<Tensor> {
            match (stage, tiled) {
                (Stage::VaeDecode, true) => vae.decode_tiled(&input, &tiles),
                (Stage::VaeDecode, false) => vae.decode(&input),
                (_, true) => vae.encode_tiled(&input, &tiles),
                (_, false) => vae.encode(&input),
            }
        };
        let base_mib = proc_status_mib("VmRSS:");
        let reset = reset_peak_rss();
        let mut times = Vec::with_capacity(args.reps);
        for _ in 0..args.reps.max(1) {
            let t = Instant::now();
            run(&vae)?;
            times.push(ms(t));
        }
        let extra_mib = peak_rss_mib() - base_mib;
        times.sort_by(|a, b| a.total_cmp(b));
        rows.push((stage, times[times.len() / 2], extra_mib, base_mib, reset));
    }

    let name = |s: Stage| match s {
        Stage::VaeDecode => "VAE decode",
        Stage::VaeEncode => "VAE encode",
        Stage::All | Stage::Text | Stage::Unet => "all",
    };
    let mode = if tiled {
        format!("tiled ({} latents a side)", tiles.tile)
    } else {
        "untiled".to_string()
    };
    if args.json {
        let stages: Vec<_> = rows
            .iter()
            .map(|&(s, ms, extra, base, reset)| {
                serde_json::json!({"stage": name(s), "ms": ms, "peak_extra_mib": extra,
                    "rss_before_mib": base, "peak_reset": reset})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": dir, "size": side, "tiled": tiled, "tile": tiles.tile, "reps": args.reps,
                "threads": candle_core::utils::get_num_threads(), "load_ms": load_ms,
                "device": crate::models::device::describe(device), "stages": stages,
            })
        );
    } else {
        println!(
            "VAE of {}  {side}x{side}  {mode}  {} threads on {}",
            dir.display(),
            candle_core::utils::get_num_threads(),
            crate::models::device::describe(device)
        );
        println!(
            "{:<14}{:>14}{:>26}",
            "stage", "ms (median)", "peak MiB above weights"
        );
        for (s, ms, extra, _, reset) in &rows {
            let note = if *reset { "" } else { " (peak not reset)" };
            println!("{:<14}{ms:>14.0}{extra:>26.0}{note}", name(*s));
        }
    }
    Ok(())
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so that the next reading is the
/// peak of what runs from now on. False where the kernel does not allow it (then the peak
/// includes what ran before).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
