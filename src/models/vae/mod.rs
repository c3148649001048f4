//! The image autoencoder: diffusers' `AutoencoderKL`, built from its `vae/config.json` and run on
//! Easel's kernels (`crate::ops`).
//!
//! Text-to-image only decodes; [`Vae::encode`] is for img2img and inpainting (and ComfyUI-style
//! workflows), which start from an image's latents. Tensor names are diffusers' (the single-file
//! checkpoint mapper produces the same), so any SD 1.x/2.x VAE loads unchanged.
//!
//! Easel owns this rather than using candle-transformers' `AutoEncoderKL` for speed: a decode is
//! mostly 3×3 convolutions and group norms at full resolution, which candle's CPU ops run through
//! im2col copies and eight-pass norms (see `crate::ops`).

mod blocks;
mod coder;
mod tiled;

use std::path::Path;

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::error::ModelError;
use crate::ops::{self, Conv2d};
use coder::{Decoder, Encoder, Shape};
pub use tiled::{NormStats, TileConfig};

fn default_three() -> usize {
    3
}
fn default_four() -> usize {
    4
}
fn default_one() -> usize {
    1
}
fn default_groups() -> usize {
    32
}
fn default_scaling() -> f64 {
    0.18215
}
fn default_silu() -> String {
    "silu".into()
}
fn default_true() -> bool {
    true
}

/// The fields of diffusers' `AutoencoderKL` config that Easel reads or checks.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "default_three")]
    pub in_channels: usize,
    #[serde(default = "default_three")]
    pub out_channels: usize,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_one")]
    pub layers_per_block: usize,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_four")]
    pub latent_channels: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        super::weights::read_json(path)
    }

    /// Pixels per latent along each axis.
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks that this is an autoencoder Easel can build (SD 1.x/2.x/XL-style).
    fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |msg: String| ModelError::bad_config(path, msg);
        let unsupported = |msg: String| ModelError::unsupported(path, msg);
        if self.block_out_channels.is_empty() {
            return Err(bad("block_out_channels is empty".into()));
        }
        for t in &self.down_block_types {
            if t != "DownEncoderBlock2D" {
                return Err(unsupported(format!("down block type {t:?}")));
            }
        }
        for t in &self.up_block_types {
            if t != "UpDecoderBlock2D" {
                return Err(unsupported(format!("up block type {t:?}")));
            }
        }
        if self.act_fn != "silu" {
            return Err(unsupported(format!("act_fn {:?} (only silu)", self.act_fn)));
        }
        if !self.mid_block_add_attention {
            return Err(unsupported("mid_block_add_attention = false".into()));
        }
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(unsupported("shift_factor (SD3/Flux-style latents)".into()));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(bad(format!(
                "block_out_channels entry {c} is not a multiple of norm_num_groups = {}",
                self.norm_num_groups
            )));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(bad(format!(
                "scaling_factor {} must be positive",
                self.scaling_factor
            )));
        }
        Ok(())
    }
}

/// The autoencoder with its latent scaling.
pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    /// 1×1, `2·latent` → `2·latent` channels (mean and log-variance), when the config has it.
    quant_conv: Option<Conv2d>,
    /// 1×1, `latent` → `latent` channels, when the config has it.
    post_quant_conv: Option<Conv2d>,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(
        vb: VarBuilder,
        config: VaeConfig,
        config_path: &Path,
    ) -> Result<Self, super::error::BuildError> {
        use super::error::BuildError as E;
        config.validate(config_path).map_err(E::Config)?;
        Self::build(vb, config).map_err(E::Weights)
    }

    fn build(vb: VarBuilder, config: VaeConfig) -> CandleResult<Self> {
        let shape = Shape {
            block_out_channels: &config.block_out_channels,
            layers_per_block: config.layers_per_block,
            groups: config.norm_num_groups,
        };
        let latent = config.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), config.in_channels, latent, &shape)?;
        let decoder = Decoder::new(vb.pp("decoder"), latent, config.out_channels, &shape)?;
        let conv1x1 = |ch: usize, name: &str| -> CandleResult<Conv2d> {
            ops::conv2d(ch, ch, 1, Default::default(), vb.pp(name))
        };
        let quant_conv = config
            .use_quant_conv
            .then(|| conv1x1(2 * latent, "quant_conv"))
            .transpose()?;
        let post_quant_conv = config
            .use_post_quant_conv
            .then(|| conv1x1(latent, "post_quant_conv"))
            .transpose()?;
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            config,
        })
    }

    /// Latents (as the sampler produces them) → image in [-1, 1], NCHW.
    pub fn decode(&self, latents: &Tensor) -> CandleResult<Tensor> {
        self.decoder.forward(&self.unscale(latents)?)
    }

    /// [`Self::decode`] with the full-resolution part in tiles, for images too large to decode
    /// at once: working memory bounded by the tile size (see `tiled`). Within a few 1/255 of
    /// the untiled decode; identical when one tile covers the latents.
    pub fn decode_tiled(&self, latents: &Tensor, cfg: &TileConfig) -> CandleResult<Tensor> {
        let h = self.decoder.head(&self.unscale(latents)?)?;
        self.decoder.tail_tiled(&h, cfg)
    }

    /// Sampler latents → the decoder's input.
    fn unscale(&self, latents: &Tensor) -> CandleResult<Tensor> {
        let z = ops::profile::scope(ops::Kind::ElementWise, || {
            latents / self.config.scaling_factor
        })?;
        match &self.post_quant_conv {
            Some(conv) => conv.forward(&z),
            None => Ok(z),
        }
    }

    /// Image in [-1, 1], NCHW → latents as the sampler uses them: the mean of the latent
    /// distribution (deterministic, as ComfyUI and diffusers' `latent_dist.mean`), times
    /// `scaling_factor`. Each side shrinks by [`VaeConfig::downscale_factor`] (rounded down as
    /// diffusers does, when it does not divide).
    pub fn encode(&self, image: &Tensor) -> CandleResult<Tensor> {
        self.latents(&self.encoder.forward(image)?)
    }

    /// [`Self::encode`] with the full-resolution part in tiles (the mirror of
    /// [`Self::decode_tiled`]).
    pub fn encode_tiled(&self, image: &Tensor, cfg: &TileConfig) -> CandleResult<Tensor> {
        let features = self.encoder.down_tiled(image, cfg)?;
        self.latents(&self.encoder.tail(&features)?)
    }

    /// The encoder's moments → sampler latents.
    fn latents(&self, moments: &Tensor) -> CandleResult<Tensor> {
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(moments)?,
            None => moments.clone(),
        };
        // The first `latent_channels` are the mean, the rest the log-variance.
        let mean = moments.narrow(1, 0, self.config.latent_channels)?;
        ops::profile::scope(ops::Kind::ElementWise, || mean * self.config.scaling_factor)
    }
}
