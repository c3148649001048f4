//! `easel generate`: one image, progress on stderr, metadata in the PNG.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::models::device::{DeviceChoice, Precision};
use clap::Args;

use crate::diffusion::init_image;
use crate::diffusion::schedulers::PredictionType;
use crate::diffusion::schedulers::{Sampler, Spacing};
use crate::diffusion::{
    GenerateRequest, Hires, InitImage, Mask, Outcome, Pipeline, SdxlOptions, SizeConditioning,
    Upscaler, VaeTiling,
};
use crate::gallery::png_meta::{self, EmbeddingUse, GenerationMetadata, InitImageUse, VaeUse};
use crate::models::checkpoint::LoadOptions;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, …) or a
    /// single-file checkpoint (.safetensors, .ckpt, .pt, .pth) of SD 1.x/2.x. Default: the
    /// bundled model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A VAE to use instead of the model's own: a single file (LDM or diffusers names) or a
    /// diffusers vae/ folder. A1111's `<checkpoint>.vae.safetensors` beside a checkpoint is
    /// used without asking.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// What the model predicts, when its files do not say: epsilon | v.
    #[arg(long, value_parser = parse_prediction_arg)]
    pub prediction: Option<PredictionType>,
    /// A1111's "Clip skip": 1 = the text encoder's last layer, 2 = the one before (many
    /// anime SD 1.x models want 2).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub clip_skip: usize,
    /// Where to run: auto (a GPU when this build and machine have one), cpu, cuda, metal.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// How the weights are kept: f32, or f16 / bf16 for half the memory (computed in f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    #[arg(long)]
    pub prompt: String,
    /// What the image should not show; empty = unconditional (SDXL: zeros, as diffusers and
    /// A1111 do).
    #[arg(long, default_value = "")]
    pub negative: String,
    /// SDXL: what the second text encoder (OpenCLIP bigG) reads. Default: --prompt.
    #[arg(long = "prompt-2")]
    pub prompt_2: Option<String>,
    /// SDXL: the second text encoder's negative. Default: --negative.
    #[arg(long = "negative-2")]
    pub negative_2: Option<String>,
    /// SDXL micro-conditioning: the size of the "original" image, WIDTHxHEIGHT (small sizes
    /// look upscaled and soft). Default: the image size.
    #[arg(long, value_parser = parse_size_arg, value_name = "WxH")]
    pub original_size: Option<(usize, usize)>,
    /// SDXL micro-conditioning: where that image was cropped, LEFT,TOP (0,0 centres the subject).
    #[arg(long, value_parser = parse_crop_arg, value_name = "LEFT,TOP", default_value = "0,0")]
    pub crop: (usize, usize),
    /// SDXL micro-conditioning: the size the image is meant for, WIDTHxHEIGHT. Default: the
    /// image size.
    #[arg(long, value_parser = parse_size_arg, value_name = "WxH")]
    pub target_size: Option<(usize, usize)>,
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 skips the unconditional pass.
    // Negative numbers parse as values (here and on the other numeric flags) so that `--cfg -1`
    // gets the range message, not clap's "unexpected argument '-1'".
    #[arg(long, default_value_t = 7.5, allow_negative_numbers = true)]
    pub cfg: f64,
    /// Random (and printed) when not given.
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Default: the model's native size.
    #[arg(long, allow_negative_numbers = true)]
    pub width: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    pub height: Option<usize>,
    /// ddim | euler | euler_a | dpmpp_2m_karras | lcm (LCM models and LCM-LoRA: 2–8 steps,
    /// --cfg 1–2). Default: the model's own scheduler.
    #[arg(long)]
    pub sampler: Option<Sampler>,
    /// How the sampler lays out its steps: leading | linspace | trailing (diffusers'
    /// `timestep_spacing`). Default: the sampler's own (DDIM leading, the others linspace).
    /// Few-step models (SD-Turbo: euler_a, 1–4 steps, --cfg 0) want trailing.
    #[arg(long)]
    pub spacing: Option<Spacing>,
    /// A safetensors file with one tensor [1, C, H/f, W/f] used instead of the seeded noise
    /// (with --init-image: the noise mixed into the picture's latents).
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// img2img: start from this picture (PNG, JPEG, WebP, …). It is scaled to cover
    /// --width × --height and centre-cropped (nothing is stretched); without them the size is
    /// the picture's own, scaled down to the model's native area if larger, rounded down to
    /// the model's multiple.
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img: how much of the picture is repainted, 0 < F ≤ 1 (of S steps the last ⌊S·F⌋
    /// run). Default 0.75.
    #[arg(long, allow_negative_numbers = true)]
    pub strength: Option<f64>,
    /// Inpainting: repaint only where this picture is white (black keeps the --init-image;
    /// grey levels are cut at half). Resized to the image size when it differs. Works with any
    /// model; inpainting models (9-channel UNet) are shown the mask and the kept picture.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Inpainting: A1111's "Mask blur" in pixels (default 4). Above 0 the image keeps the
    /// picture's own pixels outside the mask, blended across the blurred edge; 0 leaves the
    /// image as decoded (diffusers' pipeline).
    #[arg(long, allow_negative_numbers = true)]
    pub mask_blur: Option<u32>,
    /// Inpainting: whole (the picture at --width × --height) | masked (A1111's "Only masked":
    /// the box around the mask is generated at --width × --height, default the model's size,
    /// and put back into the picture, which keeps its own size).
    #[arg(long, value_parser = ["whole", "masked"], default_value = "whole")]
    pub inpaint_area: String,
    /// Inpainting, --inpaint-area masked: pixels around the mask's box (A1111's "Only masked
    /// padding", default 32).
    #[arg(long, allow_negative_numbers = true)]
    pub masked_padding: Option<u32>,
    /// Hires fix: generate at --width × --height, enlarge by F (1 < F ≤ 4), and repaint at
    /// the larger size (A1111's "Upscale by").
    #[arg(long, allow_negative_numbers = true)]
    pub hires_scale: Option<f64>,
    /// Hires fix: the second pass's steps (default: --steps).
    #[arg(long, allow_negative_numbers = true)]
    pub hires_steps: Option<usize>,
    /// Hires fix: the second pass's strength, 0 < F ≤ 1 (A1111's "Denoising strength",
    /// default 0.7).
    #[arg(long, allow_negative_numbers = true)]
    pub hires_denoise: Option<f64>,
    /// Hires fix: latent (enlarge the latents; soft, wants 0.5–0.7) | lanczos (enlarge the
    /// decoded picture; sharper). Default latent.
    #[arg(long)]
    pub hires_upscaler: Option<Upscaler>,
    /// Write each step's preview here as step_NNN.png.
    #[arg(long)]
    pub preview_dir: Option<PathBuf>,
    /// The final decode: vae (the model's) | taesd[=PATH] (TAESD: a fraction of the VAE's time,
    /// slightly softer). Without a path, TAESD is looked for in the model folders (see README).
    #[arg(long, default_value = "vae", value_parser = parse_decoder_arg, value_name = "vae|taesd[=PATH]")]
    pub decoder: TaesdChoice,
    /// Per-step previews: latent (a projection at latent size, nearly free) | taesd[=PATH] (real
    /// images at full size through TAESD).
    #[arg(long, default_value = "latent", value_parser = parse_preview_arg, value_name = "latent|taesd[=PATH]")]
    pub preview: TaesdChoice,
    /// Decode the VAE in tiles (bounded memory: large images fit; within a few 1/255 of the
    /// untiled decode): auto (only when the untiled decode would not fit in the free memory),
    /// on, off (refuse sizes whose untiled decode does not fit).
    #[arg(long, value_enum, default_value_t = VaeTiling::Auto)]
    pub vae_tiling: VaeTiling,
    /// A LoRA adapter: a .safetensors file or a name found in --lora-dir. `:W` sets its weight
    /// (default 1, negative allowed); `:TE:UNET` or `:te=W:unet=W` separate text-encoder and
    /// UNet weights (A1111's order). Repeatable. `<lora:NAME:W>` in the prompt works too.
    #[arg(
        long = "lora",
        value_name = "FILE_OR_NAME[:WEIGHT]",
        allow_hyphen_values = true
    )]
    pub loras: Vec<String>,
    /// Folders where adapters named without a path are found (then $EASEL_LORA_DIR). Repeatable.
    #[arg(long)]
    pub lora_dir: Vec<PathBuf>,
    /// Folders of textual-inversion embeddings (A1111's `embeddings/`: .pt, .safetensors),
    /// called by file name in the prompt (then $EASEL_EMBEDDINGS_DIR). Repeatable.
    #[arg(long)]
    pub embeddings: Vec<PathBuf>,
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    check_output_path(&args.output)?;
    let model_dir = match &args.model {
        Some(m) => m.clone(),
        None => crate::settings::default_model_dir().ok_or_else(|| {
            anyhow!("--model: no model given and the bundled default model (models/default) is not installed")
        })?,
    };
    let device = args.device.open()?;
    let load_start = Instant::now();
    let options = LoadOptions {
        vae: args.vae.clone(),
        prediction: args.prediction,
        device: args.device,
        precision: args.dtype,
        taesd: None,
    };
    let mut pipeline = Pipeline::load_with(&model_dir, &options, &device)?;
    let sdxl = pipeline.model.is_sdxl();
    if let Some(taesd) = load_taesd(&args, &model_dir, sdxl, &device)? {
        pipeline.set_taesd(taesd)?;
    }
    load_embeddings(&mut pipeline, &args)?;
    let model = &pipeline.model;
    eprintln!(
        "loaded {} ({}) in {:.2}s",
        model_dir.display(),
        model.description,
        load_start.elapsed().as_secs_f64()
    );
    for note in &model.notes {
        eprintln!("  {note}");
    }
    if let Some(vae) = &model.vae_file {
        eprintln!("  VAE: {}", vae.display());
    }
    if let Some(t) = &pipeline.taesd {
        let uses: Vec<&str> = [(t.final_decode, "final decode"), (t.preview, "previews")]
            .iter()
            .filter_map(|&(on, what)| on.then_some(what))
            .collect();
        eprintln!("  TAESD: {} ({})", t.model.file.display(), uses.join(", "));
    }

    let seed = args.seed.unwrap_or_else(rand::random);
    let mut req = GenerateRequest::new(&pipeline.model, &args.prompt, seed);
    req.negative_prompt = args.negative.clone();
    req.sdxl = SdxlOptions {
        prompt_2: args.prompt_2.clone(),
        negative_prompt_2: args.negative_2.clone(),
        size: SizeConditioning {
            original: args.original_size,
            crop: args.crop,
            target: args.target_size,
        },
    };
    req.steps = args.steps;
    req.cfg_scale = args.cfg;
    req.clip_skip = args.clip_skip;
    req.vae_tiling = args.vae_tiling;
    let picture = match &args.init_image {
        Some(path) => Some(init_image::read(path).map_err(|e| anyhow!("--init-image {e}"))?),
        None if args.strength.is_some() => bail!("--strength: only with --init-image"),
        None => None,
    };
    let only_masked = args.inpaint_area == "masked";
    if only_masked && args.mask.is_none() {
        bail!("--inpaint-area masked: only with --mask");
    }
    if args.masked_padding.is_some() && !only_masked {
        bail!("--masked-padding: only with --inpaint-area masked");
    }
    let (width, height) = match &picture {
        // Only masked: the box is generated at the model's own size.
        Some(_) if only_masked => (req.width, req.height),
        Some(p) => init_image::natural_size(
            p,
            pipeline.model.native_size(),
            pipeline.model.size_multiple(),
        ),
        None => (req.width, req.height),
    };
    req.width = args.width.unwrap_or(width);
    req.height = args.height.unwrap_or(height);
    req.hires = match args.hires_scale {
        Some(scale) if picture.is_none() => Some(Hires {
            scale,
            steps: args.hires_steps.unwrap_or(0),
            denoise: args.hires_denoise.unwrap_or(Hires::default().denoise),
            upscaler: args.hires_upscaler.unwrap_or(Hires::default().upscaler),
        }),
        Some(_) => bail!("--hires-scale: hires fix is for text to image, not with --init-image"),
        None => {
            let stray = [
                ("--hires-steps", args.hires_steps.is_some()),
                ("--hires-denoise", args.hires_denoise.is_some()),
                ("--hires-upscaler", args.hires_upscaler.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
                bail!("{flag}: only with --hires-scale");
            }
            None
        }
    };
    if args.mask_blur.is_some() && args.mask.is_none() {
        bail!("--mask-blur: only with --mask");
    }
    if let Some(path) = &args.mask {
        let Some(picture) = &picture else {
            bail!("--mask: needs the picture it covers (--init-image)");
        };
        let mask = init_image::read(path).map_err(|e| anyhow!("--mask {e}"))?;
        let mut mask = image::DynamicImage::ImageRgb8(mask).to_luma8();
        // The mask covers the picture: brought to its size first, then fitted with it.
        if mask.dimensions() != picture.dimensions() {
            eprintln!(
                "note: --mask is {}x{}, resized to the picture's {}x{}",
                mask.width(),
                mask.height(),
                picture.width(),
                picture.height()
            );
            mask = image::imageops::resize(
                &mask,
                picture.width(),
                picture.height(),
                image::imageops::FilterType::Lanczos3,
            );
        }
        req.mask = Some(Mask {
            image: if only_masked {
                mask
            } else {
                init_image::fit(&mask, req.width as u32, req.height as u32)
            },
            blur: args
                .mask_blur
                .unwrap_or(crate::diffusion::inpaint::DEFAULT_BLUR),
        });
    }
    if only_masked {
        req.only_masked = Some(
            args.masked_padding
                .unwrap_or(crate::diffusion::inpaint::DEFAULT_PADDING),
        );
    }
    if let Some(picture) = &picture {
        req.init_image = Some(InitImage {
            image: if only_masked {
                picture.clone()
            } else {
                init_image::fit(picture, req.width as u32, req.height as u32)
            },
            strength: args.strength.unwrap_or(init_image::DEFAULT_STRENGTH),
        });
    }
    if let Some(s) = args.sampler {
        req.sampler = s;
    }
    req.spacing = args.spacing;
    if let Some(path) = &args.init_noise {
        req.init_noise = Some(load_init_noise(path)?);
    }
    pipeline.validate(&req)?;
    let loras =
        super::lora::apply_for_generate(&pipeline, &args.loras, &args.lora_dir, &args.prompt)?;
    for (adapter, s) in loras.stack.entries() {
        eprintln!(
            "lora: {} ({}) weight {}{}",
            adapter.name,
            adapter.hash,
            s.weight,
            s.te_weight
                .map_or(String::new(), |t| format!(", text encoder {t}"))
        );
    }
    // Created only once the request is known to be good: a refused run leaves nothing behind.
    if let Some(dir) = &args.preview_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("--preview-dir {}", dir.display()))?;
    }
    eprintln!(
        "seed: {seed}  sampler: {}  {}x{}  {} steps  cfg {}",
        req.sampler, req.width, req.height, req.steps, req.cfg_scale
    );
    if let Some(h) = &req.hires {
        let (w, h2) = h.size(req.width, req.height, pipeline.model.size_multiple());
        eprintln!(
            "hires fix: {}x{} by {} ({}), {} steps at strength {}",
            w,
            h2,
            h.scale,
            h.upscaler,
            h.steps_for(req.steps),
            h.denoise
        );
    }
    if let Some(init) = &req.init_image {
        let first = init_image::first_step(req.steps, init.strength);
        eprintln!(
            "img2img: strength {}, the last {} of {} steps run",
            init.strength,
            req.steps - first.unwrap_or(0),
            req.steps
        );
    }

    let cancel = AtomicBool::new(false);
    let mut preview_error = None;
    let outcome = pipeline.generate(&req, &cancel, &mut |p| {
        let secs = p.elapsed.as_secs_f64();
        eprint!(
            "\rstep {}/{}  {:.2} it/s ",
            p.step,
            p.total,
            p.step as f64 / secs.max(1e-9)
        );
        let _ = std::io::stderr().flush();
        if let (Some(dir), None) = (&args.preview_dir, &preview_error) {
            let path = dir.join(format!("step_{:03}.png", p.step));
            if let Err(e) = image::save_buffer(
                &path,
                &p.preview.rgb,
                p.preview.width as u32,
                p.preview.height as u32,
                image::ExtendedColorType::Rgb8,
            ) {
                preview_error = Some(anyhow!("--preview-dir: writing {}: {e}", path.display()));
            }
        }
    })?;
    eprintln!();
    if let Some(e) = preview_error {
        return Err(e);
    }
    let image = match outcome {
        Outcome::Finished(image) => image,
        Outcome::Cancelled { completed_steps } => bail!("cancelled after {completed_steps} steps"),
    };
    for w in &image.warnings {
        eprintln!("warning: {w}");
    }
    let meta = GenerationMetadata {
        prompt: loras.recorded_prompt.clone(),
        negative_prompt: req.negative_prompt.clone(),
        steps: req.steps,
        cfg_scale: req.cfg_scale,
        seed,
        width: req.width,
        height: req.height,
        sampler: req.sampler.to_string(),
        sampler_a1111: req.sampler.a1111_name().to_string(),
        model_name: pipeline.model.name.clone(),
        model_hash: pipeline.model.short_hash()?,
        loras: loras.stack.uses(),
        spacing: pipeline.spacing(&req).map(|s| s.to_string()),
        clip_skip: req.clip_skip,
        vae: match &pipeline.model.vae_file {
            Some(f) => Some(VaeUse {
                hash: crate::models::hash::short_hash(std::slice::from_ref(f))
                    .with_context(|| format!("hashing {}", f.display()))?,
                ..VaeUse::named(f)
            }),
            None => None,
        },
        init_noise: args.init_noise.as_ref().map(|p| p.display().to_string()),
        init_image: (args.init_image.as_ref())
            .zip(req.init_image.as_ref())
            .map(|(path, init)| InitImageUse {
                path: path.display().to_string(),
                strength: init.strength,
                mask: args.mask.as_ref().map(|m| m.display().to_string()),
                mask_blur: req.mask.as_ref().map(|m| m.blur),
                only_masked_padding: req.only_masked,
            }),
        hires: req.hires,
        embeddings: pipeline
            .embeddings_used(&[&req.prompt, &req.negative_prompt])
            .into_iter()
            .map(|e| EmbeddingUse {
                name: e.name.clone(),
                hash: e.hash.clone(),
            })
            .collect(),
        sdxl: pipeline.model.is_sdxl().then(|| req.sdxl.clone()),
        easel_version: env!("CARGO_PKG_VERSION").to_string(),
        extra: Default::default(),
    };
    png_meta::write_png(&args.output, image.width, image.height, &image.rgb, &meta)?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// Reads the embeddings of `--embeddings` and $EASEL_EMBEDDINGS_DIR. Files that are not
/// embeddings, and embeddings for another model that the prompts name, get one line each.
fn load_embeddings(pipeline: &mut Pipeline, args: &GenerateArgs) -> Result<()> {
    let mut dirs = args.embeddings.clone();
    for d in &dirs {
        if !d.is_dir() {
            bail!("--embeddings {}: not a folder", d.display());
        }
    }
    dirs.extend(std::env::var_os("EASEL_EMBEDDINGS_DIR").map(PathBuf::from));
    let (found, skipped) = crate::prompt::embeddings::scan(&dirs);
    for e in skipped {
        eprintln!("note: skipped embedding {e}");
    }
    let widths: Vec<usize> = std::iter::once(pipeline.model.text_encoder.width())
        .chain((pipeline.model.text_encoder_2.as_ref()).map(|t| t.encoder.width()))
        .collect();
    let prompts = format!("{} {}", args.prompt, args.negative).to_lowercase();
    for e in &found {
        let fits = widths.iter().all(|&w| e.for_width(w).is_some());
        if !fits && prompts.contains(&e.name.to_lowercase()) {
            eprintln!(
                "warning: embedding {} ({}) is for another model ({} wide; this one reads {}): its name is read as words",
                e.name,
                e.path.display(),
                e.widths(),
                widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(" + ")
            );
        }
    }
    pipeline.embeddings = found;
    Ok(())
}

/// `--original-size` / `--target-size`: WIDTHxHEIGHT, each side 1..=65536.
fn parse_size_arg(s: &str) -> std::result::Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?} is not WIDTHxHEIGHT (e.g. 1024x1024)"))?;
    let side = |v: &str| match v.trim().parse::<usize>() {
        Ok(n) if (1..=65536).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: {v:?} is not a side in 1..=65536")),
    };
    Ok((side(w)?, side(h)?))
}

/// `--crop`: LEFT,TOP in pixels, each 0..=65536.
fn parse_crop_arg(s: &str) -> std::result::Result<(usize, usize), String> {
    let (l, t) = s
        .split_once(',')
        .ok_or_else(|| format!("{s:?} is not LEFT,TOP (e.g. 0,0)"))?;
    let offset = |v: &str| match v.trim().parse::<usize>() {
        Ok(n) if n <= 65536 => Ok(n),
        _ => Err(format!("{s:?}: {v:?} is not an offset in 0..=65536")),
    };
    Ok((offset(l)?, offset(t)?))
}

/// `--decoder` / `--preview`: the built-in way, or TAESD from a path or the model folders.
#[derive(Debug, Clone, PartialEq)]
pub enum TaesdChoice {
    Builtin,
    Taesd(Option<PathBuf>),
}

fn parse_taesd_choice(s: &str, builtin: &str) -> Result<TaesdChoice, String> {
    match s.split_once('=') {
        _ if s == builtin => Ok(TaesdChoice::Builtin),
        _ if s == "taesd" => Ok(TaesdChoice::Taesd(None)),
        Some(("taesd", path)) if !path.is_empty() => Ok(TaesdChoice::Taesd(Some(path.into()))),
        _ => Err(format!("{s:?}: use {builtin}, taesd or taesd=PATH")),
    }
}

/// `--decoder vae|taesd[=PATH]`.
pub fn parse_decoder_arg(s: &str) -> Result<TaesdChoice, String> {
    parse_taesd_choice(s, "vae")
}

/// `--preview latent|taesd[=PATH]`.
pub fn parse_preview_arg(s: &str) -> Result<TaesdChoice, String> {
    parse_taesd_choice(s, "latent")
}

/// The TAESD `--decoder` / `--preview` ask for (one file serves both), found beside the model
/// or in the model library when no path is given.
fn load_taesd(
    args: &GenerateArgs,
    model: &Path,
    sdxl: bool,
    device: &Device,
) -> Result<Option<crate::diffusion::TaesdUse>> {
    let paths: Vec<(&str, &Option<PathBuf>)> =
        [("decoder", &args.decoder), ("preview", &args.preview)]
            .into_iter()
            .filter_map(|(flag, c)| match c {
                TaesdChoice::Taesd(p) => Some((flag, p)),
                TaesdChoice::Builtin => None,
            })
            .collect();
    let Some(&(flag, _)) = paths.first() else {
        return Ok(None);
    };
    let given: Vec<&PathBuf> = paths.iter().filter_map(|(_, p)| p.as_ref()).collect();
    if given.len() == 2 && given[0] != given[1] {
        bail!(
            "--decoder and --preview name two different TAESDs; give one path (or one flag a path)"
        );
    }
    let path = match given.first() {
        Some(p) => p.to_path_buf(),
        None => {
            let mut dirs: Vec<PathBuf> = model
                .parent()
                .filter(|_| model.is_file())
                .map(|p| vec![p.to_path_buf()])
                .unwrap_or_else(|| vec![model.to_path_buf()]);
            dirs.extend(crate::models::library::default_model_dirs());
            crate::models::taesd::find(&dirs, crate::models::taesd::decoder_file(sdxl))
                .map_err(|e| anyhow!("--{flag} taesd: {e}"))?
        }
    };
    let model = crate::models::taesd::Taesd::load(&path, device)
        .map_err(|e| anyhow!("--{flag} taesd: {e}"))?;
    Ok(Some(crate::diffusion::TaesdUse {
        model,
        path,
        preview: matches!(args.preview, TaesdChoice::Taesd(_)),
        final_decode: matches!(args.decoder, TaesdChoice::Taesd(_)),
    }))
}

/// `--prediction epsilon|v`.
pub fn parse_prediction_arg(s: &str) -> Result<PredictionType, String> {
    crate::settings::parse_prediction(s).ok_or_else(|| format!("{s:?}: use epsilon or v"))
}

/// Fails before any work when the output cannot be written where asked.
fn check_output_path(out: &Path) -> Result<()> {
    if out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.eq_ignore_ascii_case("png"))
        != Some(true)
    {
        bail!("--output {}: the file name must end in .png", out.display());
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "--output {}: folder {} does not exist",
            out.display(),
            parent.display()
        );
    }
    if out.is_dir() {
        bail!("--output {}: is a folder", out.display());
    }
    Ok(())
}

/// Reads the single tensor of a safetensors file.
fn load_init_noise(path: &Path) -> Result<Tensor> {
    crate::models::weights::check_safetensors(path).map_err(|e| anyhow!("--init-noise: {e}"))?;
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        anyhow!(
            "--init-noise {}: {}",
            path.display(),
            crate::models::error::without_backtrace(e)
        )
    })?;
    let count = tensors.len();
    let mut it = tensors.into_values();
    match (it.next(), it.next()) {
        (Some(t), None) => Ok(t),
        _ => bail!(
            "--init-noise {}: holds {count} tensors, must hold exactly one",
            path.display()
        ),
    }
}
