//! `easel bench`: the cost of each stage on SD 1.5-sized weights.
//!
//! Speed depends on the architecture, not the weight values, so the bench builds an SD 1.5
//! model folder with random weights once (cached; ~4 GB) and loads it through the same code as a
//! real checkpoint. It times text encoding, one UNet step with CFG (batch 2), a VAE decode, a VAE
//! encode and one preview, and reads the process's peak RSS after each stage.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Args;

use crate::diffusion::preview::{latent_preview, taesd_preview};
use crate::diffusion::{GenerateRequest, Pipeline};
use crate::models::clip_text::{ClipTextConfig, ClipTextModel};
use crate::models::unet::{UNet, UNetConfig};
use crate::models::vae::{Vae, VaeConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Benchmark this diffusers folder instead of random SD 1.5 weights.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the random SD 1.5 folder is made (once) and kept.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Image side in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Timed repetitions of each heavy stage (after one warm-up).
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also print where one UNet step's time goes, by kind of op.
    #[arg(long)]
    pub profile: bool,
    /// Also time a TAESD preview (a TAESD file or folder) at the bench size, against the UNet step.
    #[arg(long, value_name = "PATH")]
    pub taesd: Option<PathBuf>,
    /// Where to run: auto (a GPU when this build and machine have one), cpu, cuda, metal.
    #[arg(long, value_enum, default_value_t = crate::models::device::DeviceChoice::Auto)]
    pub device: crate::models::device::DeviceChoice,
    /// How the weights are kept: f32, f16 or bf16 (computed in f32).
    #[arg(long, value_enum, default_value_t = crate::models::device::Precision::F32)]
    pub dtype: crate::models::device::Precision,
    #[command(flatten)]
    pub gallery: super::bench_gallery::GalleryBenchArgs,
    /// Cold-load these models (checkpoint files or folders) instead, alternately, each in a
    /// fresh process with its files dropped from the page cache: load time and peak RSS, with
    /// ratios to the first. Repeatable.
    #[arg(long = "load", value_name = "MODEL")]
    pub load: Vec<PathBuf>,
    /// Measure the model library over this many checkpoints instead (sparse copies of
    /// --library-from's header, listed cold).
    #[arg(long, requires = "library_from")]
    pub library: Option<usize>,
    #[arg(long, value_name = "CHECKPOINT")]
    pub library_from: Option<PathBuf>,
    /// One load, reported as JSON (what --load runs in each child process).
    #[arg(long, hide = true)]
    pub load_child: Option<PathBuf>,
    /// What to measure: all (every stage, on the whole model); text, unet, vae-decode and/or
    /// vae-encode (vae-… alone loads only the VAE and reports the peak memory above its
    /// weights).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub stages: Vec<Stage>,
    /// The guidance scale of the timed text encode and UNet step: above 1 they run the prompt
    /// and the negative (batch 2); ≤ 1 the prompt alone (batch 1), as a Turbo model runs.
    #[arg(long, default_value_t = 7.5)]
    pub cfg: f64,
    /// With --stages vae-…: untiled (off), in tiles (on), or as a generation would decide
    /// with the memory free now (auto).
    #[arg(long, value_enum, default_value_t = crate::diffusion::VaeTiling::Off)]
    pub vae_tiling: crate::diffusion::VaeTiling,
    /// Measure LoRA hot-loading instead: a random adapter of this rank on every attention and
    /// feed-forward projection, against the no-adapter baseline in the same run.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// Measure img2img instead: at each of these strengths, a txt2img of --steps steps, then
    /// img2img of the picture it made, against F × the txt2img time + one VAE encode.
    #[arg(long, value_delimiter = ',', value_name = "F,…")]
    pub img2img: Vec<f64>,
    /// Steps of the --img2img runs.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    All,
    Text,
    Unet,
    VaeDecode,
    VaeEncode,
}

const SD15_UNET: &str = r#"{"_class_name":"UNet2DConditionModel","act_fn":"silu","attention_head_dim":8,
"block_out_channels":[320,640,1280,1280],"center_input_sample":false,"cross_attention_dim":768,
"down_block_types":["CrossAttnDownBlock2D","CrossAttnDownBlock2D","CrossAttnDownBlock2D","DownBlock2D"],
"downsample_padding":1,"flip_sin_to_cos":true,"freq_shift":0,"in_channels":4,"layers_per_block":2,
"mid_block_scale_factor":1,"norm_eps":1e-05,"norm_num_groups":32,"out_channels":4,"sample_size":64,
"up_block_types":["UpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D","CrossAttnUpBlock2D"]}"#;
const SD15_VAE: &str = r#"{"_class_name":"AutoencoderKL","act_fn":"silu","block_out_channels":[128,256,512,512],
"down_block_types":["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
"in_channels":3,"latent_channels":4,"layers_per_block":2,"norm_num_groups":32,"out_channels":3,"sample_size":512,
"scaling_factor":0.18215,"up_block_types":["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"]}"#;
const SD15_TEXT: &str = r#"{"architectures":["CLIPTextModel"],"hidden_act":"quick_gelu","hidden_size":768,
"intermediate_size":3072,"layer_norm_eps":1e-05,"max_position_embeddings":77,"num_attention_heads":12,
"num_hidden_layers":12,"projection_dim":768,"vocab_size":49408}"#;
const SD15_SCHEDULER: &str = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear",
"beta_start":0.00085,"num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,"steps_offset":1,
"clip_sample":false,"prediction_type":"epsilon"}"#;
const SD15_INDEX: &str = r#"{"_class_name":"StableDiffusionPipeline","unet":["diffusers","UNet2DConditionModel"],
"vae":["diffusers","AutoencoderKL"],"text_encoder":["transformers","CLIPTextModel"],
"scheduler":["diffusers","PNDMScheduler"]}"#;

pub fn run(args: BenchArgs) -> Result<()> {
    if args.gallery.gallery {
        return super::bench_gallery::run(&args.gallery, args.work_dir.as_deref(), args.json);
    }
    if let Some(path) = &args.load_child {
        return super::bench_load::child(path);
    }
    if !args.load.is_empty() {
        return super::bench_load::run(&args.load, args.reps, args.json);
    }
    if let (Some(n), Some(from)) = (args.library, &args.library_from) {
        let work = args
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("easel-bench"));
        return super::bench_load::library(n, from, &work, args.json);
    }
    let device = args.device.open()?;
    let dir = match &args.model {
        Some(m) => m.clone(),
        None => {
            let work = args
                .work_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("easel-bench"));
            let dir = work.join("sd15-random");
            if !dir.join("model_index.json").is_file() {
                eprintln!("making random SD 1.5 weights in {} (once)…", dir.display());
                make_sd15_random(&dir).with_context(|| format!("making {}", dir.display()))?;
            }
            dir
        }
    };
    let reps = args.reps.max(1);
    if let Some(rank) = args.lora_rank {
        return super::bench_lora::run(&args, &dir, rank);
    }
    if !args.img2img.is_empty() {
        return super::bench_img2img::run(&args, &dir, &device);
    }
    let want = |s: Stage| args.stages.contains(&Stage::All) || args.stages.contains(&s);
    if !(want(Stage::Text) || want(Stage::Unet)) {
        return super::bench_vae::run(&args, &dir, &device);
    }

    let t = Instant::now();
    let options = crate::models::checkpoint::LoadOptions {
        device: args.device,
        precision: args.dtype,
        ..Default::default()
    };
    let pipeline = Pipeline::load_with(&dir, &options, &device)?;
    let load_ms = ms(t);
    let rss_load = peak_rss_mib();

    let prompt = "a photograph of an astronaut riding a horse on the moon, highly detailed";
    // As a run encodes them: with guidance, the negative and the prompt in one batch (SDXL:
    // through both encoders, with the pooled embedding and size conditioning).
    let mut req = GenerateRequest::new(&pipeline.model, prompt, 0);
    (req.width, req.height, req.cfg_scale) = (args.size, args.size, args.cfg);
    let text_ms = median(reps + 1, || {
        pipeline.forget_kept();
        pipeline.conditioning_for(&req)?;
        Ok(())
    })?;
    let cond = pipeline.conditioning_for(&req)?;
    let rss_text = peak_rss_mib();

    let f = pipeline.model.vae_scale();
    let c = pipeline.model.latent_channels();
    let latents = Tensor::randn(0f32, 1f32, (1, c, args.size / f, args.size / f), &device)?;
    let batch = latents.repeat((cond.context.dim(0)?, 1, 1, 1))?;
    let unet = &pipeline.model.unet;
    let unet_ms = optional(want(Stage::Unet), || {
        median(reps, || {
            unet.forward_with(&batch, 500.0, &cond)?;
            Ok(())
        })
    })?;
    let rss_unet = peak_rss_mib();
    // Where the time goes, one run of each stage with op scopes on (after the timed runs, so
    // the timings above carry no profiling cost).
    let profile = if args.profile {
        vec![
            (
                "text encode",
                profile_step(|| {
                    pipeline.forget_kept();
                    pipeline.conditioning_for(&req)?;
                    Ok(())
                })?,
            ),
            (
                "UNet step",
                profile_step(|| {
                    unet.forward_with(&batch, 500.0, &cond)?;
                    Ok(())
                })?,
            ),
            (
                "VAE decode",
                profile_step(|| {
                    pipeline.model.vae.decode(&latents)?;
                    Ok(())
                })?,
            ),
        ]
    } else {
        Vec::new()
    };

    let vae_ms = optional(want(Stage::VaeDecode), || {
        median(reps, || {
            pipeline.model.vae.decode(&latents)?;
            Ok(())
        })
    })?;
    let image = Tensor::rand(-1f32, 1f32, (1, 3, args.size, args.size), &device)?;
    let vae_encode_ms = optional(want(Stage::VaeEncode), || {
        median(reps, || {
            pipeline.model.vae.encode(&image)?;
            Ok(())
        })
    })?;
    let rss_vae = peak_rss_mib();
    let anon = anon_rss_mib();

    let preview_ms = median(50, || {
        latent_preview(&latents, pipeline.model.latent_rgb())?;
        Ok(())
    })?;
    let ratio = unet_ms.map(|u| preview_ms / u);
    // A real preview per step through TAESD (ms, share of a UNet step), and its full decode.
    let taesd = match &args.taesd {
        Some(path) => {
            let t = crate::models::taesd::Taesd::load(path, &device)?;
            let ms = median(reps, || {
                taesd_preview(&t, &latents)?;
                Ok(())
            })?;
            let decode_ms = median(reps, || {
                t.decode(&latents)?;
                Ok(())
            })?;
            Some((ms, unet_ms.map(|u| ms / u), decode_ms))
        }
        None => None,
    };

    let threads = candle_core::utils::get_num_threads();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": dir, "size": args.size, "threads": threads, "load_ms": load_ms,
                "sdxl": pipeline.model.is_sdxl(), "cfg": args.cfg, "unet_batch": batch.dim(0)?,
                "device": crate::models::device::describe(&device), "dtype": args.dtype.name(),
                "text_encode_ms": text_ms, "unet_step_cfg_ms": unet_ms, "vae_decode_ms": vae_ms,
                "vae_encode_ms": vae_encode_ms,
                "preview_ms": preview_ms, "preview_over_unet_step": ratio,
                "taesd_preview_ms": taesd.map(|t| t.0), "taesd_preview_over_unet_step": taesd.map(|t| t.1),
                "taesd_decode_ms": taesd.map(|t| t.2),
                "peak_rss_mib": {"after_load": rss_load, "after_text": rss_text, "after_unet": rss_unet, "after_vae": rss_vae},
                "anon_rss_mib": anon,
                "profile_ms": profile.iter().map(|(stage, p)| serde_json::json!({
                    "stage": stage,
                    "ops": p.iter().map(|(k, ms, n)| serde_json::json!({"kind": k, "ms": ms, "calls": n})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "model {}  {}x{}  {} threads on {}, {} weights",
            dir.display(),
            args.size,
            args.size,
            threads,
            crate::models::device::describe(&device),
            args.dtype.name()
        );
        println!("{:<34}{:>12}", "stage", "ms (median)");
        println!("{:<34}{:>12.1}", "load (cold, from disk)", load_ms);
        let n = batch.dim(0)?;
        let row = |name: &str, v: Option<f64>| match v {
            Some(v) => println!("{name:<34}{v:>12.1}"),
            None => println!("{name:<34}{:>12}", "-"),
        };
        row(&format!("text encode ({n} prompt(s))"), Some(text_ms));
        row(&format!("UNet step (batch {n})"), unet_ms);
        row("VAE decode", vae_ms);
        row("VAE encode", vae_encode_ms);
        println!("{:<34}{:>12.3}", "preview (latent → RGB)", preview_ms);
        if let Some(r) = ratio {
            println!("preview / UNet step = {:.5} ({:.3}%)", r, r * 100.0);
        }
        if let Some((ms, share, decode_ms)) = taesd {
            let side = crate::diffusion::preview::TAESD_PREVIEW_MAX_SIDE;
            println!("{:<34}{:>12.1}", format!("preview (TAESD, ≤{side} px)"), ms);
            if let Some(share) = share {
                println!(
                    "TAESD preview / UNet step = {:.4} ({:.2}%)",
                    share,
                    share * 100.0
                );
            }
            println!("{:<34}{:>12.1}", "TAESD decode (full size)", decode_ms);
        }
        println!(
            "peak RSS MiB: after load {rss_load:.0}, text {rss_text:.0}, UNet {rss_unet:.0}, VAE {rss_vae:.0}"
        );
        println!("anonymous RSS MiB at the end (the model's own memory): {anon:.0}");
        for (stage, p) in &profile {
            let total: f64 = p.iter().map(|(_, ms, _)| ms).sum();
            println!("\n{stage}, by kind of op:");
            println!("{:<40}{:>10}{:>8}{:>8}", "kind", "ms", "share", "calls");
            for (kind, ms, calls) in p {
                println!(
                    "{kind:<40}{ms:>10.1}{:>7.1}%{calls:>8}",
                    100.0 * ms / total.max(1e-9)
                );
            }
        }
    }
    Ok(())
}

/// Runs `f` once with op profiling on: (kind, ms, calls) per kind, then "other" for the time
/// no op scope covered (the glue between ops).
fn profile_step(f: impl FnOnce() -> Result<()>) -> Result<Vec<(String, f64, u64)>> {
    use crate::ops::profile;
    profile::enable(true);
    let t = Instant::now();
    let run = f();
    let wall = ms(t);
    let totals = profile::totals();
    profile::enable(false);
    run?;
    let mut rows: Vec<(String, f64, u64)> = totals
        .iter()
        .map(|(k, d, n)| (k.label().to_string(), d.as_secs_f64() * 1e3, *n))
        .collect();
    let covered: f64 = rows.iter().map(|r| r.1).sum();
    rows.push((
        "other (uncovered glue)".into(),
        (wall - covered).max(0.0),
        0,
    ));
    Ok(rows)
}

pub(super) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Runs `f` once to warm up, then `reps` times; the median in milliseconds.
/// `f()` when `on`, else nothing (a stage not asked for).
fn optional(on: bool, f: impl FnOnce() -> Result<f64>) -> Result<Option<f64>> {
    on.then(f).transpose()
}

pub(super) fn median(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(ms(t));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Peak resident set size (VmHWM) in MiB; 0 where /proc is not available.
pub(super) fn peak_rss_mib() -> f64 {
    proc_status_mib("VmHWM:")
}

/// Current anonymous (non-file-backed) resident memory in MiB: the tensors themselves.
fn anon_rss_mib() -> f64 {
    proc_status_mib("RssAnon:")
}

/// A `/proc/self/status` memory line in MiB; 0 where /proc is not available.
pub(super) fn proc_status_mib(key: &str) -> f64 {
    crate::process_stats::status_mib(key).unwrap_or(0.0)
}

/// Writes an SD 1.5-architecture diffusers folder with random weights: each component is built
/// once on a `VarMap` (which creates every tensor the module asks for, with candle's default
/// initialisers) and the map is saved under the component's real file name.
fn make_sd15_random(dir: &Path) -> Result<()> {
    let device = Device::Cpu;
    let write = |rel: &str, text: &str| -> Result<()> {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text).with_context(|| p.display().to_string())
    };
    write("unet/config.json", SD15_UNET)?;
    write("vae/config.json", SD15_VAE)?;
    write("text_encoder/config.json", SD15_TEXT)?;
    write("scheduler/scheduler_config.json", SD15_SCHEDULER)?;

    let vm = VarMap::new();
    let cfg_path = dir.join("text_encoder/config.json");
    let cfg = ClipTextConfig::from_file(&cfg_path)?;
    ClipTextModel::new(
        VarBuilder::from_varmap(&vm, DType::F32, &device).pp("text_model"),
        cfg,
        &cfg_path,
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    vm.save(dir.join("text_encoder/model.safetensors"))?;

    let vm = VarMap::new();
    let cfg_path = dir.join("unet/config.json");
    let cfg = UNetConfig::from_file(&cfg_path)?;
    UNet::new(
        VarBuilder::from_varmap(&vm, DType::F32, &device),
        cfg,
        &cfg_path,
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    vm.save(dir.join("unet/diffusion_pytorch_model.safetensors"))?;

    let vm = VarMap::new();
    let cfg_path = dir.join("vae/config.json");
    let cfg = VaeConfig::from_file(&cfg_path)?;
    Vae::new(
        VarBuilder::from_varmap(&vm, DType::F32, &device),
        cfg,
        &cfg_path,
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    vm.save(dir.join("vae/diffusion_pytorch_model.safetensors"))?;

    // Written last: its presence marks the folder complete.
    write("model_index.json", SD15_INDEX)?;
    Ok(())
}
