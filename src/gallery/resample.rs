//! Pillow's bicubic resize, reproduced integer for integer.
//!
//! CLIP was trained on images resized by Pillow (OpenAI's `Resize(…, BICUBIC)` on PIL images),
//! and transformers' CLIP image processor resizes with Pillow too. Pillow's bicubic is not the
//! textbook one: it widens the kernel by the scale factor when shrinking (an antialiasing
//! filter), normalises the taps, quantises them to 22-bit fixed point and rounds each pass to
//! 8 bits, horizontal pass first. A different resampler (the `image` crate's, say) gives pixels a
//! few levels off, which is enough to move embeddings; following `libImaging/Resample.c` step by
//! step gives the same bytes as Pillow.

/// Pillow's `PRECISION_BITS` for 8-bit images: 32 − 8 bits of pixel − 2 bits of headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Pillow's bicubic filter support (in source pixels, before widening).
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys' cubic with a = −0.5 (Catmull–Rom), as Pillow's `bicubic_filter`.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// The taps of one output pixel: the first source index and fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for a full-image box.
fn coefficients(in_size: usize, out_size: usize) -> Vec<Taps> {
    // Pillow computes the scale from float box edges; with an integer box that is exact.
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filter_scale;
    let inv = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // `(int)` in C truncates toward zero; clamping at 0 makes that the same as floor.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * inv))
                .collect();
            let sum: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if sum != 0.0 { w / sum } else { w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    // Pillow rounds half away from zero, then truncates.
                    (if w < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps {
                first: xmin,
                weights,
            }
        })
        .collect()
}

/// Pillow's `clip8`: the accumulated fixed-point sum back to a byte.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A window of the resized image: which output columns and rows to produce. Computing only the
/// window gives the same pixels as resizing fully and cropping (each output pixel depends on
/// the source alone), at a fraction of the work for a centre crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// Resizes packed RGB8 `src` (`src_w`×`src_h`) to `out_w`×`out_h` as Pillow's
/// `Image.resize(…, BICUBIC)` would, returning only `window` of the result (packed RGB8).
/// Callers keep `window` inside the output size and the source non-empty.
pub fn resize_bicubic_rgb(
    src: &[u8],
    (src_w, src_h): (usize, usize),
    (out_w, out_h): (usize, usize),
    window: Window,
) -> Vec<u8> {
    let rounding = 1i32 << (PRECISION_BITS - 1);
    // Pillow skips a pass whose size does not change; the identity taps would give the same
    // bytes, this is only faster.
    let need_h = out_w != src_w;
    let need_v = out_h != src_h;

    let vertical = need_v.then(|| coefficients(src_h, out_h));
    // Source rows the vertical pass will read for the window's rows (all of the window's rows
    // when there is no vertical pass).
    let (row_first, row_last) = match &vertical {
        Some(v) => {
            let rows = &v[window.y..window.y + window.height];
            let first = rows.iter().map(|t| t.first).min().unwrap_or(0);
            let last = rows
                .iter()
                .map(|t| t.first + t.weights.len())
                .max()
                .unwrap_or(0);
            (first, last)
        }
        None => (window.y, window.y + window.height),
    };

    // Horizontal pass over the needed rows, window columns only: [rows, window.width, 3].
    let rows = row_last - row_first;
    let mid_w = window.width;
    let mut mid = vec![0u8; rows * mid_w * 3];
    if need_h {
        let horizontal = coefficients(src_w, out_w);
        for r in 0..rows {
            let src_row = &src[(row_first + r) * src_w * 3..(row_first + r + 1) * src_w * 3];
            let out_row = &mut mid[r * mid_w * 3..(r + 1) * mid_w * 3];
            for (i, taps) in horizontal[window.x..window.x + mid_w].iter().enumerate() {
                let mut acc = [rounding; 3];
                let px = &src_row[taps.first * 3..(taps.first + taps.weights.len()) * 3];
                for (p, &k) in px.chunks_exact(3).zip(&taps.weights) {
                    acc[0] += i32::from(p[0]) * k;
                    acc[1] += i32::from(p[1]) * k;
                    acc[2] += i32::from(p[2]) * k;
                }
                out_row[i * 3] = clip8(acc[0]);
                out_row[i * 3 + 1] = clip8(acc[1]);
                out_row[i * 3 + 2] = clip8(acc[2]);
            }
        }
    } else {
        for r in 0..rows {
            let start = ((row_first + r) * src_w + window.x) * 3;
            mid[r * mid_w * 3..(r + 1) * mid_w * 3].copy_from_slice(&src[start..start + mid_w * 3]);
        }
    }

    let Some(vertical) = vertical else {
        return mid;
    };
    // Vertical pass: each window row mixes whole rows of `mid`.
    let row_len = mid_w * 3;
    let mut out = vec![0u8; window.height * row_len];
    let mut acc = vec![0i32; row_len];
    for (j, taps) in vertical[window.y..window.y + window.height]
        .iter()
        .enumerate()
    {
        acc.fill(rounding);
        for (t, &k) in taps.weights.iter().enumerate() {
            let r = taps.first + t - row_first;
            for (a, &p) in acc.iter_mut().zip(&mid[r * row_len..(r + 1) * row_len]) {
                *a += i32::from(p) * k;
            }
        }
        for (o, &a) in out[j * row_len..(j + 1) * row_len].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let full = Window {
            x: 0,
            y: 0,
            width: 5,
            height: 4,
        };
        assert_eq!(resize_bicubic_rgb(&src, (5, 4), (5, 4), full), src);
    }

    #[test]
    fn window_equals_crop_of_full_resize() {
        let (w, h) = (37, 23);
        let src: Vec<u8> = (0..w * h * 3).map(|i| ((i * 31) % 251) as u8).collect();
        let (ow, oh) = (17, 11);
        let full = resize_bicubic_rgb(
            &src,
            (w, h),
            (ow, oh),
            Window {
                x: 0,
                y: 0,
                width: ow,
                height: oh,
            },
        );
        let win = Window {
            x: 3,
            y: 2,
            width: 9,
            height: 7,
        };
        let part = resize_bicubic_rgb(&src, (w, h), (ow, oh), win);
        for y in 0..win.height {
            for x in 0..win.width * 3 {
                assert_eq!(
                    part[y * win.width * 3 + x],
                    full[(y + win.y) * ow * 3 + win.x * 3 + x]
                );
            }
        }
    }

    #[test]
    fn flat_colour_stays_flat() {
        // Normalised taps sum to one: a constant image resizes to the same constant.
        let src = vec![200u8; 50 * 30 * 3];
        let out = resize_bicubic_rgb(
            &src,
            (50, 30),
            (13, 8),
            Window {
                x: 0,
                y: 0,
                width: 13,
                height: 8,
            },
        );
        assert!(out.iter().all(|&p| p == 200));
    }
}
