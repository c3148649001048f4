//! Element-wise math written so the compiler vectorises it: branch-free `exp` and `erf`
//! (Cephes' polynomial, Abramowitz & Stegun 7.1.26), reductions over eight lanes, and each
//! slice loop compiled a second time for AVX2 and picked at run time (release builds target the
//! x86-64 baseline, where a loop gets only 4 lanes of SSE2 and no `floor`).

/// Defines `pub fn $name(args)` whose body is compiled three times, plain, with AVX2 + FMA and
/// with AVX-512, and runs the widest copy the CPU has.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if crate::avx512::has_f32()
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                    && std::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Cephes `expf`'s constants, shared with the AVX-512 `exp` of `avx512::exp_ps`: the lower
/// clamp, ln 2 split in two for an exact reduction, and the polynomial's coefficients (highest
/// degree first).
pub(crate) const EXP_MIN: f32 = -87.33;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// eˣ to within 2 ulp over the f32 range (Cephes `expf`), without branches.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let x = x.clamp(EXP_MIN, 88.3);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    // 2ⁿ from the exponent bits; n + 127 is in [1, 254] after the clamp. The integer is read
    // from the mantissa of n + 127 + 2²³ rather than by `as i32`, whose saturating conversion
    // does not vectorise (a scalar convert-and-compare per value).
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() - 0x4b00_0000;
    e * f32::from_bits(biased << 23)
}

/// erf(x) within 6e-7 absolute: Abramowitz & Stegun 7.1.26 (1.5e-7) evaluated in f32. In GELU
/// that is x·3e-7, below the rounding of the matrix products around it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

/// x · sigmoid(x)
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// diffusers' exact GELU: x · Φ(x).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

multiversion! {
    /// x · sigmoid(1.702·x) in place: CLIP's "quick GELU".
    pub fn quick_gelu(xs: &mut [f32]) {
        for x in xs {
            *x /= 1.0 + exp(-1.702 * *x);
        }
    }
}

multiversion! {
    /// Replaces each value by exp(value − max) and returns the sum: a softmax row, unnormalised.
    pub fn exp_shifted_sum(row: &mut [f32]) -> f32 {
        // 16 lanes: one AVX-512 register, two AVX2 ones.
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for l in lanes {
            max = max.max(l);
        }
        let mut sums = [0f32; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            for i in 0..16 {
                c[i] = exp(c[i] - max);
                sums[i] += c[i];
            }
        }
        let mut sum = 0f32;
        for v in chunks.into_remainder() {
            *v = exp(*v - max);
            sum += *v;
        }
        sum + sums.iter().sum::<f32>()
    }
}

multiversion! {
    /// out = (x − mean) · scale[c] + shift[c] over one channel's values, SiLU'd when asked.
    pub fn normalise(xs: &[f32], out: &mut [f32], mul: f32, add: f32, silu_after: bool) {
        if silu_after {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = silu(x * mul + add);
            }
        } else {
            for (o, &x) in out.iter_mut().zip(xs) {
                *o = x * mul + add;
            }
        }
    }
}

multiversion! {
    /// Σx and Σx² of a slice, in f64 (a group of a GroupNorm can hold 10⁵ values).
    pub fn sum_and_squares(xs: &[f32]) -> (f64, f64) {
        // f32 partial sums over short runs keep the loop vectorised; f64 between runs keeps the
        // total exact enough for E[x²] − E[x]².
        let (mut s, mut q) = (0f64, 0f64);
        for run in xs.chunks(256) {
            let (mut ls, mut lq) = ([0f32; 8], [0f32; 8]);
            let mut chunks = run.chunks_exact(8);
            for c in &mut chunks {
                for i in 0..8 {
                    ls[i] += c[i];
                    lq[i] += c[i] * c[i];
                }
            }
            for &v in chunks.remainder() {
                ls[0] += v;
                lq[0] += v * v;
            }
            s += ls.iter().map(|&v| v as f64).sum::<f64>();
            q += lq.iter().map(|&v| v as f64).sum::<f64>();
        }
        (s, q)
    }
}

multiversion! {
    /// out[i] = value[i] · gelu(gate[i])
    pub fn geglu_row(value: &[f32], gate: &[f32], out: &mut [f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(value).zip(gate) {
            *o = v * gelu_erf(g);
        }
    }
}

multiversion! {
    /// dst[i] += src[i]
    pub fn add_assign(dst: &mut [f32], src: &[f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    }
}

multiversion! {
    /// xs[i] *= k
    pub fn scale(xs: &mut [f32], k: f32) {
        for x in xs {
            *x *= k;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0f32;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 0.000_37;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.33), "clamped, no NaN or garbage");
        assert!(exp(100.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_match_libm() {
        for i in -6000..6000 {
            let x = i as f32 * 1e-3;
            let want = candle_core::cpu::erf::erf_f32(x);
            assert!(
                (erf(x) - want).abs() < 6e-7,
                "erf({x}) = {} vs {want}",
                erf(x)
            );
        }
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
    }

    #[test]
    fn softmax_row_sums_match_a_plain_loop() {
        let mut row: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 * 0.17 - 8.0)
            .collect();
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let want: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
        let sum = exp_shifted_sum(&mut row);
        let want_sum: f32 = want.iter().sum();
        assert!((sum - want_sum).abs() / want_sum < 1e-5);
        for (g, w) in row.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6 * w.max(1e-3));
        }
    }

    #[test]
    fn sums_are_exact_enough() {
        let xs: Vec<f32> = (0..100_001).map(|i| (i % 7) as f32 - 3.0 + 100.0).collect();
        let (s, q) = sum_and_squares(&xs);
        let (ws, wq) = xs.iter().fold((0f64, 0f64), |(s, q), &v| {
            (s + v as f64, q + (v as f64) * (v as f64))
        });
        assert!((s - ws).abs() / ws < 1e-7 && (q - wq).abs() / wq < 1e-7);
    }
}
