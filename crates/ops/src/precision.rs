//! Weights kept in half precision, computed in f32.
//!
//! With `--dtype f16|bf16` a model's convolution and linear weights stay in 16 bits (half the
//! memory), while activations stay f32. Each layer widens its weights to the activations'
//! dtype just before its product and drops the copy afterwards, so at most one layer's f32
//! weights exist at a time; the widening is a memory-bound sweep, spread over the threads.
//! On CPUs with AVX512-BF16, bf16 weights skip it: linear layers and convolutions multiply
//! them as they are (see `avx512`).

use std::borrow::Cow;

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// Elements converted per task: large enough to amortise the task, small enough to balance.
const CHUNK: usize = 1 << 16;

/// `t` in `like`'s dtype: borrowed when it already is, else converted (on the CPU from f16 or
/// bf16 to f32 in parallel, elsewhere with candle's `to_dtype`).
pub fn widen<'a>(t: &'a Tensor, like: &Tensor) -> Result<Cow<'a, Tensor>> {
    if t.dtype() == like.dtype() {
        return Ok(Cow::Borrowed(t));
    }
    if like.dtype() != DType::F32 || !t.device().is_cpu() {
        return Ok(Cow::Owned(t.to_dtype(like.dtype())?));
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("widen: tensor is not contiguous");
    };
    let mut out = vec![0f32; end - start];
    match &*storage {
        Storage::Cpu(CpuStorage::BF16(v)) => out
            .par_chunks_mut(CHUNK)
            .zip(v[start..end].par_chunks(CHUNK))
            .for_each(|(o, i)| i.convert_to_f32_slice(o)),
        Storage::Cpu(CpuStorage::F16(v)) => out
            .par_chunks_mut(CHUNK)
            .zip(v[start..end].par_chunks(CHUNK))
            .for_each(|(o, i)| i.convert_to_f32_slice(o)),
        _ => {
            drop(storage);
            return Ok(Cow::Owned(t.to_dtype(DType::F32)?));
        }
    }
    drop(storage);
    Ok(Cow::Owned(Tensor::from_vec(out, t.dims(), t.device())?))
}

/// `t` in `like`'s dtype, when there is a `t`.
pub fn widen_opt<'a>(t: Option<&'a Tensor>, like: &Tensor) -> Result<Option<Cow<'a, Tensor>>> {
    t.map(|t| widen(t, like)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::randn;

    #[test]
    fn widens_half_weights_exactly_and_keeps_f32_borrowed() {
        let x = randn(&[3]);
        for dtype in [DType::BF16, DType::F16] {
            // Spans several chunks, with a ragged last one.
            let w = randn(&[3, CHUNK + 17]).to_dtype(dtype).unwrap();
            let got = widen(&w, &x).unwrap().into_owned();
            let want = w.to_dtype(DType::F32).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
            // A strided view widens to the same values as its contiguous copy.
            let t = w.t().unwrap();
            let got = widen(&t, &x).unwrap().into_owned();
            assert_eq!(got.dims(), t.dims());
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            );
        }
        assert!(matches!(widen(&x, &x).unwrap(), Cow::Borrowed(_)));
    }
}
