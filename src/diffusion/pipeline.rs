//! The pipeline: prompt → text states → denoising loop → VAE decode, and its modes.
//!
//! One call, [`Pipeline::generate`], serves the CLI, the studio's worker thread, the tests and
//! the benchmarks. A generation is one or two denoising passes (`denoise`): from noise, or from
//! a picture's latents at a strength (img2img, hires fix's second pass), with an inpainting
//! input when there is a mask. Prompts are encoded in [`super::text`], requests checked in
//! `validate`, inpainting's inputs and "only masked" live in [`super::inpaint`]. It reports every step through a callback (step, elapsed time, the latents and
//! a cheap RGB preview of the predicted clean image) and checks a cancel flag between steps, so a
//! cancelled job ends within one step with [`Outcome::Cancelled`], not an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};

use super::guidance;
use super::hires::{self, Hires};
use super::init_image::{self, InitImage};
use super::inpaint::{self, Inpaint, Mask};
use super::memo::{Memo, PictureKey};
use super::memory::VaeTiling;
use super::noise::{NoiseSource, SeededNoise};
use super::preview::{latent_preview, taesd_preview, Preview};
use super::schedulers::{self, Sampler, Spacing};
use super::text::TextEncoding;
use crate::models::checkpoint::LoadOptions;
use crate::models::error::without_backtrace;
use crate::models::taesd::{Taesd, TaesdOptions};
use crate::models::unet::Conditioning;
use crate::models::vae::TileConfig;
use crate::models::{ModelError, StableDiffusion};
use crate::prompt::embeddings::Embedding;

/// Steps above this are refused: no sampler gains anything there, and a typo like 20000 would
/// otherwise tie up the machine for hours.
pub const MAX_STEPS: usize = 1000;
/// The largest side accepted, in pixels (16 MP images need far more memory than any desktop has
/// for SD 1.x attention anyway).
pub const MAX_SIDE: usize = 4096;

/// What to generate. Build it with [`GenerateRequest::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Empty = unconditional, as in diffusers.
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub sampler: Sampler,
    /// How the sampler lays its steps over the training timesteps; `None`: its default.
    pub spacing: Option<Spacing>,
    /// SDXL's second prompts and micro-conditioning (ignored by other models).
    pub sdxl: SdxlOptions,
    /// A1111's "Clip skip": 1 = the text encoder's last layer, 2 = the one before, …
    /// (SDXL: 1 = the penultimate layer, which SDXL was trained on.)
    pub clip_skip: usize,
    /// Replaces the seeded initial noise: [1, C, H/f, W/f], before init-sigma scaling
    /// (diffusers' `latents=` argument).
    pub init_noise: Option<Tensor>,
    /// Whether the VAE decodes in tiles; auto: when the untiled decode would not fit in memory.
    pub vae_tiling: VaeTiling,
    /// img2img: the picture to start from, at width × height, and the strength. With it,
    /// `init_noise` is the noise mixed into its latents (diffusers' `noise` in
    /// `prepare_latents`).
    pub init_image: Option<InitImage>,
    /// Hires fix: a second pass at a larger size (see [`hires`]).
    pub hires: Option<Hires>,
    /// Inpainting: where the starting picture is repainted (white), at width × height.
    pub mask: Option<Mask>,
    /// A1111's "Inpaint area: Only masked", with this padding in pixels: the picture and mask
    /// keep their own size; the box around the mask (grown to width × height's proportions)
    /// is generated at width × height and put back, so small areas get the model's full
    /// resolution. The result has the picture's size.
    pub only_masked: Option<u32>,
}

impl GenerateRequest {
    /// Defaults: 20 steps, CFG 7.5, the model's native size and its own sampler.
    pub fn new(model: &StableDiffusion, prompt: &str, seed: u64) -> Self {
        let size = model.native_size();
        Self {
            prompt: prompt.to_string(),
            negative_prompt: String::new(),
            steps: 20,
            cfg_scale: 7.5,
            seed,
            width: size,
            height: size,
            sampler: default_sampler(model),
            spacing: None,
            sdxl: SdxlOptions::default(),
            clip_skip: 1,
            init_noise: None,
            vae_tiling: VaeTiling::Auto,
            init_image: None,
            hires: None,
            mask: None,
            only_masked: None,
        }
    }
}

/// The largest micro-conditioning value accepted (SDXL was trained on sizes up to about 4096).
pub const MAX_SIZE_COND: usize = 65536;

/// What only SDXL reads: the second text encoder's prompts (`None`: the prompt and the
/// negative, diffusers' `prompt_2` / `negative_prompt_2`) and the micro-conditioning.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SdxlOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_2: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt_2: Option<String>,
    pub size: SizeConditioning,
}

/// SDXL's micro-conditioning: what the UNet is told about the training image the output should
/// look like it came from. Sizes are (width, height) in pixels; `None` means the image's own
/// size, as in diffusers and ComfyUI.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SizeConditioning {
    /// The size the "original" image had (small values look upscaled and soft).
    pub original: Option<(usize, usize)>,
    /// Where that image was cropped, (left, top); (0, 0) centres the subject.
    pub crop: (usize, usize),
    /// The size the image was meant for.
    pub target: Option<(usize, usize)>,
}

impl SizeConditioning {
    /// The six values in diffusers' order for an image of `width` × `height`: original
    /// (height, width), crop (top, left), target (height, width).
    pub fn time_ids(&self, width: usize, height: usize) -> [f32; 6] {
        let (ow, oh) = self.original.unwrap_or((width, height));
        let (left, top) = self.crop;
        let (tw, th) = self.target.unwrap_or((width, height));
        [oh, ow, top, left, th, tw].map(|v| v as f32)
    }

    /// Each value within 0..=[`MAX_SIZE_COND`] (sizes at least 1): what a PNG from elsewhere
    /// may claim is not trusted further.
    pub fn clamped(&self) -> Self {
        let side = |v: usize| v.clamp(1, MAX_SIZE_COND);
        let size = |s: Option<(usize, usize)>| s.map(|(w, h)| (side(w), side(h)));
        Self {
            original: size(self.original),
            crop: (
                self.crop.0.min(MAX_SIZE_COND),
                self.crop.1.min(MAX_SIZE_COND),
            ),
            target: size(self.target),
        }
    }
}

/// What a few-step model is made to run with, when the files say it is one.
#[derive(Debug, Clone, PartialEq)]
pub struct FewStep {
    /// "an LCM-distilled model", …: completes "this model looks like …".
    pub kind: &'static str,
    pub steps: usize,
    pub cfg_scale: f64,
    /// The sampler and spacing to switch to, when the model's own would not do.
    pub sampler: Option<(Sampler, Spacing)>,
}

/// The settings a few-step model wants, read from its files: an LCM-distilled UNet
/// (`time_cond_proj_dim`: 4 steps at guidance 8, its model cards' recipe), a scheduler file
/// that asks its Euler sampler for "trailing" spacing (SD-Turbo: 1–4 steps, no guidance), or,
/// for single files, whose weights cannot tell, "turbo" in the name (SDXL-Turbo and its
/// fine-tunes: Euler a with trailing spacing, as their model cards run them).
pub fn few_step_defaults(model: &StableDiffusion) -> Option<FewStep> {
    if model.unet.config.time_cond_proj_dim.is_some() {
        return Some(FewStep {
            kind: "an LCM-distilled model",
            steps: 4,
            cfg_scale: 8.0,
            sampler: None,
        });
    }
    if model.path.is_file() && model.name.to_lowercase().contains("turbo") {
        return Some(FewStep {
            kind: "a Turbo model (by its name)",
            steps: 4,
            cfg_scale: 0.0,
            sampler: Some((Sampler::EulerAncestral, Spacing::Trailing)),
        });
    }
    let file = &model.scheduler;
    let euler = matches!(
        Sampler::from_diffusers_class(&file.class_name),
        Some(Sampler::Euler | Sampler::EulerAncestral)
    );
    (euler && file.timestep_spacing == Some(Spacing::Trailing)).then_some(FewStep {
        kind: "a few-step model (SD-Turbo style)",
        steps: 4,
        cfg_scale: 0.0,
        sampler: None,
    })
}

/// The sampler named by the model's `scheduler_config.json`; DPM++ 2M Karras for classes Easel
/// does not implement (SD 1.5 ships PNDM), since it is the best general choice at 20 steps.
pub fn default_sampler(model: &StableDiffusion) -> Sampler {
    Sampler::from_diffusers_class(&model.scheduler.class_name).unwrap_or(Sampler::DpmPp2mKarras)
}

/// Reported after every step.
pub struct StepProgress<'a> {
    /// 1-based: `step == total` after the last step.
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
    /// The latents after this step.
    pub latents: &'a Tensor,
    /// RGB of the predicted clean latents (x0): at latent resolution from the latent projection,
    /// at image size from TAESD (see [`TaesdUse::preview`]).
    pub preview: Preview,
}

/// A finished image.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    /// Row-major 8-bit RGB, converted as diffusers does: round(clamp(x/2 + 0.5, 0, 1) · 255).
    pub rgb: Vec<u8>,
    /// The decoded image in [0, 1], [1, 3, H, W], before 8-bit conversion.
    pub pixels: Tensor,
    /// Things the user should know, e.g. a prompt truncated to 77 tokens.
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub enum Outcome {
    Finished(GeneratedImage),
    /// Stopped by the cancel flag; `completed_steps` steps had run.
    Cancelled {
        completed_steps: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A request value that cannot work; `arg` names the setting (CLI flag without dashes).
    #[error("--{arg}: {msg}")]
    InvalidRequest { arg: &'static str, msg: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{stage} failed: {source}")]
    Compute {
        stage: &'static str,
        #[source]
        source: candle_core::Error,
    },
}

pub(super) fn compute(stage: &'static str) -> impl FnOnce(candle_core::Error) -> PipelineError {
    move |source| PipelineError::Compute {
        stage,
        source: without_backtrace(source),
    }
}

/// A loaded model plus the generation loop.
pub struct Pipeline {
    pub model: StableDiffusion,
    /// TAESD and what it is used for; `None`: latent-projection previews and the model's VAE.
    pub taesd: Option<TaesdUse>,
    /// Textual-inversion embeddings prompts may call by name (those without vectors for this
    /// model's text encoders are never matched).
    pub embeddings: Vec<Embedding>,
    /// The last text and picture encodings, for the next job that repeats them.
    pub(super) memo: Memo,
}

/// A TAESD the pipeline uses (set it with [`Pipeline::set_taesd`]).
pub struct TaesdUse {
    pub model: Taesd,
    /// The file or folder it was read from.
    pub path: PathBuf,
    /// Previews every step's predicted x0 through TAESD (a real image) instead of the latent
    /// projection.
    pub preview: bool,
    /// Decodes the final latents with TAESD instead of the VAE (fast, slightly softer).
    pub final_decode: bool,
}

impl Pipeline {
    /// Loads a diffusers folder or a single-file checkpoint; F32 compute (the right choice on
    /// CPUs).
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_with(path, &LoadOptions::default(), device)
    }

    /// [`Self::load`] with the user's choices (VAE, prediction type, precision, TAESD).
    pub fn load_with(path: &Path, opts: &LoadOptions, device: &Device) -> Result<Self, ModelError> {
        let mut pipeline = Self {
            model: StableDiffusion::load_with(path, opts, device, DType::F32)?,
            taesd: None,
            embeddings: Vec::new(),
            memo: Memo::default(),
        };
        pipeline.configure_taesd(opts.taesd.as_ref())?;
        Ok(pipeline)
    }

    /// Applies the TAESD choice: reads the file only when it is another one than in use.
    pub fn configure_taesd(&mut self, opts: Option<&TaesdOptions>) -> Result<(), ModelError> {
        let Some(opts) = opts.filter(|o| o.preview || o.final_decode) else {
            self.taesd = None;
            return Ok(());
        };
        match &mut self.taesd {
            Some(t) if t.path == opts.path => {
                t.preview = opts.preview;
                t.final_decode = opts.final_decode;
                Ok(())
            }
            _ => self.set_taesd(TaesdUse {
                model: Taesd::load(&opts.path, &self.model.device)?,
                path: opts.path.clone(),
                preview: opts.preview,
                final_decode: opts.final_decode,
            }),
        }
    }

    /// Uses `taesd` as [`TaesdUse`] says, once it is known to fit this model's latents.
    pub fn set_taesd(&mut self, taesd: TaesdUse) -> Result<(), ModelError> {
        let (t, m) = (&taesd.model, &self.model);
        let (tc, mc) = (t.config.latent_channels, m.latent_channels());
        if tc != mc || t.scale() != m.vae_scale() {
            return Err(ModelError::unsupported(
                &t.file,
                format!(
                    "this TAESD makes images {}× its {tc}-channel latents; this model's VAE: {}×, \
                     {mc} channels (a TAESD for another model family?)",
                    t.scale(),
                    m.vae_scale()
                ),
            ));
        }
        self.taesd = Some(taesd);
        Ok(())
    }

    /// Drops the kept encodings (see [`super::memo`]), so that benchmarks time the work.
    pub fn forget_kept(&self) {
        self.memo.clear();
    }

    /// What the UNet is conditioned on for `req` (see [`Self::conditioning`]).
    pub fn conditioning_for(&self, req: &GenerateRequest) -> Result<Conditioning, PipelineError> {
        self.conditioning(req, self.guided_by_cfg(req))
    }

    /// What the UNet is conditioned on for a request: the text states ([uncond, cond] when
    /// guided), SDXL's pooled text and micro-conditioning, an LCM UNet's guidance embedding.
    fn conditioning(
        &self,
        req: &GenerateRequest,
        cfg: bool,
    ) -> Result<Conditioning, PipelineError> {
        let device = &self.model.device;
        let prompt_2 = req.sdxl.prompt_2.as_deref().unwrap_or(&req.prompt);
        let negative_2 = req
            .sdxl
            .negative_prompt_2
            .as_deref()
            .unwrap_or(&req.negative_prompt);
        // SDXL conditions an empty negative on zeros (diffusers' `force_zeros_for_empty_prompt`,
        // A1111's rule), not on the encoding of "".
        let zeros = (self.model.text_encoder_2.as_ref()).is_some_and(|t| t.zero_empty_negative);
        let zero_negative = cfg && zeros && req.negative_prompt.is_empty() && negative_2.is_empty();
        let (texts, texts_2) = if cfg && !zero_negative {
            (
                vec![req.negative_prompt.as_str(), req.prompt.as_str()],
                vec![negative_2, prompt_2],
            )
        } else {
            (vec![req.prompt.as_str()], vec![prompt_2])
        };
        let TextEncoding {
            mut states,
            mut pooled,
        } = self.encode_texts(&texts, &texts_2, req.clip_skip)?;
        let err = || compute("text encoding");
        if zero_negative {
            let zeros = |t: &Tensor| Tensor::cat(&[&t.zeros_like()?, t], 0);
            states = zeros(&states).map_err(err())?;
            pooled = pooled.as_ref().map(zeros).transpose().map_err(err())?;
        }
        let batch = if cfg { 2 } else { 1 };
        let text_time = match pooled {
            Some(pooled) => {
                let ids = req.sdxl.size.time_ids(req.width, req.height);
                let ids: Vec<f32> = (0..batch).flat_map(|_| ids).collect();
                let ids = Tensor::from_vec(ids, (batch, 6), device).map_err(err())?;
                Some((pooled, ids))
            }
            None => None,
        };
        // LCM-distilled UNets take the scale as an embedding instead.
        let guidance = match self.model.unet.config.time_cond_proj_dim {
            Some(dim) => Some(
                guidance::scale_embedding(req.cfg_scale, dim, device)
                    .map_err(compute("guidance embedding"))?,
            ),
            None => None,
        };
        Ok(Conditioning {
            context: states,
            text_time,
            guidance,
        })
    }

    /// Whether the request runs classifier-free guidance (an unconditional pass beside the
    /// prompt's): scales above 1, except on LCM-distilled UNets, which embed the scale instead.
    pub(super) fn guided_by_cfg(&self, req: &GenerateRequest) -> bool {
        guidance::uses_uncond(req.cfg_scale) && self.model.unet.config.time_cond_proj_dim.is_none()
    }

    /// The spacing a request's sampler runs with, when not its default: the request's own,
    /// else the one the model's scheduler file sets for the sampler of its class (SD-Turbo's
    /// Euler, "trailing").
    pub fn spacing(&self, req: &GenerateRequest) -> Option<Spacing> {
        if req.spacing.is_some() {
            return req.spacing;
        }
        let file = &self.model.scheduler;
        let own_class = Sampler::from_diffusers_class(&file.class_name) == Some(req.sampler);
        file.timestep_spacing.filter(|&s| {
            own_class && req.sampler.takes_spacing() && s != req.sampler.default_spacing()
        })
    }

    /// The request's sampler over its steps; errors name the setting at fault.
    pub(super) fn scheduler(
        &self,
        req: &GenerateRequest,
    ) -> Result<Box<dyn schedulers::Scheduler>, PipelineError> {
        let spacing = self.spacing(req);
        schedulers::build(req.sampler, &self.model.scheduler, req.steps, spacing).map_err(|e| {
            PipelineError::InvalidRequest {
                arg: match e {
                    schedulers::SchedulerError::SpacingUnused { .. } => "spacing",
                    _ => "sampler",
                },
                msg: e.to_string(),
            }
        })
    }

    pub(super) fn latent_shape(&self, req: &GenerateRequest) -> [usize; 4] {
        let f = self.model.vae_scale();
        [
            1,
            self.model.latent_channels(),
            req.height / f,
            req.width / f,
        ]
    }

    /// Generates with the request's seed.
    pub fn generate(
        &self,
        req: &GenerateRequest,
        cancel: &AtomicBool,
        on_step: &mut dyn FnMut(&StepProgress),
    ) -> Result<Outcome, PipelineError> {
        let mut noise = SeededNoise::new(req.seed);
        self.generate_with_noise(req, &mut noise, cancel, on_step)
    }

    /// Generates drawing all randomness (initial latents unless given, ancestral noise) from
    /// `noise`; a hires pass draws its own from the seed again (see [`hires`]).
    pub fn generate_with_noise(
        &self,
        req: &GenerateRequest,
        noise: &mut dyn NoiseSource,
        cancel: &AtomicBool,
        on_step: &mut dyn FnMut(&StepProgress),
    ) -> Result<Outcome, PipelineError> {
        if let Some(pad) = req.only_masked {
            return self.generate_only_masked(req, pad, noise, cancel, on_step);
        }
        let vae_tiled = self.plan(req)?;
        let device = &self.model.device;
        let mut warnings = Vec::new();
        let second = req.hires.map(|h| self.hires_request(req, &h));
        let mut progress = Progress {
            done: 0,
            total: runs(req.steps, req.init_image.as_ref().map(|i| i.strength))
                + (second.as_ref().zip(req.hires.as_ref()))
                    .map_or(0, |(big, h)| runs(big.steps, Some(h.denoise))),
            started: Instant::now(),
        };

        let start = match &req.init_image {
            Some(init) => Some((self.encode_image(&init.image, vae_tiled)?, init.strength)),
            None => None,
        };
        let init_noise = match &req.init_noise {
            Some(t) => Some(
                t.to_dtype(DType::F32)
                    .and_then(|t| t.to_device(device))
                    .map_err(compute("initial noise"))?,
            ),
            None => None,
        };
        let inpaint = self.inpaint_inputs(req, vae_tiled)?;
        let pass = Pass {
            req,
            start,
            init_noise,
            inpaint,
        };
        let Some(mut latents) = self.denoise(pass, noise, cancel, on_step, &mut progress)? else {
            return Ok(Outcome::Cancelled {
                completed_steps: progress.done,
            });
        };
        let mut final_tiled = vae_tiled;
        if let (Some(big), Some(h)) = (&second, &req.hires) {
            final_tiled = self.plan(big)?;
            let f = self.model.vae_scale();
            let x0 = match h.upscaler {
                hires::Upscaler::Latent => {
                    hires::upscale_latents(&latents, big.height / f, big.width / f)
                        .map_err(compute("hires upscale"))?
                }
                hires::Upscaler::Lanczos => {
                    let base = self.decode(&latents, vae_tiled)?;
                    let picture =
                        image::RgbImage::from_raw(base.width as u32, base.height as u32, base.rgb)
                            .ok_or_else(|| {
                                compute("hires upscale")(candle_core::Error::Msg(
                                    "decoded image has the wrong size".into(),
                                ))
                            })?;
                    let picture = init_image::fit(&picture, big.width as u32, big.height as u32);
                    self.encode_image(&picture, final_tiled)?
                }
            };
            let pass = Pass {
                req: big,
                start: Some((x0, h.denoise)),
                init_noise: None,
                inpaint: self.inpaint_inputs(big, final_tiled)?,
            };
            // A1111 draws the second pass's noise from the seed again.
            let mut noise = SeededNoise::new(req.seed);
            match self.denoise(pass, &mut noise, cancel, on_step, &mut progress)? {
                Some(l) => latents = l,
                None => {
                    return Ok(Outcome::Cancelled {
                        completed_steps: progress.done,
                    })
                }
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Ok(Outcome::Cancelled {
                completed_steps: progress.done,
            });
        }
        let taesd_decode = self.taesd.as_ref().is_some_and(|t| t.final_decode);
        if final_tiled && req.vae_tiling == VaeTiling::Auto && !taesd_decode {
            warnings.push(
                "the VAE decoded in tiles: the untiled decode would not fit in the free memory"
                    .to_string(),
            );
        }
        let mut image = self.decode(&latents, final_tiled)?;
        if let (Some(mask), Some(init), None) = (&req.mask, &req.init_image, &req.hires) {
            if mask.blur > 0 {
                inpaint::overlay(&mut image.rgb, &init.image, mask);
                let (w, h) = (image.width, image.height);
                let data: Vec<f32> = image.rgb.iter().map(|&v| f32::from(v) / 255.0).collect();
                image.pixels = Tensor::from_vec(data, (1, h, w, 3), device)
                    .and_then(|t| t.permute((0, 3, 1, 2)))
                    .map_err(compute("inpainting overlay"))?;
            }
        }
        Ok(Outcome::Finished(GeneratedImage { warnings, ..image }))
    }

    /// The second pass of a hires request: its size, steps and strength; no picture or noise
    /// of the first pass's.
    pub(super) fn hires_request(&self, req: &GenerateRequest, h: &hires::Hires) -> GenerateRequest {
        let (width, height) = h.size(req.width, req.height, self.model.size_multiple());
        GenerateRequest {
            width,
            height,
            steps: h.steps_for(req.steps),
            init_noise: None,
            init_image: None,
            hires: None,
            ..req.clone()
        }
    }

    /// One denoising pass: from noise, or from clean latents noised to the strength's first
    /// step (img2img, hires). `None` when cancelled.
    fn denoise(
        &self,
        pass: Pass<'_>,
        noise: &mut dyn NoiseSource,
        cancel: &AtomicBool,
        on_step: &mut dyn FnMut(&StepProgress),
        progress: &mut Progress,
    ) -> Result<Option<Tensor>, PipelineError> {
        let req = pass.req;
        let device = &self.model.device;
        let cfg = self.guided_by_cfg(req);
        let cond = self.conditioning(req, cfg)?;
        let mut scheduler = self.scheduler(req)?;
        // img2img runs the schedule's last steps only.
        let first = match &pass.start {
            Some((_, strength)) => init_image::first_step(req.steps, *strength).unwrap_or(0),
            None => 0,
        };
        let init = match pass.init_noise {
            Some(t) => Ok(t),
            None => noise.randn(&self.latent_shape(req), device),
        }
        .map_err(compute("initial noise"))?;
        // diffusers' inpainting pipeline starts from pure noise at strength 1.
        let pure = pass.inpaint.is_some() && pass.start.as_ref().is_some_and(|(_, s)| *s >= 1.0);
        let mut latents = match &pass.start {
            Some((x0, _)) if !pure => scheduler.add_noise(x0, &init, first),
            _ => &init * scheduler.init_noise_sigma(),
        }
        .map_err(compute("initial noise"))?;
        let timesteps = scheduler.timesteps().to_vec();
        let steps = timesteps.len();
        // An inpainting UNet also reads the mask and the masked picture: the same every step.
        let extra = match &pass.inpaint {
            Some(Inpaint {
                masked: Some(masked),
                mask,
                ..
            }) => Some(
                Tensor::cat(&[mask, masked], 1)
                    .and_then(|t| t.repeat((if cfg { 2 } else { 1 }, 1, 1, 1)))
                    .map_err(compute("inpainting mask"))?,
            ),
            _ => None,
        };
        for (i, &t) in timesteps.iter().enumerate().skip(first) {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let step_out = (|| {
                let input = if cfg {
                    Tensor::cat(&[&latents, &latents], 0)?
                } else {
                    latents.clone()
                };
                let input = scheduler.scale_model_input(&input, i)?;
                let input = match &extra {
                    Some(extra) => Tensor::cat(&[&input, &extra.to_dtype(input.dtype())?], 1)?,
                    None => input,
                };
                let pred = self.model.unet.forward_with(&input, t, &cond)?;
                let pred = if cfg {
                    guidance::combine(
                        &pred.get(0)?.unsqueeze(0)?,
                        &pred.get(1)?.unsqueeze(0)?,
                        req.cfg_scale,
                    )?
                } else {
                    pred
                };
                scheduler.step(&pred, i, &latents, noise)
            })()
            .map_err(compute("denoising step"))?;
            latents = step_out.prev_sample;
            // An ordinary UNet: the kept part goes back in, noised to the next step's level.
            if let Some(Inpaint {
                mask,
                kept,
                masked: None,
            }) = &pass.inpaint
            {
                latents = (|| {
                    let kept = if i + 1 < steps {
                        scheduler.add_noise(kept, &init, i + 1)?
                    } else {
                        kept.clone()
                    };
                    kept.broadcast_mul(&(1.0 - mask)?)? + latents.broadcast_mul(mask)?
                })()
                .map_err(compute("inpainting blend"))?;
            }
            let preview = match &self.taesd {
                Some(t) if t.preview => taesd_preview(&t.model, &step_out.pred_original),
                _ => latent_preview(&step_out.pred_original, self.model.latent_rgb()),
            }
            .map_err(compute("preview"))?;
            progress.done += 1;
            on_step(&StepProgress {
                step: progress.done,
                total: progress.total,
                elapsed: progress.started.elapsed(),
                latents: &latents,
                preview,
            });
        }
        Ok(Some(latents))
    }

    /// img2img's picture → clean latents (the VAE's mean, times its scaling), in tiles when
    /// the decode is (the encoder needs about as much memory). The last pictures' latents are
    /// kept (see [`super::memo`]).
    pub fn encode_image(
        &self,
        picture: &image::RgbImage,
        tiled: bool,
    ) -> Result<Tensor, PipelineError> {
        let key = PictureKey {
            picture: picture.clone(),
            tiled,
            vae: self.model.options.vae.clone(),
        };
        if let Some(kept) = self.memo.picture(&key) {
            return Ok(kept);
        }
        let stage = if tiled {
            "tiled VAE encode"
        } else {
            "VAE encode"
        };
        let x = init_image::to_tensor(picture, &self.model.device).map_err(compute(stage))?;
        let latents = self.encode_tensor(&x, tiled)?;
        self.memo.keep_picture(key, &latents);
        Ok(latents)
    }

    /// Pixels [1, 3, H, W] in [-1, 1] → clean latents, as [`Self::encode_image`].
    pub(super) fn encode_tensor(&self, x: &Tensor, tiled: bool) -> Result<Tensor, PipelineError> {
        let stage = if tiled {
            "tiled VAE encode"
        } else {
            "VAE encode"
        };
        let vae = &self.model.vae;
        match tiled {
            true => vae.encode_tiled(x, &TileConfig::default()),
            false => vae.encode(x),
        }
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(compute(stage))
    }

    /// Latents → image (with the VAE, in tiles when `vae_tiled`, or TAESD when
    /// [`TaesdUse::final_decode`]), converted to 8 bits exactly as diffusers does.
    pub fn decode(
        &self,
        latents: &Tensor,
        vae_tiled: bool,
    ) -> Result<GeneratedImage, PipelineError> {
        let taesd = self.taesd.as_ref().filter(|t| t.final_decode);
        let stage = match (taesd, vae_tiled) {
            (Some(_), _) => "TAESD decode",
            (None, true) => "tiled VAE decode",
            (None, false) => "VAE decode",
        };
        let pixels = (|| {
            let x = match taesd {
                Some(t) => t.model.decode(latents)?,
                None if vae_tiled => self
                    .model
                    .vae
                    .decode_tiled(latents, &TileConfig::default())?,
                None => self.model.vae.decode(latents)?,
            };
            ((x / 2.0)? + 0.5)?.clamp(0f32, 1f32)?.to_dtype(DType::F32)
        })()
        .map_err(compute(stage))?;
        let (_, _, height, width) = pixels.dims4().map_err(compute(stage))?;
        let hwc: Vec<f32> = pixels
            .get(0)
            .and_then(|t| t.permute((1, 2, 0)))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(compute(stage))?;
        // numpy's round() is half-to-even; matching it keeps us bit-exact with diffusers' PNGs.
        let rgb = hwc
            .iter()
            .map(|v| (v * 255.0).round_ties_even() as u8)
            .collect();
        Ok(GeneratedImage {
            width,
            height,
            rgb,
            pixels,
            warnings: Vec::new(),
        })
    }
}

/// One denoising pass of [`Pipeline::generate_with_noise`].
struct Pass<'a> {
    req: &'a GenerateRequest,
    /// img2img / hires: clean latents and the strength.
    start: Option<(Tensor, f64)>,
    /// Replaces the drawn initial noise.
    init_noise: Option<Tensor>,
    inpaint: Option<Inpaint>,
}

/// Steps done across a request's passes, for [`StepProgress`].
struct Progress {
    done: usize,
    total: usize,
    started: Instant,
}

/// The steps a pass of `steps` runs: all of them, or (with a strength) img2img's last ones.
fn runs(steps: usize, strength: Option<f64>) -> usize {
    match strength {
        Some(s) => steps - init_image::first_step(steps, s).unwrap_or(0),
        None => steps,
    }
}
