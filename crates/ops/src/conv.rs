//! Convolutions as k² shifted matrix products, with no im2col buffer.
//!
//! candle's CPU convolution transposes the input to NHWC, reorders the kernel on every call,
//! copies each input value k² times into im2col tiles and scatters the product back to NCHW.
//! Here the input is copied once, zero-padded, each channel's padded image laid out flat with
//! row width `wp`. For stride 1, output pixel (y, x) at kernel tap (i, j) reads flat index
//! `(y + i)·wp + x + j`: computing the output on the padded row width (the k − 1 columns past
//! each row's last real pixel are thrown away) makes that `q + i·wp + j` for column q, so every
//! tap is one plain matrix product `W[i, j] · X[:, q + shift(i, j)]` over a strided view,
//! accumulated by `gemm` into one output buffer. A stride s > 1 is reduced to stride 1 by
//! splitting the padded image into its s² phases (row and column mod s) in the same copy.
//! Small images (the UNet's lowest levels), where the padding columns would be a large share of
//! the work, use a plain im2col buffer instead (it is small there) and one product.
//! On CPUs with AVX-512 the taps are not separate products: one kernel accumulates all k² of
//! them per output tile in registers (`avx512::product`), f32 or bf16.
//! The weights are kept as [out, k, k, in] (rearranged once at load): each tap reads contiguous
//! runs of `in`, and the whole kernel is the im2col product's left matrix as it stands. The
//! bias is added while the real pixels are copied out; a nearest-neighbour upsample in front of
//! the convolution (the UNet's and VAE's upsamplers) is done by the padding copy for free, and
//! so is a group norm with SiLU (every resnet's `norm → silu → conv`, see `forward_normalised`).
//! Winograd's F(2×2, 3×3) (`winograd`), which takes most 3×3 convolutions, makes no padded copy
//! at all: each task gathers the padded rows it reads.

use std::borrow::Cow;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod winograd;

use super::norm::{ChannelMap, Deferred, Normalised};
use super::precision::{widen, widen_opt};
use super::profile::{scope, Kind};
use super::{cpu_slice, own_kernel, parallelism, SharedMut};

/// A 2-D convolution with a square kernel, named like candle's so checkpoints load unchanged.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// [out, in, k, k]; on the CPU a strided view of `ohwi` (one copy of the weights in memory).
    weight: Tensor,
    /// [out, k, k, in], contiguous: what the kernel reads. None off the CPU.
    ohwi: Option<Tensor>,
    bias: Option<Tensor>,
    cfg: Conv2dConfig,
}

/// Reads `weight` and `bias` under `vb`, as `candle_nn::conv2d` does.
pub fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let inner = candle_nn::conv2d(cin, cout, kernel, cfg, vb)?;
    Conv2d::new(inner.weight().clone(), inner.bias().cloned(), cfg)
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Result<Self> {
        let (_, _, kh, kw) = weight.dims4()?;
        // Trained weights (`Var`s) stay as they are, so gradients reach them. Half-precision
        // weights keep their dtype here and are widened per call (see `crate::precision`).
        use candle_core::DType::{BF16, F16, F32};
        let ohwi = if kh == kw
            && weight.device().is_cpu()
            && matches!(weight.dtype(), F32 | F16 | BF16)
            && !weight.is_variable()
            // A shape check's zero-size stand-in (a broadcast) must not become real memory.
            && weight.is_contiguous()
        {
            Some(weight.permute((0, 2, 3, 1))?.contiguous()?)
        } else {
            None
        };
        let weight = match &ohwi {
            Some(t) => t.permute((0, 3, 1, 2))?,
            None => weight,
        };
        Ok(Self {
            weight,
            ohwi,
            bias,
            cfg,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `forward(x.upsample_nearest2d(h, w))`, without the upsampled copy.
    pub fn forward_upsampled(&self, x: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        self.run(x, Some(size), None)
    }

    /// `forward(&x.tensor())`, with the group norm applied as the input is copied (see
    /// [`crate::GroupNorm::deferred_silu`]): the normalised map is never written out.
    pub fn forward_normalised(&self, x: &Normalised) -> Result<Tensor> {
        match &x.0 {
            Deferred::Done(t) => self.forward(t),
            Deferred::Pending(t, map) => self.run(t, None, Some(map)),
        }
    }

    /// `map`: a group norm to apply to `x` first (then `x` is a contiguous f32 CPU map).
    fn run(
        &self,
        x: &Tensor,
        up: Option<(usize, usize)>,
        map: Option<&ChannelMap>,
    ) -> Result<Tensor> {
        scope(Kind::Convolution, || {
            let bias = widen_opt(self.bias.as_ref(), x)?;
            let mut inputs = vec![x];
            inputs.extend(bias.as_deref());
            match &self.ohwi {
                Some(ohwi)
                    if own_kernel(&inputs)
                        && x.rank() == 4
                        && self.cfg.dilation == 1
                        && self.cfg.groups == 1 =>
                {
                    kernel(x, map, ohwi, bias.as_deref(), self.cfg, up)
                }
                _ => {
                    let x = match map {
                        Some(map) => map.applied(x)?,
                        None => x.clone(),
                    };
                    let x = match up {
                        Some((h, w)) => scope(Kind::Copy, || x.upsample_nearest2d(h, w))?,
                        None => x,
                    };
                    self.reference(&x)
                }
            }
        })
    }

    /// candle's op (other devices, dtypes, training, and the kernel's test oracle).
    fn reference(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let weight = widen(&self.weight, x)?;
        let y = x.conv2d(&weight, c.padding, c.stride, c.dilation, c.groups)?;
        match widen_opt(self.bias.as_ref(), x)? {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None, None)
    }
}

/// Nearest source index for output index `o` of `out` from `inp` (candle's rule).
fn nearest(o: usize, inp: usize, out: usize) -> usize {
    ((o as f64 * (inp as f64 / out as f64)) as usize).min(inp - 1)
}

/// The sizes of one convolution call.
#[derive(Clone, Copy)]
struct Geometry {
    b: usize,
    ci: usize,
    co: usize,
    /// Input as stored, and as convolved (after the optional upsample).
    hi: usize,
    wi: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    pad: usize,
    ho: usize,
    wo: usize,
    up: bool,
}

impl Geometry {
    /// The stored input pixel (row, column) that convolved pixel (y, x) reads.
    #[inline]
    fn source(&self, y: usize, x: usize) -> (usize, usize) {
        if self.up {
            (nearest(y, self.hi, self.h), nearest(x, self.wi, self.w))
        } else {
            (y, x)
        }
    }
}

/// Below this many output pixels (all images), the padding columns of the shifted products
/// would be a large share of the work: an exact im2col buffer is small there.
const SMALL_OUTPUT: usize = 512;

fn kernel(
    x: &Tensor,
    map: Option<&ChannelMap>,
    ohwi: &Tensor,
    bias: Option<&Tensor>,
    cfg: Conv2dConfig,
    up: Option<(usize, usize)>,
) -> Result<Tensor> {
    let (b, ci, hi, wi) = x.dims4()?;
    let (co, kh, kw, tci) = ohwi.dims4()?;
    let (k, s, pad) = (kh, cfg.stride.max(1), cfg.padding);
    if tci != ci || kh != kw {
        candle_core::bail!("conv2d: input has {ci} channels, the kernel expects {tci}");
    }
    let (h, w) = up.unwrap_or((hi, wi));
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    if hp < k || wp < k || hi == 0 || wi == 0 || b == 0 {
        candle_core::bail!("conv2d: a {k}×{k} kernel does not fit a {h}×{w} input");
    }
    let g = Geometry {
        b,
        ci,
        co,
        hi,
        wi,
        h,
        w,
        k,
        s,
        pad,
        ho: (hp - k) / s + 1,
        wo: (wp - k) / s + 1,
        up: up.is_some(),
    };
    // Half-precision weights are widened for this call, unless a kernel takes them as they are:
    // bf16 products on CPUs with AVX512-BF16, and Winograd, which widens f16 weights as it
    // transforms them.
    let ohwi = if multiplies_bf16(ohwi) || winograd_widens(ohwi, &g) {
        Cow::Borrowed(ohwi)
    } else {
        scope(Kind::Copy, || widen(ohwi, x))?
    };
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ts, tl) = ohwi.storage_and_layout();
    let (candle_core::Storage::Cpu(xc), candle_core::Storage::Cpu(tc)) = (&*xs, &*ts) else {
        candle_core::bail!("conv2d kernel: tensors must be on the CPU");
    };
    let xd = Input {
        data: cpu_slice(xc, xl, "conv input")?,
        map,
        plane: hi * wi,
    };
    let bias: Vec<f32> = match bias {
        Some(t) => t.to_vec1()?,
        None => vec![0.0; co],
    };
    if bias.len() != co {
        candle_core::bail!("conv2d: {} biases for {co} output channels", bias.len());
    }
    let small = k > 1 && b * g.ho * g.wo <= SMALL_OUTPUT;
    let mut out = vec![0f32; b * co * g.ho * g.wo];
    let output = Output {
        g,
        bias: &bias,
        out: SharedMut(out.as_mut_ptr()),
    };
    #[cfg(target_arch = "x86_64")]
    let done = match (tc, tl.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(w), Some((a, z))) if winograd::takes(&g, false) => {
            winograd::conv(&g, xd, winograd::Weights::F32(&w[a..z]), &output);
            true
        }
        (candle_core::CpuStorage::BF16(w), Some((a, z))) if winograd::takes(&g, true) => {
            winograd::conv(&g, xd, winograd::Weights::Bf16(&w[a..z]), &output);
            true
        }
        (candle_core::CpuStorage::F16(w), Some((a, z))) if winograd::takes(&g, false) => {
            winograd::conv(&g, xd, winograd::Weights::F16(&w[a..z]), &output);
            true
        }
        _ => avx512::products(&g, xd, tc, tl, small, &output)?,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        // bf16 weights that the AVX-512 path turned down after all (misaligned): widened.
        let wd: Cow<[f32]> = match (tc, tl.contiguous_offsets()) {
            (candle_core::CpuStorage::BF16(v), Some((a, z))) => {
                Cow::Owned(v[a..z].iter().map(|v| v.to_f32()).collect())
            }
            _ => Cow::Borrowed(cpu_slice(tc, tl, "conv weight")?),
        };
        let operand = if small {
            im2col_columns(&g, xd)
        } else {
            padded_input(&g, xd)
        };
        let wide = operand.product(&wd, co);
        scope(Kind::Copy, || {
            wide.par_chunks(operand.n)
                .enumerate()
                .for_each(|(oc, row)| output.store(&operand, oc, 0, row))
        });
    }
    drop((xs, ts));
    Tensor::from_vec(out, (b, co, g.ho, g.wo), x.device())
}

/// A convolution's input as its copies read it, a channel of an image at a time: the map as
/// stored, or a group norm of it applied on the way (`map`), so that the normalised map is never
/// written out whole.
#[derive(Clone, Copy)]
struct Input<'a> {
    /// [b, ci, hi, wi], contiguous.
    data: &'a [f32],
    map: Option<&'a ChannelMap>,
    /// hi · wi.
    plane: usize,
}

impl<'a> Input<'a> {
    /// Plane `i` (image · ci + channel): borrowed, or mapped into `scratch`.
    fn plane<'s>(&self, i: usize, scratch: &'s mut Vec<f32>) -> &'s [f32]
    where
        'a: 's,
    {
        let src = &self.data[i * self.plane..(i + 1) * self.plane];
        match self.map {
            None => src,
            Some(map) => {
                scratch.resize(self.plane, 0.0);
                map.apply(i, src, scratch);
                scratch
            }
        }
    }
}

/// Where a convolution's product columns land: the real output pixels, plus the bias.
struct Output<'a> {
    g: Geometry,
    bias: &'a [f32],
    out: SharedMut,
}

impl Output<'_> {
    /// Columns q0.. of output channel `oc`'s row of products into the [b, co, ho, wo] output:
    /// image i's pixel (y, x) is column i·image_cols + y·row_cols + x; the other columns (past
    /// each row's end, past the last row) are dropped.
    fn store<T: Clone>(&self, op: &Operand<'_, T>, oc: usize, q0: usize, values: &[f32]) {
        let g = &self.g;
        let (image_cols, row_cols) = (op.image_cols, op.row_cols);
        let bias = self.bias[oc];
        let end = q0 + values.len();
        let mut q = q0;
        while q < end {
            let (bi, rem) = (q / image_cols, q % image_cols);
            let (y, x) = (rem / row_cols, rem % row_cols);
            if bi >= g.b {
                break;
            }
            if y >= g.ho {
                q += image_cols - rem;
                continue;
            }
            if x >= g.wo {
                q += row_cols - x;
                continue;
            }
            let run = (g.wo - x).min(end - q);
            let src = &values[q - q0..q - q0 + run];
            // SAFETY: pixels x.. x + run of row y of channel oc of image bi, inside the
            // output (b · co · ho · wo floats); every (channel, column) is one pixel, and each
            // call writes its own channel's columns.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.out.get().add(((bi * g.co + oc) * g.ho + y) * g.wo + x),
                    run,
                )
            };
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v + bias;
            }
            q += run;
        }
    }
}

/// The right operand of a convolution's products: rows of input channels (times taps, for
/// im2col), each `len` long, `stride` apart, and the taps' offsets into them.
struct Operand<'a, T: Clone = f32> {
    data: Cow<'a, [T]>,
    rows: usize,
    stride: usize,
    /// Per tap (all k² of them), the offset of its view; one zero for im2col.
    shifts: Vec<usize>,
    /// Output columns, and where image i's row y starts among them.
    n: usize,
    image_cols: usize,
    row_cols: usize,
}

impl<'a, T: Clone> Operand<'a, T> {
    /// An im2col matrix of `rows` rows (tap, channel): one view, the output pixels as columns.
    fn im2col(g: &Geometry, data: Vec<T>, rows: usize) -> Self {
        let hw = g.ho * g.wo;
        Self {
            data: Cow::Owned(data),
            rows,
            stride: g.b * hw,
            shifts: vec![0],
            n: g.b * hw,
            image_cols: hw,
            row_cols: g.wo,
        }
    }
}

impl Operand<'_> {
    /// `W · operand` with `gemm`, one product per tap, accumulated. `wd` is the [co, k, k, ci]
    /// weights; each tap's [co, ci] block is read where it lies (row stride k²·ci).
    fn product(&self, wd: &[f32], co: usize) -> Vec<f32> {
        let (n, taps) = (self.n, self.shifts.len());
        let depth = self.rows; // ci, or k²·ci for im2col (one tap)
        let mut wide = vec![0f32; co * n];
        let threads = candle_core::utils::get_num_threads();
        let wide_ptr = SharedMut(wide.as_mut_ptr());
        // Columns [c0, c0 + len) of all taps. `par` splits one call across threads.
        let columns = |c0: usize, len: usize, par: gemm::Parallelism| {
            for (tap, &shift) in self.shifts.iter().enumerate() {
                // SAFETY: lhs is tap `tap` of the [co, taps·depth] weights: co rows of depth
                // (row stride taps·depth). rhs is depth rows (`stride` apart) of `len` columns
                // from shift + c0; every view ends inside its row (`Operand`'s invariant:
                // shift + n ≤ stride, and the last row is whole). dst is columns c0.. of
                // `wide` (co × n), which no other call touches.
                unsafe {
                    gemm::gemm(
                        co,
                        len,
                        depth,
                        wide_ptr.get().add(c0),
                        1,
                        n as isize,
                        tap > 0,
                        wd.as_ptr().add(tap * depth),
                        1,
                        (taps * depth) as isize,
                        self.data.as_ptr().add(shift + c0),
                        1,
                        self.stride as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
        };
        // A block of columns whose output (co × block) stays in cache across the taps; many
        // blocks run side by side. Fewer columns than that: one call per tap, split by gemm.
        let block = (262_144 / co).clamp(256, 4096);
        if taps > 1 && n >= 2 * block * threads {
            (0..n.div_ceil(block)).into_par_iter().for_each(|t| {
                let c0 = t * block;
                columns(c0, block.min(n - c0), gemm::Parallelism::None);
            });
        } else {
            columns(0, n, parallelism(threads));
        }
        wide
    }
}

/// Small outputs: rows (tap, channel) × columns (image, pixel): multiplied by the whole
/// [co, k·k·ci] kernel in one product.
fn im2col_columns<'a>(g: &Geometry, xd: Input) -> Operand<'a> {
    let n = g.b * g.ho * g.wo;
    let rows = g.k * g.k * g.ci;
    let data = scope(Kind::Copy, || {
        let mut cols = vec![0f32; rows * n];
        cols.par_chunks_mut(n)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (r, row)| {
                im2col_row(g, xd, r, row, scratch)
            });
        cols
    });
    Operand::im2col(g, data, rows)
}

/// Row r = (tap, channel) of the im2col matrix: that channel's pixel under that tap for every
/// output pixel of every image (zeros where the tap falls in the padding).
/// (Small maps only: a normalised input is normalised once per tap.)
fn im2col_row(g: &Geometry, xd: Input, r: usize, row: &mut [f32], scratch: &mut Vec<f32>) {
    let hw = g.ho * g.wo;
    let (tap, c) = (r / g.ci, r % g.ci);
    let (i, j) = (tap / g.k, tap % g.k);
    for bi in 0..g.b {
        let src = xd.plane(bi * g.ci + c, scratch);
        for y in 0..g.ho {
            let Some(yy) = (y * g.s + i).checked_sub(g.pad).filter(|&v| v < g.h) else {
                continue;
            };
            for xo in 0..g.wo {
                if let Some(xx) = (xo * g.s + j).checked_sub(g.pad).filter(|&v| v < g.w) {
                    let (sy, sx) = g.source(yy, xx);
                    row[bi * hw + y * g.wo + xo] = src[sy * g.wi + sx];
                }
            }
        }
    }
}

/// How the padded (and phase-split) copy of one input channel is laid out.
#[derive(Clone, Copy)]
struct Padding {
    /// Columns per row of a phase.
    wq: usize,
    /// Positions per image and phase.
    phase_len: usize,
    /// All phases of all images: one channel's row of the operand.
    per_channel: usize,
    /// A 1×1, stride-1, unpadded convolution of one image reads the input as it is.
    direct: bool,
}

impl Padding {
    /// `normalised`: the input is mapped as it is copied, so it is copied even where it could
    /// be read as it lies.
    fn of(g: &Geometry, normalised: bool) -> Self {
        let (k, s, pad) = (g.k, g.s, g.pad);
        let (hp, wp) = (g.h + 2 * pad, g.w + 2 * pad);
        // The padded input is split into s×s phases (row mod s, column mod s), so that for
        // every tap the pixels it reads form a stride-1 grid within one phase: tap (i, j) reads
        // phase (i mod s, j mod s) shifted by (i / s, j / s). Layout [channel][phase][image]
        // [position]: the images of a batch are then just more columns of the same products.
        // Each phase has `wq` columns per row and rows enough for the furthest tap of the last
        // output row.
        let wq = wp.div_ceil(s);
        let reach = (k - 1) / s;
        let rows = hp.div_ceil(s).max(g.ho + reach);
        let direct = pad == 0 && k == 1 && s == 1 && !g.up && g.b == 1 && !normalised;
        let phase_len = if direct {
            g.hi * g.wi
        } else {
            rows * wq + reach + 1
        };
        Self {
            wq,
            phase_len,
            per_channel: s * s * g.b * phase_len,
            direct,
        }
    }

    /// The k² shifted views over `data`, the padded copy of `rows` rows (channels, or pairs).
    fn operand<'a, T: Clone>(
        &self,
        g: &Geometry,
        data: Cow<'a, [T]>,
        rows: usize,
    ) -> Operand<'a, T> {
        Operand {
            data,
            rows,
            stride: self.per_channel,
            shifts: self.shifts(g),
            n: self.columns(g),
            image_cols: self.phase_len,
            row_cols: self.wq,
        }
    }

    /// Output columns: image i's pixel (y, x) is column i·phase_len + y·wq + x.
    fn columns(&self, g: &Geometry) -> usize {
        (g.b - 1) * self.phase_len + g.ho * self.wq
    }

    /// Where tap (i, j)'s view starts. The furthest read, (s² − 1)·b·phase_len + (b − 1)·
    /// phase_len + ho·wq − 1 + reach·wq + reach, stays inside the channel's row because
    /// phase_len ≥ (ho + reach)·wq + reach + 1.
    fn shifts(&self, g: &Geometry) -> Vec<usize> {
        let (k, s) = (g.k, g.s);
        (0..k * k)
            .map(|t| {
                let (i, j) = (t / k, t % k);
                ((i % s) * s + j % s) * g.b * self.phase_len + (i / s) * self.wq + j / s
            })
            .collect()
    }

    /// Channel c's padded, phase-split copy (all images) into `dst` (`per_channel` zeros).
    fn copy_channel(
        &self,
        g: &Geometry,
        xd: Input,
        c: usize,
        dst: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        let (s, pad, wq) = (g.s, g.pad, self.wq);
        for bi in 0..g.b {
            let src = xd.plane(bi * g.ci + c, scratch);
            for y in 0..g.h {
                let r = y + pad;
                if s == 1 && !g.up {
                    let at = bi * self.phase_len + r * wq + pad;
                    dst[at..at + g.w].copy_from_slice(&src[y * g.wi..(y + 1) * g.wi]);
                    continue;
                }
                for xo in 0..g.w {
                    let (sy, sx) = g.source(y, xo);
                    let cc = xo + pad;
                    let phase = (r % s) * s + cc % s;
                    dst[(phase * g.b + bi) * self.phase_len + (r / s) * wq + cc / s] =
                        src[sy * g.wi + sx];
                }
            }
        }
    }
}

/// The k² shifted views over one padded (and phase-split) copy of the input.
fn padded_input<'a>(g: &Geometry, xd: Input<'a>) -> Operand<'a> {
    let p = Padding::of(g, xd.map.is_some());
    let data: Cow<[f32]> = if p.direct {
        Cow::Borrowed(xd.data)
    } else {
        scope(Kind::Copy, || {
            let mut buf = vec![0f32; g.ci * p.per_channel];
            buf.par_chunks_mut(p.per_channel)
                .enumerate()
                .for_each_init(Vec::new, |scratch, (c, dst)| {
                    p.copy_channel(g, xd, c, dst, scratch)
                });
            Cow::Owned(buf)
        })
    };
    p.operand(g, data, g.ci)
}

/// Whether these f16 [co, k, k, ci] weights go to Winograd as they are (it widens them as it
/// transforms them).
fn winograd_widens(ohwi: &Tensor, g: &Geometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ohwi.dtype() == candle_core::DType::F16 && ohwi.is_contiguous() && winograd::takes(g, false)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ohwi, g);
        false
    }
}

/// Whether a convolution with these [co, k, k, ci] weights multiplies them in bf16 as they are
/// (CPUs with AVX512-BF16, an even channel count, weights aligned for pairs) rather than
/// widening them to f32.
fn multiplies_bf16(ohwi: &Tensor) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::takes_bf16(ohwi)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ohwi;
        false
    }
}

/// The same products on CPUs with AVX-512 (see `crate::avx512`): every tap accumulated in
/// registers, the weights and the input read where they lie, and bf16 weights multiplied in
/// bf16 against the input rounded to bf16 pairs in the padding copy.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::avx512::{has_bf16, has_f32, product, Lanes, Segment};
    use candle_core::{CpuStorage, Layout};
    use half::bf16;

    /// Whether `products` takes these bf16 weights as they are.
    pub(super) fn takes_bf16(ohwi: &Tensor) -> bool {
        ohwi.dtype() == candle_core::DType::BF16
            && has_bf16()
            && ohwi.dims4().is_ok_and(|d| d.3.is_multiple_of(2))
            && ohwi.is_contiguous()
    }

    /// The convolution into `output`; false when these weights are not for this path.
    pub(super) fn products(
        g: &Geometry,
        xd: Input,
        weights: &CpuStorage,
        layout: &Layout,
        small: bool,
        output: &Output,
    ) -> Result<bool> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Ok(false);
        };
        match weights {
            CpuStorage::F32(w) if has_f32() => {
                let op = if small {
                    im2col_columns(g, xd)
                } else {
                    padded_input(g, xd)
                };
                let a = as_lanes(&w[start..end]);
                multiply(&op, as_lanes(&op.data), a, Lanes::F32, g.co, output)?;
            }
            CpuStorage::BF16(w) if has_bf16() && g.ci.is_multiple_of(2) => {
                let w = &w[start..end];
                if !(w.as_ptr() as usize).is_multiple_of(4) {
                    return Ok(false);
                }
                // SAFETY: the pointer is 4-byte aligned (checked) and two bf16 make one u32
                // (an even number of them: co·k²·ci with ci even).
                let a =
                    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u32>(), w.len() / 2) };
                let op = if small {
                    paired_im2col(g, xd)
                } else {
                    paired_padded_input(g, xd)
                };
                multiply(&op, &op.data, a, Lanes::Bf16Pairs, g.co, output)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn as_lanes(v: &[f32]) -> &[u32] {
        // SAFETY: f32 and u32 have the same size and alignment; the kernel reads the bits
        // back as f32.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u32>(), v.len()) }
    }

    /// Weights [co, taps · depth] (`a`) times the operand's taps, all accumulated in one pass.
    fn multiply<T: Clone + Sync>(
        op: &Operand<'_, T>,
        b: &[u32],
        a: &[u32],
        lanes: Lanes,
        co: usize,
        output: &Output,
    ) -> Result<()> {
        let (depth, taps) = (op.rows, op.shifts.len());
        let segments: Vec<Segment> = op
            .shifts
            .iter()
            .enumerate()
            .map(|(t, &shift)| Segment {
                a_at: t * depth,
                b_at: shift,
                len: depth,
            })
            .collect();
        let store = |oc, q0, values: &[f32]| output.store(op, oc, q0, values);
        product(
            lanes,
            a,
            taps * depth,
            co,
            &segments,
            b,
            op.stride,
            op.n,
            store,
        )
        .map_err(candle_core::Error::Msg)
    }

    /// `padded_input` with channels 2c and 2c + 1 rounded to bf16 and paired in each lane.
    fn paired_padded_input<'a>(g: &Geometry, xd: Input) -> Operand<'a, u32> {
        let p = Padding::of(g, xd.map.is_some());
        let data = scope(Kind::Copy, || {
            let mut buf = vec![0u32; g.ci / 2 * p.per_channel];
            buf.par_chunks_mut(p.per_channel).enumerate().for_each_init(
                // Padding positions are never written, so they stay zero from one pair to
                // the next.
                || {
                    let zeros = || vec![0f32; p.per_channel];
                    (zeros(), zeros(), Vec::new())
                },
                |(lo, hi, scratch), (cp, dst)| {
                    p.copy_channel(g, xd, 2 * cp, lo, scratch);
                    p.copy_channel(g, xd, 2 * cp + 1, hi, scratch);
                    pair(lo, hi, dst);
                },
            );
            buf
        });
        p.operand(g, Cow::Owned(data), g.ci / 2)
    }

    /// `im2col_columns` with rows (tap, 2c) and (tap, 2c + 1) paired in each lane.
    fn paired_im2col<'a>(g: &Geometry, xd: Input) -> Operand<'a, u32> {
        let n = g.b * g.ho * g.wo;
        let rows = g.k * g.k * g.ci / 2;
        let data = scope(Kind::Copy, || {
            let mut cols = vec![0u32; rows * n];
            cols.par_chunks_mut(n).enumerate().for_each_init(
                || (vec![0f32; n], vec![0f32; n], Vec::new()),
                |(lo, hi, scratch), (r, dst)| {
                    lo.fill(0.0);
                    hi.fill(0.0);
                    im2col_row(g, xd, 2 * r, lo, scratch);
                    im2col_row(g, xd, 2 * r + 1, hi, scratch);
                    pair(lo, hi, dst);
                },
            );
            cols
        });
        Operand::im2col(g, data, rows)
    }

    /// `dst[i]` = bf16(lo[i]) in the low half, bf16(hi[i]) in the high half (round to nearest
    /// even, as `vdpbf16ps`'s other operand was rounded).
    pub(super) fn pair(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
        let len = dst.len().min(lo.len()).min(hi.len());
        let mut i = 0;
        // SAFETY: `has_bf16()` was checked before any pairing; 16 values at i < len − 15.
        unsafe {
            while i + 16 <= len {
                pair16(
                    lo.as_ptr().add(i),
                    hi.as_ptr().add(i),
                    dst.as_mut_ptr().add(i),
                );
                i += 16;
            }
        }
        for i in i..len {
            let (l, h) = (bf16::from_f32(lo[i]), bf16::from_f32(hi[i]));
            dst[i] = u32::from(l.to_bits()) | (u32::from(h.to_bits()) << 16);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pair16(lo: *const f32, hi: *const f32, dst: *mut u32) {
        use std::arch::x86_64::*;
        // 32 bf16: lo's 16 then hi's 16; the permutation interleaves them.
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(
            _mm512_loadu_ps(hi),
            _mm512_loadu_ps(lo),
        ));
        let order = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_storeu_si512(dst.cast(), _mm512_permutexvar_epi16(order, both));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{bf16_rounded, randn, rel_diff};

    fn conv(ci: usize, co: usize, k: usize, padding: usize, stride: usize, bias: bool) -> Conv2d {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Conv2d::new(randn(&[co, ci, k, k]), bias.then(|| randn(&[co])), cfg).unwrap()
    }

    /// The bits of every value, to compare results exactly.
    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    }

    fn cfg_p1() -> Conv2dConfig {
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        }
    }

    #[test]
    fn matches_candle_for_the_unet_shapes() {
        // 3×3 with padding, 1×1, a kernel without padding, odd sizes, big and small images.
        for (b, ci, co, k, p, h, w) in [
            (2, 5, 7, 3, 1, 9, 11),
            (1, 3, 4, 1, 0, 6, 5),
            (2, 4, 6, 3, 0, 7, 8),
            (2, 8, 16, 3, 1, 40, 33),
            (1, 2, 3, 5, 2, 4, 4),
        ] {
            let c = conv(ci, co, k, p, 1, true);
            let x = randn(&[b, ci, h, w]);
            let got = c.forward(&x).unwrap();
            let want = c.reference(&x).unwrap();
            let d = rel_diff(&got, &want);
            assert!(d < 1e-5, "{b}×{ci}→{co} k{k} p{p} {h}×{w}: {d}");
        }
    }

    /// 3×3 stride-1 convolutions go through Winograd's F(2×2, 3×3) on CPUs with AVX-512: odd
    /// sizes (partial 2×2 blocks), more tiles than one task's block, more input channels than
    /// one pass of the micro-kernel, an output channel count off its 8-row tiles, an upsample.
    #[test]
    fn winograd_matches_the_direct_convolution() {
        let c = conv(260, 13, 3, 1, 1, true);
        for (x, up) in [
            (randn(&[2, 260, 21, 23]), None),
            (randn(&[1, 260, 12, 14]), Some((24, 28))),
        ] {
            let got = match up {
                Some(size) => c.forward_upsampled(&x, size).unwrap(),
                None => c.forward(&x).unwrap(),
            };
            let x = match up {
                Some((h, w)) => x.upsample_nearest2d(h, w).unwrap(),
                None => x,
            };
            let d = rel_diff(&got, &c.reference(&x).unwrap());
            assert!(d < 1e-5, "{:?}: {d}", x.dims());
        }
        // Weights over 16 MiB and 576 tiles: 128 tiles per task (with up to 2 threads).
        let c = conv(704, 704, 3, 1, 1, true);
        let x = randn(&[1, 704, 48, 48]);
        let d = rel_diff(&c.forward(&x).unwrap(), &c.reference(&x).unwrap());
        assert!(d < 1e-5, "big weights: {d}");
    }

    /// A convolution that normalises its input as it copies it gives, bit for bit, the
    /// convolution of the normalised map, on every path: Winograd (f32 and bf16), shifted
    /// products, im2col, a stride's phases, a 1×1 that would otherwise read its input in place,
    /// bf16 pairs, and candle's op (a dilation, which the kernel does not take).
    #[test]
    fn normalising_in_the_copy_is_the_convolution_of_the_normalised_map() {
        use crate::{GroupNorm, GroupSums};
        use candle_core::DType;
        for (ci, co, k, p, s, d, shape) in [
            (260, 13, 3, 1, 1, 1, [2, 260, 21, 23]),
            (330, 13, 3, 1, 1, 1, [1, 330, 24, 22]),
            (8, 6, 3, 1, 1, 1, [2, 8, 16, 14]),
            (8, 6, 3, 1, 1, 1, [1, 8, 8, 8]),
            (8, 6, 3, 1, 2, 1, [2, 8, 30, 26]),
            (8, 6, 1, 0, 1, 1, [1, 8, 20, 20]),
            (8, 6, 3, 2, 1, 2, [1, 8, 20, 18]),
        ] {
            let norm = GroupNorm::new(randn(&[ci]), randn(&[ci]), 2, 1e-6).unwrap();
            let x = randn(&shape).affine(2.0, 0.5).unwrap();
            let cfg = Conv2dConfig {
                padding: p,
                stride: s,
                dilation: d,
                ..Default::default()
            };
            let (w, b) = (randn(&[co, ci, k, k]), randn(&[co]));
            for dtype in [DType::F32, DType::BF16] {
                let c = Conv2d::new(
                    w.to_dtype(dtype).unwrap(),
                    Some(b.to_dtype(dtype).unwrap()),
                    cfg,
                )
                .unwrap();
                let want = c.forward(&norm.forward_silu(&x).unwrap()).unwrap();
                let normalised = norm.deferred_silu(&x, None).unwrap();
                let got = c.forward_normalised(&normalised).unwrap();
                let case = format!("{shape:?} {ci}→{co} k{k} s{s} d{d} {dtype:?}");
                assert!(bits(&got) == bits(&want), "{case}");
                assert!(
                    bits(&normalised.tensor().unwrap()) == bits(&norm.forward_silu(&x).unwrap()),
                    "{case}"
                );
            }
            // With another map's statistics (the VAE's tiled decode).
            let mut sums = GroupSums::default();
            let other = randn(&shape).affine(0.5, -1.0).unwrap();
            norm.add_sums(&other, 0..shape[2], 0..shape[3], &mut sums)
                .unwrap();
            let stats = sums.stats();
            let c = Conv2d::new(w.clone(), Some(b.clone()), cfg).unwrap();
            let want = c
                .forward(&norm.forward_with_stats(&x, &stats, true).unwrap())
                .unwrap();
            let got = c
                .forward_normalised(&norm.deferred_silu(&x, Some(&stats)).unwrap())
                .unwrap();
            assert!(bits(&got) == bits(&want), "{shape:?} with statistics");
        }
        // Tensors the kernels do not take (f64 here, as a GPU's would be): candle's ops, norm
        // then convolution, rather than the f32 kernel's error.
        let f64 = |t: Tensor| t.to_dtype(DType::F64).unwrap();
        let norm = GroupNorm::new(f64(randn(&[8])), f64(randn(&[8])), 2, 1e-6).unwrap();
        let c = Conv2d::new(f64(randn(&[6, 8, 3, 3])), Some(f64(randn(&[6]))), cfg_p1()).unwrap();
        let x = f64(randn(&[1, 8, 10, 12]));
        let got = c
            .forward_normalised(&norm.deferred_silu(&x, None).unwrap())
            .unwrap();
        let want = c.forward(&norm.forward_silu(&x).unwrap()).unwrap();
        assert_eq!(got.dtype(), DType::F64);
        let values = |t: &Tensor| -> Vec<f64> { t.flatten_all().unwrap().to_vec1().unwrap() };
        assert_eq!(values(&got), values(&want));
    }

    #[test]
    fn upsampling_in_the_copy_matches_upsample_then_conv() {
        let c = conv(4, 6, 3, 1, 1, true);
        let x = randn(&[2, 4, 5, 7]);
        let big = randn(&[2, 4, 20, 15]);
        for (x, size) in [(&x, (10, 14)), (&x, (11, 13)), (&big, (40, 30))] {
            let got = c.forward_upsampled(x, size).unwrap();
            let want = c
                .reference(&x.upsample_nearest2d(size.0, size.1).unwrap())
                .unwrap();
            assert!(rel_diff(&got, &want) < 1e-5, "{size:?}");
        }
    }

    #[test]
    fn strided_convolutions_and_odd_inputs() {
        // The UNet's and VAE's downsamplers (stride 2, padding 1 or 0), odd sizes, no bias,
        // a transposed (strided) input.
        for (b, ci, co, k, p, s, h, w, bias) in [
            (2, 4, 6, 3, 1, 2, 8, 8, true),
            (1, 3, 5, 3, 0, 2, 9, 7, true),
            (2, 5, 3, 3, 1, 2, 7, 10, false),
            (1, 2, 4, 1, 0, 2, 5, 5, true),
            (1, 3, 2, 3, 1, 3, 11, 6, true),
            // Big enough for the phase-split products rather than im2col.
            (2, 3, 4, 3, 1, 2, 48, 40, true),
            (1, 2, 3, 3, 0, 2, 61, 45, false),
        ] {
            let c = conv(ci, co, k, p, s, bias);
            let x = randn(&[b, ci, w, h]).transpose(2, 3).unwrap();
            let got = c.forward(&x).unwrap();
            let d = rel_diff(&got, &c.reference(&x).unwrap());
            assert!(d < 1e-5, "{b}×{ci}→{co} k{k} p{p} s{s} {h}×{w}: {d}");
        }
    }

    #[test]
    fn half_weights_compute_as_their_f32_values() {
        use candle_core::DType;
        // Shifted products (big, yet under Winograd's 128 blocks), Winograd (which widens f16
        // weights itself), im2col (small), stride 2, and an odd channel count (which bf16
        // products cannot pair, so it is widened).
        for (ci, shape, stride) in [
            (4, [2, 4, 16, 14], 1),
            (4, [2, 4, 34, 30], 1),
            (4, [1, 4, 8, 8], 1),
            (4, [2, 4, 30, 26], 2),
            (3, [2, 3, 24, 20], 1),
        ] {
            let cfg = Conv2dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            let (w, b) = (randn(&[6, ci, 3, 3]), randn(&[6]));
            let x = randn(&shape);
            for dtype in [DType::BF16, DType::F16] {
                let half = Conv2d::new(
                    w.to_dtype(dtype).unwrap(),
                    Some(b.to_dtype(dtype).unwrap()),
                    cfg,
                )
                .unwrap();
                let ohwi = half.ohwi.as_ref().unwrap();
                assert_eq!(ohwi.dtype(), dtype);
                let widened = Conv2d::new(
                    w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap(),
                    Some(b.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()),
                    cfg,
                )
                .unwrap();
                let got = half.forward(&x).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                // Where bf16 weights are multiplied in bf16 (AVX512-BF16), the input is
                // rounded to bf16 too: the same convolution of the rounded values.
                let input = if multiplies_bf16(ohwi) {
                    bf16_rounded(&x)
                } else {
                    x.clone()
                };
                let d = rel_diff(&got, &widened.reference(&input).unwrap());
                assert!(d < 1e-5, "{dtype:?} {shape:?} s{stride}: {d}");
                if dtype == DType::F16 {
                    // Widened per call or by Winograd's transform: f32's very arithmetic.
                    let want = widened.forward(&x).unwrap();
                    assert!(bits(&got) == bits(&want), "f16 {shape:?} s{stride}");
                }
                // candle's path (other devices) widens.
                let d = rel_diff(
                    &half.reference(&x).unwrap(),
                    &widened.reference(&x).unwrap(),
                );
                assert!(d < 1e-5, "{dtype:?} reference: {d}");
            }
        }
    }

    #[test]
    fn bf16_winograd_errs_like_the_direct_bf16_convolution() {
        use candle_core::DType;
        // More than one K pass (330 channels: bf16 weights take Winograd from 320), a co that
        // is not a multiple of 8, odd sizes.
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let (w, b) = (randn(&[13, 330, 3, 3]), randn(&[13]));
        let half = Conv2d::new(
            w.to_dtype(DType::BF16).unwrap(),
            Some(b.to_dtype(DType::BF16).unwrap()),
            cfg,
        )
        .unwrap();
        let widened = Conv2d::new(
            w.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
            Some(
                b.to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            ),
            cfg,
        )
        .unwrap();
        let x = randn(&[2, 330, 21, 23]);
        let exact = widened.reference(&x).unwrap();
        let got = half.forward(&x).unwrap();
        // Winograd in bf16 also rounds the transformed tiles and kernel, so it is not the
        // direct convolution of the rounded input; its error must be of the same order.
        let direct = rel_diff(&widened.reference(&bf16_rounded(&x)).unwrap(), &exact);
        let d = rel_diff(&got, &exact);
        assert!(
            direct > 0.0 && d < 4.0 * direct,
            "winograd {d}, direct {direct}"
        );
        // Elsewhere (no AVX512-BF16) the weights are widened: the f32 result.
        #[cfg(target_arch = "x86_64")]
        let multiplies = crate::avx512::has_bf16();
        #[cfg(not(target_arch = "x86_64"))]
        let multiplies = false;
        if !multiplies {
            assert!(d < 1e-5, "{d}");
        }
    }

    #[test]
    fn weights_are_held_once() {
        let c = conv(3, 5, 3, 1, 1, true);
        assert!(c.ohwi.is_some());
        assert_eq!(c.weight().dims(), &[5, 3, 3, 3]);
        // The candle-layout weight is a view of the kernel's layout, not a second copy.
        let (a, _) = c.weight().storage_and_layout();
        let (t, _) = c.ohwi.as_ref().unwrap().storage_and_layout();
        assert!(std::ptr::eq(&*a, &*t));
    }
}
