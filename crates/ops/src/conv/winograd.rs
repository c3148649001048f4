//! 3×3, stride-1, padding-1 convolutions in f32 by Winograd's F(2×2, 3×3) (Lavin & Gray,
//! 2015), on CPUs with AVX-512.
//!
//! Each 2×2 block of output pixels is computed from its 4×4 input tile with 16 multiplies per
//! (input, output) channel pair instead of 36: the tile and the kernel are each transformed
//! into 16 values (`Bᵀ d B` and `G g Gᵀ`), multiplied point by point, summed over the input
//! channels (16 matrix products [co, ci] · [ci, tiles], run by `avx512`'s micro-kernel), and
//! transformed back (`Aᵀ m A`). That is 2.25× fewer multiply-adds than the direct convolution.
//! F(2×2, 3×3)'s transforms only add, subtract and halve, so the result differs from the direct
//! one by f32 rounding alone; larger tiles (F(4×4, 3×3), 4× fewer) need constants that lose
//! digits, which the reference tests' tolerances do not allow for.
//!
//! The kernel's transform (16 values per channel pair, 1.8× the 3×3 weights) is made per call
//! and dropped, so the model's memory does not grow; it costs a few multiply-adds per weight,
//! nothing beside the products.

use rayon::prelude::*;

use super::{Geometry, Output};
use crate::avx512::tile_f32;
use crate::profile::{scope, Kind};

/// Tiles (2×2 output blocks) per task: its transformed input (16 × ci × TILES) and products
/// (16 × co × TILES) are a few MiB at most and go through L2 a product at a time.
const TILES: usize = 64;
/// Input channels per pass of the micro-kernel.
const KB: usize = 256;

/// Whether a convolution of this shape runs here: 3×3, stride 1, padding 1, on a CPU with
/// AVX-512 (the caller checks the weights are f32).
pub(super) fn takes(g: &Geometry) -> bool {
    g.k == 3 && g.s == 1 && g.pad == 1 && crate::avx512::has_f32()
}

/// The convolution of `xd` by the [co, 3, 3, ci] f32 weights `w` into `output`.
pub(super) fn conv(g: &Geometry, xd: &[f32], w: &[f32], output: &Output) {
    let (ci, co) = (g.ci, g.co);
    let u = scope(Kind::Copy, || transform_kernel(w, ci, co));
    // Output tiles per image: th × tw; tile (ty, tx) reads padded rows 2ty..2ty + 4 and
    // columns 2tx..2tx + 4. The padded copy keeps each row's even and odd columns apart
    // ([channel][image][row][parity][half]), so that tile column tx's four input columns are
    // element tx or tx + 1 of the even or odd half: runs of tiles read contiguous memory.
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let (ph, half) = (2 * th + 2, tw + 1);
    let plane = ph * 2 * half;
    let padded = scope(Kind::Copy, || {
        let mut p = vec![0f32; ci * g.b * plane];
        p.par_chunks_mut(g.b * plane)
            .enumerate()
            .for_each(|(c, dst)| {
                for bi in 0..g.b {
                    let src = &xd[(bi * ci + c) * g.hi * g.wi..][..g.hi * g.wi];
                    for y in 0..g.h {
                        let row = &mut dst[(bi * ph + y + 1) * 2 * half..][..2 * half];
                        for x in 0..g.w {
                            let (sy, sx) = g.source(y, x);
                            let xx = x + 1;
                            row[(xx % 2) * half + xx / 2] = src[sy * g.wi + sx];
                        }
                    }
                }
            });
        p
    });
    let tiles = g.b * th * tw;
    (0..tiles.div_ceil(TILES)).into_par_iter().for_each_init(
        || {
            let transformed = Box::new([[0f32; TILES]; 16]);
            (
                vec![0f32; 16 * ci * TILES],
                vec![0f32; 16 * co * TILES],
                transformed,
            )
        },
        |(v, m, transformed), block| {
            let t0 = block * TILES;
            let n = TILES.min(tiles - t0);
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
            // The input tiles, transformed: v[ξ][c][tile].
            for c in 0..ci {
                for &(j0, bi, ty, tx, len) in &runs {
                    let rows: [&[f32]; 4] = std::array::from_fn(|r| {
                        &padded[((c * g.b + bi) * ph + 2 * ty + r) * 2 * half..][..2 * half]
                    });
                    input_tiles(rows, half, tx, len, transformed);
                    for (xi, values) in transformed.iter().enumerate() {
                        v[(xi * ci + c) * TILES + j0..][..len].copy_from_slice(&values[..len]);
                    }
                }
            }
            // The 16 products m[ξ] = u[ξ] · v[ξ], [co, ci] · [ci, n].
            for xi in 0..16 {
                let (a, b) = (&u[xi * co * ci..], &v[xi * ci * TILES..]);
                let c = &mut m[xi * co * TILES..(xi + 1) * co * TILES];
                let mut k0 = 0;
                while k0 < ci {
                    let kc = (ci - k0).min(KB);
                    let mut r0 = 0;
                    while r0 < co {
                        let r = (co - r0).min(8);
                        let mut q = 0;
                        while q < n {
                            let cols = (n - q).min(32);
                            // SAFETY: AVX-512 checked by `takes`. A: rows r0..r0 + r of u[ξ]
                            // (co × ci), lanes k0..k0 + kc; B: rows k0..k0 + kc of v[ξ]
                            // (ci × TILES), columns q..q + cols ≤ n; C: rows r0..r0 + r of
                            // m[ξ] (co × TILES), the same columns. All inside their buffers.
                            unsafe {
                                tile_f32(
                                    r,
                                    a.as_ptr().add(r0 * ci + k0).cast(),
                                    ci,
                                    kc,
                                    b.as_ptr().add(k0 * TILES + q).cast(),
                                    TILES,
                                    c.as_mut_ptr().add(r0 * TILES + q),
                                    TILES,
                                    cols,
                                    k0 > 0,
                                );
                            }
                            q += cols;
                        }
                        r0 += r;
                    }
                    k0 += kc;
                }
            }
            // Back to 2×2 output blocks, plus the bias.
            for oc in 0..co {
                for &(j0, bi, ty, tx, len) in &runs {
                    let m: [&[f32]; 16] =
                        std::array::from_fn(|xi| &m[(xi * co + oc) * TILES + j0..][..len]);
                    output_tiles(output, bi, oc, 2 * ty, 2 * tx, m);
                }
            }
        },
    );
}

/// u[ξ][co][ci] = (G g Gᵀ)[ξ] for each output and input channel's 3×3 kernel g, with
/// G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
fn transform_kernel(w: &[f32], ci: usize, co: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * co * ci];
    let plane = co * ci;
    let u_addr = crate::SharedMut(u.as_mut_ptr());
    (0..co).into_par_iter().for_each(|o| {
        for c in 0..ci {
            let g: [[f32; 3]; 3] =
                std::array::from_fn(|i| std::array::from_fn(|j| w[((o * 3 + i) * 3 + j) * ci + c]));
            let col = |v: [f32; 3]| {
                [
                    v[0],
                    0.5 * (v[0] + v[1] + v[2]),
                    0.5 * (v[0] - v[1] + v[2]),
                    v[2],
                ]
            };
            // G g: each column of g transformed.
            let gg: [[f32; 3]; 4] = {
                let t: [[f32; 4]; 3] = std::array::from_fn(|j| col([g[0][j], g[1][j], g[2][j]]));
                std::array::from_fn(|r| std::array::from_fn(|j| t[j][r]))
            };
            for (r, row) in gg.iter().enumerate() {
                for (s, value) in col(*row).into_iter().enumerate() {
                    // SAFETY: element (ξ = 4r + s, o, c) of u; each task (o) writes its own.
                    unsafe { *u_addr.get().add((4 * r + s) * plane + o * ci + c) = value };
                }
            }
        }
    });
    u
}

/// Bᵀ d B for `len` ≤ [`TILES`] tiles side by side, from the four padded rows they read (each
/// split into its even and odd halves of `half` columns), into `out[ξ][tile]` with
/// ξ = 4·row + column, and Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]].
#[inline]
fn input_tiles(
    rows: [&[f32]; 4],
    half: usize,
    tx: usize,
    len: usize,
    out: &mut [[f32; TILES]; 16],
) {
    // Column x of tile tx is even-half element tx (x = 0), odd tx (1), even tx + 1 (2), odd
    // tx + 1 (3).
    let col = |r: usize, x: usize| -> &[f32] {
        let (parity, shift) = (x % 2, x / 2);
        &rows[r][parity * half + tx + shift..][..len]
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
