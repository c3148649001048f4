//! The feed-forward's GEGLU gate, CLIP's quick GELU and in-place residual adds.

use candle_core::{InplaceOp1, InplaceOp2, Layout, Result, Tensor, D};
use rayon::prelude::*;

use super::profile::{scope, Kind};
use super::{cpu_slice, own_kernel, simd, SharedMut};

/// `value · gelu(gate)` where `h` = [value | gate] on its last axis (diffusers' `GEGLU`, exact
/// erf GELU). One pass, instead of two strided chunk views, a GELU pass and a product pass.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    scope(Kind::ElementWise, || {
        let last = h.dim(D::Minus1)?;
        if last % 2 != 0 {
            candle_core::bail!("geglu: odd last axis {last}");
        }
        if !own_kernel(&[h]) {
            let chunks = h.chunk(2, D::Minus1)?;
            return &chunks[0] * chunks[1].gelu_erf()?;
        }
        let half = last / 2;
        let h = h.contiguous()?;
        let mut dims = h.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = half;
        }
        let (hs, hl) = h.storage_and_layout();
        let candle_core::Storage::Cpu(hc) = &*hs else {
            candle_core::bail!("geglu kernel: tensor must be on the CPU");
        };
        let src = cpu_slice(hc, hl, "geglu input")?;
        let mut out = vec![0f32; src.len() / 2];
        // Rows in blocks, so each task is big enough to be worth a thread.
        let rows_per_task = (16_384 / half).max(1);
        out.par_chunks_mut(half * rows_per_task)
            .zip(src.par_chunks(last * rows_per_task))
            .for_each(|(o, s)| {
                for (orow, srow) in o.chunks_exact_mut(half).zip(s.chunks_exact(last)) {
                    simd::geglu_row(&srow[..half], &srow[half..], orow);
                }
            });
        drop(hs);
        Tensor::from_vec(out, dims, h.device())
    })
}

/// Adds `other` into `fresh` and returns it: the residual add without a new tensor.
/// `fresh` must be a tensor nobody else holds (an op's own output), since its storage is
/// overwritten; elsewhere (other devices, shapes that broadcast) it is a plain add.
pub fn add_in_place(fresh: Tensor, other: &Tensor) -> Result<Tensor> {
    scope(Kind::ElementWise, || {
        if own_kernel(&[&fresh, other])
            && fresh.dims() == other.dims()
            && fresh.is_contiguous()
            && other.is_contiguous()
        {
            fresh.inplace_op2(other, &AddAssign)?;
            Ok(fresh)
        } else {
            fresh + other
        }
    })
}

/// `x · sigmoid(1.702·x)` (CLIP's `quick_gelu`) over `fresh`, in one pass and in place; as
/// [`add_in_place`], `fresh` must be a tensor nobody else holds.
pub fn quick_gelu(fresh: Tensor) -> Result<Tensor> {
    scope(Kind::ElementWise, || {
        if own_kernel(&[&fresh]) && fresh.is_contiguous() {
            fresh.inplace_op1(&QuickGelu)?;
            Ok(fresh)
        } else {
            &fresh * candle_nn::ops::sigmoid(&(&fresh * 1.702)?)?
        }
    })
}

struct QuickGelu;

impl InplaceOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &mut candle_core::CpuStorage, layout: &Layout) -> Result<()> {
        let (candle_core::CpuStorage::F32(d), Some((a, b))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("quick_gelu: expected a contiguous f32 tensor");
        };
        d[a..b].par_chunks_mut(1 << 14).for_each(simd::quick_gelu);
        Ok(())
    }
}

struct AddAssign;

impl InplaceOp2 for AddAssign {
    fn name(&self) -> &'static str {
        "add-assign"
    }

    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        dl: &Layout,
        src: &candle_core::CpuStorage,
        sl: &Layout,
    ) -> Result<()> {
        let src = cpu_slice(src, sl, "add source")?;
        let (candle_core::CpuStorage::F32(d), Some((a, b))) = (dst, dl.contiguous_offsets()) else {
            candle_core::bail!("add_in_place: destination must be contiguous f32");
        };
        let d = &mut d[a..b];
        if d.len() != src.len() {
            candle_core::bail!("add_in_place: {} vs {} values", d.len(), src.len());
        }
        let dp = SharedMut(d.as_mut_ptr());
        const BLOCK: usize = 1 << 16;
        src.par_chunks(BLOCK).enumerate().for_each(|(i, s)| {
            // SAFETY: block i of dst, the same length as block i of src; blocks are disjoint.
            let d = unsafe { std::slice::from_raw_parts_mut(dp.get().add(i * BLOCK), s.len()) };
            simd::add_assign(d, s);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{randn, rel_diff};

    #[test]
    fn geglu_matches_chunk_gelu_mul() {
        for shape in [[2, 33, 10], [1, 3, 40_000]] {
            let h = (randn(&shape) * 3.0).unwrap();
            let chunks = h.chunk(2, D::Minus1).unwrap();
            let want = (&chunks[0] * chunks[1].gelu_erf().unwrap()).unwrap();
            assert!(rel_diff(&geglu(&h).unwrap(), &want) < 1e-6, "{shape:?}");
        }
    }

    #[test]
    fn quick_gelu_matches_candle() {
        let x = (randn(&[2, 77, 3000]) * 4.0).unwrap();
        let want = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(rel_diff(&quick_gelu(x.copy().unwrap()).unwrap(), &want) < 1e-6);
    }

    #[test]
    fn in_place_add_matches_add_and_leaves_the_other_alone() {
        let (a, b) = (randn(&[3, 70_001]), randn(&[3, 70_001]));
        let want = (&a + &b).unwrap();
        let b_before = b.copy().unwrap();
        let got = add_in_place(a.copy().unwrap(), &b).unwrap();
        assert!(rel_diff(&got, &want) < 1e-7);
        assert!(rel_diff(&b, &b_before) == 0.0);
    }
}
