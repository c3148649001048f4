//! Reads a scene back from pixels: background = the most common named colour; the shape = the
//! largest connected region that differs clearly from the background; its colour = the most
//! common named colour in it; its kind = the shape template (drawn with the generator's own
//! geometry, fitted around the region's bounding box) that overlaps it best (intersection over
//! union); striped = enough of it is darker than both the shape's colour and the background.

use image::RgbImage;

use super::{spec, SceneSpec};

/// A pixel this far (RGB distance) from the background colour belongs to the foreground: half
/// the distance between the two closest named colours (yellow and orange, 82).
const FOREGROUND_DISTANCE: f32 = 40.0;
/// Share of the shape's pixels that must be stripes (see `check`) for it to read as striped.
const STRIPED_SHARE: f32 = 0.15;

/// What the checker saw. `None` where it found nothing (e.g. no foreground region at all).
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub background: String,
    pub colour: Option<String>,
    pub shape: Option<String>,
    pub striped: bool,
    /// The winning template's intersection over union, 0..=1.
    pub fit: f32,
}

/// Index of the nearest named colour, or `colours.len()` for the stripe colour.
fn nearest(spec: &SceneSpec, p: [u8; 3]) -> usize {
    let mut best = (f32::MAX, 0);
    let stripe = std::iter::once(&spec.stripe_colour);
    for (i, c) in spec
        .colours
        .iter()
        .map(|(_, c)| c)
        .chain(stripe)
        .enumerate()
    {
        let d = dist(*c, p);
        if d < best.0 {
            best = (d, i);
        }
    }
    best.1
}

fn dist(a: [u8; 3], b: [u8; 3]) -> f32 {
    let d = |i: usize| a[i] as f32 - b[i] as f32;
    (d(0) * d(0) + d(1) * d(1) + d(2) * d(2)).sqrt()
}

/// Rec. 601 luma.
fn luma(p: [u8; 3]) -> f32 {
    0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
}

fn mode(counts: &[usize]) -> Option<usize> {
    let (i, &n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, &n)| (n, usize::MAX - i))?;
    (n > 0).then_some(i)
}

/// Reads one image (any size; the geometry scales with it).
pub fn check(img: &RgbImage) -> Reading {
    let spec = spec();
    let (w, h) = img.dimensions();
    let n = spec.colours.len();
    let classes: Vec<usize> = img.pixels().map(|p| nearest(spec, p.0)).collect();

    let mut counts = vec![0usize; n + 1];
    for &c in &classes {
        counts[c] += 1;
    }
    let bg = mode(&counts[..n]).unwrap_or(0);
    let bg_rgb = spec.colours[bg].1;
    let fg: Vec<bool> = img
        .pixels()
        .map(|p| dist(p.0, bg_rgb) > FOREGROUND_DISTANCE)
        .collect();
    let region = largest_component(&fg, w as usize, h as usize);

    let mut reading = Reading {
        background: spec.colours[bg].0.clone(),
        colour: None,
        shape: None,
        striped: false,
        fit: 0.0,
    };
    if region.len() < 4 {
        return reading;
    }
    // Stripes are whatever is clearly darker than both the shape's colour and the background:
    // an anti-aliased edge blends the two and so is never darker than both. (A generated stripe
    // is a dark shade of the shape's colour, not exactly the training stripes' black.)
    let vote = |skip: &dyn Fn(usize) -> bool| {
        let mut counts = vec![0usize; n];
        for &i in region.iter().filter(|&&i| !skip(i) && classes[i] < n) {
            counts[classes[i]] += 1;
        }
        mode(&counts)
    };
    let pixels: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    if let Some(first) = vote(&|_| false) {
        let dark_below = 0.75 * luma(spec.colours[first].1).min(luma(bg_rgb));
        let dark = |i: usize| luma(pixels[i]) < dark_below;
        let n_dark = region.iter().filter(|&&i| dark(i)).count();
        reading.striped = n_dark as f32 >= STRIPED_SHARE * region.len() as f32;
        let colour = vote(&dark).unwrap_or(first);
        reading.colour = Some(spec.colours[colour].0.clone());
    }

    let mut mask = vec![false; fg.len()];
    for &i in &region {
        mask[i] = true;
    }
    let scale = w.min(h) as f32 / spec.image_size as f32;
    let (kind, fit) = best_template(spec, &mask, w as usize, h as usize, scale);
    reading.shape = Some(kind);
    reading.fit = fit;
    reading
}

/// Pixel indices of the largest 4-connected `true` region.
fn largest_component(fg: &[bool], w: usize, h: usize) -> Vec<usize> {
    let mut seen = vec![false; fg.len()];
    let mut best = Vec::new();
    for start in 0..fg.len() {
        if !fg[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let (mut stack, mut comp) = (vec![start], Vec::new());
        while let Some(i) = stack.pop() {
            comp.push(i);
            let (x, y) = (i % w, i / w);
            let mut push = |j: usize| {
                if fg[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                push(i - 1);
            }
            if x + 1 < w {
                push(i + 1);
            }
            if y > 0 {
                push(i - w);
            }
            if y + 1 < h {
                push(i + w);
            }
        }
        if comp.len() > best.len() {
            best = comp;
        }
    }
    best
}

/// One shape placed at (cx, cy) with nominal size `s`, with the generator's geometry
/// (training/scenes.py).
struct Template {
    kind: Kind,
    cx: f32,
    cy: f32,
    r: f32,
}

enum Kind {
    Circle,
    Ring(f32),
    Square(f32),
    Triangle,
    Polygon(Vec<(f32, f32)>),
}

impl Template {
    fn new(spec: &SceneSpec, shape: &str, cx: f32, cy: f32, s: f32) -> Option<Self> {
        let r = s / 2.0;
        let kind = match shape {
            "circle" => Kind::Circle,
            "ring" => Kind::Ring(spec.ring_inner * r),
            "square" => Kind::Square(spec.square_side * r),
            "triangle" => Kind::Triangle,
            "star" => Kind::Polygon(star(spec, cx, cy, s)),
            _ => return None,
        };
        Some(Template { kind, cx, cy, r })
    }

    fn contains(&self, px: f32, py: f32) -> bool {
        let (dx, dy, r) = (px - self.cx, py - self.cy, self.r);
        match &self.kind {
            Kind::Circle => dx * dx + dy * dy <= r * r,
            Kind::Ring(ri) => {
                let d2 = dx * dx + dy * dy;
                d2 <= r * r && d2 >= ri * ri
            }
            Kind::Square(h) => dx.abs().max(dy.abs()) <= *h,
            // apex at the top, base at the bottom, both as wide as the shape is tall
            Kind::Triangle => dy >= -r && dy <= r && dx.abs() <= (dy + r) / 2.0,
            Kind::Polygon(poly) => in_polygon(poly, px, py),
        }
    }
}

fn star(spec: &SceneSpec, cx: f32, cy: f32, s: f32) -> Vec<(f32, f32)> {
    (0..10)
        .map(|k| {
            let r = if k % 2 == 0 {
                s / 2.0
            } else {
                spec.star_inner * s / 2.0
            };
            let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
            (cx + r * a.cos(), cy + r * a.sin())
        })
        .collect()
}

/// Even-odd rule.
fn in_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let ((xi, yi), (xj, yj)) = (poly[i], poly[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// The template (kind, centre, size) around the region's bounding box with the best
/// intersection over union.
fn best_template(spec: &SceneSpec, mask: &[bool], w: usize, h: usize, scale: f32) -> (String, f32) {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    // pixel centres are at +0.5, as in the generator's rasterisation
    let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
    let (mx, my) = (x0 as f32 + bw / 2.0, y0 as f32 + bh / 2.0);
    let margin = (4.0 * scale).ceil() as usize;
    let (rx0, ry0) = (x0.saturating_sub(margin), y0.saturating_sub(margin));
    let (rx1, ry1) = ((x1 + margin).min(w - 1), (y1 + margin).min(h - 1));

    let mut best = (String::new(), -1.0f32);
    for shape in &spec.shapes {
        // nominal centre and size from the bounding box, by each shape's geometry
        let (cx, cy, s) = match shape.as_str() {
            "square" => (mx, my, (bw + bh) / 2.0 / spec.square_side),
            "star" => {
                let (c36, s72) = (36f32.to_radians().cos(), 72f32.to_radians().sin());
                let r = (bw / (2.0 * s72) + bh / (1.0 + c36)) / 2.0;
                (mx, y0 as f32 + r, 2.0 * r)
            }
            _ => (mx, my, (bw + bh) / 2.0),
        };
        // a small search around the estimate absorbs blur and the box's pixel rounding
        for ds in [0.92f32, 1.0, 1.08] {
            for oy in -1..=1 {
                for ox in -1..=1 {
                    let (tx, ty) = (cx + ox as f32 * 0.75 * scale, cy + oy as f32 * 0.75 * scale);
                    let Some(template) = Template::new(spec, shape, tx, ty, s * ds) else {
                        continue;
                    };
                    let (mut inter, mut union) = (0u32, 0u32);
                    for y in ry0..=ry1 {
                        for x in rx0..=rx1 {
                            let t = template.contains(x as f32 + 0.5, y as f32 + 0.5);
                            let m = mask[y * w + x];
                            inter += (t && m) as u32;
                            union += (t || m) as u32;
                        }
                    }
                    let iou = inter as f32 / union.max(1) as f32;
                    if iou > best.1 {
                        best = (shape.clone(), iou);
                    }
                }
            }
        }
    }
    best
}
