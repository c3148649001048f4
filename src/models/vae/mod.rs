//! The image autoencoder: diffusers' `vae/config.json` → candle-transformers' `AutoEncoderKL`.
//!
//! Only decoding is on the text-to-image path; the encoder is built too because img2img and
//! inpainting will need it and the weights are small next to the UNet's.

use std::path::Path;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde::Deserialize;

use super::error::ModelError;

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

    fn to_candle(&self, path: &Path) -> Result<AutoEncoderKLConfig, ModelError> {
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
        Ok(AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_num_groups,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: self.use_post_quant_conv,
        })
    }
}

/// The autoencoder with its latent scaling.
pub struct Vae {
    model: AutoEncoderKL,
    pub config: VaeConfig,
}

impl Vae {
    pub fn new(
        vb: VarBuilder,
        config: VaeConfig,
        config_path: &Path,
    ) -> Result<Self, super::error::BuildError> {
        use super::error::BuildError as E;
        let candle_cfg = config.to_candle(config_path).map_err(E::Config)?;
        let model = AutoEncoderKL::new(vb, config.in_channels, config.out_channels, candle_cfg)
            .map_err(E::Weights)?;
        Ok(Self { model, config })
    }

    /// Latents (as the sampler produces them) → image in [-1, 1], NCHW.
    pub fn decode(&self, latents: &Tensor) -> CandleResult<Tensor> {
        self.model.decode(&(latents / self.config.scaling_factor)?)
    }
}
