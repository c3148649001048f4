//! Painting an inpainting mask over the starting picture, on the canvas: a round brush (white
//! = repaint), an eraser, clear, invert and undo, shown as a red overlay.
//!
//! The mask is kept at the picture's aspect, at most [`EDIT_SIDE`] pixels a side, and fitted
//! with the picture to the generation size when a job is queued. Each frame only the part of
//! the overlay a stroke touched is uploaded (`TextureHandle::set_partial`), so painting on a
//! large canvas costs what the brush covers, not the whole picture.

use std::sync::Arc;

use egui::{Color32, ColorImage, Pos2, Rect, TextureHandle, TextureOptions, Vec2};
use image::{GrayImage, Luma};

/// The longest side a mask is edited at: enough for any brush on screen.
pub const EDIT_SIDE: u32 = 1024;
/// Undo steps kept (one per stroke, each a copy of the mask: at most 1 MB each).
const UNDO: usize = 20;
/// The overlay's colour where the mask repaints.
const PAINT: Color32 = Color32::from_rgba_premultiplied(120, 20, 20, 120);

/// The mask being painted and what the canvas needs to show it.
pub struct MaskEditor {
    mask: GrayImage,
    /// The mask as the UI shows it, once uploaded.
    overlay: Option<TextureHandle>,
    /// Mask pixels changed since the last upload: (x0, y0, x1, y1), exclusive ends.
    dirty: Option<[u32; 4]>,
    undo: Vec<GrayImage>,
    /// Where the pointer was last frame while painting, in mask pixels.
    last: Option<Pos2>,
    /// Brush diameter as a share of the mask's longer side.
    pub brush: f32,
    pub erase: bool,
}

impl MaskEditor {
    /// An empty (all keep) mask for a picture of `width` × `height`.
    pub fn new(width: u32, height: u32) -> Self {
        let scale = (EDIT_SIDE as f32 / width.max(height).max(1) as f32).min(1.0);
        let (w, h) = (
            ((width as f32 * scale).round() as u32).max(1),
            ((height as f32 * scale).round() as u32).max(1),
        );
        Self {
            mask: GrayImage::new(w, h),
            overlay: None,
            dirty: Some([0, 0, w, h]),
            undo: Vec::new(),
            last: None,
            brush: 0.08,
            erase: false,
        }
    }

    /// The mask as painted (white = repaint), at editing size.
    pub fn mask(&self) -> &GrayImage {
        &self.mask
    }

    /// A copy for a queued job.
    pub fn snapshot(&self) -> Arc<GrayImage> {
        Arc::new(self.mask.clone())
    }

    /// Whether anything is to be repainted.
    pub fn is_empty(&self) -> bool {
        self.mask.as_raw().iter().all(|&v| v < 128)
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    fn remember(&mut self) {
        if self.undo.len() == UNDO {
            self.undo.remove(0);
        }
        self.undo.push(self.mask.clone());
    }

    fn all_dirty(&mut self) {
        self.dirty = Some([0, 0, self.mask.width(), self.mask.height()]);
    }

    pub fn clear(&mut self) {
        self.remember();
        self.mask.as_mut().fill(0);
        self.all_dirty();
    }

    pub fn invert(&mut self) {
        self.remember();
        for v in self.mask.as_mut() {
            *v = 255 - *v;
        }
        self.all_dirty();
    }

    pub fn undo(&mut self) {
        if let Some(previous) = self.undo.pop() {
            self.mask = previous;
            self.all_dirty();
        }
    }

    /// Paints (or erases) a round stroke from `from` to `to`, in mask pixels.
    pub fn stroke(&mut self, from: Pos2, to: Pos2) {
        let side = self.mask.width().max(self.mask.height()) as f32;
        let r = (self.brush * side / 2.0).max(0.5);
        let value = if self.erase { 0 } else { 255 };
        let (w, h) = (self.mask.width() as i64, self.mask.height() as i64);
        let x0 = ((from.x.min(to.x) - r).floor() as i64).clamp(0, w);
        let x1 = ((from.x.max(to.x) + r).ceil() as i64 + 1).clamp(0, w);
        let y0 = ((from.y.min(to.y) - r).floor() as i64).clamp(0, h);
        let y1 = ((from.y.max(to.y) + r).ceil() as i64 + 1).clamp(0, h);
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        let seg = to - from;
        let len2 = seg.length_sq();
        for y in y0..y1 {
            for x in x0..x1 {
                let p = Pos2::new(x as f32 + 0.5, y as f32 + 0.5);
                // Distance from the pixel centre to the segment.
                let t = if len2 > 0.0 {
                    ((p - from).dot(seg) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                if (p - (from + seg * t)).length() <= r {
                    self.mask.put_pixel(x as u32, y as u32, Luma([value]));
                }
            }
        }
        let d = [x0 as u32, y0 as u32, x1 as u32, y1 as u32];
        self.dirty = Some(match self.dirty {
            Some(o) => [
                o[0].min(d[0]),
                o[1].min(d[1]),
                o[2].max(d[2]),
                o[3].max(d[3]),
            ],
            None => d,
        });
    }

    /// Handles the pointer over the picture shown at `rect`: a drag paints; a stroke is one
    /// undo step. Returns true when the mask changed.
    pub fn handle(&mut self, response: &egui::Response, rect: Rect) -> bool {
        let to_mask = |p: Pos2| {
            let size = Vec2::new(self.mask.width() as f32, self.mask.height() as f32);
            Pos2::new(
                (p.x - rect.left()) / rect.width() * size.x,
                (p.y - rect.top()) / rect.height() * size.y,
            )
        };
        let pointer = response.interact_pointer_pos().map(to_mask);
        if response.drag_started() || response.clicked() {
            self.remember();
            self.last = pointer;
        }
        let mut changed = false;
        if let (Some(p), true) = (pointer, response.dragged() || response.clicked()) {
            let from = self.last.unwrap_or(p);
            self.stroke(from, p);
            self.last = Some(p);
            changed = true;
        }
        if response.drag_stopped() || response.clicked() {
            self.last = None;
        }
        changed
    }

    /// The overlay texture, with only the changed part uploaded.
    pub fn overlay(&mut self, ctx: &egui::Context) -> &TextureHandle {
        let (w, h) = self.mask.dimensions();
        let region = |mask: &GrayImage, [x0, y0, x1, y1]: [u32; 4]| {
            let pixels = (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .map(|(x, y)| {
                    if mask.get_pixel(x, y).0[0] >= 128 {
                        PAINT
                    } else {
                        Color32::TRANSPARENT
                    }
                })
                .collect();
            ColorImage::new([(x1 - x0) as usize, (y1 - y0) as usize], pixels)
        };
        let dirty = self.dirty.take();
        match (&mut self.overlay, dirty) {
            (Some(t), Some(d)) => t.set_partial(
                [d[0] as usize, d[1] as usize],
                region(&self.mask, d),
                TextureOptions::NEAREST,
            ),
            (Some(_), None) => {}
            (None, _) => {
                let image = region(&self.mask, [0, 0, w, h]);
                self.overlay = Some(ctx.load_texture("mask", image, TextureOptions::NEAREST));
            }
        }
        self.overlay.get_or_insert_with(|| {
            ctx.load_texture(
                "mask",
                region(&self.mask, [0, 0, w, h]),
                TextureOptions::NEAREST,
            )
        })
    }

    /// A mask read from a file, brought to editing size.
    pub fn from_mask(mask: &GrayImage) -> Self {
        let mut editor = Self::new(mask.width(), mask.height());
        let (w, h) = editor.mask.dimensions();
        editor.mask = if (w, h) == mask.dimensions() {
            mask.clone()
        } else {
            image::imageops::resize(mask, w, h, image::imageops::FilterType::Triangle)
        };
        editor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strokes_paint_erase_invert_and_undo() {
        let mut m = MaskEditor::new(2000, 1000);
        assert_eq!(m.mask().dimensions(), (1024, 512));
        assert!(m.is_empty());
        m.brush = 0.02; // ~20 px
        m.remember();
        m.stroke(Pos2::new(100.0, 100.0), Pos2::new(300.0, 100.0));
        assert_eq!(m.mask().get_pixel(200, 100).0[0], 255);
        assert_eq!(m.mask().get_pixel(200, 200).0[0], 0);
        assert!(!m.is_empty());
        m.erase = true;
        m.remember();
        m.stroke(Pos2::new(200.0, 100.0), Pos2::new(200.0, 100.0));
        assert_eq!(m.mask().get_pixel(200, 100).0[0], 0);
        assert_eq!(m.mask().get_pixel(120, 100).0[0], 255);
        m.undo();
        assert_eq!(m.mask().get_pixel(200, 100).0[0], 255);
        m.invert();
        assert_eq!(m.mask().get_pixel(200, 200).0[0], 255);
        m.clear();
        assert!(m.is_empty());
        m.undo();
        m.undo();
        m.undo();
        assert!(m.is_empty());
        assert!(!m.can_undo());
    }
}
