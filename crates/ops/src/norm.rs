//! Group normalisation, with the SiLU that follows it in every resnet fused in.
//!
//! candle's `GroupNorm` is eight tensor ops (sum, subtract, square, sum, add, sqrt, divide,
//! scale and shift), each a full pass that allocates its output; then SiLU is a ninth. The kernel
//! reads each group twice (sums, then normalise-and-write) into one new tensor, a group per task.
//!
//! A map too large to hold at once (the VAE's tiled decode) can still be normalised with the
//! whole map's statistics: [`GroupNorm::add_sums`] accumulates a region's sums into
//! [`GroupSums`], and [`GroupNorm::forward_with_stats`] normalises a tile with the result.

use std::ops::Range;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::profile::{scope, Kind};
use super::{cpu_slice, own_kernel, simd, SharedMut};

/// diffusers' `GroupNorm` (affine), named like candle's so checkpoints load unchanged.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    channels: usize,
    eps: f64,
}

/// Per (image, group) mean and variance, indexed `image · groups + group`: what a group norm
/// normalises with.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupStats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// Σx and Σx² per (image, group) over the regions added so far, toward a [`GroupStats`].
#[derive(Clone, Debug, Default)]
pub struct GroupSums {
    sum: Vec<f64>,
    squares: Vec<f64>,
    /// Values summed per (image, group).
    count: u64,
}

impl GroupSums {
    /// The mean and (biased, as the norm uses) variance of everything added.
    pub fn stats(&self) -> GroupStats {
        let n = self.count.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let var = self
            .squares
            .iter()
            .zip(&mean)
            .map(|(q, m)| (q / n - m * m).max(0.0))
            .collect();
        GroupStats { mean, var }
    }

    fn add(&mut self, sums: &[(f64, f64)], count: u64) -> Result<()> {
        if self.sum.is_empty() {
            self.sum = vec![0.0; sums.len()];
            self.squares = vec![0.0; sums.len()];
        } else if self.sum.len() != sums.len() {
            candle_core::bail!(
                "GroupSums: {} (image, group) pairs added to {}",
                sums.len(),
                self.sum.len()
            );
        }
        for (i, &(s, q)) in sums.iter().enumerate() {
            self.sum[i] += s;
            self.squares[i] += q;
        }
        self.count += count;
        Ok(())
    }
}

/// Reads `weight` and `bias` under `vb`, as `candle_nn::group_norm` does.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    GroupNorm::new(weight, bias, groups, eps)
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.dims1()?;
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self {
            weight,
            bias,
            groups,
            channels,
            eps,
        })
    }

    /// Normalise, then SiLU: the pair every resnet and the VAE's output head use.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, true)
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Normalises with `stats` (from [`GroupSums::stats`], one entry per image and group)
    /// instead of `xs`'s own statistics; SiLU after when `silu`.
    pub fn forward_with_stats(
        &self,
        xs: &Tensor,
        stats: &GroupStats,
        silu: bool,
    ) -> Result<Tensor> {
        let b = xs.dim(0)?;
        if stats.mean.len() != b * self.groups || stats.var.len() != b * self.groups {
            candle_core::bail!(
                "GroupNorm: statistics for {} (image, group) pairs, input has {b}×{}",
                stats.mean.len(),
                self.groups
            );
        }
        scope(Kind::Normalisation, || {
            if own_kernel(&[xs, &self.weight, &self.bias]) && xs.rank() >= 3 {
                self.kernel(xs, silu, Some(stats))
            } else {
                self.candle_with_stats(xs, stats, silu)
            }
        })
    }

    /// Adds Σx and Σx² of `xs[.., .., rows, cols]` (NCHW) per image and group to `sums`.
    pub fn add_sums(
        &self,
        xs: &Tensor,
        rows: Range<usize>,
        cols: Range<usize>,
        sums: &mut GroupSums,
    ) -> Result<()> {
        let (b, c, h, w) = xs.dims4()?;
        if c != self.channels || rows.end > h || cols.end > w {
            candle_core::bail!(
                "GroupNorm::add_sums: rows {rows:?} cols {cols:?} of a {c}×{h}×{w} map \
                 ({} channels expected)",
                self.channels
            );
        }
        let count = ((c / self.groups) * rows.len() * cols.len()) as u64;
        let per_pair = scope(Kind::Normalisation, || {
            if own_kernel(&[xs]) {
                self.region_sums_kernel(xs, rows.clone(), cols.clone())
            } else {
                let region = xs
                    .narrow(2, rows.start, rows.len())?
                    .narrow(3, cols.start, cols.len())?
                    .to_dtype(DType::F64)?
                    .reshape((b, self.groups, ()))?;
                let s = region.sum(2)?.flatten_all()?.to_vec1::<f64>()?;
                let q = region.sqr()?.sum(2)?.flatten_all()?.to_vec1::<f64>()?;
                Ok(s.into_iter().zip(q).collect())
            }
        })?;
        sums.add(&per_pair, count)
    }

    fn region_sums_kernel(
        &self,
        xs: &Tensor,
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> Result<Vec<(f64, f64)>> {
        let (b, c, h, w) = xs.dims4()?;
        let per_group = c / self.groups;
        let xs = xs.contiguous()?;
        let (store, layout) = xs.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*store else {
            candle_core::bail!("GroupNorm kernel: tensors must be on the CPU");
        };
        let x = cpu_slice(cpu, layout, "group norm input")?;
        let sums = (0..b * self.groups)
            .into_par_iter()
            .map(|bg| {
                let (mut s, mut q) = (0f64, 0f64);
                for ch in 0..per_group {
                    let plane = (bg * per_group + ch) * h * w;
                    for y in rows.clone() {
                        let row = plane + y * w;
                        let (rs, rq) = simd::sum_and_squares(&x[row + cols.start..row + cols.end]);
                        s += rs;
                        q += rq;
                    }
                }
                (s, q)
            })
            .collect();
        drop(store);
        Ok(sums)
    }

    /// candle's ops with given statistics (other devices, dtypes).
    fn candle_with_stats(&self, xs: &Tensor, stats: &GroupStats, silu: bool) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let b = dims[0];
        let as_tensor = |v: Vec<f64>| -> Result<Tensor> {
            Tensor::from_vec(v, (b, self.groups, 1), xs.device())?.to_dtype(xs.dtype())
        };
        let mean = as_tensor(stats.mean.clone())?;
        let inv = as_tensor(
            stats
                .var
                .iter()
                .map(|v| 1.0 / (v + self.eps).sqrt())
                .collect(),
        )?;
        let mut shape = vec![1, self.channels];
        shape.resize(dims.len(), 1);
        let normed = xs
            .reshape((b, self.groups, ()))?
            .broadcast_sub(&mean)?
            .broadcast_mul(&inv)?
            .reshape(dims)?
            .broadcast_mul(&self.weight.reshape(shape.clone())?)?
            .broadcast_add(&self.bias.reshape(shape)?)?;
        if silu {
            normed.silu()
        } else {
            Ok(normed)
        }
    }

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        scope(Kind::Normalisation, || {
            if own_kernel(&[xs, &self.weight, &self.bias]) && xs.rank() >= 3 {
                self.kernel(xs, silu, None)
            } else {
                let candle = candle_nn::GroupNorm::new(
                    self.weight.clone(),
                    self.bias.clone(),
                    self.channels,
                    self.groups,
                    self.eps,
                )?;
                let out = candle.forward(xs)?;
                if silu {
                    out.silu()
                } else {
                    Ok(out)
                }
            }
        })
    }

    /// `stats`: normalise with these instead of each group's own mean and variance.
    fn kernel(&self, xs: &Tensor, silu: bool, stats: Option<&GroupStats>) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        if c != self.channels {
            candle_core::bail!("GroupNorm: {c} channels, expected {}", self.channels);
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = c / self.groups;
        let xs = xs.contiguous()?;
        let out = self.with_data(&xs, |x, weight, bias| {
            let mut out = vec![0f32; x.len()];
            let dst = SharedMut(out.as_mut_ptr());
            let group_len = per_group * spatial;
            (0..b * self.groups).into_par_iter().for_each(|bg| {
                let start = bg * group_len;
                let src = &x[start..start + group_len];
                // SAFETY: group `bg` owns out[start..start + group_len]; groups do not overlap
                // and `out` lives until after the parallel loop.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(dst.get().add(start), group_len) };
                // Normalised right after its sums, while the group is still in cache.
                let (muls, adds) = self.group_map(src, bg, stats, weight, bias);
                for (k, (mul, add)) in muls.into_iter().zip(adds).enumerate() {
                    let r = k * spatial..(k + 1) * spatial;
                    simd::normalise(&src[r.clone()], &mut dst[r], mul, add, silu);
                }
            });
            out
        })?;
        Tensor::from_vec(out, dims, xs.device())
    }

    /// `f(x, weight, bias)` over the f32 data of `xs` (contiguous, on the CPU) and of the
    /// norm's own parameters.
    fn with_data<R>(&self, xs: &Tensor, f: impl FnOnce(&[f32], &[f32], &[f32]) -> R) -> Result<R> {
        let (x_store, x_layout) = xs.storage_and_layout();
        let (w_store, w_layout) = self.weight.storage_and_layout();
        let (b_store, b_layout) = self.bias.storage_and_layout();
        let (
            candle_core::Storage::Cpu(xc),
            candle_core::Storage::Cpu(wc),
            candle_core::Storage::Cpu(bc),
        ) = (&*x_store, &*w_store, &*b_store)
        else {
            candle_core::bail!("GroupNorm kernel: tensors must be on the CPU");
        };
        Ok(f(
            cpu_slice(xc, x_layout, "group norm input")?,
            cpu_slice(wc, w_layout, "group norm weight")?,
            cpu_slice(bc, b_layout, "group norm bias")?,
        ))
    }

    /// Group `bg` (image · groups + group) of the input, `src`, as each of its channels'
    /// `mul·x + add`: normalised with `stats`, or with the group's own mean and variance.
    fn group_map(
        &self,
        src: &[f32],
        bg: usize,
        stats: Option<&GroupStats>,
        weight: &[f32],
        bias: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (mean, var) = match stats {
            Some(st) => (st.mean[bg], st.var[bg]),
            None => {
                let (s, q) = simd::sum_and_squares(src);
                let n = src.len() as f64;
                let mean = s / n;
                (mean, (q / n - mean * mean).max(0.0))
            }
        };
        let inv = 1.0 / (var + self.eps).sqrt();
        let per_group = self.channels / self.groups;
        let first = (bg % self.groups) * per_group;
        (first..first + per_group)
            .map(|ch| {
                let mul = (inv * weight[ch] as f64) as f32;
                let add = (bias[ch] as f64 - mean * inv * weight[ch] as f64) as f32;
                (mul, add)
            })
            .unzip()
    }

    /// `silu(norm(xs))` (with `stats` instead of `xs`'s own when given), left for the reader
    /// to apply: only the statistics are computed here. A convolution takes it as its input
    /// ([`crate::Conv2d::forward_normalised`]) and normalises each channel as it copies it, so
    /// the normalised map is never written out. (The VAE's decode at 512² otherwise holds a
    /// 256 MiB normalised copy of a 256 MiB map while the convolution copies it once more.)
    pub fn deferred_silu(&self, xs: &Tensor, stats: Option<&GroupStats>) -> Result<Normalised> {
        if !(own_kernel(&[xs, &self.weight, &self.bias]) && xs.rank() == 4) {
            return Ok(Normalised(Deferred::Done(match stats {
                Some(s) => self.forward_with_stats(xs, s, true)?,
                None => self.forward_silu(xs)?,
            })));
        }
        let (b, c, h, w) = xs.dims4()?;
        if c != self.channels {
            candle_core::bail!("GroupNorm: {c} channels, expected {}", self.channels);
        }
        if let Some(st) = stats {
            if st.mean.len() != b * self.groups || st.var.len() != b * self.groups {
                candle_core::bail!(
                    "GroupNorm: statistics for {} (image, group) pairs, input has {b}×{}",
                    st.mean.len(),
                    self.groups
                );
            }
        }
        let xs = xs.contiguous()?;
        let group_len = c / self.groups * h * w;
        let per_group: Vec<(Vec<f32>, Vec<f32>)> = scope(Kind::Normalisation, || {
            self.with_data(&xs, |x, weight, bias| {
                (0..b * self.groups)
                    .into_par_iter()
                    .map(|bg| {
                        let src = &x[bg * group_len..(bg + 1) * group_len];
                        self.group_map(src, bg, stats, weight, bias)
                    })
                    .collect()
            })
        })?;
        let (mut muls, mut adds) = (Vec::with_capacity(b * c), Vec::with_capacity(b * c));
        for (m, a) in per_group {
            muls.extend(m);
            adds.extend(a);
        }
        Ok(Normalised(Deferred::Pending(xs, ChannelMap { muls, adds })))
    }
}

/// A group norm followed by SiLU ([`GroupNorm::deferred_silu`]): computed already (other
/// devices and dtypes), or its input and each channel's `mul·x + add`, to apply on reading.
pub struct Normalised(pub(crate) Deferred);

pub(crate) enum Deferred {
    Done(Tensor),
    /// A contiguous f32 [b, c, h, w] map on the CPU, and its channels' map.
    Pending(Tensor, ChannelMap),
}

/// Per image and channel (`image · channels + channel`), `silu(mul·x + add)`.
pub(crate) struct ChannelMap {
    muls: Vec<f32>,
    adds: Vec<f32>,
}

impl ChannelMap {
    /// Plane `i` (image · channels + channel) of the input, `src`, mapped into `dst`.
    pub(crate) fn apply(&self, i: usize, src: &[f32], dst: &mut [f32]) {
        simd::normalise(src, dst, self.muls[i], self.adds[i], true);
    }

    /// The map applied to all of `xs` (a contiguous f32 [b, c, h, w] map on the CPU).
    pub(crate) fn applied(&self, xs: &Tensor) -> Result<Tensor> {
        scope(Kind::Normalisation, || {
            let (b, c, h, w) = xs.dims4()?;
            if self.muls.len() != b * c {
                candle_core::bail!("ChannelMap: {} channels for a {b}×{c} map", self.muls.len());
            }
            let plane = h * w;
            let (store, layout) = xs.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*store else {
                candle_core::bail!("ChannelMap: the input must be on the CPU");
            };
            let x = cpu_slice(cpu, layout, "normalised input")?;
            let mut out = vec![0f32; x.len()];
            if plane > 0 {
                out.par_chunks_mut(plane)
                    .zip(x.par_chunks(plane))
                    .enumerate()
                    .for_each(|(i, (dst, src))| self.apply(i, src, dst));
            }
            drop(store);
            Tensor::from_vec(out, (b, c, h, w), xs.device())
        })
    }
}

impl Normalised {
    /// The normalised map itself.
    pub fn tensor(&self) -> Result<Tensor> {
        match &self.0 {
            Deferred::Done(t) => Ok(t.clone()),
            Deferred::Pending(xs, map) => map.applied(xs),
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.run(xs, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{randn, rel_diff};

    /// candle's group norm computed in f64: in f32 its E[x²] − E[x]² loses the digits the
    /// offset tests look at (it was the oracle's error, ~2e-5, that failed them now and then).
    fn candle_norm(n: &GroupNorm, x: &Tensor) -> Tensor {
        let f64 = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
        candle_nn::GroupNorm::new(f64(&n.weight), f64(&n.bias), n.channels, n.groups, n.eps)
            .unwrap()
            .forward(&f64(x))
            .unwrap()
            .to_dtype(x.dtype())
            .unwrap()
    }

    #[test]
    fn matches_candle_with_and_without_silu() {
        let n = GroupNorm::new(randn(&[12]), randn(&[12]), 4, 1e-5).unwrap();
        // Offset values: a plain E[x²] − E[x]² in f32 would lose digits here.
        let x = randn(&[2, 12, 5, 7]).affine(3.0, 40.0).unwrap();
        // The inputs themselves are f32 values near 40 (a rounding step of 4e-6, 1e-6 of a
        // standard deviation): a few times that is rounding; cancellation would be ~1e-3.
        let want = candle_norm(&n, &x);
        assert!(rel_diff(&n.forward(&x).unwrap(), &want) < 5e-5);
        let want_silu = want.silu().unwrap();
        assert!(rel_diff(&n.forward_silu(&x).unwrap(), &want_silu) < 5e-5);
    }

    #[test]
    fn takes_strided_input_and_token_rank() {
        let n = GroupNorm::new(randn(&[8]), randn(&[8]), 2, 1e-6).unwrap();
        let x = randn(&[2, 6, 8, 3]).permute((0, 2, 1, 3)).unwrap(); // [2, 8, 6, 3], strided
        assert!(rel_diff(&n.forward(&x).unwrap(), &candle_norm(&n, &x)) < 1e-5);
        let x3 = randn(&[1, 8, 10]);
        assert!(rel_diff(&n.forward(&x3).unwrap(), &candle_norm(&n, &x3)) < 1e-5);
    }

    /// Sums from two halves of a map give its statistics: a tile normalised with them is the
    /// whole map's normalisation, cropped (kernel and candle path alike).
    #[test]
    fn statistics_from_regions_normalise_a_tile_like_the_whole_map() {
        let n = GroupNorm::new(randn(&[12]), randn(&[12]), 4, 1e-6).unwrap();
        // Halves with different levels, as a sky above the ground.
        let top = randn(&[2, 12, 4, 9]).affine(0.5, 3.0).unwrap();
        let bottom = randn(&[2, 12, 5, 9]).affine(2.0, -1.0).unwrap();
        let x = Tensor::cat(&[&top, &bottom], 2).unwrap();
        let mut sums = GroupSums::default();
        n.add_sums(&x, 0..4, 0..9, &mut sums).unwrap();
        n.add_sums(&x, 4..9, 0..9, &mut sums).unwrap();
        let stats = sums.stats();
        let whole = n.forward_silu(&x).unwrap();
        let tile = x.narrow(2, 3, 4).unwrap().narrow(3, 2, 6).unwrap();
        let want = whole.narrow(2, 3, 4).unwrap().narrow(3, 2, 6).unwrap();
        let got = n.forward_with_stats(&tile, &stats, true).unwrap();
        assert!(rel_diff(&got, &want) < 1e-5);
        let candle = n.candle_with_stats(&tile, &stats, true).unwrap();
        assert!(rel_diff(&candle, &want) < 1e-5);
        // The tile's own statistics differ (it straddles the two halves unevenly).
        assert!(rel_diff(&n.forward_silu(&tile).unwrap(), &want) > 1e-2);
        // Mismatched statistics are an error, not a panic.
        let one = tile.narrow(0, 0, 1).unwrap();
        assert!(n.forward_with_stats(&one, &stats, false).is_err());
        assert!(n.add_sums(&x, 0..10, 0..9, &mut sums).is_err());
    }
}
