//! The settings panel: where images are saved, which model is open, and the shortcuts.

use super::actions::Action;
use super::state::{ModelState, Studio};
use super::Panel;

pub struct SettingsPanel;

impl Panel for SettingsPanel {
    fn id(&self) -> &'static str {
        "settings"
    }

    fn title(&self) -> &'static str {
        "Settings"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        ui.strong("Library folder");
        ui.label("Every finished image is written here at once, with its settings inside.");
        ui.monospace(studio.settings.library_dir().display().to_string());
        ui.horizontal(|ui| {
            if ui.button("Choose…").clicked() {
                studio.push(Action::PickLibraryFolder);
            }
            if studio.settings.library_dir.is_some() && ui.button("Use the default").clicked() {
                studio.settings.library_dir = None;
            }
        });
        ui.separator();
        ui.strong("Model");
        match &studio.model {
            ModelState::Ready(info) => {
                ui.label(format!(
                    "{} · native {} px · sizes in steps of {} px",
                    info.name, info.native_size, info.size_multiple
                ));
                ui.monospace(info.path.display().to_string());
            }
            _ => {
                ui.weak("No model loaded.");
            }
        }
        ui.horizontal(|ui| {
            if ui.button("Open checkpoint file…").clicked() {
                studio.push(Action::PickModelFile);
            }
            if ui.button("Open model folder…").clicked() {
                studio.push(Action::PickModelFolder);
            }
        });
        ui.weak("The Models tab lists your model folders and sets a model's VAE.");
        ui.separator();
        ui.strong("Shortcuts");
        ui.label("Ctrl+Enter: Generate · Esc: Cancel · Ctrl+scroll: zoom the canvas");
        ui.label("Drop a PNG from Easel, AUTOMATIC1111 or ComfyUI to restore its settings.");
        ui.label("Drop a checkpoint file or model folder to open it.");
        ui.separator();
        ui.weak("The theme follows the system's dark or light setting.");
    }
}
