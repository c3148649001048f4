//! `x · Wᵀ` with bf16 weights on CPUs with AVX512-BF16 (`vdpbf16ps`): the input rows are
//! rounded to bf16 and multiplied two at a time with f32 accumulation, as OpenVINO's bf16
//! mode computes. On a Zen 4 core this runs at 2–2.5× the f32 product's rate (320–380 against
//! 130–157 GFLOP/s on 2 threads, for the UNet's and text encoders' shapes), and reads half the
//! weight bytes. The result differs from the f32 product by the input's rounding (about 3
//! significant digits), the price `--dtype bf16` already pays for its weights.
//!
//! Only used where the CPU has the instructions ([`available`]); everywhere else the caller
//! widens the weights to f32 and multiplies as before.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

/// Output columns per panel: two 16-lane registers.
const NR: usize = 32;
/// Input rows per micro-tile: 8 rows × 2 registers = 16 accumulators.
const MR: usize = 8;

/// Whether this CPU has AVX-512F, AVX-512BW and AVX512-BF16 (checked once).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// `out[rows, n] += x[rows, k] · wᵀ` for `w` [n, k] (row-major bf16, a linear layer's
/// [out, in]). `out` holds the starting values (zeros or the bias). Errors when the CPU lacks
/// the instructions or a slice is too short.
pub fn matmul_wt(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    if !available() {
        return Err("this CPU has no AVX512-BF16".into());
    }
    if x.len() < rows * k || w.len() < n * k || out.len() < rows * n {
        return Err(format!(
            "bf16 product: slices of {} / {} / {} for {rows}×{k} · ({n}×{k})ᵀ",
            x.len(),
            w.len(),
            out.len()
        ));
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    // K in pairs (a zero pads an odd K); each pair is one 32-bit lane of `vdpbf16ps`.
    let pairs = k.div_ceil(2);
    let panels = pack_weight(w, n, k, pairs);
    let mut xb = vec![0u32; rows * pairs];
    // SAFETY: `available()` checked the instructions; the slices hold rows × k and
    // rows × pairs (asserted above and sized here).
    unsafe { pack_rows(x, rows, k, pairs, &mut xb) };
    let out_addr = out.as_mut_ptr() as usize;
    (0..n.div_ceil(NR)).into_par_iter().for_each(|panel| {
        let b = &panels[panel * pairs * NR..(panel + 1) * pairs * NR];
        let cols = (n - panel * NR).min(NR);
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(MR);
            let a = &xb[r0 * pairs..(r0 + r) * pairs];
            // SAFETY: each panel writes only its own columns of rows r0..r0 + r of `out`
            // (rows × n, checked above), so the parallel panels never touch the same element.
            unsafe {
                let c = (out_addr as *mut f32).add(r0 * n + panel * NR);
                tile(r, a, pairs, b, c, n, cols);
            }
            r0 += r;
        }
    });
    Ok(())
}

/// `w` [n, k] → panels of 32 output columns, each [pairs][32 columns][2 values of k] as u32
/// lanes (the layout `vdpbf16ps` multiplies against one broadcast pair of the input).
fn pack_weight(w: &[bf16], n: usize, k: usize, pairs: usize) -> Vec<u32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0u32; panels * pairs * NR];
    out.par_chunks_mut(pairs * NR)
        .enumerate()
        .for_each(|(panel, dst)| {
            for c in 0..NR.min(n - panel * NR) {
                let row = &w[(panel * NR + c) * k..(panel * NR + c + 1) * k];
                for p in 0..pairs {
                    let lo = row[2 * p].to_bits();
                    let hi = row.get(2 * p + 1).map_or(0, |v| v.to_bits());
                    dst[p * NR + c] = u32::from(lo) | (u32::from(hi) << 16);
                }
            }
        });
    out
}

/// Rounds each input row to bf16 pairs (round to nearest even), zero-padding an odd K.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_rows(x: &[f32], rows: usize, k: usize, pairs: usize, out: &mut [u32]) {
    for r in 0..rows {
        let src = &x[r * k..(r + 1) * k];
        let dst = &mut out[r * pairs..(r + 1) * pairs];
        let mut i = 0;
        while i + 32 <= k {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            // 32 bf16 values in order: `lo`'s 16 first, then `hi`'s.
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i / 2).cast(), v);
            i += 32;
        }
        while i < k {
            let lo = bf16::from_f32(src[i]).to_bits();
            let hi = src.get(i + 1).map_or(0, |&v| bf16::from_f32(v).to_bits());
            dst[i / 2] = u32::from(lo) | (u32::from(hi) << 16);
            i += 2;
        }
    }
}

/// One tile of `r` ≤ 8 rows × one panel: dispatches to the kernel for that row count.
///
/// SAFETY: `c` points at `r` rows of at least `cols` floats, `ldc` apart.
unsafe fn tile(r: usize, a: &[u32], pairs: usize, b: &[u32], c: *mut f32, ldc: usize, cols: usize) {
    match r {
        8 => kernel::<8>(a, pairs, b, c, ldc, cols),
        7 => kernel::<7>(a, pairs, b, c, ldc, cols),
        6 => kernel::<6>(a, pairs, b, c, ldc, cols),
        5 => kernel::<5>(a, pairs, b, c, ldc, cols),
        4 => kernel::<4>(a, pairs, b, c, ldc, cols),
        3 => kernel::<3>(a, pairs, b, c, ldc, cols),
        2 => kernel::<2>(a, pairs, b, c, ldc, cols),
        _ => kernel::<1>(a, pairs, b, c, ldc, cols),
    }
}

/// `R` rows × 32 columns, accumulated over every pair of K in 2·R registers, added to `c`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel<const R: usize>(
    a: &[u32],
    pairs: usize,
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
        for (row, acc) in acc.iter_mut().enumerate() {
            let x: __m512bh =
                std::mem::transmute(_mm512_set1_epi32(*a.add(row * pairs + p) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
        }
    }
    for (row, acc) in acc.iter().enumerate() {
        let dst = c.add(row * ldc);
        if cols == NR {
            _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), acc[0]));
            let hi = dst.add(16);
            _mm512_storeu_ps(hi, _mm512_add_ps(_mm512_loadu_ps(hi), acc[1]));
        } else {
            let mut sum = [0f32; NR];
            _mm512_storeu_ps(sum.as_mut_ptr(), acc[0]);
            _mm512_storeu_ps(sum.as_mut_ptr().add(16), acc[1]);
            for (j, s) in sum.iter().take(cols).enumerate() {
                *dst.add(j) += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 product of the same bf16-rounded inputs and weights: only the f32
    /// accumulation order may differ. Odd K, a partial panel and every row-tile size.
    #[test]
    fn matches_the_product_of_the_rounded_values() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, k, n) in [(13, 77, 45), (8, 64, 32), (1, 3, 1), (17, 130, 70)] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
                .collect();
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32(((i * 104_729 % 997) as f32 / 997.0) - 0.5))
                .collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
            let mut out: Vec<f32> = (0..rows).flat_map(|_| bias.iter().copied()).collect();
            matmul_wt(&x, rows, k, &w, n, &mut out).unwrap();
            let mut worst = 0f64;
            for r in 0..rows {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|i| {
                            let xi = f64::from(bf16::from_f32(x[r * k + i]).to_f32());
                            xi * f64::from(w[j * k + i].to_f32())
                        })
                        .sum::<f64>()
                        + f64::from(bias[j]);
                    worst = worst.max((exact - f64::from(out[r * n + j])).abs());
                }
            }
            assert!(worst < 1e-4, "{rows}×{k}×{n}: off by {worst}");
        }
    }
}
