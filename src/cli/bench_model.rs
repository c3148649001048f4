//! `easel bench-model`: the bundled default model's quality and speed, measured the way the
//! tests measure it (issue 6): generated scene prompts read back by the pixel checker, at
//! several CFG scales, with and without the striped LoRA, and the CLIP's text→image top-1 on
//! held-out scenes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use candle_core::Device;

use crate::diffusion::Pipeline;
use crate::gallery::embedder::ClipEmbedder;
use crate::lora::{AdapterSettings, LoraStack};
use crate::scenes::{self, measure, SceneAsk};

#[derive(clap::Args, Debug)]
pub struct BenchModelArgs {
    /// Model folder (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// CLIP folder for the retrieval check (default: the bundled CLIP).
    #[arg(long)]
    pub clip_model: Option<PathBuf>,
    /// Style LoRA (default: the bundled models/loras/striped.safetensors).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Guidance scales to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 3.0, 7.5])]
    pub cfg: Vec<f64>,
    /// Prompt/seed pairs per measurement.
    #[arg(long, default_value_t = 48)]
    pub count: usize,
    /// Seed of the first pair (pair i uses seed + i).
    #[arg(long, default_value_t = 1000)]
    pub seed: u64,
    /// Held-out scene set for the CLIP check (written by training/scenes.py).
    #[arg(long)]
    pub scenes: Option<PathBuf>,
    /// Write every generated image here, named by CFG, LoRA and pair.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: BenchModelArgs) -> Result<()> {
    let model = match args.model {
        Some(m) => m,
        None => crate::settings::default_model_dir()
            .ok_or_else(|| anyhow!("--model: the bundled default model is not installed"))?,
    };
    let device = Device::Cpu;
    let pipeline = Pipeline::load(&model, &device)?;
    let lora = match args.lora {
        Some(l) => l,
        None => crate::settings::bundled_lora_dir()
            .map(|d| d.join("striped.safetensors"))
            .ok_or_else(|| anyhow!("--lora: the bundled striped LoRA is not installed"))?,
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    }
    println!(
        "model {}, {} pairs from seed {}",
        model.display(),
        args.count,
        args.seed
    );
    println!("| CFG | LoRA | prompts | colour | background | shape | striped | s/image |");
    println!("|---|---|---|---|---|---|---|---|");
    let plain = SceneAsk::spread(args.count, false);
    let striped = SceneAsk::spread(args.count, true);
    let mut stack = LoraStack::new();
    for &cfg in &args.cfg {
        for (label, asks, with_lora) in [
            ("plain", &plain, false),
            ("striped", &striped, false),
            ("striped", &striped, true),
        ] {
            stack.clear();
            if with_lora {
                stack.add(&pipeline.model, &lora, AdapterSettings::new(1.0))?;
            }
            stack.apply(&pipeline.model)?;
            let tag = format!("cfg{cfg}-{}{}", label, if with_lora { "-lora" } else { "" });
            let report = measure(
                &pipeline,
                asks,
                args.seed,
                Some(cfg),
                &mut |i, _, img, _| {
                    if let Some(out) = &args.out {
                        let _ = img.save(out.join(format!("{tag}-{i:02}.png")));
                    }
                },
            )?;
            println!(
                "| {cfg} | {} | {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |",
                if with_lora { "striped 1.0" } else { "off" },
                report.share(report.colour),
                report.share(report.background),
                report.share(report.shape),
                report.share(report.striped),
                report.secs_per_image
            );
        }
    }
    stack.clear();
    stack.apply(&pipeline.model)?;

    let clip = match args.clip_model {
        Some(c) => c,
        None => crate::gallery::paths::default_clip_dir()?,
    };
    let set_dir = args.scenes.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scenes/heldout")
    });
    let embedder = ClipEmbedder::load(&clip, &device)?;
    let set = scenes::read_scene_set(&set_dir)?;
    let (hits, n) = scenes::clip_top1(&embedder, &set)?;
    println!(
        "CLIP {}: text→image top-1 on {n} held-out scenes ({}): {:.3}",
        clip.display(),
        set_dir.display(),
        hits as f64 / n.max(1) as f64
    );
    Ok(())
}
