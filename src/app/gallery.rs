//! The gallery area (placeholder until the gallery issue lands). Its drop gesture is already
//! typed: an image dropped here becomes [`Action::SearchByImage`], which the gallery will
//! answer with CLIP search; until then the studio says that search is not there yet.

use std::path::PathBuf;

use super::actions::Action;
use super::state::Studio;
use super::Panel;

pub struct GalleryPanel;

impl Panel for GalleryPanel {
    fn id(&self) -> &'static str {
        "gallery"
    }

    fn title(&self) -> &'static str {
        "Gallery"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        ui.label("Searching your library by text or by image arrives with the gallery.");
        ui.add_space(6.0);
        ui.weak("Drop an image here to search for similar ones (coming soon).");
        ui.add_space(6.0);
        ui.label(format!(
            "Every image is saved to {}",
            studio.settings.library_dir().display()
        ));
    }

    fn on_drop(&mut self, studio: &mut Studio, files: &[PathBuf]) -> bool {
        if let Some(first) = files.first() {
            studio.push(Action::SearchByImage(first.clone()));
        }
        true
    }
}
