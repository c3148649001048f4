//! The autoencoder's building blocks, named and wired as diffusers' (`resnets.N.norm1`,
//! `attentions.0.to_q`, `downsamplers.0.conv` …) so diffusers folders and converted single-file
//! checkpoints load by name, and computed with Easel's kernels (`crate::ops`).
//!
//! Everything here is diffusers' `AutoencoderKL` as Stable Diffusion configures it: resnets
//! without a time embedding and with `output_scale_factor` 1, group norms with eps 1e-6, a
//! single-head attention as wide as the channels in the middle, stride-2 downsamplers padded on
//! the right and bottom only, nearest ×2 upsamplers.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::tiled::Norms;
use crate::ops::{self, group_norm, profile, Conv2d, GroupNorm, Kind};

/// diffusers' `norm_eps` for every group norm of the VAE.
pub const EPS: f64 = 1e-6;

pub fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    ops::conv2d(cin, cout, 3, cfg, vb)
}

pub fn conv1x1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    ops::conv2d(cin, cout, 1, Default::default(), vb)
}

/// `norm1 → silu → conv1 → norm2 → silu → conv2`, plus the input (through a 1×1
/// `conv_shortcut` when the channel count changes).
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, EPS, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, EPS, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv1x1(cin, cout, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }
}

impl ResnetBlock {
    /// The forward pass with its group norms taken through `norms` (see [`Norms`]).
    pub fn forward_with(&self, xs: &Tensor, norms: &mut Norms) -> Result<Tensor> {
        let h = self
            .conv1
            .forward_normalised(&norms.silu(&self.norm1, xs)?)?;
        let h = self
            .conv2
            .forward_normalised(&norms.silu(&self.norm2, &h)?)?;
        match &self.conv_shortcut {
            Some(c) => ops::add_in_place(h, &c.forward(xs)?),
            None => ops::add_in_place(h, xs),
        }
    }

    /// Pixels of context each side that one output pixel reads: two 3×3 convolutions.
    pub const REACH: usize = 2;
}

impl Module for ResnetBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, &mut Norms::Own)
    }
}

/// A `channels × channels` projection with bias. LDM checkpoints keep these as 1×1 convolutions
/// ([c, c, 1, 1]); those are read as the same matrix.
fn projection(channels: usize, vb: VarBuilder) -> Result<Linear> {
    if vb.contains_tensor("weight") {
        if let Ok(w) = vb.get((channels, channels, 1, 1), "weight") {
            let b = vb.get(channels, "bias")?;
            return Ok(Linear::new(w.reshape((channels, channels))?, Some(b)));
        }
    }
    candle_nn::linear(channels, channels, vb)
}

/// Self-attention over the pixels with one head as wide as the channels, with residual:
/// `x + to_out(attention(to_q(n), to_k(n), to_v(n)))` where `n = group_norm(x)` as token rows.
pub struct AttentionBlock {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl AttentionBlock {
    pub fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // Today's diffusers names, or those of diffusers before 0.14 (candle reads both).
        let (q, k, v, out) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(Self {
            group_norm: group_norm(groups, channels, EPS, vb.pp("group_norm"))?,
            to_q: projection(channels, vb.pp(q))?,
            to_k: projection(channels, vb.pp(k))?,
            to_v: projection(channels, vb.pp(v))?,
            to_out: projection(channels, vb.pp(out))?,
        })
    }

    fn linear(l: &Linear, xs: &Tensor) -> Result<Tensor> {
        profile::scope(Kind::Linear, || ops::linear(xs, l))
    }
}

impl Module for AttentionBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = self.group_norm.forward(xs)?;
        let tokens = profile::scope(Kind::Copy, || {
            normed.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        })?;
        drop(normed);
        let q = Self::linear(&self.to_q, &tokens)?;
        let k = Self::linear(&self.to_k, &tokens)?;
        let v = Self::linear(&self.to_v, &tokens)?;
        drop(tokens);
        let attended = ops::attention(&q, &k, &v, 1)?;
        drop((q, k, v));
        let out = Self::linear(&self.to_out, &attended)?;
        let image = profile::scope(Kind::Copy, || {
            out.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
        })?;
        ops::add_in_place(image, xs)
    }
}

/// `resnets.0 → attentions.0 → resnets.1`, at constant width.
pub struct MidBlock {
    resnet_in: ResnetBlock,
    attention: AttentionBlock,
    resnet_out: ResnetBlock,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let resnets = vb.pp("resnets");
        Ok(Self {
            resnet_in: ResnetBlock::new(resnets.pp("0"), channels, channels, groups)?,
            attention: AttentionBlock::new(vb.pp("attentions").pp("0"), channels, groups)?,
            resnet_out: ResnetBlock::new(resnets.pp("1"), channels, channels, groups)?,
        })
    }
}

impl Module for MidBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.resnet_in.forward(xs)?;
        let xs = self.attention.forward(&xs)?;
        self.resnet_out.forward(&xs)
    }
}

fn resnets(
    vb: VarBuilder,
    layers: usize,
    cin: usize,
    cout: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock>> {
    (0..layers)
        .map(|i| {
            let cin = if i == 0 { cin } else { cout };
            ResnetBlock::new(vb.pp(i.to_string()), cin, cout, groups)
        })
        .collect()
}

/// diffusers' `DownEncoderBlock2D`: resnets, then (except at the last level) a stride-2 3×3
/// convolution over the input padded by one zero row and column at the bottom and right.
pub struct DownEncoderBlock {
    resnets: Vec<ResnetBlock>,
    downsampler: Option<Conv2d>,
}

impl DownEncoderBlock {
    pub fn new(
        vb: VarBuilder,
        layers: usize,
        cin: usize,
        cout: usize,
        groups: usize,
        downsample: bool,
    ) -> Result<Self> {
        let downsampler = if downsample {
            let cfg = Conv2dConfig {
                stride: 2,
                ..Default::default()
            };
            let vb = vb.pp("downsamplers").pp("0").pp("conv");
            Some(ops::conv2d(cout, cout, 3, cfg, vb)?)
        } else {
            None
        };
        Ok(Self {
            resnets: resnets(vb.pp("resnets"), layers, cin, cout, groups)?,
            downsampler,
        })
    }
}

impl DownEncoderBlock {
    pub fn forward_with(&self, xs: &Tensor, norms: &mut Norms) -> Result<Tensor> {
        let mut xs = xs.clone();
        for r in &self.resnets {
            xs = r.forward_with(&xs, norms)?;
        }
        match &self.downsampler {
            Some(conv) => {
                let padded = profile::scope(Kind::Copy, || {
                    xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)
                })?;
                drop(xs);
                conv.forward(&padded)
            }
            None => Ok(xs),
        }
    }

    pub fn resnet_count(&self) -> usize {
        self.resnets.len()
    }

    pub fn downsamples(&self) -> bool {
        self.downsampler.is_some()
    }
}

impl Module for DownEncoderBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, &mut Norms::Own)
    }
}

/// diffusers' `UpDecoderBlock2D`: resnets, then (except at the last level) a nearest ×2
/// upsample and a 3×3 convolution, done together by the convolution kernel.
pub struct UpDecoderBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Conv2d>,
}

impl UpDecoderBlock {
    pub fn new(
        vb: VarBuilder,
        layers: usize,
        cin: usize,
        cout: usize,
        groups: usize,
        upsample: bool,
    ) -> Result<Self> {
        let upsampler = if upsample {
            Some(conv3x3(cout, cout, vb.pp("upsamplers").pp("0").pp("conv"))?)
        } else {
            None
        };
        Ok(Self {
            resnets: resnets(vb.pp("resnets"), layers, cin, cout, groups)?,
            upsampler,
        })
    }
}

impl UpDecoderBlock {
    pub fn forward_with(&self, xs: &Tensor, norms: &mut Norms) -> Result<Tensor> {
        let mut xs = xs.clone();
        for r in &self.resnets {
            xs = r.forward_with(&xs, norms)?;
        }
        match &self.upsampler {
            Some(conv) => {
                let (_, _, h, w) = xs.dims4()?;
                conv.forward_upsampled(&xs, (2 * h, 2 * w))
            }
            None => Ok(xs),
        }
    }

    pub fn resnet_count(&self) -> usize {
        self.resnets.len()
    }

    pub fn upsamples(&self) -> bool {
        self.upsampler.is_some()
    }
}

impl Module for UpDecoderBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, &mut Norms::Own)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;
    use crate::ops::test_util::{max_diff, randn};

    /// The mid-block attention's weights under each of the three spellings it is found in:
    /// diffusers' `to_q` … `to_out.0`, diffusers' before 0.14 (`query` … `proj_attn`), and as
    /// LDM's 1×1 convolutions ([c, c, 1, 1], renamed by the checkpoint key map).
    #[test]
    fn attention_reads_every_weight_layout_alike() {
        let c = 8;
        let mut base = HashMap::new();
        base.insert("group_norm.weight".to_string(), randn(&[c]));
        base.insert("group_norm.bias".to_string(), randn(&[c]));
        let names = [
            ("to_q", "query"),
            ("to_k", "key"),
            ("to_v", "value"),
            ("to_out.0", "proj_attn"),
        ];
        let (mut now, mut old, mut ldm) = (base.clone(), base.clone(), base);
        for (new_name, old_name) in names {
            let (w, b) = (randn(&[c, c]), randn(&[c]));
            now.insert(format!("{new_name}.weight"), w.clone());
            now.insert(format!("{new_name}.bias"), b.clone());
            old.insert(format!("{old_name}.weight"), w.clone());
            old.insert(format!("{old_name}.bias"), b.clone());
            ldm.insert(
                format!("{new_name}.weight"),
                w.reshape((c, c, 1, 1)).unwrap(),
            );
            ldm.insert(format!("{new_name}.bias"), b);
        }
        let x = randn(&[2, c, 3, 5]);
        let run = |ts: HashMap<String, Tensor>| {
            let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
            AttentionBlock::new(vb, c, 2).unwrap().forward(&x).unwrap()
        };
        let want = run(now.clone());
        for got in [run(old), run(ldm)] {
            assert_eq!(max_diff(&got, &want), 0.0);
        }

        // The math against candle-transformers' block, which the VAE used before. Only on one
        // image: with loaded (non-`Var`) weights, candle's block gets every image after the
        // first of a batch wrong (the diffusers reference encodes a batch of two through this
        // block and matches).
        use candle_transformers::models::stable_diffusion::attention as ct;
        let cfg = ct::AttentionBlockConfig {
            num_head_channels: None,
            num_groups: 2,
            rescale_output_factor: 1.0,
            eps: EPS,
        };
        let vb = VarBuilder::from_tensors(now, DType::F32, &Device::Cpu);
        let first = x.narrow(0, 0, 1).unwrap();
        let candle = ct::AttentionBlock::new(vb, c, cfg)
            .unwrap()
            .forward(&first)
            .unwrap();
        let d = max_diff(&want.narrow(0, 0, 1).unwrap(), &candle);
        assert!(d < 1e-4, "{d}");
    }
}
