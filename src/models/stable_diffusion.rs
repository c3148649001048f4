//! A Stable Diffusion model in diffusers' folder layout, loaded once into memory.
//!
//! ```text
//! model_index.json  unet/  vae/  text_encoder/  tokenizer/  scheduler/
//! ```
//! Every architecture number comes from the components' own `config.json`. Weights are
//! memory-mapped safetensors (fp32 or the `fp16` variant), converted to the compute dtype once.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use sha2::{Digest, Sha256};

use super::clip_text::{ClipTextConfig, ClipTextModel};
use super::error::{BuildError, ModelError};
use super::tokenizer::ClipTokenizer;
use super::unet::{UNet, UNetConfig};
use super::vae::{Vae, VaeConfig};
use super::weights::{self, ComponentWeights};
use crate::diffusion::schedulers::SchedulerConfig;

/// Everything a text-to-image run needs, resident in memory.
pub struct StableDiffusion {
    pub dir: PathBuf,
    pub name: String,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    /// The UNet weight files, hashed on demand for the PNG's `Model hash`.
    pub unet_files: Vec<PathBuf>,
    pub device: Device,
    pub dtype: DType,
}

impl StableDiffusion {
    /// Loads the model in `dir` onto `device`, computing in `dtype` (F32 on the CPU).
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let index = dir.join("model_index.json");
        if !dir.is_dir() {
            return Err(ModelError::Missing {
                path: dir.to_path_buf(),
                what: "model folder".into(),
            });
        }
        if !index.is_file() {
            return Err(ModelError::Missing {
                path: index,
                what: "not a diffusers model folder".into(),
            });
        }
        let _: serde_json::Value = weights::read_json(&index)?;
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

        let te_cfg_path = dir.join("text_encoder").join("config.json");
        let te_cfg = ClipTextConfig::from_file(&te_cfg_path)?;
        let tokenizer = load_tokenizer(dir, &te_cfg)?;
        if tokenizer.max_len() > te_cfg.max_position_embeddings {
            return Err(ModelError::bad_config(
                &te_cfg_path,
                format!(
                    "max_position_embeddings {} is shorter than the tokenizer's {} tokens",
                    te_cfg.max_position_embeddings,
                    tokenizer.max_len()
                ),
            ));
        }
        let te_w = open_component(dir, "text_encoder", "model", dtype, device)?;
        let text_encoder = build(
            ClipTextModel::new(te_w.vb.clone(), te_cfg, &te_cfg_path),
            &te_w,
            &te_cfg_path,
        )?;

        let unet_cfg_path = dir.join("unet").join("config.json");
        let unet_cfg = UNetConfig::from_file(&unet_cfg_path)?;
        let unet_w = open_component(dir, "unet", "diffusion_pytorch_model", dtype, device)?;
        // Built before the cross-check so that a config contradicting its own weights is
        // reported against both files, not as a disagreement with the text encoder.
        let unet = build(
            UNet::new(unet_w.vb.clone(), unet_cfg, &unet_cfg_path),
            &unet_w,
            &unet_cfg_path,
        )?;
        let cross_dim = unet.config.cross_attention_dim();
        if cross_dim != Some(text_encoder.config.hidden_size) {
            return Err(ModelError::bad_config(
                &unet_cfg_path,
                format!(
                    "cross_attention_dim {} does not match the text encoder's hidden_size {} ({})",
                    cross_dim.map_or_else(|| "(none)".to_string(), |d| d.to_string()),
                    text_encoder.config.hidden_size,
                    te_cfg_path.display()
                ),
            ));
        }

        let vae_cfg_path = dir.join("vae").join("config.json");
        let vae_cfg = VaeConfig::from_file(&vae_cfg_path)?;
        if vae_cfg.latent_channels != unet.config.in_channels {
            return Err(ModelError::bad_config(
                &vae_cfg_path,
                format!(
                    "latent_channels {} does not match the UNet's in_channels {}",
                    vae_cfg.latent_channels, unet.config.in_channels
                ),
            ));
        }
        let vae_w = open_component(dir, "vae", "diffusion_pytorch_model", dtype, device)?;
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
        Ok(Self {
            dir: dir.to_path_buf(),
            name,
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            unet_files: unet_w.files,
            device: device.clone(),
            dtype,
        })
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
        self.unet.config.in_channels
    }

    /// A1111-style short hash: the first 10 hex digits of the SHA-256 of the UNet weights.
    pub fn short_hash(&self) -> Result<String, ModelError> {
        let mut hasher = Sha256::new();
        for f in &self.unet_files {
            let mut file = std::fs::File::open(f).map_err(|e| ModelError::io(f, e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(|e| ModelError::io(f, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        let digest = hasher.finalize();
        Ok(digest.iter().take(5).map(|b| format!("{b:02x}")).collect())
    }
}

fn open_component(
    dir: &Path,
    component: &str,
    stem: &str,
    dtype: DType,
    device: &Device,
) -> Result<ComponentWeights, ModelError> {
    let files = weights::find_weight_files(&dir.join(component), stem)?;
    weights::open(files, dtype, device)
}

fn build<T>(
    result: Result<T, BuildError>,
    w: &ComponentWeights,
    config: &Path,
) -> Result<T, ModelError> {
    result.map_err(|e| match e {
        BuildError::Config(e) => e,
        BuildError::Weights(e) => weights::mismatch(w, config, e),
    })
}

/// The model's own tokenizer, or OpenAI's bundled vocabulary when the folder has none
/// (single-file conversions often lack it). SD 2.x pads with "!", which its exact-GELU
/// text encoder identifies.
fn load_tokenizer(dir: &Path, te: &ClipTextConfig) -> Result<ClipTokenizer, ModelError> {
    let tok_dir = dir.join("tokenizer");
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
