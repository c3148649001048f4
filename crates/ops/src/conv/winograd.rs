//! 3×3, stride-1, padding-1 convolutions in f32 by Winograd's F(2×2, 3×3) (Lavin & Gray,
//! 2015), on CPUs with AVX-512.
//!
//! Each 2×2 block of output pixels is computed from its 4×4 input tile with 16 multiplies per
//! (input, output) channel pair instead of 36: the tile and the kernel are each transformed
//! into 16 values (`Bᵀ d B` and `G g Gᵀ`), multiplied point by point, summed over the input
//! channels (16 matrix products [co, ci] · [ci, tiles], run by `avx512`'s micro-kernel), and
//! transformed back (`Aᵀ m A`). That is 2.25× fewer multiply-adds than the direct convolution.
//! F(2×2, 3×3)'s transforms only add, subtract and halve, so the result differs from the direct
//! one by f32 rounding alone. Larger tiles (F(4×4, 3×3), 4× fewer) transform with constants
//! like 1/6 and 1/24 that cost digits; not tried.
//!
//! bf16 weights (`--dtype bf16`, CPUs with AVX512-BF16) take the same path with bf16 products:
//! the transformed kernel and input tiles are rounded to bf16 pairs of input channels, the
//! products accumulate in f32, and the output transform is f32 (as a bf16 direct convolution
//! rounds its input and multiplies its weights as they are).
//!
//! The kernel's transform (16 values per channel pair, 1.8× the 3×3 weights) is never kept
//! between calls, so the model's memory does not grow. Within a call it is made once, before
//! the tasks, and each task runs its 16 products one ξ at a time: the task's transformed input
//! for that ξ stays in L2 while the transformed kernel's rows stream past it. (Made per task
//! instead, an 8-output-channel tile at a time, every 8 output channels swept all 16 of the
//! task's transformed inputs, 1.3–5 MiB, out of L2: 20–35% slower in f32 at 320–960 channels,
//! half the speed in bf16.) Only f32 convolutions with few tiles keep the per-task transform:
//! writing out and reading back a 105 MiB transformed kernel for 128 tiles costs more than it
//! saves.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use super::{Geometry, Input, Output};
use crate::avx512::{tile_bf16, tile_f32, Tile};
use crate::profile::{scope, Kind};

/// Tiles (2×2 output blocks) per task: its transformed input (16 × ci × tiles) and products
/// (16 × co × tiles) are a few MiB at most and go through L2 a product at a time. 64, or 128
/// for weights over [`BIG_WEIGHTS`] bytes with tiles enough for two tasks per thread: each
/// task reads all its weights to transform them, and weights that big come from DRAM on every
/// read (SDXL's 1280-channel 3×3 convolutions at 32², 29 MiB in bf16, measured 263 → 338–408
/// GFLOP/s with 128). Smaller weights measured no better, and fewer tiles worse (one task's
/// transformed input then spills out of L2).
const TILES: usize = 128;
/// Padded columns a run of [`TILES`] tiles reads.
const ROW: usize = 2 * TILES + 2;
const BIG_WEIGHTS: usize = 16 << 20;
/// Tiles from which f32 weights are transformed once per call rather than per task.
const SHARED_KERNEL_TILES: usize = 256;
/// Input channels per pass of the micro-kernel and per tile of the transformed kernel
/// (16 × 8 × KB floats, 128 KiB). 256 measured faster than 64 or 128 at the VAE's and UNet's
/// shapes.
const KB: usize = 256;

/// Input channels from which bf16 weights take this path. Below (the VAE's 128- and 256-channel
/// levels at 256² and 512²), the direct bf16 convolution was as fast over a whole 512² decode
/// (9.8–10.9 s, against 10.6–11.6 s with Winograd from 2 channels), and Winograd in bf16
/// rounds its transformed tiles as well: the bundled model's mean difference from f32 rose from
/// 0.90 to 1.17/255.
const BF16_MIN_CHANNELS: usize = 320;

/// A convolution's [co, 3, 3, ci] weights.
#[derive(Clone, Copy)]
pub(super) enum Weights<'a> {
    F32(&'a [f32]),
    /// Multiplied in bf16: the CPU has AVX512-BF16 and ci is even (checked by [`takes`]).
    Bf16(&'a [bf16]),
    /// Widened to f32 as the kernel is transformed (`--dtype f16`): the products are f32's,
    /// and no widened copy of the weights is made.
    F16(&'a [f16]),
}

/// Whether a convolution of this shape runs here: 3×3, stride 1, padding 1, on a CPU with
/// AVX-512 (AVX512-BF16, an even channel count and at least [`BF16_MIN_CHANNELS`] for bf16
/// weights), with at least 128 output blocks of 2×2.
/// Fewer (the UNet's lowest levels at 256², 32 blocks) measured no faster than the direct
/// convolution.
pub(super) fn takes(g: &Geometry, bf16_weights: bool) -> bool {
    g.k == 3
        && g.s == 1
        && g.pad == 1
        && g.b * g.ho.div_ceil(2) * g.wo.div_ceil(2) >= 128
        && if bf16_weights {
            crate::avx512::has_bf16() && g.ci.is_multiple_of(2) && g.ci >= BF16_MIN_CHANNELS
        } else {
            crate::avx512::has_f32()
        }
}

/// The convolution of `xd` by the weights `w` into `output` (after [`takes`]).
pub(super) fn conv(g: &Geometry, xd: Input, w: Weights, output: &Output) {
    let (ci, co) = (g.ci, g.co);
    let bf16 = matches!(w, Weights::Bf16(_));
    // 32-bit lanes per input channel: one f32, or half a bf16 pair.
    let lanes = |channels: usize| if bf16 { channels / 2 } else { channels };
    // Output tiles per image: th × tw; tile (ty, tx) reads padded rows 2ty..2ty + 4 and
    // columns 2tx..2tx + 4. There is no padded copy of the input: each task gathers the rows
    // its run of tiles reads, a channel at a time (`padded_rows`), into an L1-sized buffer.
    // (A whole padded copy was the largest buffer of a VAE decode: 258 MiB at 512².)
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    // Under an upsample, the stored column each convolved column reads (worked out once: every
    // row is gathered twice, by the tile rows above and below it).
    let columns: Vec<usize> = if g.up {
        (0..g.w).map(|x| g.source(0, x).1).collect()
    } else {
        Vec::new()
    };
    let tiles = g.b * th * tw;
    // Tile blocks, and when there are too few of them to share out, groups of output channels
    // too (each group reads only its rows of the transformed kernel).
    let weight_bytes = co * ci * 9 * if bf16 { 2 } else { 4 };
    let threads = rayon::current_num_threads();
    let per_task = if weight_bytes > BIG_WEIGHTS && tiles >= 2 * threads * TILES {
        TILES
    } else {
        TILES / 2
    };
    let blocks = tiles.div_ceil(per_task);
    let wanted = (2 * threads).div_ceil(blocks).min(co.div_ceil(8));
    let group_rows = co.div_ceil(wanted).next_multiple_of(8);
    let groups = co.div_ceil(group_rows);
    let ci_lanes = lanes(ci);
    // The kernel transformed once for all tasks, unless there are too few tiles to pay for
    // writing it out and reading it back (f32 at 128 tiles: 1 280 channels at 16², 105 MiB
    // of transformed kernel, measured 152 against 208 GFLOP/s made per task).
    let shared = (bf16 || tiles >= SHARED_KERNEL_TILES)
        .then(|| scope(Kind::Copy, || transformed_kernel(w, ci, co)));
    (0..blocks * groups).into_par_iter().for_each_init(
        || {
            let transformed = Box::new([[[0f32; TILES]; 16]; 2]);
            // Four padded rows of one channel, and a row's raw and normalised values.
            let gathered = Box::new(([[0f32; ROW]; 4], [0f32; ROW], [0f32; ROW]));
            let scratch = if shared.is_some() {
                (Vec::new(), Vec::new())
            } else {
                (vec![0f32; 16 * 8 * KB], vec![0u32; 16 * 8 * KB])
            };
            (
                vec![0u32; 16 * ci_lanes * per_task],
                vec![0f32; 16 * co * per_task],
                transformed,
                scratch,
                gathered,
            )
        },
        |(v, m, transformed, scratch, gathered), task| {
            let (t0, o0) = ((task / groups) * per_task, (task % groups) * group_rows);
            let (n, o1) = (per_task.min(tiles - t0), (o0 + group_rows).min(co));
            // Runs of tiles within one tile row: (first tile's index in the block, image,
            // tile row, first tile column, length).
            let mut runs = Vec::new();
            let mut j = 0;
            while j < n {
                let t = t0 + j;
                let (bi, ty, tx) = (t / (th * tw), (t / tw) % th, t % tw);
                let len = (tw - tx).min(n - j);
                runs.push((j, bi, ty, tx, len));
                j += len;
            }
            // The input tiles, transformed: v[ξ][lane][tile], a lane being one channel's f32
            // or a pair of channels' bf16 (the even one in the low half).
            let mut tiles_of = |c, bi, ty, tx, len, out: &mut [[f32; TILES]; 16]| {
                let (rows, line, mapped) = &mut **gathered;
                let at = (ty, tx, len);
                padded_rows(g, xd, &columns, bi * ci + c, at, rows, line, mapped);
                input_tiles(rows.each_ref().map(|r| &r[..]), len + 1, len, out);
            };
            for c in (0..ci).step_by(if bf16 { 2 } else { 1 }) {
                for &(j0, bi, ty, tx, len) in &runs {
                    let [first, second] = &mut **transformed;
                    tiles_of(c, bi, ty, tx, len, first);
                    if bf16 {
                        tiles_of(c + 1, bi, ty, tx, len, second);
                        for xi in 0..16 {
                            let dst = &mut v[(xi * ci_lanes + c / 2) * per_task + j0..][..len];
                            // Two channels' values as one lane each (AVX512-BF16 checked by `takes`).
                            super::avx512::pair(&first[xi][..len], &second[xi][..len], dst);
                        }
                    } else {
                        for (xi, values) in first.iter().enumerate() {
                            let dst = &mut v[(xi * ci_lanes + c) * per_task + j0..][..len];
                            for (d, s) in dst.iter_mut().zip(values) {
                                *d = s.to_bits();
                            }
                        }
                    }
                }
            }
            if let Some(u) = &shared {
                // The 16 products m[ξ] = u[ξ] · v[ξ], [co, ci] · [ci, n], for rows o0..o1, one
                // ξ at a time: v[ξ] (ci × n lanes, 80–480 KiB) stays in L2 while the rows of
                // u[ξ] stream past it, each lane of u multiplied into n tiles.
                let tile: Tile = if bf16 { tile_bf16 } else { tile_f32 };
                for xi in 0..16 {
                    let mut r0 = o0;
                    while r0 < o1 {
                        let r = (o1 - r0).min(8);
                        let mut q = 0;
                        while q < n {
                            let cols = (n - q).min(32);
                            // SAFETY: the instructions checked by `takes`. A: rows r0..r0 + r of
                            // u[ξ] (co × ci_lanes); B: v[ξ] (ci_lanes × per_task), columns
                            // q..q + cols ≤ n; C: rows r0..r0 + r of m[ξ] (co × per_task), the
                            // same columns. All inside their buffers.
                            unsafe {
                                tile(
                                    r,
                                    u.as_ptr().add((xi * co + r0) * ci_lanes),
                                    ci_lanes,
                                    ci_lanes,
                                    v.as_ptr().add(xi * ci_lanes * per_task + q),
                                    per_task,
                                    m.as_mut_ptr().add((xi * co + r0) * per_task + q),
                                    per_task,
                                    cols,
                                    false,
                                );
                            }
                            q += cols;
                        }
                        r0 += r;
                    }
                }
            } else {
                let (u, u_lanes) = scratch;
                // Otherwise an 8-row, KB-channel tile of the transformed kernel at a time, made
                // here from the weights (cheap beside the products it feeds).
                let mut k0 = 0;
                while k0 < ci {
                    let kc = (ci - k0).min(KB);
                    let mut r0 = o0;
                    while r0 < o1 {
                        let r = (o1 - r0).min(8);
                        transform_kernel(w, ci, r0, r, k0, kc, u);
                        // The transformed kernel as lanes: its f32 bits, or rounded to bf16
                        // pairs (kc is even: KB and ci are).
                        let (kl, tile): (usize, Tile) = if bf16 {
                            (kc / 2, tile_bf16)
                        } else {
                            (kc, tile_f32)
                        };
                        let a: *const u32 = if bf16 {
                            let u_lanes = &mut u_lanes[..16 * r * kl];
                            // SAFETY: AVX512-BF16 checked by `takes`; u holds 16·r runs of kc.
                            unsafe {
                                crate::avx512::round_rows(&u[..16 * r * kc], kc, kl, u_lanes);
                            }
                            u_lanes.as_ptr()
                        } else {
                            u.as_ptr().cast()
                        };
                        let (k0_lanes, ci_lanes) = (lanes(k0), lanes(ci));
                        for xi in 0..16 {
                            let mut q = 0;
                            while q < n {
                                let cols = (n - q).min(32);
                                // SAFETY: the instructions checked by `takes`. A: u[·][ξ], r
                                // rows of kl lanes, 16·kl apart; B: lanes k0..k0 + kl of v[ξ]
                                // (ci_lanes × per_task), columns q..q + cols ≤ n; C: rows
                                // r0..r0 + r of m[ξ] (co × per_task), the same columns. All
                                // inside their buffers.
                                unsafe {
                                    tile(
                                        r,
                                        a.add(xi * kl),
                                        16 * kl,
                                        kl,
                                        v.as_ptr().add((xi * ci_lanes + k0_lanes) * per_task + q),
                                        per_task,
                                        m.as_mut_ptr().add((xi * co + r0) * per_task + q),
                                        per_task,
                                        cols,
                                        k0 > 0,
                                    );
                                }
                                q += cols;
                            }
                        }
                        r0 += r;
                    }
                    k0 += kc;
                }
            }
            // Back to 2×2 output blocks, plus the bias.
            for oc in o0..o1 {
                for &(j0, bi, ty, tx, len) in &runs {
                    let m: [&[f32]; 16] =
                        std::array::from_fn(|xi| &m[(xi * co + oc) * per_task + j0..][..len]);
                    output_tiles(output, bi, oc, 2 * ty, 2 * tx, m);
                }
            }
        },
    );
}

/// The whole transformed kernel as the products' left operands, u[ξ][out][lane]: f32 bits, or
/// rounded to bf16 pairs of input channels. Made once per call and shared by every task (16 ×
/// co × ci values: 6.5 MiB for 320 channels, 105 MiB for 1 280, in f32; freed after the call),
/// an output channel per task.
fn transformed_kernel(w: Weights, ci: usize, co: usize) -> Vec<u32> {
    let bf16 = matches!(w, Weights::Bf16(_));
    let ci_lanes = if bf16 { ci / 2 } else { ci };
    let mut u = vec![0u32; 16 * co * ci_lanes];
    // Each task writes its own output channel's rows, interleaved with the others' in `u`.
    let addr = u.as_mut_ptr() as usize;
    (0..co).into_par_iter().for_each_init(
        || (vec![0f32; 16 * KB], vec![0u32; 16 * KB / 2]),
        |(one, rounded), o| {
            let mut k0 = 0;
            while k0 < ci {
                let kc = (ci - k0).min(KB);
                transform_kernel(w, ci, o, 1, k0, kc, one);
                for xi in 0..16 {
                    let values = &one[xi * kc..][..kc];
                    let at = (xi * co + o) * ci_lanes;
                    // SAFETY: row o of u[ξ], lanes of channels k0..k0 + kc: this task's own.
                    unsafe {
                        if bf16 {
                            // AVX512-BF16 checked by `takes`; kc is even (KB and ci are).
                            let lanes = &mut rounded[..kc / 2];
                            crate::avx512::round_rows(values, kc, kc / 2, lanes);
                            let out = std::slice::from_raw_parts_mut(
                                (addr as *mut u32).add(at + k0 / 2),
                                kc / 2,
                            );
                            out.copy_from_slice(lanes);
                        } else {
                            let out =
                                std::slice::from_raw_parts_mut((addr as *mut u32).add(at + k0), kc);
                            for (d, v) in out.iter_mut().zip(values) {
                                *d = v.to_bits();
                            }
                        }
                    }
                }
                k0 += kc;
            }
        },
    );
    u
}

/// u[row][ξ][lane] = (G g Gᵀ)[ξ] for output channels o0..o0 + rows and input channels
/// k0..k0 + kc of the [co, 3, 3, ci] weights `w`, with
/// G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]. Whole runs of channels at a time, so
/// that each step is one vectorised sweep.
fn transform_kernel(
    w: Weights,
    ci: usize,
    o0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    u: &mut [f32],
) {
    let mut mid = [[[0f32; KB]; 2]; 3];
    let mut widened = [[0f32; KB]; 9];
    for (row, out) in u.chunks_exact_mut(16 * kc).take(rows).enumerate() {
        let o = o0 + row;
        // Tap (i, j) of the tile's input channels: a contiguous run of the weights (widened
        // first when they are bf16 or f16).
        let run = |tap: usize| ((o * 9 + tap) * ci + k0)..((o * 9 + tap) * ci + k0 + kc);
        for (tap, dst) in widened.iter_mut().enumerate() {
            match w {
                Weights::F32(_) => break,
                Weights::Bf16(w) => w[run(tap)].convert_to_f32_slice(&mut dst[..kc]),
                Weights::F16(w) => w[run(tap)].convert_to_f32_slice(&mut dst[..kc]),
            }
        }
        let g = |i: usize, j: usize| -> &[f32] {
            match w {
                Weights::F32(w) => &w[run(3 * i + j)],
                Weights::Bf16(_) | Weights::F16(_) => &widened[3 * i + j][..kc],
            }
        };
        // G g, column j: rows 0 and 3 are taps (0, j) and (2, j); rows 1 and 2 go to `mid`.
        for (j, mid) in mid.iter_mut().enumerate() {
            let [m1, m2] = mid;
            halves(&mut m1[..kc], &mut m2[..kc], g(0, j), g(1, j), g(2, j));
        }
        // · Gᵀ along each row r of G g.
        for r in 0..4 {
            let x = |j: usize| -> &[f32] {
                match r {
                    0 => g(0, j),
                    3 => g(2, j),
                    _ => &mid[j][r - 1][..kc],
                }
            };
            let (x0, x1, x2) = (x(0), x(1), x(2));
            let out = &mut out[4 * r * kc..(4 * r + 4) * kc];
            let (first, rest) = out.split_at_mut(kc);
            let (sum, rest) = rest.split_at_mut(kc);
            let (diff, last) = rest.split_at_mut(kc);
            first.copy_from_slice(x0);
            halves(sum, diff, x0, x1, x2);
            last.copy_from_slice(x2);
        }
    }
}

/// sum = ½(a + b + d), diff = ½(a − b + d), element by element.
#[inline]
fn halves(sum: &mut [f32], diff: &mut [f32], a: &[f32], b: &[f32], d: &[f32]) {
    let n = sum.len();
    let (diff, a, b, d) = (&mut diff[..n], &a[..n], &b[..n], &d[..n]);
    for i in 0..n {
        sum[i] = 0.5 * (a[i] + b[i] + d[i]);
        diff[i] = 0.5 * (a[i] - b[i] + d[i]);
    }
}

/// Rows 2ty .. 2ty + 4 of plane `i` (image · ci + channel) of the convolution's padded input
/// (one row and column of zeros around it; upsampled and normalised as `xd` says), columns
/// 2tx .. 2tx + 2·len + 2, each row split into its even and odd columns:
/// `rows[r]` = [even (len + 1) | odd (len + 1)], as [`input_tiles`] reads them. `columns`:
/// the stored column of each convolved one, under an upsample.
#[allow(clippy::too_many_arguments)]
fn padded_rows(
    g: &Geometry,
    xd: Input,
    columns: &[usize],
    i: usize,
    (ty, tx, len): (usize, usize, usize),
    rows: &mut [[f32; ROW]; 4],
    line: &mut [f32; ROW],
    mapped: &mut [f32; ROW],
) {
    let half = len + 1;
    // Padded column 2tx + j is input column 2tx + j − 1, for j in 0..2·half.
    let x0 = (2 * tx).max(1) - 1;
    let x1 = (2 * tx + 2 * half).min(g.w + 1) - 1;
    let plane = &xd.data[i * xd.plane..(i + 1) * xd.plane];
    for (r, row) in rows.iter_mut().enumerate() {
        let row = &mut row[..2 * half];
        row.fill(0.0);
        let yy = 2 * ty + r;
        if yy == 0 || yy > g.h || x0 >= x1 {
            continue;
        }
        let y = yy - 1;
        let n = x1 - x0;
        let raw: &[f32] = if g.up {
            let stored = &plane[g.source(y, 0).0 * g.wi..][..g.wi];
            for (&sx, v) in columns[x0..x1].iter().zip(line.iter_mut()) {
                *v = stored[sx];
            }
            &line[..n]
        } else {
            &plane[y * g.wi + x0..y * g.wi + x1]
        };
        let values: &[f32] = match xd.map {
            Some(map) => {
                map.apply(i, raw, &mut mapped[..n]);
                &mapped[..n]
            }
            None => raw,
        };
        for (x, &v) in (x0..x1).zip(values) {
            let j = x + 1 - 2 * tx;
            row[(j % 2) * half + j / 2] = v;
        }
    }
}

/// Bᵀ d B for `len` ≤ [`TILES`] tiles side by side, from the four padded rows they read (each
/// split into its even and odd halves of `half` columns), into `out[ξ][tile]` with
/// ξ = 4·row + column, and Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
#[inline]
fn input_tiles(rows: [&[f32]; 4], half: usize, len: usize, out: &mut [[f32; TILES]; 16]) {
    // Column x of tile t is even-half element t (x = 0), odd t (1), even t + 1 (2), odd
    // t + 1 (3).
    let col = |r: usize, x: usize| -> &[f32] {
        let (parity, shift) = (x % 2, x / 2);
        &rows[r][parity * half + shift..][..len]
    };
    let d: [[&[f32]; 4]; 4] = std::array::from_fn(|r| std::array::from_fn(|x| col(r, x)));
    // Bᵀ d down each column (into `t`), then · B along each row.
    let mut t = [[0f32; TILES]; 16];
    for x in 0..4 {
        let (d0, d1, d2, d3) = (d[0][x], d[1][x], d[2][x], d[3][x]);
        for l in 0..len {
            t[x][l] = d0[l] - d2[l];
            t[4 + x][l] = d1[l] + d2[l];
            t[8 + x][l] = d2[l] - d1[l];
            t[12 + x][l] = d1[l] - d3[l];
        }
    }
    for r in 0..4 {
        let [r0, r1, r2, r3] = [&t[4 * r], &t[4 * r + 1], &t[4 * r + 2], &t[4 * r + 3]];
        if let [o0, o1, o2, o3] = &mut out[4 * r..4 * r + 4] {
            for l in 0..len {
                o0[l] = r0[l] - r2[l];
                o1[l] = r1[l] + r2[l];
                o2[l] = r2[l] - r1[l];
                o3[l] = r1[l] - r3[l];
            }
        }
    }
}

/// Aᵀ m A for `len` ≤ [`TILES`] tiles side by side (`m[ξ][tile]`), with
/// Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]: 2×2 output blocks whose first is at (y, x) of channel
/// `oc` of image `bi`, plus the bias; pixels past the output's edge are dropped.
fn output_tiles(output: &Output, bi: usize, oc: usize, y: usize, x: usize, m: [&[f32]; 16]) {
    let g = &output.g;
    let len = m[0].len().min(TILES);
    let m: [&[f32]; 16] = std::array::from_fn(|xi| &m[xi][..len]);
    let bias = output.bias[oc];
    for dy in 0..2.min(g.ho - y) {
        // Row dy of Aᵀ m, column by column.
        let mut v = [[0f32; TILES]; 4];
        for (c, v) in v.iter_mut().enumerate() {
            let (m0, m1, m2, m3) = (m[c], m[4 + c], m[8 + c], m[12 + c]);
            for l in 0..len {
                v[l] = if dy == 0 {
                    m0[l] + m1[l] + m2[l]
                } else {
                    m1[l] - m2[l] - m3[l]
                };
            }
        }
        // · A: each block's two pixels of this row, side by side.
        let mut pixels = [[0f32; 2]; TILES];
        for (l, p) in pixels.iter_mut().enumerate().take(len) {
            *p = [
                v[0][l] + v[1][l] + v[2][l] + bias,
                v[1][l] - v[2][l] - v[3][l] + bias,
            ];
        }
        let cols = (g.wo - x).min(2 * len);
        // SAFETY: columns x..x + cols of row y + dy of channel oc of image bi, inside the
        // [b, co, ho, wo] output; each (image, channel, tile) is written by one task only.
        let row = unsafe {
            std::slice::from_raw_parts_mut(
                output
                    .out
                    .get()
                    .add(((bi * g.co + oc) * g.ho + y + dy) * g.wo + x),
                cols,
            )
        };
        row.copy_from_slice(&pixels.as_flattened()[..cols]);
    }
}
