//! `y += s · h · upᵀ` written straight into the base layer's output, on the CPU in f32.
//!
//! The plain way to add a low-rank term — `y + (h·upᵀ)·s` — allocates a full-size output for the
//! up projection and then adds it to `y` in a single-threaded pass: two extra full-size passes
//! over every adapted layer's output. On SD 1.5 with a rank-32 adapter on every attention and
//! feed-forward projection that alone cost ~10% of a step. Accumulating the rank-r product into
//! `y` with `gemm`'s `dst = dst + s·lhs·rhs` (multi-threaded, the scale folded into the
//! product) leaves one read-modify-write of `y`, which is what makes the unmerged design meet
//! the ≤ 10% step budget. Other devices and dtypes use the plain path.

use candle_core::{bail, CpuStorage, InplaceOp3, Layout, Result, Tensor};

/// How `h` and `y` are laid out.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `y` [..., out], `h` [..., r]: token rows.
    Rows,
    /// `y` [b, out, H, W], `h` [b, r, H, W]: a 1×1 up convolution per image.
    Channels,
}

struct AddLowRank {
    scale: f32,
    shape: Shape,
}

/// Adds `scale · up(h)` to `y` in place when that can be done fused (CPU, f32, contiguous);
/// returns false, having done nothing, otherwise.
pub fn add_low_rank(y: &Tensor, h: &Tensor, up: &Tensor, scale: f64, shape: Shape) -> Result<bool> {
    let fusable = y.device().is_cpu()
        && [y, h, up]
            .iter()
            .all(|t| t.dtype() == candle_core::DType::F32 && t.is_contiguous());
    if !fusable {
        return Ok(false);
    }
    y.inplace_op3(
        h,
        up,
        &AddLowRank {
            scale: scale as f32,
            shape,
        },
    )?;
    Ok(true)
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let (CpuStorage::F32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
        bail!("lora: {what} must be contiguous f32");
    };
    Ok(&v[a..b])
}

impl InplaceOp3 for AddLowRank {
    fn name(&self) -> &'static str {
        "lora-add-low-rank"
    }

    fn cpu_fwd(
        &self,
        y: &mut CpuStorage,
        ly: &Layout,
        h: &CpuStorage,
        lh: &Layout,
        up: &CpuStorage,
        lu: &Layout,
    ) -> Result<()> {
        let h = slice(h, lh, "h")?;
        let up = slice(up, lu, "up")?;
        let (CpuStorage::F32(y), Some((y0, y1))) = (y, ly.contiguous_offsets()) else {
            bail!("lora: y must be contiguous f32");
        };
        let y = &mut y[y0..y1];
        let out = lu.dims().first().copied().unwrap_or(0);
        let r = lu.dims().get(1).copied().unwrap_or(0);
        if out == 0 || r == 0 || up.len() != out * r {
            bail!("lora: up factor has shape {:?}", lu.dims());
        }
        let threads = candle_core::utils::get_num_threads();
        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        match self.shape {
            Shape::Rows => {
                let m = y.len() / out;
                if y.len() != m * out || h.len() != m * r {
                    bail!("lora: y {:?} and h {:?} disagree", ly.dims(), lh.dims());
                }
                // SAFETY: dst is m×out (row stride out), lhs m×r (row stride r), rhs = upᵀ,
                // r×out read from up [out, r] (column stride r); all lengths checked above and
                // the three buffers are distinct (candle locks y apart from the sources).
                unsafe {
                    gemm::gemm(
                        m,
                        out,
                        r,
                        y.as_mut_ptr(),
                        1,
                        out as isize,
                        true,
                        h.as_ptr(),
                        1,
                        r as isize,
                        up.as_ptr(),
                        r as isize,
                        1,
                        1.0f32,
                        self.scale,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            }
            Shape::Channels => {
                let dims = ly.dims();
                let (b, pixels) = match dims {
                    [b, o, hh, ww] if *o == out => (*b, hh * ww),
                    _ => bail!("lora: y {dims:?} is not [b, {out}, h, w]"),
                };
                if h.len() != b * r * pixels {
                    bail!("lora: y {:?} and h {:?} disagree", dims, lh.dims());
                }
                for i in 0..b {
                    let dst = &mut y[i * out * pixels..(i + 1) * out * pixels];
                    let src = &h[i * r * pixels..(i + 1) * r * pixels];
                    // SAFETY: dst is out×pixels, lhs = up out×r, rhs = this image's h
                    // r×pixels; lengths checked above, buffers distinct.
                    unsafe {
                        gemm::gemm(
                            out,
                            pixels,
                            r,
                            dst.as_mut_ptr(),
                            1,
                            pixels as isize,
                            true,
                            up.as_ptr(),
                            1,
                            r as isize,
                            src.as_ptr(),
                            1,
                            pixels as isize,
                            1.0f32,
                            self.scale,
                            false,
                            false,
                            false,
                            par,
                        )
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{max_diff, randn};

    #[test]
    fn rows_match_the_plain_computation() {
        let (y, h, up) = (randn(&[2, 7, 12]), randn(&[2, 7, 3]), randn(&[12, 3]));
        let want = (&y + (h.broadcast_matmul(&up.t().unwrap()).unwrap() * 0.75).unwrap()).unwrap();
        let got = y.copy().unwrap();
        assert!(
            add_low_rank(&got, &h, &up, 0.75, Shape::Rows).unwrap(),
            "fused path taken"
        );
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn channels_match_a_1x1_convolution() {
        let (y, h, up) = (
            randn(&[2, 5, 4, 3]),
            randn(&[2, 2, 4, 3]),
            randn(&[5, 2, 1, 1]),
        );
        let conv = h.conv2d(&up, 0, 1, 1, 1).unwrap();
        let want = (&y + (conv * -1.5).unwrap()).unwrap();
        let got = y.copy().unwrap();
        assert!(add_low_rank(&got, &h, &up, -1.5, Shape::Channels).unwrap());
        assert!(max_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn other_dtypes_fall_back() {
        let y = randn(&[2, 4]).to_dtype(candle_core::DType::F64).unwrap();
        let h = randn(&[2, 1]).to_dtype(candle_core::DType::F64).unwrap();
        let up = randn(&[4, 1]).to_dtype(candle_core::DType::F64).unwrap();
        assert!(!add_low_rank(&y, &h, &up, 1.0, Shape::Rows).unwrap());
    }
}
