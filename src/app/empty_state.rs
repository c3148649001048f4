//! What the canvas shows without a model: how to get one, and a folder picker. Also the
//! loading and failed states, so the window always says what is going on.

use super::actions::Action;
use super::state::{ModelState, Studio};

pub fn show(ui: &mut egui::Ui, studio: &mut Studio) {
    ui.vertical_centered(|ui| {
        ui.add_space((ui.available_height() * 0.2).min(120.0));
        match &studio.model {
            ModelState::Loading { path, .. } => {
                ui.spinner();
                ui.heading("Loading the model…");
                ui.label(path.display().to_string());
                ui.weak("The window stays usable: write your prompt meanwhile.");
                return;
            }
            ModelState::Failed { path, error } => {
                ui.heading("That model could not be loaded");
                ui.label(path.display().to_string());
                ui.colored_label(ui.visuals().error_fg_color, error);
                ui.add_space(8.0);
            }
            ModelState::None | ModelState::Ready(_) => {
                ui.heading("Welcome to Easel");
                ui.add_space(4.0);
                ui.label("Easel needs a Stable Diffusion model to paint with.");
            }
        }
        ui.add_space(8.0);
        ui.label(
            "Choose a Stable Diffusion 1.x or 2.x checkpoint: the .safetensors or .ckpt file \
             A1111, ComfyUI or Civitai gave you (v1-5-pruned-emaonly.safetensors, a fine-tune, \
             v2-1_768-ema-pruned.safetensors), or a model folder in the diffusers layout \
             (model_index.json with unet/, vae/, text_encoder/…). Dropping one on the window \
             works too.",
        );
        ui.add_space(12.0);
        ui.horizontal(|ui| {
            let b = egui::Button::new(egui::RichText::new("Choose checkpoint file…").size(16.0))
                .fill(super::theme::accent(ui))
                .min_size(egui::vec2(220.0, 36.0));
            if ui.add(b).clicked() {
                studio.push(Action::PickModelFile);
            }
            let b = egui::Button::new(egui::RichText::new("Choose model folder…").size(16.0))
                .min_size(egui::vec2(200.0, 36.0));
            if ui.add(b).clicked() {
                studio.push(Action::PickModelFolder);
            }
        });
        ui.add_space(8.0);
        // Where no native dialog is available (no desktop portal), typing the path works too.
        ui.horizontal(|ui| {
            let label = ui.label("Or type its path:");
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut studio.model_path_input)
                        .hint_text("/path/to/model.safetensors")
                        .desired_width(320.0),
                )
                .labelled_by(label.id);
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            let path = studio.model_path_input.trim().to_string();
            if (ui.button("Open").clicked() || enter) && !path.is_empty() {
                studio.push(Action::OpenModelPath(path.into()));
            }
        });
        ui.add_space(8.0);
        ui.weak("Easel remembers the model and opens on it next time.");
    });
}
