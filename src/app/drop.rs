//! Drag and drop. A picture dropped on the canvas becomes img2img's starting picture; a PNG
//! dropped anywhere else restores its generation settings; a model opens wherever it is
//! dropped; a file dropped on the right-hand tool area goes to the panel shown there first
//! (the gallery panel turns it into the image-search gesture).

use std::path::PathBuf;

use egui::{Align2, Color32, FontId, Id, LayerId, Order, Rect};

use super::actions::Action;
use super::state::Studio;
use super::Panel;

/// Where the window's drop targets are this frame.
pub struct Areas {
    /// The right-hand tool panel.
    pub tools: Rect,
    /// The central panel with the canvas.
    pub canvas: Rect,
}

pub fn handle(
    ctx: &egui::Context,
    studio: &mut Studio,
    tools: &mut [Box<dyn Panel>],
    selected_tool: usize,
    areas: Areas,
) {
    let tools_rect = areas.tools;
    // The canvas takes pictures only when Generate could use one.
    let canvas_rect = Some(areas.canvas).filter(|_| studio.model.is_ready());
    let (hovering, dropped, pointer) = ctx.input(|i| {
        (
            !i.raw.hovered_files.is_empty(),
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect::<Vec<PathBuf>>(),
            i.pointer.latest_pos(),
        )
    });
    if hovering {
        paint_hint(ctx, tools_rect, canvas_rect);
    }
    if dropped.is_empty() {
        return;
    }
    // Platforms that report no pointer position during a drag (X11) fall back to the window.
    if pointer.is_some_and(|p| tools_rect.contains(p)) {
        if let Some(panel) = tools.get_mut(selected_tool) {
            if panel.on_drop(studio, &dropped) {
                return;
            }
        }
    }
    let mut files = dropped.into_iter();
    if let Some(first) = files.next() {
        // A checkpoint or model folder opens; an image gives back its settings.
        let is_model = first.is_dir()
            || crate::models::tensor_file::extension(&first)
                .is_some_and(|e| ["safetensors", "ckpt", "pt", "pth"].contains(&e.as_str()));
        let on_canvas = pointer.is_some_and(|p| canvas_rect.is_some_and(|r| r.contains(p)));
        studio.push(if is_model {
            Action::OpenModelPath(first)
        } else if on_canvas {
            Action::UseAsInit {
                picture: first,
                mask: None,
            }
        } else {
            Action::RestoreFromFile(first)
        });
    }
    let ignored = files.count();
    if ignored > 0 {
        studio.info(format!(
            "One image at a time: {ignored} more file(s) ignored."
        ));
    }
}

fn paint_hint(ctx: &egui::Context, tools_rect: Rect, canvas_rect: Option<Rect>) {
    let painter = ctx.layer_painter(LayerId::new(Order::Foreground, Id::unique("drop_hint")));
    let screen = ctx.content_rect();
    painter.rect_filled(screen, 0.0, Color32::from_black_alpha(150));
    let label = |at: egui::Pos2, text: &str, size: f32, color: Color32| {
        painter.text(
            at,
            Align2::CENTER_CENTER,
            text,
            FontId::proportional(size),
            color,
        );
    };
    label(
        screen.center_top() + egui::vec2(0.0, 60.0),
        "Drop a PNG to restore its settings, or a model to open it",
        24.0,
        Color32::WHITE,
    );
    if let Some(canvas) = canvas_rect {
        painter.rect_stroke(
            canvas.shrink(8.0),
            8.0,
            egui::Stroke::new(2.0, Color32::LIGHT_GRAY),
            egui::StrokeKind::Inside,
        );
        label(
            canvas.center(),
            "Canvas: start from this picture (img2img)",
            18.0,
            Color32::WHITE,
        );
    }
    label(
        tools_rect.center(),
        "Gallery: search by image",
        16.0,
        Color32::LIGHT_GRAY,
    );
}
