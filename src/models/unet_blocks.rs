//! The UNet's building blocks, named and wired exactly as diffusers' `UNet2DConditionModel`
//! (`down_blocks.N.resnets.M`, `…attentions.M.transformer_blocks.K.attn1.to_q` …), so real
//! checkpoints load by name and the numbers match diffusers'.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{layer_norm, Conv2dConfig, LayerNorm, VarBuilder};

use crate::lora::{LoraConv2d, LoraLinear, LoraSlot};
use crate::ops::{self, group_norm, profile, GroupNorm, Kind};

// Every convolution and projection is LoRA-aware: kohya's LoCon and LyCORIS adapters reach the
// resnets and samplers too, not only attention.
fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<LoraConv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    LoraConv2d::new(cin, cout, 3, cfg, vb)
}

fn conv1x1(cin: usize, cout: usize, vb: VarBuilder) -> Result<LoraConv2d> {
    LoraConv2d::new(cin, cout, 1, Default::default(), vb)
}

fn linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<LoraLinear> {
    LoraLinear::new(cin, cout, true, vb)
}

fn linear_no_bias(cin: usize, cout: usize, vb: VarBuilder) -> Result<LoraLinear> {
    LoraLinear::new(cin, cout, false, vb)
}

// candle's fused layer-norm kernel has no backward (`apply_op*_no_bwd`): its output silently
// stops gradients. When a tensor tracks gradients (training on `Var`s), the same function built
// from differentiable ops is used instead; inference keeps the fused kernel.
fn norm_tokens(norm: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
    profile::scope(Kind::Normalisation, || match norm.bias() {
        Some(bias) if xs.track_op() || norm.weight().track_op() => {
            candle_nn::ops::layer_norm_slow(xs, norm.weight(), bias, norm.eps() as f32)
        }
        _ => norm.forward(xs),
    })
}

/// Sinusoidal embedding of the timestep (diffusers' `get_timestep_embedding`), repeated for
/// each batch row: [batch, dim].
pub fn timestep_embedding(
    t: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    batch: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    sinusoidal_embedding(&[t as f32], dim, flip_sin_to_cos, freq_shift, dev)?.repeat((batch, 1))
}

/// Sinusoidal embeddings of several values (timesteps, SDXL's micro-conditioning sizes):
/// [values, dim], as diffusers' `get_timestep_embedding`.
pub fn sinusoidal_embedding(
    values: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let half = dim / 2;
    // diffusers computes exp in f32 and multiplies by the f32 value.
    let freqs: Vec<f32> = (0..half)
        .map(|i| {
            let exponent = -(10000f64.ln()) * i as f64 / (half as f64 - freq_shift);
            (exponent as f32).exp()
        })
        .collect();
    let args: Vec<f32> = values
        .iter()
        .flat_map(|&v| freqs.iter().map(move |&f| v * f))
        .collect();
    let args = Tensor::from_vec(args, (values.len(), half), dev)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], D::Minus1)
    } else {
        Tensor::cat(&[sin, cos], D::Minus1)
    }
}

pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: LoraConv2d,
    time_emb_proj: LoraLinear,
    norm2: GroupNorm,
    conv2: LoraConv2d,
    conv_shortcut: Option<LoraConv2d>,
    output_scale_factor: f64,
}

impl ResnetBlock {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        temb: usize,
        groups: usize,
        eps: f64,
        output_scale_factor: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, eps, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(temb, cout, vb.pp("time_emb_proj"))?,
            norm2: group_norm(groups, cout, eps, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv1x1(cin, cout, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
            output_scale_factor,
        })
    }

    pub fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        out.extend([
            self.conv1.slot(),
            self.time_emb_proj.slot(),
            self.conv2.slot(),
        ]);
        out.extend(self.conv_shortcut.as_ref().map(LoraConv2d::slot));
    }

    /// `temb_act` is silu(time embedding), shared by every resnet of the UNet.
    pub fn forward(&self, xs: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let h = self
            .conv1
            .forward_normalised(&self.norm1.deferred_silu(xs, None)?)?;
        let t = self
            .time_emb_proj
            .forward(temb_act)?
            .unsqueeze(2)?
            .unsqueeze(3)?;
        let h = profile::scope(Kind::ElementWise, || h.broadcast_add(&t))?;
        let h = self
            .conv2
            .forward_normalised(&self.norm2.deferred_silu(&h, None)?)?;
        let out = match &self.conv_shortcut {
            Some(c) => ops::add_in_place(h, &c.forward(xs)?)?,
            None => ops::add_in_place(h, xs)?,
        };
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Multi-head attention; `context` = None makes it self-attention.
pub struct Attention {
    to_q: LoraLinear,
    to_k: LoraLinear,
    to_v: LoraLinear,
    to_out: LoraLinear,
    heads: usize,
    /// Weights kept in bf16 (`--dtype bf16`): the attention's products in bf16 too, where the
    /// CPU has them (see `ops::attention_bf16`).
    bf16: bool,
}

impl Attention {
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let to_q = linear_no_bias(query_dim, inner, vb.pp("to_q"))?;
        Ok(Self {
            bf16: to_q.weight_dtype() == candle_core::DType::BF16,
            to_q,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    pub fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        out.extend([
            self.to_q.slot(),
            self.to_k.slot(),
            self.to_v.slot(),
            self.to_out.slot(),
        ]);
    }

    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let ctx = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(ctx)?;
        let v = self.to_v.forward(ctx)?;
        let attention = if self.bf16 {
            ops::attention_bf16
        } else {
            ops::attention
        };
        self.to_out.forward(&attention(&q, &k, &v, self.heads)?)
    }
}

/// GEGLU feed-forward with diffusers' exact (erf) GELU.
struct FeedForward {
    proj: LoraLinear,
    out: LoraLinear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(dim, inner * 2, vb.pp("net").pp("0").pp("proj"))?,
            out: linear(inner, dim, vb.pp("net").pp("2"))?,
        })
    }

    fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        out.extend([self.proj.slot(), self.out.slot()]);
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.out.forward(&ops::geglu(&self.proj.forward(xs)?)?)
    }
}

struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, context_dim: usize, heads: usize) -> Result<Self> {
        let hd = dim / heads;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, hd)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, hd)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        self.attn1.lora_slots(out);
        self.attn2.lora_slots(out);
        self.ff.lora_slots(out);
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = ops::add_in_place(
            self.attn1.forward(&norm_tokens(&self.norm1, xs)?, None)?,
            xs,
        )?;
        let xs = ops::add_in_place(
            self.attn2
                .forward(&norm_tokens(&self.norm2, &xs)?, Some(context))?,
            &xs,
        )?;
        ops::add_in_place(self.ff.forward(&norm_tokens(&self.norm3, &xs)?)?, &xs)
    }
}

enum Proj {
    Conv(LoraConv2d),
    Linear(LoraLinear),
}

impl Proj {
    fn slot(&self) -> &LoraSlot {
        match self {
            Proj::Conv(c) => c.slot(),
            Proj::Linear(l) => l.slot(),
        }
    }
}

/// diffusers' `Transformer2DModel`: group norm, projection in, transformer blocks, projection out.
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Proj,
}

impl SpatialTransformer {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        context_dim: usize,
        groups: usize,
        linear_proj: bool,
    ) -> Result<Self> {
        let (proj_in, proj_out) = if linear_proj {
            (
                Proj::Linear(linear(channels, channels, vb.pp("proj_in"))?),
                Proj::Linear(linear(channels, channels, vb.pp("proj_out"))?),
            )
        } else {
            (
                Proj::Conv(conv1x1(channels, channels, vb.pp("proj_in"))?),
                Proj::Conv(conv1x1(channels, channels, vb.pp("proj_out"))?),
            )
        };
        let bvb = vb.pp("transformer_blocks");
        let blocks = (0..depth)
            .map(|i| BasicTransformerBlock::new(bvb.pp(i), channels, context_dim, heads))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: group_norm(groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in,
            blocks,
            proj_out,
        })
    }

    pub fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        out.push(self.proj_in.slot());
        for block in &self.blocks {
            block.lora_slots(out);
        }
        out.push(self.proj_out.slot());
    }

    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            profile::scope(Kind::Copy, || {
                t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
            })
        };
        let to_image = |t: &Tensor| -> Result<Tensor> {
            profile::scope(Kind::Copy, || {
                t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
            })
        };
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Proj::Conv(p) => to_tokens(&p.forward(&normed)?)?,
            Proj::Linear(p) => p.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Proj::Conv(p) => p.forward(&to_image(&tokens)?)?,
            Proj::Linear(p) => to_image(&p.forward(&tokens)?)?,
        };
        ops::add_in_place(out, xs)
    }
}

/// One resolution level on the way down: resnets (each followed by attention in cross-attn
/// blocks), then an optional stride-2 convolution.
pub struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    downsample: Option<LoraConv2d>,
}

/// Everything a block needs to know beyond its channels.
#[derive(Clone, Copy)]
pub struct BlockParams {
    pub temb: usize,
    pub groups: usize,
    pub eps: f64,
    pub context_dim: usize,
    pub linear_proj: bool,
    /// `Some((heads, transformer depth))` for cross-attention blocks.
    pub attention: Option<(usize, usize)>,
}

impl BlockParams {
    /// Layer `i` of a down or up block: a resnet, followed by attention in cross-attn blocks.
    fn layer(
        &self,
        vb: &VarBuilder,
        i: usize,
        cin: usize,
        cout: usize,
    ) -> Result<(ResnetBlock, Option<SpatialTransformer>)> {
        let resnet = ResnetBlock::new(
            vb.pp("resnets").pp(i),
            cin,
            cout,
            self.temb,
            self.groups,
            self.eps,
            1.0,
        )?;
        let attention = match self.attention {
            Some((heads, depth)) => Some(SpatialTransformer::new(
                vb.pp("attentions").pp(i),
                cout,
                heads,
                depth,
                self.context_dim,
                self.groups,
                self.linear_proj,
            )?),
            None => None,
        };
        Ok((resnet, attention))
    }
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        layers: usize,
        downsample: bool,
        p: BlockParams,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let c = if i == 0 { cin } else { cout };
            let (resnet, attention) = p.layer(&vb, i, c, cout)?;
            resnets.push(resnet);
            attentions.extend(attention);
        }
        let downsample = if downsample {
            Some(conv3x3(
                cout,
                cout,
                2,
                vb.pp("downsamplers").pp("0").pp("conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsample,
        })
    }

    pub fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        for r in &self.resnets {
            r.lora_slots(out);
        }
        for a in &self.attentions {
            a.lora_slots(out);
        }
        out.extend(self.downsample.as_ref().map(LoraConv2d::slot));
    }

    /// Returns the output and the skip tensors it hands to the up path.
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsample {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok(xs)
    }
}

/// The bottleneck: resnet, attention, resnet.
pub struct MidBlock {
    resnet0: ResnetBlock,
    attention: SpatialTransformer,
    resnet1: ResnetBlock,
}

impl MidBlock {
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        scale: f64,
        heads: usize,
        depth: usize,
        p: BlockParams,
    ) -> Result<Self> {
        let r = vb.pp("resnets");
        Ok(Self {
            resnet0: ResnetBlock::new(r.pp(0), channels, channels, p.temb, p.groups, p.eps, scale)?,
            attention: SpatialTransformer::new(
                vb.pp("attentions").pp(0),
                channels,
                heads,
                depth,
                p.context_dim,
                p.groups,
                p.linear_proj,
            )?,
            resnet1: ResnetBlock::new(r.pp(1), channels, channels, p.temb, p.groups, p.eps, scale)?,
        })
    }

    pub fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        self.resnet0.lora_slots(out);
        self.attention.lora_slots(out);
        self.resnet1.lora_slots(out);
    }

    pub fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.resnet0.forward(xs, temb)?;
        let xs = self.attention.forward(&xs, context)?;
        self.resnet1.forward(&xs, temb)
    }
}

/// One resolution level on the way up: each resnet eats one skip tensor (concatenated on
/// channels), optional attention after each, then an optional nearest ×2 upsample + conv.
pub struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    upsample: Option<LoraConv2d>,
}

impl UpBlock {
    /// `skip_in`: channels of the down block this mirrors' input; `prev`: channels arriving from below.
    pub fn new(
        vb: VarBuilder,
        skip_in: usize,
        prev: usize,
        cout: usize,
        layers: usize,
        upsample: bool,
        p: BlockParams,
    ) -> Result<Self> {
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for i in 0..layers {
            let skip = if i == layers - 1 { skip_in } else { cout };
            let cin = if i == 0 { prev } else { cout };
            let (resnet, attention) = p.layer(&vb, i, cin + skip, cout)?;
            resnets.push(resnet);
            attentions.extend(attention);
        }
        let upsample = if upsample {
            Some(conv3x3(
                cout,
                cout,
                1,
                vb.pp("upsamplers").pp("0").pp("conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsample,
        })
    }

    pub fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        for r in &self.resnets {
            r.lora_slots(out);
        }
        for a in &self.attentions {
            a.lora_slots(out);
        }
        out.extend(self.upsample.as_ref().map(LoraConv2d::slot));
    }

    pub fn has_attention(&self) -> bool {
        !self.attentions.is_empty()
    }

    pub fn n_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `upsample_to`: the spatial size of the next level's skips (handles odd sizes like diffusers'
    /// `upsample_size`; for even sizes it is the plain ×2).
    pub fn forward(
        &self,
        xs: &Tensor,
        temb: &Tensor,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
        upsample_to: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet skip connections exhausted".into()))?;
            let joined = profile::scope(Kind::Copy, || Tensor::cat(&[&xs, &skip], 1))?;
            xs = resnet.forward(&joined, temb)?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
        }
        if let Some(conv) = &self.upsample {
            let (_, _, h, w) = xs.dims4()?;
            let (th, tw) = upsample_to.unwrap_or((h * 2, w * 2));
            xs = conv.forward_upsampled(&xs, (th, tw))?;
        }
        Ok(xs)
    }
}
