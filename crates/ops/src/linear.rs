//! `x · Wᵀ + b` over token rows as one matrix product.
//!
//! candle's `Linear` on a [batch, tokens, in] input broadcasts the weight over the batch and runs
//! one product per image, then adds the bias in a separate pass. Here the rows of all images are
//! one matrix, the weight is read transposed in place, and the bias is the product's starting
//! value, so the output is written once.

use candle_core::{Module, Result, Tensor};
use rayon::prelude::*;

use super::precision::{widen, widen_opt};
use super::{cpu_slice, own_kernel, parallelism};

/// `layer.forward(x)` for an input of any rank ≥ 1 (the last axis is the features).
/// Half-precision weights (`--dtype f16|bf16`) are widened to the input's dtype first, except
/// bf16 ones on CPUs with AVX512-BF16, which are multiplied as they are (see `avx512`).
pub fn linear(x: &Tensor, layer: &candle_nn::Linear) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if let Some(out) = linear_avx512(x, layer)? {
        return Ok(out);
    }
    let w = widen(layer.weight(), x)?;
    let bias = widen_opt(layer.bias(), x)?;
    let (w, bias) = (w.as_ref(), bias.as_deref());
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    let candle = || candle_nn::Linear::new(w.clone(), bias.cloned()).forward(x);
    if !own_kernel(&inputs) || w.rank() != 2 || x.rank() == 0 {
        return candle();
    }
    let (out_f, in_f) = w.dims2()?;
    let dims = x.dims().to_vec();
    if dims.last() != Some(&in_f) {
        return candle();
    }
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x = x.contiguous()?;
    // The weight is read through its strides: a transposed view works as well as the original.
    let (w_s0, w_s1) = (w.stride()[0], w.stride()[1]);
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(xc), candle_core::Storage::Cpu(wc)) = (&*xs, &*ws) else {
        candle_core::bail!("linear kernel: tensors must be on the CPU");
    };
    let xd = cpu_slice(xc, xl, "linear input")?;
    let candle_core::CpuStorage::F32(wd) = wc else {
        candle_core::bail!("linear kernel: the weight must be f32");
    };
    let wd = &wd[wl.start_offset()..];
    if (out_f - 1) * w_s0 + (in_f - 1) * w_s1 >= wd.len() {
        candle_core::bail!("linear kernel: weight strides run past its storage");
    }
    let mut out = vec![0f32; rows * out_f];
    let has_bias = match bias {
        Some(b) => {
            let b: Vec<f32> = b.to_vec1()?;
            if b.len() != out_f {
                candle_core::bail!("linear: {} biases for {out_f} outputs", b.len());
            }
            out.par_chunks_mut(out_f)
                .for_each(|r| r.copy_from_slice(&b));
            true
        }
        None => false,
    };
    // SAFETY: dst is rows × out_f (row stride out_f); lhs is x, rows × in_f (row stride in_f);
    // rhs is Wᵀ, in_f × out_f read from W [out_f, in_f] through its strides (checked above).
    unsafe {
        gemm::gemm(
            rows,
            out_f,
            in_f,
            out.as_mut_ptr(),
            1,
            out_f as isize,
            has_bias,
            xd.as_ptr(),
            1,
            in_f as isize,
            wd.as_ptr(),
            w_s0 as isize,
            w_s1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(candle_core::utils::get_num_threads()),
        );
    }
    drop((xs, ws));
    let mut out_dims = dims;
    if let Some(d) = out_dims.last_mut() {
        *d = out_f;
    }
    Tensor::from_vec(out, out_dims, x.device())
}

/// A linear layer as Easel computes it.
///
/// On CPUs with AVX-512, f32, bf16 and f16 weights are packed here, once, into the panels the
/// kernel reads ([`crate::avx512::Packed`]; f16 stays 16-bit there and is widened as it is
/// loaded), and the plain copy is dropped, so memory does not grow and no call re-packs or
/// widens them. Elsewhere (other CPUs, GPUs, trained `Var`s, `EASEL_KERNELS=candle`) it is
/// candle's layer, computed by [`linear`]. The weights never
/// change after loading: LoRA adds its terms to the output (see `easel::lora`).
pub struct Linear {
    weights: Weights,
    in_dim: usize,
    out_dim: usize,
}

enum Weights {
    Plain(candle_nn::Linear),
    #[cfg(target_arch = "x86_64")]
    Packed {
        weight: super::avx512::Packed,
        bias: Option<Vec<f32>>,
    },
}

impl Linear {
    pub fn new(layer: candle_nn::Linear) -> Result<Self> {
        let (out_dim, in_dim) = layer.weight().dims2()?;
        #[cfg(target_arch = "x86_64")]
        if let Some(weights) = packed(&layer)? {
            return Ok(Self {
                weights,
                in_dim,
                out_dim,
            });
        }
        Ok(Self {
            weights: Weights::Plain(layer),
            in_dim,
            out_dim,
        })
    }

    /// The same layer with a plain f32 weight held as [in, out] in memory (still read as
    /// [out, in]): for layers that only ever see a few rows (a text encoder's 77 tokens per
    /// prompt) on CPUs without the packed path, where `gemm` reads that layout directly
    /// instead of re-packing the weight on every call. Packed, trained (`Var`) and
    /// half-precision weights stay as they are.
    pub fn stored_transposed(self) -> Result<Self> {
        let Weights::Plain(layer) = &self.weights else {
            return Ok(self);
        };
        let w = layer.weight();
        if w.is_variable() || !w.device().is_cpu() || w.dtype() != candle_core::DType::F32 {
            return Ok(self);
        }
        let w = w.t()?.contiguous()?.t()?;
        Ok(Self {
            weights: Weights::Plain(candle_nn::Linear::new(w, layer.bias().cloned())),
            ..self
        })
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// The dtype the weights are kept in.
    pub fn weight_dtype(&self) -> candle_core::DType {
        match &self.weights {
            Weights::Plain(layer) => layer.weight().dtype(),
            #[cfg(target_arch = "x86_64")]
            Weights::Packed { weight, .. } if weight.is_bf16() => candle_core::DType::BF16,
            #[cfg(target_arch = "x86_64")]
            Weights::Packed { weight, .. } if weight.is_f16() => candle_core::DType::F16,
            #[cfg(target_arch = "x86_64")]
            Weights::Packed { .. } => candle_core::DType::F32,
        }
    }

    /// Whether the weights were packed for the CPU kernel.
    pub fn is_packed(&self) -> bool {
        !matches!(self.weights, Weights::Plain(_))
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weights {
            Weights::Plain(layer) => linear(x, layer),
            #[cfg(target_arch = "x86_64")]
            Weights::Packed { weight, bias } => {
                // Activations are f32 on the CPU; anything else is computed in f32 and
                // handed back in its own dtype. (Packed weights are constants: no gradient
                // flows through them, and trained weights are never packed.)
                if x.dims().last() != Some(&self.in_dim) {
                    candle_core::bail!(
                        "linear: an input of {:?} for a layer of {} inputs",
                        x.dims(),
                        self.in_dim
                    );
                }
                let dtype = x.dtype();
                let x32 = x.to_dtype(candle_core::DType::F32)?;
                let out = avx512_product(
                    &x32,
                    super::avx512::Weight::Packed(weight),
                    self.out_dim,
                    bias.as_deref(),
                )?;
                out.to_dtype(dtype)
            }
        }
    }
}

/// The packed form of `layer`, where the CPU kernel takes its weight.
#[cfg(target_arch = "x86_64")]
fn packed(layer: &candle_nn::Linear) -> Result<Option<Weights>> {
    use candle_core::{CpuStorage, DType, Storage};
    let w = layer.weight();
    let usable = match w.dtype() {
        DType::F32 | DType::F16 => super::avx512::has_f32(),
        DType::BF16 => super::avx512::has_bf16(),
        _ => false,
    } && w.device().is_cpu()
        && !w.is_variable()
        && !super::kernels_off()
        // A shape check's zero-size stand-in (a broadcast) must not become real memory.
        && w.is_contiguous();
    if !usable {
        return Ok(None);
    }
    let (n, k) = w.dims2()?;
    let bias = match layer.bias() {
        Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    if bias.as_ref().is_some_and(|b| b.len() != n) {
        candle_core::bail!(
            "linear: a bias of {:?} for {n} outputs",
            layer.bias().map(|b| b.dims())
        );
    }
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        return Ok(None);
    };
    let weight = match storage {
        CpuStorage::F32(d) => super::avx512::Weight::F32 {
            data: &d[layout.start_offset()..],
            s0: k,
            s1: 1,
        },
        CpuStorage::BF16(d) => super::avx512::Weight::Bf16(&d[layout.start_offset()..]),
        CpuStorage::F16(d) => super::avx512::Weight::F16(&d[layout.start_offset()..]),
        _ => return Ok(None),
    };
    let weight = super::avx512::Packed::new(weight, n, k).map_err(candle_core::Error::Msg)?;
    Ok(Some(Weights::Packed { weight, bias }))
}

/// Input rows from which f32 layers use the AVX-512 kernel rather than `gemm`, when their
/// weights are not packed.
#[cfg(target_arch = "x86_64")]
const F32_MIN_ROWS: usize = 512;

/// `linear` on CPUs with AVX-512 (see `avx512`): f32 weights, and bf16 weights with bf16
/// products where the CPU has AVX512-BF16. `None` hands the layer to `gemm` (other dtypes or
/// devices, gradients, older CPUs).
#[cfg(target_arch = "x86_64")]
fn linear_avx512(x: &Tensor, layer: &candle_nn::Linear) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, DType, Storage};
    let w = layer.weight();
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    let usable = match w.dtype() {
        // Below a few hundred rows (a text encoder's 154 tokens) `gemm` measured faster in
        // f32: packing the weights into panels costs more beside a short product.
        DType::F32 => super::avx512::has_f32() && rows >= F32_MIN_ROWS,
        DType::BF16 => super::avx512::has_bf16() && w.is_contiguous(),
        _ => false,
    } && own_kernel(&[x])
        && !w.track_op();
    let (out_f, _) = match w.dims2() {
        Ok(d) if usable && x.rank() > 0 && x.dims().last() == Some(&d.1) => d,
        _ => return Ok(None),
    };
    let bias = match layer.bias() {
        Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
        None => None,
    };
    let (ws, wl) = w.storage_and_layout();
    let Storage::Cpu(wc) = &*ws else {
        return Ok(None);
    };
    let weight = match wc {
        CpuStorage::F32(d) => super::avx512::Weight::F32 {
            data: &d[wl.start_offset()..],
            s0: w.stride()[0],
            s1: w.stride()[1],
        },
        CpuStorage::BF16(d) => super::avx512::Weight::Bf16(&d[wl.start_offset()..]),
        _ => return Ok(None),
    };
    avx512_product(x, weight, out_f, bias.as_deref()).map(Some)
}

/// `x · wᵀ + bias` through the AVX-512 kernel, for an f32 CPU input whose last axis is the
/// weight's K; the output has x's shape with `n` features.
#[cfg(target_arch = "x86_64")]
fn avx512_product(
    x: &Tensor,
    weight: super::avx512::Weight,
    n: usize,
    bias: Option<&[f32]>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = dims.last().copied().unwrap_or(0);
    let rows = x.elem_count() / k.max(1);
    if let Some(b) = &bias {
        if b.len() != n {
            candle_core::bail!("linear: {} biases for {n} outputs", b.len());
        }
    }
    let has_bias = bias.is_some();
    let mut out = match bias {
        Some(b) => b.repeat(rows),
        None => vec![0f32; rows * n],
    };
    let x = x.contiguous()?;
    {
        let (xs, xl) = x.storage_and_layout();
        let candle_core::Storage::Cpu(xc) = &*xs else {
            candle_core::bail!("linear kernel: the input must be on the CPU");
        };
        let xd = cpu_slice(xc, xl, "linear input")?;
        super::avx512::matmul_wt(xd, rows, k, weight, n, &mut out, has_bias)
            .map_err(candle_core::Error::Msg)?;
    }
    let mut shape = dims;
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{bf16_rounded, randn, rel_diff};
    use candle_nn::Linear as CandleLinear;

    #[test]
    fn matches_candle_linear_with_and_without_bias() {
        for (shape, bias) in [
            (vec![2, 37, 24], true),
            (vec![5, 24], false),
            (vec![1, 2, 3, 24], true),
            // Enough rows for the AVX-512 kernel in f32, where the CPU has it.
            (vec![2, 300, 24], true),
        ] {
            let layer = CandleLinear::new(randn(&[17, 24]), bias.then(|| randn(&[17])));
            let x = randn(&shape);
            let d = rel_diff(&linear(&x, &layer).unwrap(), &layer.forward(&x).unwrap());
            assert!(d < 1e-5, "{shape:?}: {d}");
        }
        // A transposed weight and a strided input (a narrowed view) are taken too.
        let wt = randn(&[4, 6]);
        let layer = CandleLinear::new(wt.t().unwrap(), Some(randn(&[6])));
        let x = randn(&[2, 5, 4]);
        assert!(rel_diff(&linear(&x, &layer).unwrap(), &layer.forward(&x).unwrap()) < 1e-5);
        let layer = CandleLinear::new(randn(&[6, 4]), Some(randn(&[6])));
        let x = randn(&[3, 10, 8]).narrow(2, 2, 4).unwrap();
        assert!(rel_diff(&linear(&x, &layer).unwrap(), &layer.forward(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn half_weights_compute_as_their_f32_values() {
        use candle_core::DType;
        let (w, b) = (randn(&[17, 24]), randn(&[17]));
        let x = randn(&[2, 9, 24]);
        for dtype in [DType::BF16, DType::F16] {
            let half =
                CandleLinear::new(w.to_dtype(dtype).unwrap(), Some(b.to_dtype(dtype).unwrap()));
            let widened = CandleLinear::new(
                half.weight().to_dtype(DType::F32).unwrap(),
                half.bias().map(|b| b.to_dtype(DType::F32).unwrap()),
            );
            let got = linear(&x, &half).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            // Where bf16 weights are multiplied in bf16 (AVX512-BF16), the input is rounded to
            // bf16 too: the same product of the rounded values.
            #[cfg(target_arch = "x86_64")]
            let rounds_input = dtype == DType::BF16 && crate::avx512::has_bf16();
            #[cfg(not(target_arch = "x86_64"))]
            let rounds_input = false;
            let input = if rounds_input {
                bf16_rounded(&x)
            } else {
                x.clone()
            };
            let d = rel_diff(&got, &widened.forward(&input).unwrap());
            assert!(d < 1e-5, "{dtype:?}: {d}");
        }
    }

    #[test]
    fn packed_layers_match_candle() {
        use candle_core::DType;
        // Widths that are not a multiple of a panel, an odd K (a bf16 pair padded), one row,
        // a text encoder's rows, and enough rows for several tiles and K slices. f16 weights
        // multiply as their f32 values.
        for (rows, k, n, bias) in [
            (1, 24, 17, true),
            (154, 33, 40, false),
            (77, 64, 96, true),
            (300, 1100, 70, true),
        ] {
            let (w, b) = (randn(&[n, k]), randn(&[n]));
            let x = randn(&[rows, k]);
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let plain = CandleLinear::new(
                    w.to_dtype(dtype).unwrap(),
                    bias.then(|| b.to_dtype(dtype).unwrap()),
                );
                let layer = Linear::new(plain.clone()).unwrap();
                #[cfg(target_arch = "x86_64")]
                assert_eq!(
                    layer.is_packed(),
                    match dtype {
                        DType::BF16 => crate::avx512::has_bf16(),
                        _ => crate::avx512::has_f32(),
                    }
                );
                let got = layer.forward(&x).unwrap();
                assert_eq!(got.dims(), &[rows, n]);
                // Packed only where the CPU kernel runs; the same numbers either way.
                let widened = CandleLinear::new(
                    plain.weight().to_dtype(DType::F32).unwrap(),
                    plain.bias().map(|b| b.to_dtype(DType::F32).unwrap()),
                );
                let input = if layer.is_packed() && dtype == DType::BF16 {
                    bf16_rounded(&x)
                } else {
                    x.clone()
                };
                let d = rel_diff(&got, &widened.forward(&input).unwrap());
                assert!(d < 1e-5, "{rows}×{k}→{n} {dtype:?}: {d}");
            }
        }
        // A wrong input width is an error, not a read past the weights.
        let layer = Linear::new(CandleLinear::new(randn(&[8, 16]), None)).unwrap();
        assert!(layer.forward(&randn(&[3, 15])).is_err());
    }
}
