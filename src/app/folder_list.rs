//! The folder list the LoRA and Models panels share: the folders listed, each removable once
//! the user has chosen their own, a path field with Add, and the native picker.

use std::path::PathBuf;

/// What the user did to a folder list this frame.
#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub enum FolderEdit {
    None,
    Remove(usize),
    /// A typed path (not yet checked to exist).
    Add(PathBuf),
    /// Open the native folder picker.
    Browse,
}

pub fn folder_list(
    ui: &mut egui::Ui,
    heading: &str,
    dirs: &[PathBuf],
    removable: bool,
    input: &mut String,
    hint: &str,
) -> FolderEdit {
    let mut edit = FolderEdit::None;
    ui.strong(heading);
    for (i, d) in dirs.iter().enumerate() {
        ui.horizontal(|ui| {
            ui.monospace(d.display().to_string());
            if removable
                && ui
                    .small_button("x")
                    .on_hover_text("Stop listing this folder")
                    .clicked()
            {
                edit = FolderEdit::Remove(i);
            }
        });
    }
    if dirs.is_empty() {
        ui.weak("None yet.");
    }
    ui.horizontal(|ui| {
        let field = ui.add(
            egui::TextEdit::singleline(input)
                .hint_text(hint)
                .desired_width(160.0),
        );
        let typed = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.button("Add").clicked() || typed) && !input.trim().is_empty() {
            edit = FolderEdit::Add(PathBuf::from(input.trim()));
            input.clear();
        }
        if ui.button("Choose…").clicked() {
            edit = FolderEdit::Browse;
        }
    });
    edit
}
