//! The history strip: this session's images, newest last. Click a thumbnail to view it; the
//! "Restore" button under it restores its settings in one click, "Use as init" starts the next
//! images from it (img2img).

use super::actions::Action;
use super::state::{Showing, Studio};

const THUMB: f32 = 72.0;

pub fn show(ui: &mut egui::Ui, studio: &mut Studio) {
    ui.add_space(4.0);
    if studio.history.is_empty() {
        ui.weak("Images from this session appear here.");
        ui.add_space(4.0);
        return;
    }
    let mut actions = Vec::new();
    egui::ScrollArea::horizontal()
        .stick_to_right(true)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                if studio.images_made > studio.history.len() {
                    ui.weak("Older images: in the Gallery");
                }
                for (i, item) in studio.history.iter().enumerate() {
                    ui.vertical(|ui| {
                        let selected = studio.showing == Showing::History(i);
                        let aspect =
                            item.metadata.width as f32 / item.metadata.height.max(1) as f32;
                        let size = egui::vec2(THUMB * aspect.clamp(0.5, 2.0), THUMB);
                        let number = item.number;
                        let image = egui::Image::new((item.texture.id(), size))
                            .alt_text(format!("Image #{number}"));
                        let r = ui
                            .add(egui::Button::image(image).selected(selected))
                            .on_hover_text(format!(
                                "#{number} · {}\nseed {} · {} steps · CFG {}",
                                item.metadata.prompt,
                                item.metadata.seed,
                                item.metadata.steps,
                                item.metadata.cfg_scale
                            ));
                        if r.clicked() {
                            actions.push(Action::View(i));
                        }
                        if ui
                            .small_button(format!("Restore #{number}"))
                            .on_hover_text("Restore this image's settings")
                            .clicked()
                        {
                            actions.push(Action::Restore(i));
                        }
                        let saved = item.path.clone();
                        let use_it = ui
                            .add_enabled(saved.is_some(), egui::Button::new("Use as init").small())
                            .on_hover_text("Start the next images from this one (img2img)")
                            .on_disabled_hover_text("Available once the image is saved");
                        if let (true, Some(path)) = (use_it.clicked(), saved) {
                            actions.push(Action::UseAsInit {
                                picture: path,
                                mask: None,
                            });
                        }
                    });
                }
            });
        });
    for a in actions {
        studio.push(a);
    }
}
