//! The central canvas: the live preview (updated every step in the one canvas texture), then
//! the final image, or a history image; fit to the panel or zoomed.

use egui::{Rect, Sense, Vec2};

use super::actions::Action;
use super::state::{Showing, Studio};

pub fn show(ui: &mut egui::Ui, studio: &mut Studio) {
    toolbar(ui, studio);
    if studio.showing == Showing::Mask {
        if mask_editor(ui, studio) {
            return;
        }
        studio.showing = Showing::Live;
    }
    let (texture, size) = match studio.showing {
        Showing::History(i) => match studio.history.get(i) {
            Some(item) => (
                Some(item.texture.id()),
                [item.metadata.width, item.metadata.height],
            ),
            None => (None, [0, 0]),
        },
        Showing::Live | Showing::Mask => (
            studio.canvas_texture.as_ref().map(|t| t.id()),
            studio.canvas_size,
        ),
    };
    let Some(texture) = texture else {
        ui.centered_and_justified(|ui| {
            ui.weak("Write a prompt and press Generate (Ctrl+Enter). The preview appears here at every step.");
        });
        return;
    };
    let image_size = Vec2::new(size[0].max(1) as f32, size[1].max(1) as f32);
    match studio.zoom {
        None => {
            let avail = ui.available_size();
            let scale = (avail.x / image_size.x)
                .min(avail.y / image_size.y)
                .max(0.01);
            let shown = image_size * scale;
            let (rect, response) = ui.allocate_exact_size(avail, Sense::click());
            let image_rect = Rect::from_center_size(rect.center(), shown);
            egui::Image::new((texture, shown)).paint_at(ui, image_rect);
            zoom_on_scroll(ui, &response, studio, scale);
        }
        Some(zoom) => {
            egui::ScrollArea::both().show(ui, |ui| {
                let response = ui.add(egui::Image::new((texture, image_size * zoom)));
                zoom_on_scroll(ui, &response, studio, zoom);
            });
        }
    }
}

/// The starting picture with its mask over it, fitted to the panel; dragging paints. False
/// when there is no mask to paint.
fn mask_editor(ui: &mut egui::Ui, studio: &mut Studio) -> bool {
    let Some(init) = &mut studio.init else {
        return false;
    };
    let Some(mask) = &mut init.mask else {
        return false;
    };
    let size = init.canvas.size_vec2();
    let avail = ui.available_size();
    let scale = (avail.x / size.x).min(avail.y / size.y).max(0.01);
    let (rect, response) = ui.allocate_exact_size(avail, Sense::click_and_drag());
    let image_rect = Rect::from_center_size(rect.center(), size * scale);
    egui::Image::new((init.canvas.id(), image_rect.size())).paint_at(ui, image_rect);
    let changed = mask.handle(&response, image_rect);
    let overlay = mask.overlay(ui.ctx()).id();
    egui::Image::new((overlay, image_rect.size())).paint_at(ui, image_rect);
    if let Some(p) = response.hover_pos() {
        let radius = mask.brush * image_rect.width().max(image_rect.height()) / 2.0;
        ui.painter().circle_stroke(
            p,
            radius,
            egui::Stroke::new(1.5, ui.visuals().strong_text_color()),
        );
    }
    if changed {
        response.ctx.request_repaint();
    }
    if response.drag_stopped() && studio.settings.live {
        studio.push(Action::LiveRequeue);
    }
    true
}

/// Ctrl+scroll zooms around the current scale.
fn zoom_on_scroll(ui: &egui::Ui, response: &egui::Response, studio: &mut Studio, current: f32) {
    if !response.hovered() {
        return;
    }
    let zoom_delta = ui.input(|i| i.zoom_delta());
    if zoom_delta != 1.0 {
        studio.zoom = Some((current * zoom_delta).clamp(0.1, 16.0));
    }
}

fn toolbar(ui: &mut egui::Ui, studio: &mut Studio) {
    ui.horizontal(|ui| {
        if ui.selectable_label(studio.zoom.is_none(), "Fit").clicked() {
            studio.zoom = None;
        }
        for (label, z) in [("100%", 1.0), ("200%", 2.0)] {
            if ui.selectable_label(studio.zoom == Some(z), label).clicked() {
                studio.zoom = Some(z);
            }
        }
        let shown = match studio.showing {
            Showing::History(i) => Some(i),
            // The live canvas shows the newest image once a job has finished.
            Showing::Live if studio.running.is_none() => studio.history.len().checked_sub(1),
            Showing::Live => None,
            Showing::Mask => {
                ui.separator();
                ui.weak("Painting the mask: drag to paint, red is repainted");
                None
            }
        };
        if let Some(i) = shown {
            ui.separator();
            let Some(item) = studio.history.get(i) else {
                return;
            };
            ui.weak(format!(
                "#{} · seed {} · {}×{}",
                item.number, item.metadata.seed, item.metadata.width, item.metadata.height
            ));
            let path = item.path.clone();
            let unsaved = item.unsaved.as_ref().map(|u| u.error.clone());
            if ui
                .button("Restore settings")
                .on_hover_text("Put this image's prompt, seed and sliders back")
                .clicked()
            {
                studio.push(Action::Restore(i));
            }
            let r = ui
                .add_enabled(
                    path.is_some() || unsaved.is_some(),
                    egui::Button::new("Save as…"),
                )
                .on_disabled_hover_text("Writing it to the library…");
            let r = match (&path, &unsaved) {
                (Some(p), _) => r.on_hover_text(format!("Already in the library: {}", p.display())),
                (None, Some(_)) => r.on_hover_text("Not in the library: written from memory"),
                (None, None) => r,
            };
            if r.clicked() {
                studio.push(Action::SaveAs(i));
            }
            if let Some(error) = unsaved {
                if ui
                    .button("Retry save")
                    .on_hover_text("Write it to the library folder again")
                    .clicked()
                {
                    studio.push(Action::RetrySave(i));
                }
                ui.colored_label(ui.visuals().warn_fg_color, "Not saved")
                    .on_hover_text(error);
            }
        }
    });
}
