//! Multi-head scaled dot-product attention over token rows, a tile of queries at a time.
//!
//! The plain way (candle's matmul, softmax, matmul) splits the heads out with a transposed copy
//! of q, k and v, writes the whole [heads, T, T] score matrix (64 MiB per head and image at
//! 512², T = 4096), sweeps it again for the softmax and reads it back for the values. Here each
//! task takes one image, one head and a tile of queries whose score rows fit in the core's L2:
//! scores by `gemm` reading q and k in place through strides, the softmax on the rows while they
//! are hot, the values multiplied straight into the output rows. Nothing of size T×T is written.
//! On CPUs with AVX-512, f32 attention goes further (`avx512::attention_f32`): 128 queries per
//! task, the keys in blocks of 512 with an online softmax, both products transposed so that a
//! head's channels fill the micro-kernel's rows.

use candle_core::{Result, Tensor, D};
use rayon::prelude::*;

use super::profile::{scope, Kind};
use super::{cpu_slice, own_kernel, simd, SharedMut};

/// softmax(q·kᵀ / √d) · v per head. `q` is [batch, tokens, heads·d], `k` and `v` are
/// [batch, context tokens, heads·d]; the result has `q`'s shape, heads side by side as the
/// output projection expects.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    run(q, k, v, heads, false)
}

/// [`attention`] for models whose weights are bf16 (`--dtype bf16`): on CPUs with
/// AVX512-BF16 the probabilities · values product runs in bf16 with f32 accumulation (values
/// and probabilities rounded to bf16, as every bf16 linear layer rounds its input); the
/// scores, the softmax and the sums stay f32 (see `avx512::attention` for why). Elsewhere, the
/// same as [`attention`].
pub fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::has_bf16() && own_kernel(&[q, k, v]) {
        return scope(Kind::Attention, || kernel_with(q, k, v, heads, false, true));
    }
    attention(q, k, v, heads)
}

/// [`attention`] where query i sees only keys 0..=i (a text encoder's causal mask); q and k have
/// the same tokens.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    if q.dims() != k.dims() {
        candle_core::bail!(
            "causal attention: q {:?} and k {:?} differ",
            q.dims(),
            k.dims()
        );
    }
    run(q, k, v, heads, true)
}

fn run(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    scope(Kind::Attention, || {
        let (_, _, inner) = q.dims3()?;
        if heads == 0 || inner % heads != 0 {
            candle_core::bail!("attention: {inner} channels do not split into {heads} heads");
        }
        if own_kernel(&[q, k, v]) {
            kernel(q, k, v, heads, causal)
        } else {
            reference(q, k, v, heads, causal)
        }
    })
}

/// candle's ops, for other devices and dtypes (and as the kernel's test oracle).
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let hd = inner / heads;
    let split = |t: &Tensor| -> Result<Tensor> {
        let m = t.dim(1)?;
        t.reshape((b, m, heads, hd))?.transpose(1, 2)?.contiguous()
    };
    // Scaling q (tokens × d) rather than the scores (tokens × tokens) saves a pass.
    let q = (split(q)? * (hd as f64).powf(-0.5))?;
    let (k, v) = (split(k)?, split(v)?);
    let mut scores = q.matmul(&k.t()?)?;
    if causal {
        let m = k.dim(2)?;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, m), q.device())?.to_dtype(scores.dtype())?;
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = if scores.track_op() {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, inner))
}

/// Score rows per task: as many as keep a tile of scores within ~256 KiB (L2), at least 8.
fn tile_rows(context: usize) -> usize {
    (65_536 / context.max(1)).clamp(8, 256)
}

/// Each row of a tile's scores (`m` keys, rows from query r0 on) replaced by exp(score − max),
/// unnormalised; returns each row's 1 / sum, by which its output row is scaled afterwards.
/// Causal: query r0 + r weighs keys 0..=r0 + r; the rest get probability 0.
fn softmax_rows(scores: &mut [f32], m: usize, r0: usize, causal: bool) -> [f32; 256] {
    let mut inv = [0f32; 256];
    for (r, row) in scores.chunks_exact_mut(m).enumerate() {
        let seen = if causal { (r0 + r + 1).min(m) } else { m };
        let (kept, masked) = row.split_at_mut(seen);
        inv[r] = 1.0 / simd::exp_shifted_sum(kept);
        masked.fill(0.0);
    }
    inv
}

fn kernel(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    kernel_with(q, k, v, heads, causal, false)
}

/// The kernel; `bf16` picks the bf16 products (only asked for where the CPU has them).
fn kernel_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
    bf16: bool,
) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    if heads == 0 || inner % heads != 0 {
        candle_core::bail!("attention: {inner} channels do not split into {heads} heads");
    }
    let (kb, m, k_inner) = k.dims3()?;
    if kb != b || k_inner != inner || v.dims() != k.dims() {
        candle_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} do not agree",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let hd = inner / heads;
    let scale = (hd as f32).powf(-0.5);
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (
        candle_core::Storage::Cpu(qc),
        candle_core::Storage::Cpu(kc),
        candle_core::Storage::Cpu(vc),
    ) = (&*qs, &*ks, &*vs)
    else {
        candle_core::bail!("attention kernel: tensors must be on the CPU");
    };
    let (qd, kd, vd) = (
        cpu_slice(qc, ql, "attention q")?,
        cpu_slice(kc, kl, "attention k")?,
        cpu_slice(vc, vl, "attention v")?,
    );
    let mut out = vec![0f32; b * n * inner];
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bf16;
    #[cfg(target_arch = "x86_64")]
    if crate::avx512::has_f32() {
        let geometry = Heads {
            b,
            n,
            m,
            heads,
            hd,
            inner,
            scale,
            causal,
        };
        let bf16_values = bf16 && crate::avx512::has_bf16();
        if causal || bf16_values {
            avx512::attention(&geometry, qd, kd, vd, &mut out, bf16_values);
        } else {
            avx512::attention_f32(&geometry, qd, kd, vd, &mut out);
        }
        drop((qs, ks, vs));
        return Tensor::from_vec(out, (b, n, inner), q.device());
    }
    let dst = SharedMut(out.as_mut_ptr());
    let rows = tile_rows(m);
    let tiles = n.div_ceil(rows);
    (0..b * heads * tiles).into_par_iter().for_each_init(
        || vec![0f32; rows * m],
        |scores, task| {
            let (bh, tile) = (task / tiles, task % tiles);
            let (bi, h) = (bh / heads, bh % heads);
            let r0 = tile * rows;
            let tr = rows.min(n - r0);
            let q0 = bi * n * inner + r0 * inner + h * hd;
            let kv0 = bi * m * inner + h * hd;
            let scores = &mut scores[..tr * m];
            // SAFETY (both gemm calls): the index arithmetic stays inside q, k, v (rows r0..r0+tr
            // of image bi, columns h·hd..(h+1)·hd) and inside this task's `scores`; the output
            // rows r0..r0+tr, columns of head h, belong to this task alone.
            unsafe {
                // scores[tr × m] = scale · q_tile[tr × hd] · kᵀ[hd × m]
                gemm::gemm(
                    tr,
                    m,
                    hd,
                    scores.as_mut_ptr(),
                    1,
                    m as isize,
                    false,
                    qd.as_ptr().add(q0),
                    1,
                    inner as isize,
                    kd.as_ptr().add(kv0),
                    inner as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let inv = softmax_rows(scores, m, r0, causal);
            let o0 = bi * n * inner + r0 * inner + h * hd;
            unsafe {
                // out_tile[tr × hd] = p[tr × m] · v[m × hd]
                gemm::gemm(
                    tr,
                    hd,
                    m,
                    dst.get().add(o0),
                    1,
                    inner as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    m as isize,
                    vd.as_ptr().add(kv0),
                    1,
                    inner as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                for (r, &k) in inv.iter().enumerate().take(tr) {
                    let row = std::slice::from_raw_parts_mut(dst.get().add(o0 + r * inner), hd);
                    simd::scale(row, k);
                }
            }
        },
    );
    drop((qs, ks, vs));
    Tensor::from_vec(out, (b, n, inner), q.device())
}

/// The sizes of one attention call.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Heads {
    b: usize,
    /// Query tokens, key/value tokens.
    n: usize,
    m: usize,
    heads: usize,
    /// Channels per head, and of all heads side by side.
    hd: usize,
    inner: usize,
    scale: f32,
    causal: bool,
}

/// The same tiles on CPUs with AVX-512, both products by `avx512`'s micro-kernel instead of
/// `gemm`, which packed the whole of k and v again for every tile of 16–256 queries. Here each
/// head's keys are laid out once as the kernel's right operand (32-key panels), and the values
/// are read where they lie.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::avx512::{tile_bf16, tile_f32, Tile};
    use half::bf16;

    /// Keys per panel of the packed k.
    const NR: usize = 32;

    /// `c[rows, cols] = a[rows, kc] · b[kc, cols]` in the micro-kernel's 8-row tiles (32-bit
    /// lanes: f32 values for `tile_f32`, bf16 pairs for `tile_bf16`).
    ///
    /// SAFETY: the CPU has `tile`'s instructions; `a` holds `rows` rows of `kc` lanes `lda`
    /// apart, `b` `kc` rows of `cols` ≤ 32 lanes `ldb` apart, `c` `rows` rows of `cols` floats
    /// `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_of<A, B>(
        tile: Tile,
        rows: usize,
        a: *const A,
        lda: usize,
        kc: usize,
        b: *const B,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        add: bool,
    ) {
        let mut t = 0;
        while t < rows {
            let r = (rows - t).min(8);
            let (a, c) = (a.add(t * lda).cast(), c.add(t * ldc));
            tile(r, a, lda, kc, b.cast(), ldb, c, ldc, cols, add);
            t += r;
        }
    }

    /// With `bf16_values`, the probabilities and values are multiplied in bf16 (each head's
    /// values laid out once as key pairs × channels, each tile's probabilities rounded to
    /// pairs). The scores stay f32 either way: they go through `exp`, which turns a score's
    /// rounding into a relative error of the probability (bf16 scores doubled the bundled
    /// model's image difference, to mean 2.3/255); probabilities are averaged over the keys.
    pub(super) fn attention(
        g: &Heads,
        qd: &[f32],
        kd: &[f32],
        vd: &[f32],
        out: &mut [f32],
        bf16_values: bool,
    ) {
        let Heads {
            b,
            n,
            m,
            heads,
            hd,
            inner,
            scale,
            causal,
        } = *g;
        // k of image i, head h as panels [key / 32][channel][key % 32], zero past the last key.
        let panels = m.div_ceil(NR);
        let per_head = panels * hd * NR;
        let mut kp = vec![0f32; b * heads * per_head];
        kp.par_chunks_mut(per_head)
            .enumerate()
            .for_each(|(bh, dst)| {
                let (bi, h) = (bh / heads, bh % heads);
                for key in 0..m {
                    let src = &kd[(bi * m + key) * inner + h * hd..][..hd];
                    let (p, c) = (key / NR, key % NR);
                    for (d, &v) in src.iter().enumerate() {
                        dst[(p * hd + d) * NR + c] = v;
                    }
                }
            });
        // With bf16 values: v of image i, head h as [key pair][channel] (a zero pads an odd m).
        let ml = m.div_ceil(2);
        let v_head = ml * hd;
        let mut vp = vec![0u32; if bf16_values { b * heads * v_head } else { 0 }];
        vp.par_chunks_mut(v_head.max(1))
            .enumerate()
            .for_each(|(bh, dst)| {
                let (bi, h) = (bh / heads, bh % heads);
                let row = |key: usize| &vd[(bi * m + key) * inner + h * hd..][..hd];
                for (l, dst) in dst.chunks_exact_mut(hd).enumerate() {
                    let (lo, hi) = (row(2 * l), (2 * l + 1 < m).then(|| row(2 * l + 1)));
                    for (d, dst) in dst.iter_mut().enumerate() {
                        let pair = [lo[d], hi.map_or(0.0, |hi| hi[d])].map(bf16::from_f32);
                        *dst = u32::from(pair[0].to_bits()) | (u32::from(pair[1].to_bits()) << 16);
                    }
                }
            });
        let dst = SharedMut(out.as_mut_ptr());
        let rows = tile_rows(m);
        let tiles = n.div_ceil(rows);
        (0..b * heads * tiles).into_par_iter().for_each_init(
            || {
                let probs = vec![0u32; if bf16_values { rows * ml } else { 0 }];
                (vec![0f32; rows * m], vec![0f32; rows * hd], probs)
            },
            |(scores, q, probs), task| {
                let (bh, tile) = (task / tiles, task % tiles);
                let (bi, h) = (bh / heads, bh % heads);
                let r0 = tile * rows;
                let tr = rows.min(n - r0);
                let scores = &mut scores[..tr * m];
                // The tile's queries, scaled: the scores come out scaled.
                for (r, dst) in q.chunks_exact_mut(hd).take(tr).enumerate() {
                    let src = &qd[(bi * n + r0 + r) * inner + h * hd..][..hd];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v * scale;
                    }
                }
                let kp = &kp[bh * per_head..(bh + 1) * per_head];
                for p in 0..panels {
                    let cols = (m - p * NR).min(NR);
                    // SAFETY: AVX-512 checked by the caller. A: the tr × hd scaled queries;
                    // B: panel p of this head's keys (hd × 32); C: `scores` (tr × m),
                    // columns 32p..32p + cols.
                    unsafe {
                        rows_of(
                            tile_f32,
                            tr,
                            q.as_ptr(),
                            hd,
                            hd,
                            kp.as_ptr().add(p * hd * NR),
                            NR,
                            scores.as_mut_ptr().add(p * NR),
                            m,
                            cols,
                            false,
                        );
                    }
                }
                let inv = softmax_rows(scores, m, r0, causal);
                let o0 = (bi * n + r0) * inner + h * hd;
                if bf16_values {
                    // SAFETY: AVX512-BF16 checked by the caller; `scores` holds tr rows of m,
                    // `probs` room for tr rows of ml lanes.
                    unsafe { crate::avx512::round_rows(scores, m, ml, &mut probs[..tr * ml]) };
                }
                let vp = &vp[(bh * v_head).min(vp.len())..];
                let v0 = bi * m * inner + h * hd;
                let mut d0 = 0;
                while d0 < hd {
                    let cols = (hd - d0).min(32);
                    // SAFETY: A: the tr × m probabilities (f32, or ml bf16 pairs); B: this
                    // head's values, m rows `inner` apart (or ml pair rows `hd` apart), columns
                    // d0..d0 + cols of the head; C: output rows r0..r0 + tr, the same columns
                    // of head h, which belong to this task alone.
                    unsafe {
                        let c = dst.get().add(o0 + d0);
                        if bf16_values {
                            let b = vp.as_ptr().add(d0);
                            rows_of(
                                tile_bf16,
                                tr,
                                probs.as_ptr(),
                                ml,
                                ml,
                                b,
                                hd,
                                c,
                                inner,
                                cols,
                                false,
                            );
                        } else {
                            let b = vd.as_ptr().add(v0 + d0);
                            rows_of(
                                tile_f32,
                                tr,
                                scores.as_ptr(),
                                m,
                                m,
                                b,
                                inner,
                                c,
                                inner,
                                cols,
                                false,
                            );
                        }
                    }
                    d0 += cols;
                }
                for (r, &k) in inv.iter().enumerate().take(tr) {
                    // SAFETY: output row r0 + r, head h's columns: this task's own.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(dst.get().add(o0 + r * inner), hd)
                    };
                    simd::scale(row, k);
                }
            },
        );
    }

    /// Queries per task of [`attention_f32`]: the columns of its transposed score blocks.
    const QN: usize = 128;
    /// Keys per block: a block's scores (512 × 128 floats, 256 KiB) stay in L2 from the
    /// product that writes them, through the softmax, to the product that reads them. Against
    /// 128 queries × 256 keys, 64 × 512 and 256 × 128, at 4 096 tokens and 8 heads × 40: level
    /// or up to 10% slower.
    const KB: usize = 512;

    /// f32 attention with the products transposed, a block of keys at a time (an online
    /// softmax, as FlashAttention computes it):
    /// - scoresᵀ [keys × queries] = k_block · qᵀ: the keys are the micro-kernel's rows, read
    ///   where they lie, and a task's 128 queries its columns, copied once;
    /// - each query's running maximum and sum are a column's, so the softmax runs across
    ///   16 queries per register with no horizontal reductions;
    /// - outᵀ [channels × queries] += vᵀ_block · probabilitiesᵀ: the head's channels are the
    ///   rows, so a 40-wide head is five full 8-row tiles where the untransposed product wastes
    ///   24 of 64 columns.
    ///
    /// Each task reads a head's keys and values once per 128 queries, against once per 16 in
    /// [`attention`], whose whole score rows (4 096 keys at 512²) must fit in L2.
    pub(super) fn attention_f32(g: &Heads, qd: &[f32], kd: &[f32], vd: &[f32], out: &mut [f32]) {
        let Heads {
            b,
            n,
            m,
            heads,
            hd,
            inner,
            scale,
            ..
        } = *g;
        // v of image i, head h transposed: [channel][key], rows `ldv` apart. The padding keeps
        // the micro-kernel's 8 rows out of one L1 set (4 096 keys: rows 16 KiB apart would be).
        let ldv = m + 16;
        let per_head = hd * ldv;
        let mut vt = vec![0f32; b * heads * per_head];
        vt.par_chunks_mut(per_head)
            .enumerate()
            .for_each(|(bh, dst)| {
                let (bi, h) = (bh / heads, bh % heads);
                for key in 0..m {
                    let src = &vd[(bi * m + key) * inner + h * hd..][..hd];
                    for (d, &v) in src.iter().enumerate() {
                        dst[d * ldv + key] = v;
                    }
                }
            });
        let dst = SharedMut(out.as_mut_ptr());
        let tiles = n.div_ceil(QN);
        (0..b * heads * tiles).into_par_iter().for_each_init(
            || {
                // qᵀ, one block's scoresᵀ, outᵀ.
                (
                    vec![0f32; hd * QN],
                    vec![0f32; KB * QN],
                    vec![0f32; hd * QN],
                )
            },
            |(qt, st, ot), task| {
                let (bh, tile) = (task / tiles, task % tiles);
                let (bi, h) = (bh / heads, bh % heads);
                let q0 = tile * QN;
                let qn = QN.min(n - q0);
                // Columns computed: whole 32-column panels; past `qn` the queries are zero.
                let width = qn.div_ceil(NR) * NR;
                qt.fill(0.0);
                for q in 0..qn {
                    let src = &qd[(bi * n + q0 + q) * inner + h * hd..][..hd];
                    for (d, &v) in src.iter().enumerate() {
                        qt[d * QN + q] = v * scale;
                    }
                }
                ot.fill(0.0);
                let mut max = [f32::NEG_INFINITY; QN];
                let mut sum = [0f32; QN];
                let vt = &vt[bh * per_head..(bh + 1) * per_head];
                let mut j0 = 0;
                while j0 < m {
                    let kb = KB.min(m - j0);
                    let st = &mut st[..kb * QN];
                    for c in (0..width).step_by(NR) {
                        // SAFETY: AVX-512 checked by the caller. A: keys j0..j0 + kb of this
                        // head (hd channels, rows `inner` apart); B: qᵀ (hd rows of QN),
                        // columns c..c + 32; C: scoresᵀ (kb rows of QN), the same columns.
                        unsafe {
                            rows_of(
                                tile_f32,
                                kb,
                                kd.as_ptr().add((bi * m + j0) * inner + h * hd),
                                inner,
                                hd,
                                qt.as_ptr().add(c),
                                QN,
                                st.as_mut_ptr().add(c),
                                QN,
                                NR,
                                false,
                            );
                        }
                    }
                    // SAFETY: AVX-512 checked by the caller.
                    unsafe { online_softmax(st, width, &mut max, &mut sum, ot) };
                    for c in (0..width).step_by(NR) {
                        // SAFETY: A: vᵀ rows (hd, `ldv` apart), keys j0..j0 + kb; B: the block's
                        // probabilitiesᵀ (kb rows of QN), columns c..c + 32; C: outᵀ (hd rows of
                        // QN), the same columns, added to.
                        unsafe {
                            rows_of(
                                tile_f32,
                                hd,
                                vt.as_ptr().add(j0),
                                ldv,
                                kb,
                                st.as_ptr().add(c),
                                QN,
                                ot.as_mut_ptr().add(c),
                                QN,
                                NR,
                                true,
                            );
                        }
                    }
                    j0 += kb;
                }
                let inv = sum.map(|s| 1.0 / s);
                for (q, &k) in inv.iter().enumerate().take(qn) {
                    // SAFETY: output row q0 + q, head h's columns: this task's own.
                    let row = unsafe {
                        let at = (bi * n + q0 + q) * inner + h * hd;
                        std::slice::from_raw_parts_mut(dst.get().add(at), hd)
                    };
                    for (d, o) in row.iter_mut().enumerate() {
                        *o = ot[d * QN + q] * k;
                    }
                }
            },
        );
    }

    /// One block of the online softmax, in place on `st` (rows of `QN` scores, the first
    /// `width` columns used), 16 queries per register: each column's running `max` raised to
    /// the block's, the scores replaced by exp(score − max), and `sum` and the outᵀ columns so
    /// far (`ot`, rows of `QN`) rescaled by exp(old max − new max) where the maximum moved.
    #[target_feature(enable = "avx512f")]
    unsafe fn online_softmax(
        st: &mut [f32],
        width: usize,
        max: &mut [f32; QN],
        sum: &mut [f32; QN],
        ot: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let rows = st.len() / QN;
        let p = st.as_mut_ptr();
        for g in (0..width).step_by(16) {
            let old = _mm512_loadu_ps(max.as_ptr().add(g));
            let mut new = old;
            for r in 0..rows {
                new = _mm512_max_ps(new, _mm512_loadu_ps(p.add(r * QN + g)));
            }
            let mut block_sum = _mm512_setzero_ps();
            for r in 0..rows {
                let at = p.add(r * QN + g);
                let e = crate::avx512::exp_ps(_mm512_sub_ps(_mm512_loadu_ps(at), new));
                _mm512_storeu_ps(at, e);
                block_sum = _mm512_add_ps(block_sum, e);
            }
            // exp(0) is exactly 1 where the maximum stayed. The first block's old maximum is
            // −∞: its factor is ~0, over a zero sum and outᵀ.
            let alpha = crate::avx512::exp_ps(_mm512_sub_ps(old, new));
            if _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(old, new) != 0 {
                for row in ot.chunks_exact_mut(QN) {
                    let at = row.as_mut_ptr().add(g);
                    _mm512_storeu_ps(at, _mm512_mul_ps(_mm512_loadu_ps(at), alpha));
                }
            }
            let s = sum.as_mut_ptr().add(g);
            _mm512_storeu_ps(s, _mm512_fmadd_ps(_mm512_loadu_ps(s), alpha, block_sum));
            _mm512_storeu_ps(max.as_mut_ptr().add(g), new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{randn, rel_diff};

    #[test]
    fn matches_candle_for_self_and_cross_attention() {
        // Partial last tiles in each; the 9000-token context gets the smallest (8-row) tiles
        // (18 key blocks with AVX-512); SD 1.5's 40-wide heads over three key blocks.
        for (n, m, heads, hd) in [
            (300, 300, 2, 8),
            (130, 77, 3, 5),
            (40, 9000, 1, 4),
            (260, 1100, 2, 40),
        ] {
            let q = randn(&[2, n, heads * hd]);
            let k = randn(&[2, m, heads * hd]);
            let v = randn(&[2, m, heads * hd]);
            let got = kernel(&q, &k, &v, heads, false).unwrap();
            let want = reference(&q, &k, &v, heads, false).unwrap();
            let d = rel_diff(&got, &want);
            assert!(d < 1e-5, "n={n} m={m} heads={heads}: {d}");
        }
    }

    #[test]
    fn strided_inputs_are_taken() {
        let qkv = randn(&[1, 20, 3 * 12]);
        let (q, k, v) = (
            qkv.narrow(2, 0, 12).unwrap(),
            qkv.narrow(2, 12, 12).unwrap(),
            qkv.narrow(2, 24, 12).unwrap(),
        );
        let got = attention(&q, &k, &v, 3).unwrap();
        assert!(rel_diff(&got, &reference(&q, &k, &v, 3, false).unwrap()) < 1e-5);
    }

    #[test]
    fn causal_matches_a_masked_softmax() {
        // 77 tokens (CLIP's) in one tile; 300 in two, so the mask offset crosses a tile.
        for (n, heads, hd) in [(77, 3, 8), (300, 2, 4)] {
            let q = randn(&[2, n, heads * hd]);
            let k = randn(&[2, n, heads * hd]);
            let v = randn(&[2, n, heads * hd]);
            let got = causal_attention(&q, &k, &v, heads).unwrap();
            let want = reference(&q, &k, &v, heads, true).unwrap();
            let d = rel_diff(&got, &want);
            assert!(d < 1e-5, "n={n}: {d}");
            // The first token sees only itself: its output is its own value.
            let first = got.narrow(1, 0, 1).unwrap();
            assert!(rel_diff(&first, &v.narrow(1, 0, 1).unwrap()) < 1e-6);
        }
    }

    #[test]
    fn bf16_values_match_the_product_of_rounded_operands() {
        use crate::test_util::bf16_rounded;
        // SD 1.5's head width (40, 20 pairs), an odd one, an odd key count (a padded pair), and
        // cross-attention over 77 tokens.
        for (n, m, heads, hd) in [(300, 300, 2, 40), (130, 77, 3, 5), (64, 9, 1, 64)] {
            let q = randn(&[2, n, heads * hd]);
            let k = randn(&[2, m, heads * hd]);
            let v = randn(&[2, m, heads * hd]);
            let got = attention_bf16(&q, &k, &v, heads).unwrap();
            let f32_result = reference(&q, &k, &v, heads, false).unwrap();
            // Whatever the CPU: close to the f32 result (bf16 keeps ~3 significant digits).
            let d = rel_diff(&got, &f32_result);
            assert!(d < 2e-2, "n={n} m={m}: {d} from f32");
            #[cfg(target_arch = "x86_64")]
            if crate::avx512::has_bf16() {
                // Exactly the product of the rounded operands: f32 scores, then unnormalised
                // probabilities and values rounded to bf16, sums in f32.
                let split = |t: &Tensor| {
                    let s = t.dim(1).unwrap();
                    t.reshape((2, s, heads, hd))
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                };
                let qs = (split(&q) * (hd as f64).powf(-0.5)).unwrap();
                let vr = bf16_rounded(&split(&v));
                let scores = qs.matmul(&split(&k).t().unwrap()).unwrap();
                let max = scores.max_keepdim(D::Minus1).unwrap();
                let p = scores.broadcast_sub(&max).unwrap().exp().unwrap();
                let sum = p.sum_keepdim(D::Minus1).unwrap();
                let want = bf16_rounded(&p)
                    .matmul(&vr)
                    .unwrap()
                    .broadcast_div(&sum)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((2, n, heads * hd))
                    .unwrap();
                let d = rel_diff(&got, &want);
                assert!(d < 1e-3, "n={n} m={m} heads={heads} hd={hd}: {d}");
            }
        }
    }
}
