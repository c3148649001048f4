//! The Models panel: the model in use (its VAE and prediction type), and the model library
//! (every checkpoint and diffusers folder in the library folders, searchable; a click loads
//! one in the background).
//!
//! The library is read from file headers on the I/O runtime, so listing a folder of
//! checkpoints takes a fraction of a second; hashes come from the hash cache, and "Compute
//! hashes" reads the rest in the background (A1111's hash is what a dropped image names its
//! model by).

use std::path::PathBuf;

use egui::RichText;

use super::actions::Action;
use super::folder_list::{folder_list, FolderEdit};
use super::state::{ModelState, Studio};
use super::Panel;
use crate::models::device::{DeviceChoice, Precision};
use crate::models::library::{default_model_dirs, human_size, EntryKind, LibraryEntry};
use crate::settings::{ModelChoice, Settings};

#[derive(Default)]
pub struct ModelsPanel {
    search: String,
    folder_input: String,
    /// The folders the shown list was scanned from (a change triggers a rescan).
    scanned_dirs: Option<Vec<PathBuf>>,
    /// The TAESD found for the model in use, looked up (files probed) when the model or the
    /// folders change rather than every frame.
    taesd: Option<(PathBuf, Vec<PathBuf>, Option<PathBuf>)>,
}

impl Panel for ModelsPanel {
    fn id(&self) -> &'static str {
        "models"
    }

    fn title(&self) -> &'static str {
        "Models"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        let dirs = studio.settings.model_dirs();
        if self.scanned_dirs.as_ref() != Some(&dirs) {
            studio.scan_library(dirs.clone());
            self.scanned_dirs = Some(dirs.clone());
        }
        let taesd = match &studio.model {
            ModelState::Ready(info) => {
                let fresh = matches!(&self.taesd, Some((m, d, _)) if *m == info.path && *d == dirs);
                if !fresh {
                    let found = studio.settings.taesd_file(&info.path);
                    self.taesd = Some((info.path.clone(), dirs, found));
                }
                self.taesd.as_ref().and_then(|(_, _, f)| f.clone())
            }
            _ => None,
        };
        current_model(ui, studio, taesd);
        ui.separator();
        self.folders_ui(ui, studio);
        ui.separator();
        ui.horizontal(|ui| {
            let label = ui.label("Search");
            ui.add(
                egui::TextEdit::singleline(&mut self.search)
                    .hint_text("name, SD 1.x, fp16, hash")
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(label.id);
        });
        ui.horizontal(|ui| {
            if studio.library_scanning {
                ui.spinner();
                ui.label("Reading the model folders…");
            } else if ui.small_button("Rescan").clicked() {
                self.scanned_dirs = None;
            }
            let unhashed = |e: &&LibraryEntry| e.hash.is_none() && e.error.is_none();
            // Counted every frame; the entries are copied only when the button is pressed.
            let count = studio.library.iter().filter(unhashed).count();
            if count > 0
                && ui
                    .small_button(format!("Compute {count} hashes"))
                    .on_hover_text(
                        "Reads each file once (A1111's model hash, which images name their \
                         model by); remembered afterwards",
                    )
                    .clicked()
            {
                let entries = studio.library.iter().filter(unhashed).cloned().collect();
                studio.worker.hash_library(entries);
            }
        });
        egui::ScrollArea::vertical().show(ui, |ui| {
            let terms: Vec<String> = self
                .search
                .to_lowercase()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let shown: Vec<&LibraryEntry> = studio
                .library
                .iter()
                .filter(|e| e.kind != EntryKind::Vae && matches(e, &terms))
                .collect();
            if shown.is_empty() && !studio.library_scanning {
                ui.weak(if studio.library.is_empty() {
                    "No models here. Add the folder you keep them in: A1111's \
                     models/Stable-diffusion, ComfyUI's models/checkpoints, a folder of \
                     diffusers models or the Hugging Face cache."
                } else {
                    "Nothing matches the search."
                });
            }
            let current = match &studio.model {
                ModelState::Ready(info) => Some(info.path.clone()),
                _ => None,
            };
            let mut open = None;
            for e in shown {
                if entry_row(ui, e, current.as_ref() == Some(&e.path)) {
                    open = Some(e.path.clone());
                }
            }
            if let Some(path) = open {
                studio.push(Action::OpenModelPath(path));
            }
        });
    }
}

fn matches(e: &LibraryEntry, terms: &[String]) -> bool {
    let text = format!(
        "{} {} {} {}",
        e.name,
        e.architecture,
        e.precision.as_deref().unwrap_or(""),
        e.hash.as_deref().unwrap_or("")
    )
    .to_lowercase();
    terms.iter().all(|t| text.contains(t))
}

/// One library entry; true when clicked.
fn entry_row(ui: &mut egui::Ui, e: &LibraryEntry, current: bool) -> bool {
    // The format tells apart the same model kept as .safetensors and as .ckpt.
    let format = match e.kind {
        EntryKind::Folder => "folder".to_string(),
        _ => crate::models::tensor_file::extension(&e.path).unwrap_or_default(),
    };
    let details = format!(
        "{} · {} · {format} · {} · {}",
        e.architecture,
        e.precision.as_deref().unwrap_or("?"),
        human_size(e.size_bytes),
        e.hash.as_deref().unwrap_or("hash not computed")
    );
    let mut clicked = false;
    ui.horizontal(|ui| {
        let name = if e.runnable {
            RichText::new(&e.name)
        } else {
            RichText::new(&e.name).weak()
        };
        let hover = match &e.error {
            Some(err) => err.clone(),
            None if !e.runnable => format!("{}: Easel cannot run this yet", e.architecture),
            None => e.path.display().to_string(),
        };
        let r = ui
            .add_enabled(e.runnable, egui::Button::selectable(current, name))
            .on_hover_text(&hover)
            .on_disabled_hover_text(&hover);
        clicked = r.clicked() && !current;
    });
    ui.weak(details);
    ui.add_space(2.0);
    clicked
}

/// The model in use: what it is, how its settings were decided, and its VAE and prediction
/// type, which change in memory without reloading the weights.
/// The model in use and its choices; `taesd` is the TAESD file found for it, if any.
fn current_model(ui: &mut egui::Ui, studio: &mut Studio, taesd: Option<PathBuf>) {
    ui.strong("Model in use");
    let ModelState::Ready(info) = &studio.model else {
        ui.weak("None loaded.");
        return;
    };
    let info = info.clone();
    ui.label(format!("{} · {}", info.name, info.description));
    for note in &info.notes {
        ui.weak(note);
    }
    let mut choice = studio
        .settings
        .model_choices
        .get(&info.path)
        .cloned()
        .unwrap_or_default();
    let before = choice.clone();

    let vae_label = match &choice.vae {
        None => "The model's own".to_string(),
        Some(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let vaes: Vec<LibraryEntry> = studio
        .library
        .iter()
        .filter(|e| e.kind == EntryKind::Vae)
        .cloned()
        .collect();
    egui::ComboBox::from_label("VAE")
        .selected_text(vae_label)
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut choice.vae, None, "The model's own");
            for v in &vaes {
                ui.selectable_value(&mut choice.vae, Some(v.path.clone()), &v.name)
                    .on_hover_text(v.path.display().to_string());
            }
        })
        .response
        .on_hover_text("VAE files are listed from the library folders (A1111's models/VAE, ComfyUI's models/vae)");
    egui::ComboBox::from_label("Prediction")
        .selected_text(match choice.prediction.as_deref() {
            Some("v") => "v-prediction",
            Some("epsilon") => "epsilon",
            _ => "As the files say",
        })
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut choice.prediction, None, "As the files say");
            ui.selectable_value(&mut choice.prediction, Some("epsilon".into()), "epsilon");
            ui.selectable_value(&mut choice.prediction, Some("v".into()), "v-prediction");
        })
        .response
        .on_hover_text(
            "What the model predicts. SD 2.x 768 px models and some fine-tunes predict v; \
             a wrong choice gives grey or fried images.",
        );
    let mut device = studio.settings.device;
    egui::ComboBox::from_label("Run on")
        .selected_text(device.name())
        .show_ui(ui, |ui| {
            for d in [
                DeviceChoice::Auto,
                DeviceChoice::Cpu,
                DeviceChoice::Cuda,
                DeviceChoice::Metal,
            ] {
                ui.selectable_value(&mut device, d, d.name());
            }
        })
        .response
        .on_hover_text(
            "auto: a GPU when this build of Easel and this machine have one, else the CPU. \
             CUDA and Metal need a build with that feature.",
        );
    let mut precision = studio.settings.precision;
    egui::ComboBox::from_label("Weights")
        .selected_text(precision.name())
        .show_ui(ui, |ui| {
            for p in Precision::ALL {
                ui.selectable_value(&mut precision, p, p.name());
            }
        })
        .response
        .on_hover_text(
            "How the model's weights are kept in memory. f16 and bf16 take half the memory \
             of f32 (about 2 GB instead of 4 for SD 1.5); the arithmetic stays f32, so images \
             differ from f32 only by the weights' rounding. Changing it reloads the model.",
        );
    let (mut preview, mut decode) = (studio.settings.taesd_preview, studio.settings.taesd_decode);
    ui.add_enabled_ui(taesd.is_some(), |ui| {
        let why = match &taesd {
            Some(f) => format!("TAESD: {}", f.display()),
            None => "No TAESD found: put taesd_decoder.safetensors (madebyollin's tiny \
                     autoencoder; taesdxl_decoder.safetensors for SDXL) in a model folder's \
                     vae_approx/ or VAE-taesd/ folder, or beside the model."
                .into(),
        };
        ui.checkbox(&mut preview, "Real previews (TAESD)")
            .on_hover_text(format!(
                "A decoded image at every step instead of the rough latent colours, for a \
                 few percent of a step's time.\n{why}"
            ))
            .on_disabled_hover_text(&why);
        ui.checkbox(&mut decode, "Fast final decode (TAESD)")
            .on_hover_text(format!(
                "Decode the finished image with TAESD instead of the VAE: many times \
                 faster, slightly softer. Off for final quality.\n{why}"
            ))
            .on_disabled_hover_text(&why);
    });
    let taesd_changed =
        preview != studio.settings.taesd_preview || decode != studio.settings.taesd_decode;
    studio.settings.taesd_preview = preview;
    studio.settings.taesd_decode = decode;
    let device_changed = device != studio.settings.device || precision != studio.settings.precision;
    studio.settings.device = device;
    studio.settings.precision = precision;
    if choice != before || device_changed || taesd_changed {
        set_choice(&mut studio.settings, &info.path, choice);
        studio.load_model(info.path.clone());
    }
}

fn set_choice(settings: &mut Settings, path: &std::path::Path, choice: ModelChoice) {
    if choice == ModelChoice::default() {
        settings.model_choices.remove(path);
    } else {
        settings.model_choices.insert(path.to_path_buf(), choice);
    }
}

impl ModelsPanel {
    fn folders_ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        let dirs = studio.settings.model_dirs();
        let removable = !studio.settings.model_dirs.is_empty();
        let hint = "models/Stable-diffusion";
        match folder_list(
            ui,
            "Model folders",
            &dirs,
            removable,
            &mut self.folder_input,
            hint,
        ) {
            FolderEdit::None => {}
            FolderEdit::Remove(i) => {
                studio.settings.model_dirs.remove(i);
            }
            FolderEdit::Add(dir) if dir.exists() => add_model_dir(&mut studio.settings, dir),
            FolderEdit::Add(dir) => studio.error(format!("{}: no such folder", dir.display())),
            FolderEdit::Browse => studio.push(Action::PickModelLibraryFolder),
        }
    }
}

/// Adds a library folder (the defaults stay listed alongside the first one chosen).
pub fn add_model_dir(settings: &mut Settings, dir: PathBuf) {
    if settings.model_dirs.is_empty() {
        settings.model_dirs = default_model_dirs();
    }
    if !settings.model_dirs.contains(&dir) {
        settings.model_dirs.push(dir);
    }
}
