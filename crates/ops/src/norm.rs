//! Group normalisation, with the SiLU that follows it in every resnet fused in.
//!
//! candle's `GroupNorm` is eight tensor ops (sum, subtract, square, sum, add, sqrt, divide,
//! scale and shift), each a full pass that allocates its output; then SiLU is a ninth. The kernel
//! reads each group twice (sums, then normalise-and-write) into one new tensor, a group per task.

use candle_core::{Module, Result, Tensor};
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

    fn run(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        scope(Kind::Normalisation, || {
            if own_kernel(&[xs, &self.weight, &self.bias]) && xs.rank() >= 3 {
                self.kernel(xs, silu)
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

    fn kernel(&self, xs: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let (b, c) = (dims[0], dims[1]);
        if c != self.channels {
            candle_core::bail!("GroupNorm: {c} channels, expected {}", self.channels);
        }
        let spatial: usize = dims[2..].iter().product();
        let per_group = c / self.groups;
        let xs = xs.contiguous()?;
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
        let x = cpu_slice(xc, x_layout, "group norm input")?;
        let weight = cpu_slice(wc, w_layout, "group norm weight")?;
        let bias = cpu_slice(bc, b_layout, "group norm bias")?;
        let mut out = vec![0f32; x.len()];
        let dst = SharedMut(out.as_mut_ptr());
        let group_len = per_group * spatial;
        let eps = self.eps;
        (0..b * self.groups).into_par_iter().for_each(|bg| {
            let start = bg * group_len;
            let src = &x[start..start + group_len];
            let (s, q) = simd::sum_and_squares(src);
            let n = group_len as f64;
            let mean = s / n;
            let var = (q / n - mean * mean).max(0.0);
            let inv = 1.0 / (var + eps).sqrt();
            // SAFETY: group `bg` owns out[start..start + group_len]; groups do not overlap and
            // `out` lives until after the parallel loop.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst.get().add(start), group_len) };
            let g = bg % self.groups;
            for k in 0..per_group {
                let ch = g * per_group + k;
                let mul = (inv * weight[ch] as f64) as f32;
                let add = (bias[ch] as f64 - mean * inv * weight[ch] as f64) as f32;
                let r = k * spatial..(k + 1) * spatial;
                simd::normalise(&src[r.clone()], &mut dst[r], mul, add, silu);
            }
        });
        drop((x_store, w_store, b_store));
        Tensor::from_vec(out, dims, xs.device())
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

    fn candle_norm(n: &GroupNorm, x: &Tensor) -> Tensor {
        candle_nn::GroupNorm::new(
            n.weight.clone(),
            n.bias.clone(),
            n.channels,
            n.groups,
            n.eps,
        )
        .unwrap()
        .forward(x)
        .unwrap()
    }

    #[test]
    fn matches_candle_with_and_without_silu() {
        let n = GroupNorm::new(randn(&[12]), randn(&[12]), 4, 1e-5).unwrap();
        // Offset values: a plain E[x²] − E[x]² in f32 would lose digits here.
        let x = randn(&[2, 12, 5, 7]).affine(3.0, 40.0).unwrap();
        let want = candle_norm(&n, &x);
        assert!(rel_diff(&n.forward(&x).unwrap(), &want) < 1e-5);
        let want_silu = want.silu().unwrap();
        assert!(rel_diff(&n.forward_silu(&x).unwrap(), &want_silu) < 1e-5);
    }

    #[test]
    fn takes_strided_input_and_token_rank() {
        let n = GroupNorm::new(randn(&[8]), randn(&[8]), 2, 1e-6).unwrap();
        let x = randn(&[2, 6, 8, 3]).permute((0, 2, 1, 3)).unwrap(); // [2, 8, 6, 3], strided
        assert!(rel_diff(&n.forward(&x).unwrap(), &candle_norm(&n, &x)) < 1e-5);
        let x3 = randn(&[1, 8, 10]);
        assert!(rel_diff(&n.forward(&x3).unwrap(), &candle_norm(&n, &x3)) < 1e-5);
    }
}
