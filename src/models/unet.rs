//! The denoising UNet (diffusers' `UNet2DConditionModel`), built from `unet/config.json`.
//!
//! Written here rather than taken from candle-transformers: candle's SD UNet uses the tanh
//! approximation of GELU where diffusers uses the exact one, and gives wrong outputs for
//! SD 2.x-style configs (per-block head counts with linear projections) — both caught by the
//! diffusers reference tests. Owning it also lets LoRA and SDXL conditioning reach inside.
//! Configs with features Easel does not implement are refused, never run approximately.

use std::path::Path;

use candle_core::{Module, Result as CandleResult, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::ops::{group_norm, GroupNorm};

use crate::lora::{LoraConv2d, LoraLinear, LoraSlot};

use super::unet_blocks::{
    sinusoidal_embedding, timestep_embedding, BlockParams, DownBlock, MidBlock, UpBlock,
};
use serde::Deserialize;

use super::error::{BuildError, ModelError};

/// An int or a per-block list, as diffusers allows for several UNet fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }
    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(v) => v.len() == n,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> f64 {
    1.0
}
fn default_four() -> usize {
    4
}
fn default_layers() -> PerBlock {
    PerBlock::One(1)
}
fn default_silu() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_groups() -> usize {
    32
}

/// The fields of diffusers' `UNet2DConditionModel` config that Easel reads or checks.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "default_four")]
    pub in_channels: usize,
    #[serde(default = "default_four")]
    pub out_channels: usize,
    pub sample_size: Option<usize>,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock,
    #[serde(default = "default_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock,
    #[serde(default = "default_layers")]
    pub transformer_layers_per_block: PerBlock,
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub downsample_padding: Option<usize>,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// SDXL: the width of each micro-conditioning value's sinusoidal embedding.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// SDXL: the add-embedding's input width (pooled text width + 6 × the above).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
}

impl UNetConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        super::weights::read_json(path)
    }

    /// The number of times the UNet halves the latent size (sizes must be multiples of 2^this).
    pub fn downsamplings(&self) -> usize {
        self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks the config describes a UNet Easel can run and resolves the per-block settings.
    pub fn plan(&self, path: &Path) -> Result<Vec<BlockPlan>, ModelError> {
        let bad = |msg: String| ModelError::bad_config(path, msg);
        let unsupported = |msg: String| ModelError::unsupported(path, msg);
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(bad("block_out_channels is empty".into()));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(bad(format!(
                "{} down_block_types and {} up_block_types for {} block_out_channels",
                self.down_block_types.len(),
                self.up_block_types.len(),
                n
            )));
        }
        self.text_time(path)?;
        if let Some(t) = &self.class_embed_type {
            return Err(unsupported(format!("class_embed_type {t:?}")));
        }
        if self.encoder_hid_dim.is_some() || self.dual_cross_attention {
            return Err(unsupported("encoder_hid_dim / dual_cross_attention".into()));
        }
        if self.only_cross_attention.as_bool() == Some(true) {
            return Err(unsupported("only_cross_attention".into()));
        }
        if self.act_fn != "silu" {
            return Err(unsupported(format!("act_fn {:?} (only silu)", self.act_fn)));
        }
        if let Some(s) = &self.resnet_time_scale_shift {
            if s != "default" {
                return Err(unsupported(format!("resnet_time_scale_shift {s:?}")));
            }
        }
        if let Some(m) = &self.mid_block_type {
            if m != "UNetMidBlock2DCrossAttn" {
                return Err(unsupported(format!("mid_block_type {m:?}")));
            }
        }
        if self.downsample_padding.unwrap_or(1) != 1 {
            return Err(unsupported("downsample_padding other than 1".into()));
        }
        if self.cross_attention_dim().is_none() {
            return Err(unsupported("a per-block cross_attention_dim".into()));
        }
        // diffusers' historical naming: `attention_head_dim` holds the number of heads unless
        // `num_attention_heads` is given (see UNet2DConditionModel.__init__).
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        for (name, field) in [
            ("attention_head_dim", heads),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
            ),
            ("layers_per_block", &self.layers_per_block),
        ] {
            if !field.len_ok(n) {
                return Err(bad(format!("{name} must have one entry per block ({n})")));
            }
        }
        let mut plan = Vec::with_capacity(n);
        for (i, down) in self.down_block_types.iter().enumerate() {
            let up = &self.up_block_types[n - 1 - i];
            let cross = match down.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return Err(unsupported(format!("down block type {other:?}"))),
            };
            let up_cross = match up.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return Err(unsupported(format!("up block type {other:?}"))),
            };
            if cross != up_cross {
                return Err(unsupported(format!(
                    "up_block_types must mirror down_block_types (down {i} is {down}, up {} is {up})",
                    n - 1 - i
                )));
            }
            let channels = self.block_out_channels[i];
            if !channels.is_multiple_of(self.norm_num_groups) {
                return Err(bad(format!(
                    "block_out_channels[{i}] = {channels} is not a multiple of norm_num_groups = {}",
                    self.norm_num_groups
                )));
            }
            let n_heads = heads.get(i).unwrap_or(1);
            if n_heads == 0 || !channels.is_multiple_of(n_heads) {
                return Err(bad(format!(
                    "block {i}: {channels} channels do not split into {n_heads} heads"
                )));
            }
            plan.push(BlockPlan {
                channels,
                layers: self.layers_per_block.get(i).unwrap_or(1),
                cross,
                heads: n_heads,
                depth: self.transformer_layers_per_block.get(i).unwrap_or(1),
            });
        }
        Ok(plan)
    }

    /// SDXL's added conditioning (`addition_embed_type: "text_time"`): the pooled text width
    /// and the width of each micro-conditioning value's embedding. `None` for SD 1.x/2.x.
    pub fn text_time(&self, path: &Path) -> Result<Option<TextTime>, ModelError> {
        let Some(kind) = &self.addition_embed_type else {
            return Ok(None);
        };
        if kind != "text_time" {
            return Err(ModelError::unsupported(
                path,
                format!("addition_embed_type {kind:?} (only SDXL's \"text_time\")"),
            ));
        }
        let (Some(time_dim), Some(input)) = (
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) else {
            return Err(ModelError::bad_config(
                path,
                "addition_embed_type \"text_time\" needs addition_time_embed_dim and \
                 projection_class_embeddings_input_dim"
                    .to_string(),
            ));
        };
        let times = TIME_IDS * time_dim;
        if input <= times {
            return Err(ModelError::bad_config(
                path,
                format!(
                    "projection_class_embeddings_input_dim {input} leaves no room for a pooled \
                     text embedding beside {TIME_IDS} × {time_dim} time values"
                ),
            ));
        }
        Ok(Some(TextTime {
            pooled_dim: input - times,
            time_dim,
        }))
    }

    pub fn cross_attention_dim(&self) -> Option<usize> {
        match self.cross_attention_dim {
            PerBlock::One(v) => Some(v),
            PerBlock::Each(_) => None,
        }
    }
}

/// The number of SDXL micro-conditioning values: original size, crop top-left, target size.
pub const TIME_IDS: usize = 6;

/// SDXL's added conditioning, resolved from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextTime {
    /// The pooled text embedding's width (the second text encoder's projection: 1280).
    pub pooled_dim: usize,
    /// Each micro-conditioning value's sinusoidal embedding width (256).
    pub time_dim: usize,
}

/// What the UNet is conditioned on besides the latents and the timestep.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The text states it cross-attends to: [batch, tokens, cross_attention_dim].
    pub context: Tensor,
    /// SDXL: the pooled text embedding [batch, pooled] and the micro-conditioning values
    /// [batch, 6] (original height and width, crop top and left, target height and width).
    pub text_time: Option<(Tensor, Tensor)>,
    /// LCM-distilled UNets: the guidance-scale embedding [1, time_cond_proj_dim] that takes
    /// the place of classifier-free guidance (see `guidance::scale_embedding`).
    pub guidance: Option<Tensor>,
}

impl Conditioning {
    /// Text states alone (SD 1.x/2.x).
    pub fn text(context: Tensor) -> Self {
        Self {
            context,
            text_time: None,
            guidance: None,
        }
    }
}

/// SDXL's add embedding: pooled text and micro-conditioning → a vector added to the time
/// embedding (diffusers' `add_time_proj` + `add_embedding`).
struct AddEmbedding {
    linear_1: LoraLinear,
    linear_2: LoraLinear,
    spec: TextTime,
}

/// One resolution level of the UNet, resolved from the config.
#[derive(Debug, Clone, Copy)]
pub struct BlockPlan {
    pub channels: usize,
    pub layers: usize,
    pub cross: bool,
    pub heads: usize,
    pub depth: usize,
}

/// The UNet, ready to predict noise (or v).
pub struct UNet {
    conv_in: LoraConv2d,
    time_linear_1: LoraLinear,
    time_linear_2: LoraLinear,
    /// LCM-distilled UNets: the guidance-scale embedding's projection, added to the timestep
    /// embedding (diffusers' `time_embedding.cond_proj`, `time_cond_proj_dim` wide).
    time_cond_proj: Option<candle_nn::Linear>,
    /// SDXL's pooled-text and micro-conditioning embedding.
    add_embedding: Option<AddEmbedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: LoraConv2d,
    pub config: UNetConfig,
}

impl UNet {
    pub fn new(vb: VarBuilder, config: UNetConfig, config_path: &Path) -> Result<Self, BuildError> {
        let plan = config.plan(config_path).map_err(BuildError::Config)?;
        let text_time = config.text_time(config_path).map_err(BuildError::Config)?;
        Self::build(vb, config, &plan, text_time).map_err(BuildError::Weights)
    }

    fn build(
        vb: VarBuilder,
        config: UNetConfig,
        plan: &[BlockPlan],
        text_time: Option<TextTime>,
    ) -> CandleResult<Self> {
        let n = plan.len();
        let c0 = plan[0].channels;
        let temb = c0 * 4;
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let params = |b: &BlockPlan| BlockParams {
            temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            context_dim: config.cross_attention_dim().unwrap_or(0),
            linear_proj: config.use_linear_projection,
            attention: b.cross.then_some((b.heads, b.depth)),
        };
        let mut down = Vec::with_capacity(n);
        let mut cin = c0;
        for (i, b) in plan.iter().enumerate() {
            down.push(DownBlock::new(
                vb.pp("down_blocks").pp(i),
                cin,
                b.channels,
                b.layers,
                i + 1 < n,
                params(b),
            )?);
            cin = b.channels;
        }
        let last = plan[n - 1];
        let mid = MidBlock::new(
            vb.pp("mid_block"),
            last.channels,
            config.mid_block_scale_factor,
            last.heads,
            last.depth,
            params(&last),
        )?;
        let mut up = Vec::with_capacity(n);
        let mut prev = last.channels;
        for i in 0..n {
            let b = plan[n - 1 - i];
            let skip_in = plan[(n - 1 - i).saturating_sub(1)].channels;
            up.push(UpBlock::new(
                vb.pp("up_blocks").pp(i),
                skip_in,
                prev,
                b.channels,
                b.layers + 1,
                i + 1 < n,
                params(&b),
            )?);
            prev = b.channels;
        }
        Ok(Self {
            conv_in: LoraConv2d::new(config.in_channels, c0, 3, conv3, vb.pp("conv_in"))?,
            time_linear_1: LoraLinear::new(c0, temb, true, vb.pp("time_embedding").pp("linear_1"))?,
            time_linear_2: LoraLinear::new(
                temb,
                temb,
                true,
                vb.pp("time_embedding").pp("linear_2"),
            )?,
            time_cond_proj: match config.time_cond_proj_dim {
                Some(dim) => Some(candle_nn::linear_no_bias(
                    dim,
                    c0,
                    vb.pp("time_embedding").pp("cond_proj"),
                )?),
                None => None,
            },
            add_embedding: match text_time {
                Some(spec) => {
                    let vb = vb.pp("add_embedding");
                    let input = spec.pooled_dim + TIME_IDS * spec.time_dim;
                    Some(AddEmbedding {
                        linear_1: LoraLinear::new(input, temb, true, vb.pp("linear_1"))?,
                        linear_2: LoraLinear::new(temb, temb, true, vb.pp("linear_2"))?,
                        spec,
                    })
                }
                None => None,
            },
            down,
            mid,
            up,
            conv_norm_out: group_norm(
                config.norm_num_groups,
                c0,
                config.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: LoraConv2d::new(c0, config.out_channels, 3, conv3, vb.pp("conv_out"))?,
            config,
        })
    }

    /// Every layer an adapter can attach to, in a fixed order (see [`crate::lora`]).
    pub fn lora_slots(&self) -> Vec<&LoraSlot> {
        let mut out = vec![
            self.conv_in.slot(),
            self.time_linear_1.slot(),
            self.time_linear_2.slot(),
        ];
        if let Some(add) = &self.add_embedding {
            out.extend([add.linear_1.slot(), add.linear_2.slot()]);
        }
        for block in &self.down {
            block.lora_slots(&mut out);
        }
        self.mid.lora_slots(&mut out);
        for block in &self.up {
            block.lora_slots(&mut out);
        }
        out.push(self.conv_out.slot());
        out
    }

    /// The original (LDM/SGM) name of one of this UNet's modules, as kohya's SDXL adapters
    /// spell layers (`down_blocks.1.attentions.0.proj_in` → `input_blocks.4.1.proj_in`);
    /// `None` for UNets whose levels differ in depth (no LDM layout has them).
    pub fn ldm_name(&self, name: &str) -> Option<String> {
        let n = self.up.len();
        let layers = self.config.layers_per_block.get(0)?;
        if (0..n).any(|i| self.config.layers_per_block.get(i) != Some(layers)) {
            return None;
        }
        let up_attention: Vec<bool> = self.up.iter().map(UpBlock::has_attention).collect();
        crate::models::checkpoint::keymap::unet::to_ldm(name, layers, &up_attention)
    }

    /// Whether this UNet takes SDXL's pooled text and micro-conditioning.
    pub fn text_time(&self) -> Option<TextTime> {
        self.add_embedding.as_ref().map(|a| a.spec)
    }

    /// Predicts the model output (noise or v) for a batch of latents at one timestep, from
    /// text states alone (SD 1.x/2.x).
    pub fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
    ) -> CandleResult<Tensor> {
        self.forward_with(latents, timestep, &Conditioning::text(context.clone()))
    }

    /// Predicts the model output (noise or v) for a batch of latents at one timestep.
    pub fn forward_with(
        &self,
        latents: &Tensor,
        timestep: f64,
        cond: &Conditioning,
    ) -> CandleResult<Tensor> {
        let context = &cond.context;
        let (batch, _, _, _) = latents.dims4()?;
        let c0 = self.time_linear_1.in_dim();
        let t = timestep_embedding(
            timestep,
            c0,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            batch,
            latents.device(),
        )?
        .to_dtype(latents.dtype())?;
        let t = match (&self.time_cond_proj, &cond.guidance) {
            (Some(proj), Some(w)) => {
                let w = crate::ops::linear(&w.to_dtype(t.dtype())?, proj)?;
                t.broadcast_add(&w)?
            }
            _ => t,
        };
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&t)?.silu()?)?;
        let temb = match &self.add_embedding {
            Some(add) => {
                let Some((pooled, time_ids)) = &cond.text_time else {
                    candle_core::bail!(
                        "this UNet (SDXL) needs a pooled text embedding and micro-conditioning"
                    )
                };
                let input = self.add_embedding_input(add.spec, pooled, time_ids)?;
                let aug = add.linear_2.forward(
                    &add.linear_1
                        .forward(&input.to_dtype(temb.dtype())?)?
                        .silu()?,
                )?;
                (temb + aug)?
            }
            None => temb,
        };
        // Every resnet applies silu to the time embedding first; do it once.
        let temb = temb.silu()?;
        let xs = if self.config.center_input_sample {
            ((latents * 2.0)? - 1.0)?
        } else {
            latents.clone()
        };
        let mut xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down {
            xs = block.forward(&xs, &temb, context, &mut skips)?;
        }
        xs = self.mid.forward(&xs, &temb, context)?;
        for block in &self.up {
            let upsample_to = if skips.len() > block.n_skips() {
                let (_, _, h, w) = skips[skips.len() - block.n_skips() - 1].dims4()?;
                Some((h, w))
            } else {
                None
            };
            xs = block.forward(&xs, &temb, context, &mut skips, upsample_to)?;
        }
        self.conv_out
            .forward_normalised(&self.conv_norm_out.deferred_silu(&xs, None)?)
    }

    /// [pooled text, sinusoidal embedding of each micro-conditioning value] per batch row.
    fn add_embedding_input(
        &self,
        spec: TextTime,
        pooled: &Tensor,
        time_ids: &Tensor,
    ) -> CandleResult<Tensor> {
        let (batch, n) = time_ids.dims2()?;
        if n != TIME_IDS || pooled.dims() != [batch, spec.pooled_dim] {
            candle_core::bail!(
                "SDXL conditioning: pooled {:?} and time ids {:?}, expected [{batch}, {}] and \
                 [{batch}, {TIME_IDS}]",
                pooled.dims(),
                time_ids.dims(),
                spec.pooled_dim
            )
        }
        let values = time_ids
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let times = sinusoidal_embedding(
            &values,
            spec.time_dim,
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            time_ids.device(),
        )?
        .reshape((batch, TIME_IDS * spec.time_dim))?;
        Tensor::cat(&[&pooled.to_dtype(candle_core::DType::F32)?, &times], 1)
    }
}
