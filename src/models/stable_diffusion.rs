//! A Stable Diffusion model, loaded once into memory from a diffusers folder or a single-file
//! checkpoint.
//!
//! ```text
//! model_index.json  unet/  vae/  text_encoder/  tokenizer/  scheduler/
//! ```
//! In a folder every architecture number comes from the components' own `config.json`;
//! a single file is described by [`super::checkpoint::detect`]. Weights (fp32, fp16 or bf16)
//! are converted to the compute dtype as each tensor is read.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::checkpoint::{self, LoadOptions};
use super::clip_text::{ClipTextConfig, ClipTextModel};
use super::error::{BuildError, ModelError};
use super::tokenizer::ClipTokenizer;
use super::unet::{UNet, UNetConfig};
use super::vae::{Vae, VaeConfig};
use super::weights::{self, ComponentWeights};
use crate::diffusion::schedulers::{PredictionType, SchedulerConfig};

/// Everything a text-to-image run needs, resident in memory.
pub struct StableDiffusion {
    /// The folder or file the model was loaded from.
    pub path: PathBuf,
    pub name: String,
    /// What it is, for people: "SD 1.x · fp16 · single file", "diffusers folder".
    pub description: String,
    pub tokenizer: std::sync::Arc<ClipTokenizer>,
    pub text_encoder: ClipTextModel,
    /// SDXL's second text encoder (OpenCLIP bigG, with the projection that makes the pooled
    /// embedding) and its own tokenizer.
    pub text_encoder_2: Option<SecondTextEncoder>,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    /// The files hashed for the PNG's `Model hash`: a checkpoint file, or a folder's UNet
    /// weights.
    pub hash_files: Vec<PathBuf>,
    /// A VAE used instead of the model's own (`--vae`, or A1111's `<stem>.vae.*` beside a
    /// checkpoint); the PNG names it.
    pub vae_file: Option<PathBuf>,
    /// How a setting the files do not state was decided ("v-prediction: the .yaml beside it").
    pub notes: Vec<String>,
    /// The user's choices it was loaded with.
    pub options: LoadOptions,
    /// The prediction type the files imply (what "automatic" means for this model).
    pub auto_prediction: PredictionType,
    pub device: Device,
    /// What the modules compute in (f32); the weights are kept in `options.precision`.
    pub dtype: DType,
}

/// SDXL's second text encoder with its tokenizer (which pads with "!").
pub struct SecondTextEncoder {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
    /// An empty negative prompt conditions on zeros rather than on the encoding of "":
    /// diffusers' `force_zeros_for_empty_prompt` (true unless a folder's `model_index.json`
    /// says otherwise; A1111 always does so for SDXL).
    pub zero_empty_negative: bool,
}

impl StableDiffusion {
    /// Loads the model at `path` (a diffusers folder or a single-file checkpoint) onto
    /// `device`, computing in `dtype` (F32 on the CPU).
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        Self::load_with(path, &LoadOptions::default(), device, dtype)
    }

    /// [`Self::load`] with choices that override the files (VAE, prediction type).
    pub fn load_with(
        path: &Path,
        opts: &LoadOptions,
        device: &Device,
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Self::load_inner(path, opts, device, dtype, false)
    }

    /// Everything [`Self::load_with`] checks (files, configs, every tensor's name and shape),
    /// without reading the weights: a model that passes loads, barring I/O errors.
    pub fn validate(path: &Path, opts: &LoadOptions) -> Result<(), ModelError> {
        Self::load_inner(path, opts, &Device::Cpu, DType::F32, true).map(|_| ())
    }

    fn load_inner(
        path: &Path,
        opts: &LoadOptions,
        device: &Device,
        dtype: DType,
        shapes_only: bool,
    ) -> Result<Self, ModelError> {
        // The weights are kept in the chosen precision; the modules compute in `dtype`.
        let stored = opts.precision.dtype();
        if path.is_file() {
            let mut model = Self::load_single_file(path, opts, device, stored, shapes_only)?;
            model.dtype = dtype;
            return Ok(model);
        }
        let mut model = Self::load_folder(path, device, stored, shapes_only)?;
        model.dtype = dtype;
        if let Some(vae) = &opts.vae {
            let fit = model.vae_fit();
            model.vae = checkpoint::load_vae_instead(vae, &fit, device, stored, shapes_only)?;
            model.vae_file = Some(vae.clone());
        }
        if let Some(p) = opts.prediction {
            model.scheduler.prediction_type = p;
            model.notes = vec![format!("{}: your setting", prediction_name(p))];
        }
        model.options = opts.clone();
        Ok(model)
    }

    fn load_single_file(
        path: &Path,
        opts: &LoadOptions,
        device: &Device,
        dtype: DType,
        shapes_only: bool,
    ) -> Result<Self, ModelError> {
        let f = checkpoint::load(path, opts, device, dtype, shapes_only)?;
        let te = &f.layout.text_config;
        let pad = if te.hidden_act == "gelu" {
            "!"
        } else {
            "<|endoftext|>"
        };
        let tokenizer = ClipTokenizer::bundled_openai(pad).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        if tokenizer.max_len() > te.max_position_embeddings {
            return Err(ModelError::checkpoint(
                path,
                format!(
                    "the text encoder has {} positions, fewer than CLIP's {} tokens",
                    te.max_position_embeddings,
                    tokenizer.max_len()
                ),
            ));
        }
        let mut notes = vec![format!(
            "{}: {}",
            prediction_name(f.scheduler.prediction_type),
            f.prediction_source
        )];
        if f.scheduler.rescale_betas_zero_snr {
            notes.push("zero terminal SNR".into());
        }
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Ok(Self {
            path: path.to_path_buf(),
            name,
            description: format!(
                "{} · {} · single file",
                f.layout.family.label(),
                f.layout.precision.precision_name()
            ),
            tokenizer: std::sync::Arc::new(tokenizer),
            text_encoder: f.text_encoder,
            text_encoder_2: match f.text_encoder_2 {
                // Single files carry no tokenizer; SDXL's second one pads with "!".
                Some(encoder) => Some(SecondTextEncoder {
                    tokenizer: ClipTokenizer::bundled_openai("!").map_err(|e| {
                        ModelError::Tokenizer {
                            path: path.to_path_buf(),
                            source: Box::new(e),
                        }
                    })?,
                    encoder,
                    zero_empty_negative: true,
                }),
                None => None,
            },
            unet: f.unet,
            vae: f.vae,
            scheduler: f.scheduler,
            hash_files: vec![path.to_path_buf()],
            vae_file: f.vae_file,
            notes,
            options: opts.clone(),
            auto_prediction: f.auto_prediction,
            device: device.clone(),
            dtype,
        })
    }

    fn load_folder(
        dir: &Path,
        device: &Device,
        dtype: DType,
        shapes_only: bool,
    ) -> Result<Self, ModelError> {
        let index = dir.join("model_index.json");
        if !dir.is_dir() {
            return Err(ModelError::Missing {
                path: dir.to_path_buf(),
                what: "no model folder or checkpoint file there".into(),
            });
        }
        if !index.is_file() {
            return Err(ModelError::Missing {
                path: index,
                what: "not a diffusers model folder".into(),
            });
        }
        for component in ["unet", "vae", "text_encoder", "scheduler"] {
            let p = dir.join(component);
            if !p.is_dir() {
                return Err(ModelError::Missing {
                    path: p,
                    what: format!("the {component} component"),
                });
            }
        }

        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler = SchedulerConfig::from_json_file(&scheduler_path)
            .map_err(|e| ModelError::bad_config(&scheduler_path, e.to_string()))?;

        let index_json: serde_json::Value = weights::read_json(&index)?;
        refuse_refiner(&index, &index_json)?;
        let (tokenizer, text_encoder) = load_text_encoder(
            dir,
            "text_encoder",
            "tokenizer",
            None,
            device,
            dtype,
            shapes_only,
        )?;
        let text_encoder_2 = if dir.join("text_encoder_2").is_dir() {
            let cfg_path = dir.join("text_encoder_2").join("config.json");
            let projection = ClipTextConfig::from_file(&cfg_path)?.projection_dim;
            let Some(projection) = projection else {
                return Err(ModelError::bad_config(
                    &cfg_path,
                    "no projection_dim: SDXL's second text encoder is a \
                     CLIPTextModelWithProjection"
                        .to_string(),
                ));
            };
            let (tokenizer, encoder) = load_text_encoder(
                dir,
                "text_encoder_2",
                "tokenizer_2",
                Some(projection),
                device,
                dtype,
                shapes_only,
            )?;
            let zero_empty_negative = index_json
                .get("force_zeros_for_empty_prompt")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true);
            Some(SecondTextEncoder {
                tokenizer,
                encoder,
                zero_empty_negative,
            })
        } else {
            None
        };

        let unet_cfg_path = dir.join("unet").join("config.json");
        let unet_cfg = UNetConfig::from_file(&unet_cfg_path)?;
        let unet_w = open_component(
            dir,
            "unet",
            "diffusion_pytorch_model",
            dtype,
            device,
            shapes_only,
        )?;
        // Built before the cross-check so that a config contradicting its own weights is
        // reported against both files, not as a disagreement with the text encoder.
        let unet = build(
            UNet::new(unet_w.vb.clone(), unet_cfg, &unet_cfg_path),
            &unet_w,
            &unet_cfg_path,
        )?;
        check_text_widths(
            &unet,
            &unet_cfg_path,
            &text_encoder,
            text_encoder_2.as_ref(),
        )?;

        let vae_cfg_path = dir.join("vae").join("config.json");
        let vae_cfg = VaeConfig::from_file(&vae_cfg_path)?;
        // The UNet reads the VAE's latents (an inpainting UNet: latents, mask, masked picture).
        let (c, u) = (vae_cfg.latent_channels, &unet.config);
        if c != u.out_channels || !(u.in_channels == c || u.in_channels == 2 * c + 1) {
            return Err(ModelError::bad_config(
                &vae_cfg_path,
                format!(
                    "latent_channels {c} does not match the UNet's in_channels {} / \
                     out_channels {}",
                    u.in_channels, u.out_channels
                ),
            ));
        }
        let vae_w = open_component(
            dir,
            "vae",
            "diffusion_pytorch_model",
            dtype,
            device,
            shapes_only,
        )?;
        let vae = build(
            Vae::new(vae_w.vb.clone(), vae_cfg, &vae_cfg_path),
            &vae_w,
            &vae_cfg_path,
        )?;

        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let auto_prediction = scheduler.prediction_type;
        Ok(Self {
            path: dir.to_path_buf(),
            name,
            description: match &text_encoder_2 {
                Some(_) => "SDXL · diffusers folder".into(),
                None => "diffusers folder".into(),
            },
            tokenizer: std::sync::Arc::new(tokenizer),
            text_encoder,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            hash_files: unet_w.files,
            vae_file: None,
            auto_prediction,
            notes: Vec::new(),
            options: LoadOptions::default(),
            device: device.clone(),
            dtype,
        })
    }

    /// Applies new choices to the model in memory: another VAE (only the VAE is read) or
    /// another prediction type (nothing is read). On error the model is unchanged.
    pub fn reconfigure(&mut self, opts: &LoadOptions) -> Result<(), ModelError> {
        if opts.vae != self.options.vae {
            let source = match &opts.vae {
                Some(v) => v.clone(),
                None => self.own_vae_source(),
            };
            self.vae = checkpoint::load_vae_instead(
                &source,
                &self.vae_fit(),
                &self.device,
                self.options.precision.dtype(),
                false,
            )?;
            self.vae_file =
                (source != self.path && source != self.path.join("vae")).then_some(source);
        }
        let prediction = opts.prediction.unwrap_or(self.auto_prediction);
        if prediction != self.scheduler.prediction_type {
            self.scheduler.prediction_type = prediction;
            let how = if opts.prediction.is_some() {
                "your setting"
            } else {
                "as the model's files say"
            };
            self.notes = vec![format!("{}: {how}", prediction_name(prediction))];
        }
        self.options = opts.clone();
        Ok(())
    }

    /// Where the model's own VAE comes from: A1111's `<stem>.vae.*` beside a checkpoint, the
    /// checkpoint itself, or a folder's `vae/`.
    fn own_vae_source(&self) -> PathBuf {
        if self.path.is_dir() {
            self.path.join("vae")
        } else {
            checkpoint::sidecar::vae_beside(&self.path).unwrap_or_else(|| self.path.clone())
        }
    }

    /// Whether this is an SDXL model (two text encoders, pooled and size conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.text_encoder_2.is_some()
    }

    /// How the per-step preview maps this model's latents to RGB.
    pub fn latent_rgb(&self) -> &'static crate::diffusion::preview::LatentRgb {
        if self.is_sdxl() {
            &crate::diffusion::preview::SDXL_LATENT_RGB
        } else {
            &crate::diffusion::preview::SD1_LATENT_RGB
        }
    }

    /// What another VAE must fit to replace this model's.
    fn vae_fit(&self) -> checkpoint::VaeFit {
        checkpoint::VaeFit {
            latent_channels: self.latent_channels(),
            factor: Some(self.vae_scale()),
            scaling: self.vae.config.scaling_factor,
        }
    }

    /// Pixels per latent along each axis (8 for SD 1.x).
    pub fn vae_scale(&self) -> usize {
        self.vae.config.downscale_factor()
    }

    /// Image sizes must be multiples of this: the VAE's factor times the UNet's halvings.
    pub fn size_multiple(&self) -> usize {
        self.vae_scale() << self.unet.config.downsamplings()
    }

    /// The size the model was trained at (512 for SD 1.5), used when no size is asked for.
    pub fn native_size(&self) -> usize {
        self.unet.config.sample_size.unwrap_or(64) * self.vae_scale()
    }

    pub fn latent_channels(&self) -> usize {
        self.unet.config.out_channels
    }

    /// An inpainting model: its UNet also reads a mask and the masked picture's latents
    /// (9 input channels for 4 latent ones).
    pub fn is_inpainting(&self) -> bool {
        self.unet.config.in_channels == 2 * self.unet.config.out_channels + 1
    }

    /// A1111's short hash (AutoV2) of the checkpoint file, or of a folder's UNet weights.
    pub fn short_hash(&self) -> Result<String, ModelError> {
        super::hash::short_hash(&self.hash_files)
            .map_err(|e| ModelError::io(self.hash_files.first().cloned().unwrap_or_default(), e))
    }
}

/// How the prediction type is named to people.
pub fn prediction_name(p: crate::diffusion::schedulers::PredictionType) -> &'static str {
    match p {
        crate::diffusion::schedulers::PredictionType::Epsilon => "epsilon prediction",
        crate::diffusion::schedulers::PredictionType::VPrediction => "v-prediction",
    }
}

fn open_component(
    dir: &Path,
    component: &str,
    stem: &str,
    dtype: DType,
    device: &Device,
    shapes_only: bool,
) -> Result<ComponentWeights, ModelError> {
    let files = weights::find_weight_files(&dir.join(component), stem)?;
    weights::open_with(files, dtype, device, shapes_only)
}

fn build<T>(
    result: Result<T, BuildError>,
    w: &ComponentWeights,
    config: &Path,
) -> Result<T, ModelError> {
    let built = result.map_err(|e| match e {
        BuildError::Config(e) => e,
        BuildError::Weights(e) => weights::mismatch(w, config, e),
    })?;
    weights::check_complete(w, config)?;
    Ok(built)
}

/// A text encoder folder (`component`) and its tokenizer, with `projection` for a
/// `CLIPTextModelWithProjection`.
fn load_text_encoder(
    dir: &Path,
    component: &str,
    tokenizer: &str,
    projection: Option<usize>,
    device: &Device,
    dtype: DType,
    shapes_only: bool,
) -> Result<(ClipTokenizer, ClipTextModel), ModelError> {
    let cfg_path = dir.join(component).join("config.json");
    let cfg = ClipTextConfig::from_file(&cfg_path)?;
    let tokenizer = load_tokenizer(dir, tokenizer, &cfg)?;
    if tokenizer.max_len() > cfg.max_position_embeddings {
        return Err(ModelError::bad_config(
            &cfg_path,
            format!(
                "max_position_embeddings {} is shorter than the tokenizer's {} tokens",
                cfg.max_position_embeddings,
                tokenizer.max_len()
            ),
        ));
    }
    let w = open_component(dir, component, "model", dtype, device, shapes_only)?;
    let model = match projection {
        Some(p) => ClipTextModel::with_projection(w.vb.clone(), cfg, p, &cfg_path),
        None => ClipTextModel::new(w.vb.clone(), cfg, &cfg_path),
    };
    Ok((tokenizer, build(model, &w, &cfg_path)?))
}

/// An SDXL refiner (one OpenCLIP text encoder, aesthetic-score conditioning) is refused by
/// name: it only finishes a base model's images.
fn refuse_refiner(index: &Path, json: &serde_json::Value) -> Result<(), ModelError> {
    let aesthetic = json
        .get("requires_aesthetics_score")
        .and_then(serde_json::Value::as_bool)
        == Some(true);
    if aesthetic {
        return Err(ModelError::unsupported(
            index,
            "this is an SDXL refiner (aesthetic-score conditioning): it refines a base model's \
             images and cannot make one from text; load an SDXL base model"
                .to_string(),
        ));
    }
    Ok(())
}

/// The UNet cross-attends to the text states (both encoders' side by side for SDXL) and, for
/// SDXL, takes the second encoder's pooled projection: the widths must agree.
fn check_text_widths(
    unet: &UNet,
    unet_cfg_path: &Path,
    text_encoder: &ClipTextModel,
    second: Option<&SecondTextEncoder>,
) -> Result<(), ModelError> {
    let cross_dim = unet.config.cross_attention_dim();
    let text_width =
        text_encoder.config.hidden_size + second.map_or(0, |s| s.encoder.config.hidden_size);
    let mismatch = |msg: String| Err(ModelError::bad_config(unet_cfg_path, msg));
    if cross_dim != Some(text_width) {
        let encoders = match second {
            Some(_) => "the text encoders' hidden sizes together",
            None => "the text encoder's hidden_size",
        };
        return mismatch(format!(
            "cross_attention_dim {} does not match {encoders}, {text_width}",
            cross_dim.map_or_else(|| "(none)".to_string(), |d| d.to_string()),
        ));
    }
    match (unet.text_time(), second) {
        (Some(tt), Some(s)) => {
            let projection = s.encoder.config.projection_dim.unwrap_or(0);
            if tt.pooled_dim != projection {
                return mismatch(format!(
                    "the add embedding takes a {}-wide pooled text embedding; text_encoder_2 \
                     projects to {projection}",
                    tt.pooled_dim
                ));
            }
            Ok(())
        }
        (Some(_), None) => {
            mismatch("an SDXL UNet (addition_embed_type \"text_time\") needs text_encoder_2".into())
        }
        (None, Some(_)) => mismatch(
            "the folder has text_encoder_2 but the UNet takes no pooled text embedding".into(),
        ),
        (None, None) => Ok(()),
    }
}

/// The model's own tokenizer, or OpenAI's bundled vocabulary when the folder has none
/// (single-file conversions often lack it). SD 2.x pads with "!", which its exact-GELU
/// text encoder identifies.
fn load_tokenizer(
    dir: &Path,
    folder: &str,
    te: &ClipTextConfig,
) -> Result<ClipTokenizer, ModelError> {
    let tok_dir = dir.join(folder);
    let result = if tok_dir.is_dir() {
        ClipTokenizer::from_dir(&tok_dir)
    } else {
        let pad = if te.hidden_act == "gelu" {
            "!"
        } else {
            "<|endoftext|>"
        };
        ClipTokenizer::bundled_openai(pad)
    };
    result.map_err(|e| ModelError::Tokenizer {
        path: tok_dir,
        source: Box::new(e),
    })
}
