//! LoRA-aware `Linear` and `Conv2d`: the base layer plus any number of low-rank terms added to
//! its output at run time, `y = base(x) + Σ sᵢ · upᵢ(downᵢ(x))`.
//!
//! Why unmerged: re-weighting an adapter only changes the scalar `sᵢ`, and toggling one only
//! changes which terms are present, so neither touches the base weights — no pristine copies to
//! keep (merging needs one of every adapted weight, ~30% of SD 1.5), nothing re-read from disk,
//! and an adapter at weight 0 or switched off leaves the layer computing exactly what it did
//! before. The price is two thin matmuls per adapted layer and step; `easel bench lora` measures
//! it against the targets in issue 4.
//!
//! Each wrapper owns a [`LoraSlot`] named after the checkpoint tensor path of its layer
//! (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`), which is how adapter keys find
//! it. The slot's terms sit behind an `RwLock` so that a [`super::LoraStack`] can swap them through
//! a shared reference to the model, between generations.

use std::sync::RwLock;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::fused;

/// The geometry of a layer an adapter can attach to, used to check adapter shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotShape {
    Linear {
        in_dim: usize,
        out_dim: usize,
    },
    Conv {
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
}

impl SlotShape {
    pub fn in_dim(&self) -> usize {
        match *self {
            SlotShape::Linear { in_dim, .. } => in_dim,
            SlotShape::Conv { in_ch, .. } => in_ch,
        }
    }

    pub fn out_dim(&self) -> usize {
        match *self {
            SlotShape::Linear { out_dim, .. } => out_dim,
            SlotShape::Conv { out_ch, .. } => out_ch,
        }
    }

    /// The kernel side for convolutions, 1 for linear layers.
    pub fn kernel(&self) -> usize {
        match *self {
            SlotShape::Linear { .. } => 1,
            SlotShape::Conv { kernel, .. } => kernel,
        }
    }
}

/// One adapter's low-rank term on one layer, with its effective scale
/// (weight × alpha / rank) already worked out.
#[derive(Clone)]
pub struct LowRankTerm {
    kind: TermKind,
    scale: f64,
}

#[derive(Clone)]
enum TermKind {
    Linear { down: Linear, up: Linear },
    Conv { down: Conv2d, up: Conv2d },
}

impl LowRankTerm {
    /// Builds the term for a layer of `shape` from `down` (rank × in, or rank × in × k × k) and
    /// `up` (out × rank, optionally × 1 × 1). Trainers store 1×1 convolutions both as 2-D and 4-D
    /// tensors, so either is accepted where the layer is 1×1. Err = a sentence saying what does
    /// not fit.
    pub fn new(
        shape: SlotShape,
        down: &Tensor,
        up: &Tensor,
        scale: f64,
    ) -> std::result::Result<Self, String> {
        let rank = down.dims().first().copied().unwrap_or(0);
        let k = shape.kernel();
        let down_ok = match down.dims() {
            [_, i] => k == 1 && *i == shape.in_dim(),
            [_, i, kh, kw] => *i == shape.in_dim() && *kh == k && *kw == k,
            _ => false,
        };
        if rank == 0 || !down_ok {
            return Err(format!(
                "down weight {:?} does not fit a layer with {} inputs{}",
                down.dims(),
                shape.in_dim(),
                if k > 1 {
                    format!(" and a {k}×{k} kernel")
                } else {
                    String::new()
                }
            ));
        }
        let up_ok = match up.dims() {
            [o, r] | [o, r, 1, 1] => *o == shape.out_dim() && *r == rank,
            _ => false,
        };
        if !up_ok {
            return Err(format!(
                "up weight {:?} does not fit a layer with {} outputs after rank {rank}",
                up.dims(),
                shape.out_dim()
            ));
        }
        let err = |e: candle_core::Error| e.to_string();
        let kind = match shape {
            SlotShape::Linear { in_dim, out_dim } => TermKind::Linear {
                down: Linear::new(down.reshape((rank, in_dim)).map_err(err)?, None),
                up: Linear::new(up.reshape((out_dim, rank)).map_err(err)?, None),
            },
            SlotShape::Conv {
                in_ch,
                out_ch,
                kernel,
                stride,
                padding,
            } => {
                let cfg = Conv2dConfig {
                    stride,
                    padding,
                    ..Default::default()
                };
                TermKind::Conv {
                    down: Conv2d::new(
                        down.reshape((rank, in_ch, kernel, kernel)).map_err(err)?,
                        None,
                        cfg,
                    ),
                    up: Conv2d::new(
                        up.reshape((out_ch, rank, 1, 1)).map_err(err)?,
                        None,
                        Default::default(),
                    ),
                }
            }
        };
        Ok(Self { kind, scale })
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The same term at another scale; the tensors are shared, not copied.
    pub fn with_scale(&self, scale: f64) -> Self {
        Self {
            kind: self.kind.clone(),
            scale,
        }
    }

    /// The down and up factors as stored (2-D for linear layers, 4-D for convolutions).
    pub fn factors(&self) -> (&Tensor, &Tensor) {
        match &self.kind {
            TermKind::Linear { down, up } => (down.weight(), up.weight()),
            TermKind::Conv { down, up } => (down.weight(), up.weight()),
        }
    }

    /// Elements held by the term's own tensors (shared with the adapter, not copied).
    pub fn elem_count(&self) -> usize {
        match &self.kind {
            TermKind::Linear { down, up } => down.weight().elem_count() + up.weight().elem_count(),
            TermKind::Conv { down, up } => down.weight().elem_count() + up.weight().elem_count(),
        }
    }

    /// `y + scale · up(down(x))`, accumulated into `y` in place where possible (see
    /// [`super::fused`]); `y` is the layer's own fresh output, shared with nothing.
    fn add_to(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let (h, up, shape) = match &self.kind {
            TermKind::Linear { down, up } => (down.forward(x)?, up.weight(), fused::Shape::Rows),
            TermKind::Conv { down, up } => (down.forward(x)?, up.weight(), fused::Shape::Channels),
        };
        if fused::add_low_rank(&y, &h, up, self.scale, shape)? {
            return Ok(y);
        }
        // Scaling the rank-wide middle is the cheapest place: it is the smallest tensor.
        let h = h.affine(self.scale, 0.0)?;
        let term = match &self.kind {
            TermKind::Linear { up, .. } => up.forward(&h)?,
            TermKind::Conv { up, .. } => up.forward(&h)?,
        };
        y + term
    }
}

/// Where adapters attach to one layer: its checkpoint name, its geometry and the active terms.
pub struct LoraSlot {
    name: String,
    shape: SlotShape,
    terms: RwLock<Vec<LowRankTerm>>,
}

impl LoraSlot {
    fn new(name: String, shape: SlotShape) -> Self {
        Self {
            name,
            shape,
            terms: RwLock::new(Vec::new()),
        }
    }

    /// The layer's tensor path within its component, without the `.weight` suffix.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> SlotShape {
        self.shape
    }

    /// Replaces the active terms. A poisoned lock only means a reader panicked; the vector is
    /// always whole, so it is safe to overwrite.
    pub fn set_terms(&self, terms: Vec<LowRankTerm>) {
        let mut guard = self.terms.write().unwrap_or_else(|e| e.into_inner());
        *guard = terms;
    }

    /// True when no adapter term is attached.
    pub fn is_empty(&self) -> bool {
        let guard = self.terms.read().unwrap_or_else(|e| e.into_inner());
        guard.is_empty()
    }

    /// What the layer adds now, for telling whether it computes what it did before: each
    /// active term's down factor (the same tensor for as long as its adapter stays read) and
    /// scale, in order.
    pub fn fingerprint(&self) -> Vec<(candle_core::TensorId, u64)> {
        let guard = self.terms.read().unwrap_or_else(|e| e.into_inner());
        guard
            .iter()
            .map(|t| (t.factors().0.id(), t.scale().to_bits()))
            .collect()
    }

    /// The active terms' scales, in order.
    pub fn scales(&self) -> Vec<f64> {
        let guard = self.terms.read().unwrap_or_else(|e| e.into_inner());
        guard.iter().map(LowRankTerm::scale).collect()
    }

    fn add_terms(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let guard = self.terms.read().unwrap_or_else(|e| e.into_inner());
        let mut y = y;
        for term in guard.iter() {
            y = term.add_to(x, y)?;
        }
        Ok(y)
    }
}

/// A `Linear` that adapters can attach to.
pub struct LoraLinear {
    base: crate::ops::Linear,
    slot: LoraSlot,
}

impl LoraLinear {
    /// Reads `weight` (and `bias` when asked) under `vb`, like candle's `linear`; on CPUs with
    /// AVX-512 the weight is packed for the kernel here (see `ops::Linear`).
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let name = vb.prefix();
        let base = if bias {
            candle_nn::linear(in_dim, out_dim, vb)?
        } else {
            candle_nn::linear_no_bias(in_dim, out_dim, vb)?
        };
        Ok(Self {
            base: crate::ops::Linear::new(base)?,
            slot: LoraSlot::new(name, SlotShape::Linear { in_dim, out_dim }),
        })
    }

    /// For layers that only ever see a few rows (a text encoder's): see
    /// `ops::Linear::stored_transposed`.
    pub fn stored_transposed(self) -> Result<Self> {
        Ok(Self {
            base: self.base.stored_transposed()?,
            slot: self.slot,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.base.in_dim()
    }

    /// The dtype the base weight is kept in (`--dtype`).
    pub fn weight_dtype(&self) -> candle_core::DType {
        self.base.weight_dtype()
    }

    pub fn slot(&self) -> &LoraSlot {
        &self.slot
    }
}

impl Module for LoraLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::profile::scope(crate::ops::Kind::Linear, || {
            self.slot.add_terms(x, self.base.forward(x)?)
        })
    }
}

/// A square-kernel `Conv2d` (with bias) that adapters can attach to.
pub struct LoraConv2d {
    base: crate::ops::Conv2d,
    slot: LoraSlot,
}

impl LoraConv2d {
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        cfg: Conv2dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let name = vb.prefix();
        let base = crate::ops::conv2d(in_ch, out_ch, kernel, cfg, vb)?;
        Ok(Self {
            base,
            slot: LoraSlot::new(
                name,
                SlotShape::Conv {
                    in_ch,
                    out_ch,
                    kernel,
                    stride: cfg.stride,
                    padding: cfg.padding,
                },
            ),
        })
    }

    pub fn slot(&self) -> &LoraSlot {
        &self.slot
    }

    /// `forward(x.upsample_nearest2d(size))`; the kernel upsamples while it pads, unless an
    /// adapter needs the upsampled input itself.
    pub fn forward_upsampled(&self, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        if self.slot.is_empty() {
            self.base.forward_upsampled(x, size)
        } else {
            self.forward(&x.upsample_nearest2d(size.0, size.1)?)
        }
    }

    /// `forward(&x.tensor())`; the kernel normalises while it pads (see
    /// `ops::Conv2d::forward_normalised`), unless an adapter needs the normalised input itself.
    pub fn forward_normalised(&self, x: &crate::ops::Normalised) -> Result<Tensor> {
        if self.slot.is_empty() {
            self.base.forward_normalised(x)
        } else {
            self.forward(&x.tensor()?)
        }
    }
}

impl Module for LoraConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.slot.add_terms(x, self.base.forward(x)?)
    }
}
