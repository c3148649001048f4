//! diffusers' `Encoder` (image → latent moments) and `Decoder` (latents → image).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{conv3x3, DownEncoderBlock, MidBlock, UpDecoderBlock, EPS};
use crate::ops::{group_norm, Conv2d, GroupNorm};

/// The widths and depths both halves are built from (a validated `VaeConfig`).
pub struct Shape<'a> {
    pub block_out_channels: &'a [usize],
    pub layers_per_block: usize,
    pub groups: usize,
}

impl Shape<'_> {
    fn last(&self) -> Result<usize> {
        match self.block_out_channels.last() {
            Some(&c) => Ok(c),
            None => candle_core::bail!("VAE: block_out_channels is empty"),
        }
    }
}

/// `conv_in → down_blocks → mid_block → conv_norm_out → silu → conv_out`, to `2·latent`
/// channels: the mean, then the log-variance.
pub struct Encoder {
    pub(super) conv_in: Conv2d,
    pub(super) down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(vb: VarBuilder, in_channels: usize, latent: usize, s: &Shape) -> Result<Self> {
        let chans = s.block_out_channels;
        let last = s.last()?;
        let blocks = vb.pp("down_blocks");
        let down_blocks = chans
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let cin = if i == 0 { chans[0] } else { chans[i - 1] };
                let downsample = i + 1 < chans.len();
                DownEncoderBlock::new(
                    blocks.pp(i.to_string()),
                    s.layers_per_block,
                    cin,
                    cout,
                    s.groups,
                    downsample,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            conv_in: conv3x3(in_channels, chans[0], vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, s.groups)?,
            conv_norm_out: group_norm(s.groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(last, 2 * latent, vb.pp("conv_out"))?,
        })
    }
}

impl Encoder {
    /// The part after the down blocks, at latent resolution: `mid_block` to `conv_out`.
    pub fn tail(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.mid_block.forward(xs)?;
        self.conv_out
            .forward_normalised(&self.conv_norm_out.deferred_silu(&xs, None)?)
    }
}

impl Module for Encoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        self.tail(&xs)
    }
}

/// `conv_in → mid_block → up_blocks → conv_norm_out → silu → conv_out`; the up blocks run the
/// widths in reverse, each with one resnet more than the encoder's levels.
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    pub(super) up_blocks: Vec<UpDecoderBlock>,
    pub(super) conv_norm_out: GroupNorm,
    pub(super) conv_out: Conv2d,
}

impl Decoder {
    pub fn new(vb: VarBuilder, latent: usize, out_channels: usize, s: &Shape) -> Result<Self> {
        let last = s.last()?;
        let reversed: Vec<usize> = s.block_out_channels.iter().rev().copied().collect();
        let blocks = vb.pp("up_blocks");
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &cout)| {
                let cin = if i == 0 { reversed[0] } else { reversed[i - 1] };
                let upsample = i + 1 < reversed.len();
                UpDecoderBlock::new(
                    blocks.pp(i.to_string()),
                    s.layers_per_block + 1,
                    cin,
                    cout,
                    s.groups,
                    upsample,
                )
            })
            .collect::<Result<_>>()?;
        let first = s.block_out_channels[0];
        Ok(Self {
            conv_in: conv3x3(latent, last, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, s.groups)?,
            up_blocks,
            conv_norm_out: group_norm(s.groups, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(first, out_channels, vb.pp("conv_out"))?,
        })
    }
}

impl Decoder {
    /// The part before the up blocks, at latent resolution: `conv_in` and `mid_block`.
    pub fn head(&self, z: &Tensor) -> Result<Tensor> {
        self.mid_block.forward(&self.conv_in.forward(z)?)
    }

    /// The rest, at rising resolution: `up_blocks` to `conv_out`.
    pub fn tail(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        self.conv_out
            .forward_normalised(&self.conv_norm_out.deferred_silu(&xs, None)?)
    }
}

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.tail(&self.head(xs)?)
    }
}
