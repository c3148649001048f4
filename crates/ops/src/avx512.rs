//! The products of linear layers, convolutions and attention on CPUs with AVX-512: f32 with
//! `vfmadd`, and bf16 weights with bf16 products and f32 accumulation (`vdpbf16ps`,
//! AVX512-BF16), as OpenVINO's bf16 mode computes.
//!
//! One micro-kernel serves them all: an 8-row × 32-column output tile accumulated in 16 of the
//! 32 vector registers over a run of K (twice the tile `gemm`'s AVX2 kernel can hold), then
//! written or added. Two loop nests feed it:
//! - [`matmul_wt`] (linear layers): the weights copied a slice at a time (`KC` lanes × 32
//!   columns) into the layout the instructions read, the input rows read where they lie (f32)
//!   or rounded to bf16 pairs once (bf16);
//! - [`product`] (convolutions): the weights read where they lie, the other operand copied a
//!   block per task, and several runs of K (a convolution's taps) accumulated in one pass.
//!
//! Attention and Winograd's products call the micro-kernel directly. Measured on Zen 4 with
//! 2 threads (`examples/rates.rs`): f32 184–210 GFLOP/s on a linear layer's shapes, level with
//! `gemm`, and well ahead where `gemm` would repack per call (convolution taps, attention
//! tiles); bf16 317–370.
//!
//! A bf16 product differs from the f32 one by the input's rounding (about 3 significant
//! digits), the price `--dtype bf16` already pays for its weights.
//!
//! Only used where the CPU has the instructions ([`has_f32`], [`has_bf16`]); elsewhere the
//! callers use `gemm` and widen half-precision weights to f32.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use half::{bf16, f16};
use rayon::prelude::*;

/// Output columns per panel: two 16-lane registers.
const NR: usize = 32;
/// Input rows per micro-tile: 8 rows × 2 registers = 16 accumulators.
const MR: usize = 8;
/// 32-bit lanes of K per weight slice: 1024 × 32 × 4 bytes = 128 KiB, in L2 (measured
/// faster than 128 or 256 lanes).
const KC: usize = 1024;
/// Input rows per block: a thread's consecutive tasks are one block's weight panels, so the
/// block (256 rows × up to KC lanes, ≤ 1 MiB) stays in L2 while the panels pass. Measured in
/// one process against 4 096 (one block, both threads sweeping every row from L3 per panel):
/// the UNet's 8192 × 320 → 2560 layer 100 → 130 GFLOP/s, 8192 × 1280 → 320 158 → 191, the
/// 512-row ones level.
const MC: usize = 256;

/// Whether this CPU has AVX-512F (checked once).
pub fn has_f32() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Whether this CPU has AVX-512F, AVX-512BW and AVX512-BF16 (checked once).
pub fn has_bf16() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        has_f32() && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512bf16")
    })
}

/// A linear layer's weight [n, k] (out, in).
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    /// f32, element (j, i) at `data[j * s0 + i * s1]` (a transposed view works too).
    F32 {
        data: &'a [f32],
        s0: usize,
        s1: usize,
    },
    /// bf16, row-major.
    Bf16(&'a [bf16]),
    /// f16, row-major: multiplied as f32 (the CPU has no f16 products), packed as f16.
    F16(&'a [f16]),
    /// Any of them, laid out for the kernel once and for all (see [`Packed`]).
    Packed(&'a Packed),
}

impl Weight<'_> {
    /// What one 32-bit lane of the weight holds in the product.
    fn lanes(&self) -> Lanes {
        match self {
            Weight::F32 { .. } | Weight::F16(_) => Lanes::F32,
            Weight::Bf16(_) => Lanes::Bf16Pairs,
            Weight::Packed(p) => p.lanes,
        }
    }
}

/// A linear layer's weight [n, k] copied once into the layout [`matmul_wt`] reads: for each
/// panel of 32 output columns, every lane of K × 32 columns (zeros past the last column).
///
/// Why: packing a slice per call transposes the weight with scalar stores; beside a short
/// product (a text encoder's 154 rows, a UNet's 8×8 level) that costs as much as the
/// multiply-adds. Packed at load, the layer keeps only this copy, which takes the weight's own
/// bytes (plus the padding of a last partial panel).
///
/// f16 weights keep their 16 bits in the panels (two columns per lane, 32 columns in one
/// 64-byte row) and the micro-kernel widens each row as it loads it (`vcvtph2ps`): the product
/// is f32's, and no per-call widened copy of the weight is made.
pub struct Packed {
    data: Vec<u32>,
    lanes: Lanes,
    /// f16 values, two columns per lane (`lanes` is then `F32`: what they multiply as).
    f16: bool,
    n: usize,
    k: usize,
}

impl Packed {
    /// Packs an f32 or bf16 weight of `n` rows (outputs) × `k` (inputs). Errors when the CPU
    /// lacks the instructions for its dtype or the slice is short.
    pub fn new(w: Weight, n: usize, k: usize) -> Result<Self, String> {
        let (available, fits) = match w {
            Weight::F32 { data, s0, s1 } => (
                has_f32(),
                n == 0 || k == 0 || (n - 1) * s0 + (k - 1) * s1 < data.len(),
            ),
            Weight::Bf16(data) => (has_bf16(), data.len() >= n * k),
            Weight::F16(data) => (has_f32(), data.len() >= n * k),
            Weight::Packed(_) => return Err("this weight is packed already".into()),
        };
        if !available {
            return Err("this CPU lacks the AVX-512 instructions for this weight".into());
        }
        if !fits {
            return Err(format!("a weight slice too short for {n} × {k}"));
        }
        let lanes = w.lanes();
        let f16 = matches!(w, Weight::F16(_));
        let per_panel = lane_count(lanes, k) * panel_width(f16);
        let mut data = vec![0u32; n.div_ceil(NR) * per_panel];
        if per_panel > 0 {
            data.par_chunks_mut(per_panel)
                .enumerate()
                .for_each(|(panel, dst)| {
                    let cols = (n - panel * NR).min(NR);
                    match w {
                        Weight::F16(data) => pack_f16(data, k, panel * NR, cols, dst),
                        _ => pack_slice(w, k, panel * NR, cols, 0, per_panel / NR, dst),
                    }
                });
        }
        Ok(Self {
            data,
            lanes,
            f16,
            n,
            k,
        })
    }

    /// Outputs (the weight's rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs (the weight's columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Whether the values are bf16.
    pub fn is_bf16(&self) -> bool {
        self.lanes == Lanes::Bf16Pairs
    }

    /// Whether the values are f16.
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// 32-bit lanes per row of K in a panel: 32 columns, or 16 lanes of two f16 columns each.
fn panel_width(f16: bool) -> usize {
    if f16 {
        NR / 2
    } else {
        NR
    }
}

/// Columns j0..j0 + cols of f16 weights [n, k] as one panel: row p of K holds the 32 columns'
/// values in order, two to a lane (zeros past the last column).
fn pack_f16(data: &[f16], k: usize, j0: usize, cols: usize, panel: &mut [u32]) {
    let bits = |c: usize, p: usize| -> u32 {
        if c < cols {
            u32::from(data[(j0 + c) * k + p].to_bits())
        } else {
            0
        }
    };
    for p in 0..k {
        for (lane, dst) in panel[p * NR / 2..(p + 1) * NR / 2].iter_mut().enumerate() {
            *dst = bits(2 * lane, p) | (bits(2 * lane + 1, p) << 16);
        }
    }
}

/// 32-bit lanes that K values take: one each in f32, pairs in bf16.
fn lane_count(lanes: Lanes, k: usize) -> usize {
    match lanes {
        Lanes::F32 => k,
        Lanes::Bf16Pairs => k.div_ceil(2),
    }
}

/// `out[rows, n] = x[rows, k] · wᵀ`, plus `out`'s own values (the bias) when `add` is set.
/// Without `add`, `out` is written before it is read: fresh zero pages are then never mapped
/// read-only first (a second fault and a TLB flush on every core at the first write).
/// Errors when the CPU lacks the instructions or a slice is too short.
pub fn matmul_wt(
    x: &[f32],
    rows: usize,
    k: usize,
    w: Weight,
    n: usize,
    out: &mut [f32],
    add: bool,
) -> Result<(), String> {
    let w_fits = match w {
        Weight::F32 { data, s0, s1 } => {
            n == 0 || k == 0 || (n - 1) * s0 + (k - 1) * s1 < data.len()
        }
        Weight::Bf16(data) => data.len() >= n * k,
        Weight::F16(data) => data.len() >= n * k,
        Weight::Packed(p) => p.n == n && p.k == k,
    };
    let kind = w.lanes();
    let available = match kind {
        Lanes::F32 => has_f32(),
        Lanes::Bf16Pairs => has_bf16(),
    };
    if !available {
        return Err("this CPU lacks the AVX-512 instructions for this product".into());
    }
    if x.len() < rows * k || !w_fits || out.len() < rows * n {
        return Err(format!(
            "AVX-512 product: slices of {} / {} for {rows}×{k} · ({n}×{k})ᵀ, or a weight of \
             another size",
            x.len(),
            out.len()
        ));
    }
    if rows == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    // The input as 32-bit lanes: its own f32 values, or pairs of K rounded to bf16.
    let lanes = lane_count(kind, k);
    let rounded;
    let a: &[u32] = match kind {
        // SAFETY: f32 and u32 have the same size and alignment; the bits are only ever read
        // back as f32.
        Lanes::F32 => unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u32>(), rows * k) },
        Lanes::Bf16Pairs => {
            let mut xb = vec![0u32; rows * lanes];
            xb.par_chunks_mut(lanes * 64)
                .zip(x[..rows * k].par_chunks(k * 64))
                .for_each(|(dst, src)| {
                    // SAFETY: `has_bf16()` was checked above; each chunk holds whole rows.
                    unsafe { round_rows(src, k, lanes, dst) }
                });
            rounded = xb;
            &rounded
        }
    };
    let panels = n.div_ceil(NR);
    let f16_panels = matches!(w, Weight::Packed(p) if p.f16);
    let out_addr = out.as_mut_ptr() as usize;
    // Row block-major: rayon hands each thread a run of consecutive tasks, one block's panels.
    (0..rows.div_ceil(MC) * panels)
        .into_par_iter()
        .for_each_init(
            // Allocated on first use: packed weights never need it.
            Vec::new,
            |slice: &mut Vec<u32>, task| {
                let (r0, panel) = ((task / panels) * MC, task % panels);
                let r1 = (r0 + MC).min(rows);
                let cols = (n - panel * NR).min(NR);
                let mut k0 = 0;
                while k0 < lanes {
                    let kc = (lanes - k0).min(KC);
                    let b = match w {
                        Weight::Packed(p) => {
                            let width = panel_width(p.f16);
                            &p.data[(panel * lanes + k0) * width..][..kc * width]
                        }
                        _ => {
                            slice.resize(KC * NR, 0);
                            pack_slice(w, k, panel * NR, cols, k0, kc, slice);
                            &slice[..kc * NR]
                        }
                    };
                    let mut t0 = r0;
                    while t0 < r1 {
                        let r = (r1 - t0).min(MR);
                        // SAFETY: the instructions were checked above. `a` holds rows × lanes, so
                        // rows t0..t0 + r from lane k0 on have kc lanes each; `b` holds
                        // kc × 32 lanes. Each task writes only its own panel's columns of its
                        // own rows of `out` (rows × n, checked above), so no two tasks touch the
                        // same element.
                        unsafe {
                            let c = (out_addr as *mut f32).add(t0 * n + panel * NR);
                            let a = a.as_ptr().add(t0 * lanes + k0);
                            let b = b.as_ptr();
                            let add = add || k0 > 0;
                            match kind {
                                Lanes::F32 if f16_panels => {
                                    tile_f16(r, a, lanes, kc, b, NR / 2, c, n, cols, add)
                                }
                                Lanes::F32 => tile_f32(r, a, lanes, kc, b, NR, c, n, cols, add),
                                Lanes::Bf16Pairs => {
                                    tile_bf16(r, a, lanes, kc, b, NR, c, n, cols, add)
                                }
                            }
                        }
                        t0 += r;
                    }
                    k0 += kc;
                }
            },
        );
    Ok(())
}

/// What a 32-bit lane of [`product`]'s operands holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    /// One f32.
    F32,
    /// Two bf16 values of K (the lower one first).
    Bf16Pairs,
}

/// One run of K in [`product`]: `len` lanes of A's rows from lane `a_at`, and `len` rows of B
/// from offset `b_at` (a convolution's tap: its weights, and the input shifted under it).
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub a_at: usize,
    pub b_at: usize,
    pub len: usize,
}

/// Output columns per task, and lanes of K per pass over them: B's rows for one pass
/// (`KB` × `QB` lanes, 64 KiB) stay in L2 while every row of A passes.
const QB: usize = 128;
const KB: usize = 128;

/// `C[m, n] = Σ over segments of A[:, a_at..a_at + len] · B[b_at + p·ldb + q]` for lane p
/// of the segment and column q: a convolution's weights [co, taps · ci] (A, read where they
/// lie) against its padded input (B, each tap a shifted view of the same rows).
///
/// C is never stored whole: each task hands its block to `store(row, first column, values)`,
/// one row at a time, so a convolution writes the real output pixels straight from it (with
/// the bias), and no buffer of columns is allocated, touched and read back.
///
/// Errors when the CPU lacks the instructions or an operand is short.
#[allow(clippy::too_many_arguments)]
pub fn product(
    lanes: Lanes,
    a: &[u32],
    lda: usize,
    m: usize,
    segments: &[Segment],
    b: &[u32],
    ldb: usize,
    n: usize,
    store: impl Fn(usize, usize, &[f32]) + Sync,
) -> Result<(), String> {
    let available = match lanes {
        Lanes::F32 => has_f32(),
        Lanes::Bf16Pairs => has_bf16(),
    };
    if !available {
        return Err("this CPU lacks the AVX-512 instructions for this product".into());
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let fits = |s: &Segment| {
        s.len == 0
            || ((m - 1) * lda + s.a_at + s.len <= a.len()
                && s.b_at + (s.len - 1) * ldb + n <= b.len())
    };
    if !segments.iter().all(fits) {
        return Err(format!(
            "AVX-512 product: operands of {} / {} lanes are short for {m} × {n}",
            a.len(),
            b.len(),
        ));
    }
    // Column blocks, and when there are too few of them to share out, groups of A's rows too.
    let threads = rayon::current_num_threads();
    let blocks = n.div_ceil(QB);
    let wanted = (2 * threads).div_ceil(blocks).min(m.div_ceil(MR));
    let group_rows = m.div_ceil(wanted).next_multiple_of(MR);
    let groups = m.div_ceil(group_rows);
    (0..blocks * groups).into_par_iter().for_each_init(
        || (vec![0u32; KB * QB], vec![0f32; group_rows * QB]),
        |(packed, local), task| {
            let (q0, r0) = ((task / groups) * QB, (task % groups) * group_rows);
            let (q1, r1) = ((q0 + QB).min(n), (r0 + group_rows).min(m));
            let width = q1 - q0;
            let local = &mut local[..(r1 - r0) * width];
            let mut written = false;
            for s in segments {
                let mut k0 = 0;
                while k0 < s.len {
                    let kc = (s.len - k0).min(KB);
                    // The first pass writes the task's block, the others add to it.
                    let add = std::mem::replace(&mut written, true);
                    // B's block, copied together: its rows lie far apart (one input channel
                    // each), which would spread one tile's loads over as many pages and
                    // cache sets.
                    for (p, dst) in packed.chunks_exact_mut(width).take(kc).enumerate() {
                        let at = s.b_at + (k0 + p) * ldb + q0;
                        dst.copy_from_slice(&b[at..at + width]);
                    }
                    let mut t0 = r0;
                    while t0 < r1 {
                        let r = (r1 - t0).min(MR);
                        let mut q = 0;
                        while q < width {
                            let cols = (width - q).min(NR);
                            // SAFETY: instructions checked above. A's rows t0..t0 + r hold
                            // lanes a_at + k0.. + kc (checked above); `packed` holds kc rows
                            // of `width` lanes, and the kernel reads no column past `cols`;
                            // `local` holds the task's rows × `width`.
                            unsafe {
                                let a = a.as_ptr().add(t0 * lda + s.a_at + k0);
                                let b = packed.as_ptr().add(q);
                                let c = local.as_mut_ptr().add((t0 - r0) * width + q);
                                match lanes {
                                    Lanes::F32 => {
                                        tile_f32(r, a, lda, kc, b, width, c, width, cols, add)
                                    }
                                    Lanes::Bf16Pairs => {
                                        tile_bf16(r, a, lda, kc, b, width, c, width, cols, add)
                                    }
                                }
                            }
                            q += cols;
                        }
                        t0 += r;
                    }
                    k0 += kc;
                }
            }
            if !written {
                local.fill(0.0); // no lanes at all: a product of nothing
            }
            for (row, values) in local.chunks_exact(width).enumerate() {
                store(r0 + row, q0, values);
            }
        },
    );
    Ok(())
}

/// Lanes k0..k0 + kc of output columns j0..j0 + cols into `slice` as [lane][32 columns];
/// columns past `cols` are zeros. A bf16 lane is a pair of K (a zero pads an odd K).
fn pack_slice(
    w: Weight,
    k: usize,
    j0: usize,
    cols: usize,
    k0: usize,
    kc: usize,
    slice: &mut [u32],
) {
    let slice = &mut slice[..kc * NR];
    if cols < NR {
        slice.fill(0);
    }
    match w {
        Weight::F32 { data, s0, s1: 1 } => {
            for c in 0..cols {
                let row = &data[(j0 + c) * s0 + k0..][..kc];
                for (p, v) in row.iter().enumerate() {
                    slice[p * NR + c] = v.to_bits();
                }
            }
        }
        Weight::F32 { data, s0, s1 } => {
            for p in 0..kc {
                for c in 0..cols {
                    slice[p * NR + c] = data[(j0 + c) * s0 + (k0 + p) * s1].to_bits();
                }
            }
        }
        Weight::F16(data) => {
            for c in 0..cols {
                let row = &data[(j0 + c) * k + k0..][..kc];
                for (p, v) in row.iter().enumerate() {
                    slice[p * NR + c] = v.to_f32().to_bits();
                }
            }
        }
        Weight::Bf16(data) => {
            for c in 0..cols {
                let row = &data[(j0 + c) * k..(j0 + c + 1) * k];
                for p in 0..kc {
                    let i = 2 * (k0 + p);
                    let lo = row[i].to_bits();
                    let hi = row.get(i + 1).map_or(0, |v| v.to_bits());
                    slice[p * NR + c] = u32::from(lo) | (u32::from(hi) << 16);
                }
            }
        }
        // f16 panels: widened, a column pair per lane.
        Weight::Packed(p) if p.f16 => {
            let panel = &p.data[((j0 / NR) * p.k + k0) * NR / 2..][..kc * NR / 2];
            for (dst, &pair) in slice.chunks_exact_mut(2).zip(panel) {
                dst[0] = f16::from_bits(pair as u16).to_f32().to_bits();
                dst[1] = f16::from_bits((pair >> 16) as u16).to_f32().to_bits();
            }
        }
        // Already in this layout: the panel's own lanes (`j0` is a multiple of 32 here).
        Weight::Packed(p) => {
            let lanes = lane_count(p.lanes, p.k);
            slice.copy_from_slice(&p.data[((j0 / NR) * lanes + k0) * NR..][..kc * NR]);
        }
    }
}

/// eˣ for 16 lanes: `simd::exp`'s Cephes polynomial (the same results to the last bit but for
/// the fused multiply-adds), with the power of two applied by `vscalefps`. Clamped below, not
/// above: the callers pass x ≤ 0 (scores less their maximum). NaN stays NaN.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp_ps(x: __m512) -> __m512 {
    use crate::simd::{EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
    let x = _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(0.5),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let e = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    _mm512_scalef_ps(_mm512_add_ps(e, _mm512_set1_ps(1.0)), n)
}

/// Rounds whole input rows to bf16 pairs (round to nearest even), zero-padding an odd K.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn round_rows(x: &[f32], k: usize, lanes: usize, out: &mut [u32]) {
    for (src, dst) in x.chunks_exact(k).zip(out.chunks_exact_mut(lanes)) {
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

/// The first `cols` (≤ 16 counted) of 16 lanes.
#[inline]
fn lane_mask(cols: usize) -> __mmask16 {
    if cols >= 16 {
        0xffff
    } else {
        (1u16 << cols) - 1
    }
}

/// One row of B's 32 columns as two registers of 32-bit lanes: masked, so that no column past
/// the tile's last is read.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_lanes(row: *const u32, m0: __mmask16, m1: __mmask16) -> (__m512i, __m512i) {
    (
        _mm512_maskz_loadu_epi32(m0, row.cast()),
        _mm512_maskz_loadu_epi32(m1, row.add(16).cast()),
    )
}

/// One row of an f16 panel (32 columns in 64 bytes) widened to two registers of f32. Panels
/// are whole (zeros past the last column), so the row is read unmasked.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_f16_columns(row: *const u32, _: __mmask16, _: __mmask16) -> (__m512i, __m512i) {
    let v = _mm512_loadu_si512(row.cast());
    (
        _mm512_castps_si512(_mm512_cvtph_ps(_mm512_castsi512_si256(v))),
        _mm512_castps_si512(_mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v))),
    )
}

/// `acc + a · b` for 16 f32 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn madd_f32(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
    _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc)
}

/// `acc + a₀·b₀ + a₁·b₁` for 16 lanes of bf16 pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn madd_bf16(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
    _mm512_dpbf16_ps(
        acc,
        std::mem::transmute::<__m512i, __m512bh>(a),
        std::mem::transmute::<__m512i, __m512bh>(b),
    )
}

/// One micro-kernel per instruction set: `R` rows × 32 columns, accumulated over `kc` lanes
/// in 2·R registers and added to `c`, plus the dispatch from a row count to its kernel.
/// [`tile_f32`] or [`tile_bf16`], for callers that pick one at run time.
pub(crate) type Tile =
    unsafe fn(usize, *const u32, usize, usize, *const u32, usize, *mut f32, usize, usize, bool);

macro_rules! micro_kernel {
    ($tile:ident, $kernel:ident, $features:literal, $load:ident, $madd:ident) => {
        /// One tile of `r` ≤ 8 rows: dispatches to the kernel for that row count.
        ///
        /// SAFETY: the CPU has the kernel's instructions; `a` points at `r` rows of `kc`
        /// lanes, `lda` apart; `b` at `kc` rows of `cols` lanes, `ldb` apart; `c` at `r` rows of
        /// at least `cols` floats, `ldc` apart. The tile is added to `c` (`add`), or
        /// written over it.
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $tile(
            r: usize,
            a: *const u32,
            lda: usize,
            kc: usize,
            b: *const u32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
            cols: usize,
            add: bool,
        ) {
            match r {
                8 => $kernel::<8>(a, lda, kc, b, ldb, c, ldc, cols, add),
                7 => $kernel::<7>(a, lda, kc, b, ldb, c, ldc, cols, add),
                6 => $kernel::<6>(a, lda, kc, b, ldb, c, ldc, cols, add),
                5 => $kernel::<5>(a, lda, kc, b, ldb, c, ldc, cols, add),
                4 => $kernel::<4>(a, lda, kc, b, ldb, c, ldc, cols, add),
                3 => $kernel::<3>(a, lda, kc, b, ldb, c, ldc, cols, add),
                2 => $kernel::<2>(a, lda, kc, b, ldb, c, ldc, cols, add),
                _ => $kernel::<1>(a, lda, kc, b, ldb, c, ldc, cols, add),
            }
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        unsafe fn $kernel<const R: usize>(
            a: *const u32,
            lda: usize,
            kc: usize,
            b: *const u32,
            ldb: usize,
            c: *mut f32,
            ldc: usize,
            cols: usize,
            add: bool,
        ) {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            // Masked loads: a last, partial tile reads no column past `cols`.
            let (m0, m1) = (lane_mask(cols), lane_mask(cols.saturating_sub(16)));
            for p in 0..kc {
                let (b0, b1) = $load(b.add(p * ldb), m0, m1);
                for (row, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(a.add(row * lda + p).read_unaligned() as i32);
                    acc[0] = $madd(acc[0], x, b0);
                    acc[1] = $madd(acc[1], x, b1);
                }
            }
            for (row, acc) in acc.iter().enumerate() {
                let dst = c.add(row * ldc);
                if cols == NR && add {
                    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), acc[0]));
                    let hi = dst.add(16);
                    _mm512_storeu_ps(hi, _mm512_add_ps(_mm512_loadu_ps(hi), acc[1]));
                } else if cols == NR {
                    _mm512_storeu_ps(dst, acc[0]);
                    _mm512_storeu_ps(dst.add(16), acc[1]);
                } else {
                    let mut sum = [0f32; NR];
                    _mm512_storeu_ps(sum.as_mut_ptr(), acc[0]);
                    _mm512_storeu_ps(sum.as_mut_ptr().add(16), acc[1]);
                    for (j, &s) in sum.iter().take(cols).enumerate() {
                        *dst.add(j) = if add { *dst.add(j) + s } else { s };
                    }
                }
            }
        }
    };
}

micro_kernel!(tile_f32, kernel_f32, "avx512f", load_lanes, madd_f32);
micro_kernel!(
    tile_bf16,
    kernel_bf16,
    "avx512f,avx512bw,avx512bf16",
    load_lanes,
    madd_bf16
);
micro_kernel!(tile_f16, kernel_f16, "avx512f", load_f16_columns, madd_f32);

#[cfg(test)]
mod tests {
    use super::*;

    fn input(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0) - 0.5)
            .collect()
    }

    fn weights(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 104_729 % 997) as f32 / 997.0) - 0.5)
            .collect()
    }

    /// Sizes with odd K, partial panels, every row-tile size, and more than one K slice and
    /// row block.
    const SIZES: [(usize, usize, usize); 5] = [
        (13, 77, 45),
        (8, 64, 32),
        (1, 3, 1),
        (17, 130, 70),
        (300, 530, 40),
    ];

    /// `bias + x · wᵀ` in f64 for weights given as f32 values.
    fn exact(x: &[f32], w: &[f32], bias: &[f32], rows: usize, k: usize) -> Vec<f64> {
        let n = bias.len();
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[j * k + i]))
                    .sum::<f64>()
                    + f64::from(bias[j]);
            }
        }
        out
    }

    fn worst(got: &[f32], want: &[f64]) -> f64 {
        got.iter()
            .zip(want)
            .map(|(&g, &w)| (f64::from(g) - w).abs())
            .fold(0.0, f64::max)
    }

    /// Against an f64 product: only the f32 accumulation order may differ. Also through a
    /// transposed weight (strides swapped).
    #[test]
    fn f32_matches_the_exact_product() {
        if !has_f32() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for (rows, k, n) in SIZES {
            let (x, w) = (input(rows * k), weights(n * k));
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
            let want = exact(&x, &w, &bias, rows, k);
            let mut out: Vec<f32> = (0..rows).flat_map(|_| bias.iter().copied()).collect();
            let weight = Weight::F32 {
                data: &w,
                s0: k,
                s1: 1,
            };
            matmul_wt(&x, rows, k, weight, n, &mut out, true).unwrap();
            assert!(worst(&out, &want) < 1e-4, "{rows}×{k}×{n}");
            // Without `add`, whatever `out` held is written over.
            let mut out = vec![f32::NAN; rows * n];
            matmul_wt(&x, rows, k, weight, n, &mut out, false).unwrap();
            let zero = vec![0f32; n];
            assert!(
                worst(&out, &exact(&x, &w, &zero, rows, k)) < 1e-4,
                "{rows}×{k}×{n} written"
            );
            // The same weight stored transposed, [k, n].
            let wt: Vec<f32> = (0..k * n).map(|t| w[(t % n) * k + t / n]).collect();
            let mut out: Vec<f32> = (0..rows).flat_map(|_| bias.iter().copied()).collect();
            let weight = Weight::F32 {
                data: &wt,
                s0: 1,
                s1: n,
            };
            matmul_wt(&x, rows, k, weight, n, &mut out, true).unwrap();
            assert!(worst(&out, &want) < 1e-4, "{rows}×{k}×{n} transposed");
        }
    }

    /// Against an f64 product of the same bf16-rounded inputs and weights.
    #[test]
    fn bf16_matches_the_product_of_the_rounded_values() {
        if !has_bf16() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let round =
            |v: &[f32]| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
        for (rows, k, n) in SIZES {
            let (x, w) = (input(rows * k), weights(n * k));
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
            let want = exact(&round(&x), &round(&w), &bias, rows, k);
            let mut out: Vec<f32> = (0..rows).flat_map(|_| bias.iter().copied()).collect();
            matmul_wt(&x, rows, k, Weight::Bf16(&wb), n, &mut out, true).unwrap();
            assert!(worst(&out, &want) < 1e-4, "{rows}×{k}×{n}");
        }
    }

    /// f16 weights multiply as their f32 values, packed (kept 16-bit, widened as loaded) or
    /// not (widened as each slice is packed).
    #[test]
    fn f16_matches_the_product_of_the_rounded_weights() {
        if !has_f32() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for (rows, k, n) in SIZES {
            let (x, w) = (input(rows * k), weights(n * k));
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let rounded: Vec<f32> = wh.iter().map(|v| v.to_f32()).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01).collect();
            let want = exact(&x, &rounded, &bias, rows, k);
            let packed = Packed::new(Weight::F16(&wh), n, k).unwrap();
            assert!(packed.is_f16() && !packed.is_bf16());
            assert_eq!(packed.bytes(), n.div_ceil(NR) * NR * k * 2);
            for weight in [Weight::F16(&wh), Weight::Packed(&packed)] {
                let mut out: Vec<f32> = (0..rows).flat_map(|_| bias.iter().copied()).collect();
                matmul_wt(&x, rows, k, weight, n, &mut out, true).unwrap();
                assert!(worst(&out, &want) < 1e-4, "{rows}×{k}×{n}");
            }
        }
    }

    #[test]
    fn short_slices_are_refused() {
        let (x, w) = (input(6), weights(6));
        let mut out = vec![0f32; 4];
        let weight = Weight::F32 {
            data: &w[..5],
            s0: 3,
            s1: 1,
        };
        assert!(matmul_wt(&x, 2, 3, weight, 2, &mut out, true).is_err());
    }

    #[test]
    fn vector_exp_matches_the_scalar_one() {
        if !has_f32() {
            return;
        }
        let xs: Vec<f32> = (0..87_008).map(|i| -(i as f32) * 1e-3 - 0.000_37).collect();
        let mut worst = 0f32;
        for chunk in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F checked above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp_ps(_mm512_loadu_ps(chunk.as_ptr()))) };
            for (&g, &x) in got.iter().zip(chunk) {
                let want = x.exp();
                worst = worst.max(((g - want) / want).abs());
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        let mut edge = [0f32; 16];
        let input = [0.0, -200.0, f32::NEG_INFINITY, f32::NAN].repeat(4);
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(edge.as_mut_ptr(), exp_ps(_mm512_loadu_ps(input.as_ptr()))) };
        assert_eq!(
            edge[0], 1.0,
            "exp(0) is exactly 1: an unmoved maximum rescales nothing"
        );
        assert_eq!(
            edge[1],
            crate::simd::exp(-87.33),
            "clamped like the scalar exp"
        );
        assert!(edge[2] >= 0.0 && edge[2] < 1e-37, "exp(−∞) ≈ 0, not NaN");
        assert!(edge[3].is_nan(), "NaN stays NaN");
    }
}
