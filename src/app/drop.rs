//! Drag and drop. A PNG dropped on the window restores its generation settings; a file dropped
//! on the right-hand tool area goes to the panel shown there first (the gallery panel turns
//! it into the image-search gesture).

use std::path::PathBuf;

use egui::{Align2, Color32, FontId, Id, LayerId, Order, Rect};

use super::actions::Action;
use super::state::Studio;
use super::Panel;

pub fn handle(
    ctx: &egui::Context,
    studio: &mut Studio,
    tools: &mut [Box<dyn Panel>],
    selected_tool: usize,
    tools_rect: Rect,
) {
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
        paint_hint(ctx, tools_rect);
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
        studio.push(if is_model {
            Action::OpenModelPath(first)
        } else {
            Action::RestoreFromFile(first)
        });
    }
    let ignored = files.count();
    if ignored > 0 {
        studio.info(format!(
            "Settings come from one image at a time: {ignored} more file(s) ignored."
        ));
    }
}

fn paint_hint(ctx: &egui::Context, tools_rect: Rect) {
    let painter = ctx.layer_painter(LayerId::new(Order::Foreground, Id::unique("drop_hint")));
    let screen = ctx.content_rect();
    painter.rect_filled(screen, 0.0, Color32::from_black_alpha(150));
    painter.text(
        screen.center(),
        Align2::CENTER_CENTER,
        "Drop a PNG to restore its settings, or a model to open it",
        FontId::proportional(24.0),
        Color32::WHITE,
    );
    painter.text(
        tools_rect.center(),
        Align2::CENTER_CENTER,
        "Gallery: search by image",
        FontId::proportional(16.0),
        Color32::LIGHT_GRAY,
    );
}
