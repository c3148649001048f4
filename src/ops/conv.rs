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
//! splitting the padded image into its s² phases (row and column mod s) in the same copy. The weights are kept tap-major
//! ([k·k, out, in], rearranged once at load) so each tap reads its own contiguous slice; the
//! bias is added while the real pixels are copied out; a nearest-neighbour upsample in front of
//! the convolution (the UNet's and VAE's upsamplers) is done by the padding copy for free.

use std::borrow::Cow;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use super::profile::{scope, Kind};
use super::{cpu_slice, own_kernel, parallelism, SharedMut};

/// A 2-D convolution with a square kernel, named like candle's so checkpoints load unchanged.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// [out, in, k, k]; on the CPU a strided view of `taps` (one copy of the weights in memory).
    weight: Tensor,
    /// [k·k, out, in], contiguous: what the kernel reads. None off the CPU.
    taps: Option<Tensor>,
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
        // Trained weights (`Var`s) stay as they are, so gradients reach them.
        let taps = if kh == kw
            && weight.device().is_cpu()
            && weight.dtype() == candle_core::DType::F32
            && !weight.is_variable()
        {
            Some(weight.permute((2, 3, 0, 1))?.contiguous()?)
        } else {
            None
        };
        let weight = match &taps {
            Some(t) => t.permute((2, 3, 0, 1))?,
            None => weight,
        };
        Ok(Self {
            weight,
            taps,
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
        self.run(x, Some(size))
    }

    fn run(&self, x: &Tensor, up: Option<(usize, usize)>) -> Result<Tensor> {
        scope(Kind::Convolution, || {
            let mut inputs = vec![x];
            inputs.extend(self.bias.as_ref());
            match &self.taps {
                Some(taps)
                    if own_kernel(&inputs)
                        && x.rank() == 4
                        && self.cfg.dilation == 1
                        && self.cfg.groups == 1 =>
                {
                    kernel(x, taps, self.bias.as_ref(), self.cfg, up)
                }
                _ => {
                    let x = match up {
                        Some((h, w)) => scope(Kind::Copy, || x.upsample_nearest2d(h, w))?,
                        None => x.clone(),
                    };
                    self.reference(&x)
                }
            }
        })
    }

    /// candle's op (other devices, dtypes, training, and the kernel's test oracle).
    fn reference(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let y = x.conv2d(&self.weight, c.padding, c.stride, c.dilation, c.groups)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, None)
    }
}

/// Nearest source index for output index `o` of `out` from `inp` (candle's rule).
fn nearest(o: usize, inp: usize, out: usize) -> usize {
    ((o as f64 * (inp as f64 / out as f64)) as usize).min(inp - 1)
}

fn kernel(
    x: &Tensor,
    taps: &Tensor,
    bias: Option<&Tensor>,
    cfg: Conv2dConfig,
    up: Option<(usize, usize)>,
) -> Result<Tensor> {
    let (b, ci, hi, wi) = x.dims4()?;
    let (kh, kw, co, tci) = taps.dims4()?;
    let (k, s, pad) = (kh, cfg.stride.max(1), cfg.padding);
    if tci != ci || kh != kw {
        candle_core::bail!("conv2d: input has {ci} channels, the kernel expects {tci}");
    }
    let (h, wd) = up.unwrap_or((hi, wi));
    let (hp, wp) = (h + 2 * pad, wd + 2 * pad);
    if hp < k || wp < k || hi == 0 || wi == 0 || b == 0 {
        candle_core::bail!("conv2d: a {k}×{k} kernel does not fit a {h}×{wd} input");
    }
    let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ts, tl) = taps.storage_and_layout();
    let (candle_core::Storage::Cpu(xc), candle_core::Storage::Cpu(tc)) = (&*xs, &*ts) else {
        candle_core::bail!("conv2d kernel: tensors must be on the CPU");
    };
    let xd = cpu_slice(xc, xl, "conv input")?;
    let wdata = cpu_slice(tc, tl, "conv weight")?;
    let bias: Vec<f32> = match bias {
        Some(t) => t.to_vec1()?,
        None => vec![0.0; co],
    };
    if bias.len() != co {
        candle_core::bail!("conv2d: {} biases for {co} output channels", bias.len());
    }

    // The padded input is split into s×s phases (row mod s, column mod s), so that for every
    // tap the pixels it reads form a stride-1 grid within one phase: tap (i, j) reads phase
    // (i mod s, j mod s) shifted by (i / s, j / s). Layout [channel][phase][image][position]:
    // the images of a batch are then just more columns of the same products. Each phase has
    // `wq` columns per row and rows enough for the furthest tap of the last output row.
    let wr = wp.div_ceil(s) * s;
    let wq = wr / s;
    let rows = hp.div_ceil(s).max(ho + k);
    let direct = pad == 0 && k == 1 && s == 1 && up.is_none() && b == 1;
    let phase_len = if direct { hi * wi } else { rows * wq + k };
    let per_channel = s * s * b * phase_len;
    let padded: Cow<[f32]> = if direct {
        Cow::Borrowed(xd)
    } else {
        scope(Kind::Copy, || {
            let mut buf = vec![0f32; ci * per_channel];
            buf.par_chunks_mut(per_channel)
                .enumerate()
                .for_each(|(c, dst)| {
                    for bi in 0..b {
                        let src = &xd[(bi * ci + c) * hi * wi..(bi * ci + c + 1) * hi * wi];
                        for y in 0..h {
                            let sy = if up.is_some() { nearest(y, hi, h) } else { y };
                            let srow = &src[sy * wi..(sy + 1) * wi];
                            let r = y + pad;
                            if s == 1 && up.is_none() {
                                let at = bi * phase_len + r * wq + pad;
                                dst[at..at + wd].copy_from_slice(srow);
                                continue;
                            }
                            for xo in 0..wd {
                                let v = if up.is_some() {
                                    srow[nearest(xo, wi, wd)]
                                } else {
                                    srow[xo]
                                };
                                let cc = xo + pad;
                                let phase = (r % s) * s + cc % s;
                                dst[(phase * b + bi) * phase_len + (r / s) * wq + cc / s] = v;
                            }
                        }
                    }
                });
            Cow::Owned(buf)
        })
    };

    // Output columns: image i's pixel (y, x) is column i·phase_len + y·wq + x.
    let n = (b - 1) * phase_len + ho * wq;
    let mut wide = vec![0f32; co * n];
    let threads = candle_core::utils::get_num_threads();
    let wide_ptr = SharedMut(wide.as_mut_ptr());
    // Columns [c0, c0 + len) of all k² taps. `par` splits one call across threads.
    let columns = |c0: usize, len: usize, par: gemm::Parallelism| {
        for i in 0..k {
            for j in 0..k {
                let shift = ((i % s) * s + j % s) * b * phase_len + (i / s) * wq + j / s;
                // SAFETY: lhs is tap (i, j), co × ci contiguous, inside `taps`. rhs is ci rows
                // (stride per_channel) of `len` columns from shift + c0; the furthest read is at
                // most (s² − 1)·b·phase_len + (b − 1)·phase_len + (ho + (k − 1)/s)·wq + k − 1,
                // inside the channel's block because phase_len ≥ (ho + k)·wq + k. dst is
                // columns c0.. of `wide` (co × n), which no other call touches.
                unsafe {
                    gemm::gemm(
                        co,
                        len,
                        ci,
                        wide_ptr.get().add(c0),
                        1,
                        n as isize,
                        i + j > 0,
                        wdata.as_ptr().add((i * k + j) * co * ci),
                        1,
                        ci as isize,
                        padded.as_ptr().add(shift + c0),
                        1,
                        per_channel as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
        }
    };
    // A block of columns whose output (co × block) stays in cache across the k² taps; many
    // blocks run side by side. Fewer columns than that: one call per tap, split by gemm.
    let block = (262_144 / co).clamp(256, 4096);
    if n >= 2 * block * threads {
        (0..n.div_ceil(block)).into_par_iter().for_each(|t| {
            let c0 = t * block;
            columns(c0, block.min(n - c0), gemm::Parallelism::None);
        });
    } else {
        columns(0, n, parallelism(threads));
    }
    // Keep the columns that are real output pixels, adding the bias.
    let mut out = vec![0f32; b * co * ho * wo];
    let dst = SharedMut(out.as_mut_ptr());
    scope(Kind::Copy, || {
        wide.par_chunks(n).enumerate().for_each(|(oc, row)| {
            for bi in 0..b {
                for y in 0..ho {
                    let start = bi * phase_len + y * wq;
                    let src = &row[start..start + wo];
                    // SAFETY: row y of channel oc of image bi; each task (oc) writes its own.
                    let d = unsafe {
                        std::slice::from_raw_parts_mut(
                            dst.get().add(((bi * co + oc) * ho + y) * wo),
                            wo,
                        )
                    };
                    for (d, &v) in d.iter_mut().zip(src) {
                        *d = v + bias[oc];
                    }
                }
            }
        })
    });
    drop((xs, ts));
    Tensor::from_vec(out, (b, co, ho, wo), x.device())
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{randn, rel_diff};
    use super::*;

    fn conv(ci: usize, co: usize, k: usize, padding: usize, stride: usize, bias: bool) -> Conv2d {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Conv2d::new(randn(&[co, ci, k, k]), bias.then(|| randn(&[co])), cfg).unwrap()
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

    #[test]
    fn upsampling_in_the_copy_matches_upsample_then_conv() {
        let c = conv(4, 6, 3, 1, 1, true);
        let x = randn(&[2, 4, 5, 7]);
        for size in [(10, 14), (11, 13)] {
            let got = c.forward_upsampled(&x, size).unwrap();
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
        ] {
            let c = conv(ci, co, k, p, s, bias);
            let x = randn(&[b, ci, w, h]).transpose(2, 3).unwrap();
            let got = c.forward(&x).unwrap();
            let d = rel_diff(&got, &c.reference(&x).unwrap());
            assert!(d < 1e-5, "{b}×{ci}→{co} k{k} p{p} s{s} {h}×{w}: {d}");
        }
    }

    #[test]
    fn weights_are_held_once() {
        let c = conv(3, 5, 3, 1, 1, true);
        assert!(c.taps.is_some());
        assert_eq!(c.weight().dims(), &[5, 3, 3, 3]);
        // The candle-layout weight is a view of the tap-major one, not a second copy.
        let (a, _) = c.weight().storage_and_layout();
        let (t, _) = c.taps.as_ref().unwrap().storage_and_layout();
        assert!(std::ptr::eq(&*a, &*t));
    }
}
