//! The LoRA panel: the adapters in the LoRA folders, each with a toggle, a weight slider
//! (−2…2) and a button that puts its trigger words into the prompt; a search box; the folders.
//!
//! Toggles and weights live in the settings (so they survive a restart) and travel to the
//! worker inside each job's recipe, where they are applied from memory — moving a slider
//! never reloads anything. With Live on, toggling an adapter or letting go of its slider
//! re-renders with the same seed, like every other slider. `<lora:name:w>` typed into the
//! prompt works too (the worker reads it; the prompt keeps it).
//!
//! Folder scans read only file headers, on the I/O runtime; the panel polls for the result.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egui::{Response, RichText, Slider};

use super::actions::Action;
use super::folder_list::{folder_list, FolderEdit};
use super::state::Studio;
use super::Panel;
use crate::lora::library::{default_lora_dirs, scan, LoraInfo};
use crate::lora::LoraChoice;
use crate::settings::Settings;
use crate::worker::LoraRecipe;

/// The weight slider's range (negative weights invert what an adapter learned).
const WEIGHT_RANGE: std::ops::RangeInclusive<f64> = -2.0..=2.0;

/// A scan's result, filled in by a blocking task: the adapters, and the files that failed.
type ScanSlot = Arc<Mutex<Option<(Vec<LoraInfo>, Vec<String>)>>>;

#[derive(Default)]
pub struct LoraPanel {
    search: String,
    /// The folder field's text.
    folder_input: String,
    /// The folders the current list was scanned from (a change triggers a rescan).
    scanned_dirs: Option<Vec<PathBuf>>,
    adapters: Vec<LoraInfo>,
    unreadable: Vec<String>,
    pending_scan: Option<ScanSlot>,
    picked_folder: Option<Arc<Mutex<Option<PathBuf>>>>,
}

/// The folders the panel lists: the chosen ones, else $EASEL_LORA_DIR and the bundled adapters.
pub fn lora_dirs(settings: &Settings) -> Vec<PathBuf> {
    if settings.lora_dirs.is_empty() {
        default_lora_dirs()
    } else {
        settings.lora_dirs.clone()
    }
}

/// What a new job takes from the panel: the choices whose files still exist, and the folders
/// for `<lora:…>` tags.
pub fn recipe_loras(settings: &Settings) -> LoraRecipe {
    LoraRecipe {
        choices: settings
            .loras
            .iter()
            .filter(|c| c.enabled && c.path.is_file())
            .cloned()
            .collect(),
        dirs: lora_dirs(settings),
    }
}

impl Panel for LoraPanel {
    fn id(&self) -> &'static str {
        "lora"
    }

    fn title(&self) -> &'static str {
        "LoRA"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        self.poll(ui.ctx(), studio);
        self.folders_ui(ui, studio);
        ui.separator();
        ui.horizontal(|ui| {
            let label = ui.label("Search");
            ui.add(
                egui::TextEdit::singleline(&mut self.search)
                    .hint_text("name, trigger word, family")
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(label.id);
        });
        if self.pending_scan.is_some() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Reading the LoRA folders…");
            });
        }
        let mut requeue = false;
        egui::ScrollArea::vertical().show(ui, |ui| {
            let shown: Vec<&LoraInfo> = self
                .adapters
                .iter()
                .filter(|i| i.matches(&self.search))
                .collect();
            if shown.is_empty() && self.pending_scan.is_none() {
                ui.weak(if self.adapters.is_empty() {
                    "No adapters here. Add a folder with .safetensors LoRAs \
                     (ComfyUI's models/loras or A1111's models/Lora work as they are)."
                } else {
                    "Nothing matches the search."
                });
            }
            for info in shown {
                requeue |= adapter_row(ui, studio, info);
                ui.add_space(4.0);
            }
            if !self.unreadable.is_empty() {
                ui.collapsing(
                    format!("{} unreadable files", self.unreadable.len()),
                    |ui| {
                        for e in &self.unreadable {
                            ui.weak(e);
                        }
                    },
                );
            }
        });
        if requeue && studio.settings.live {
            studio.push(Action::LiveRequeue);
        }
    }
}

impl LoraPanel {
    /// Starts a scan when the folders changed; collects a finished scan or folder pick.
    fn poll(&mut self, ctx: &egui::Context, studio: &mut Studio) {
        if let Some(slot) = &self.picked_folder {
            let picked = slot.lock().ok().and_then(|mut s| s.take());
            if let Some(dir) = picked {
                add_folder(studio, dir);
                self.picked_folder = None;
            }
        }
        if let Some(slot) = &self.pending_scan {
            let done = slot.lock().ok().and_then(|mut s| s.take());
            match done {
                Some((adapters, unreadable)) => {
                    self.adapters = adapters;
                    self.unreadable = unreadable;
                    self.pending_scan = None;
                }
                None => ctx.request_repaint_after(Duration::from_millis(50)),
            }
        }
        let dirs = lora_dirs(&studio.settings);
        if self.scanned_dirs.as_ref() != Some(&dirs) && self.pending_scan.is_none() {
            self.start_scan(studio, dirs);
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }

    fn start_scan(&mut self, studio: &Studio, dirs: Vec<PathBuf>) {
        let slot: ScanSlot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let task_dirs = dirs.clone();
        studio.worker.spawn_blocking(move || {
            let (mut adapters, mut unreadable) = (Vec::new(), Vec::new());
            for dir in &task_dirs {
                match scan(dir) {
                    Ok(entries) => {
                        for e in entries {
                            match e {
                                Ok(info) => adapters.push(info),
                                Err(err) => unreadable.push(err.to_string()),
                            }
                        }
                    }
                    Err(err) => unreadable.push(err.to_string()),
                }
            }
            if let Ok(mut s) = out.lock() {
                *s = Some((adapters, unreadable));
            }
        });
        self.scanned_dirs = Some(dirs);
        self.pending_scan = Some(slot);
    }

    fn folders_ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        let dirs = lora_dirs(&studio.settings);
        let removable = !studio.settings.lora_dirs.is_empty();
        match folder_list(
            ui,
            "LoRA folders",
            &dirs,
            removable,
            &mut self.folder_input,
            "folder path",
        ) {
            FolderEdit::None => {}
            FolderEdit::Remove(i) => {
                studio.settings.lora_dirs.remove(i);
            }
            FolderEdit::Add(dir) => add_folder(studio, dir),
            FolderEdit::Browse => self.pick_folder(studio),
        }
        if ui.button("Rescan").clicked() {
            self.scanned_dirs = None;
        }
    }

    fn pick_folder(&mut self, studio: &Studio) {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        studio.worker.spawn_io(async move {
            let dialog = rfd::AsyncFileDialog::new().set_title("Choose a LoRA folder");
            if let Some(folder) = dialog.pick_folder().await {
                if let Ok(mut s) = out.lock() {
                    *s = Some(folder.path().to_path_buf());
                }
            }
        });
        self.picked_folder = Some(slot);
    }
}

fn add_folder(studio: &mut Studio, dir: PathBuf) {
    if !dir.is_dir() {
        studio.error(format!("{} is not a folder", dir.display()));
        return;
    }
    if studio.settings.lora_dirs.is_empty() {
        // Keep what was listed by default ($EASEL_LORA_DIR, bundled) alongside the new folder.
        studio.settings.lora_dirs = default_lora_dirs();
    }
    if !studio.settings.lora_dirs.contains(&dir) {
        studio.settings.lora_dirs.push(dir);
    }
}

/// True when a slider was let go (or changed by keyboard): when live mode re-queues.
fn released(r: &Response) -> bool {
    r.drag_stopped() || (r.changed() && !r.dragged())
}

/// One adapter: toggle, weight, trigger words. True when live mode should re-render.
fn adapter_row(ui: &mut egui::Ui, studio: &mut Studio, info: &LoraInfo) -> bool {
    let mut choice = studio
        .settings
        .loras
        .iter()
        .find(|c| c.path == info.path)
        .cloned()
        .unwrap_or_else(|| LoraChoice {
            path: info.path.clone(),
            enabled: false,
            weight: 1.0,
            te_weight: None,
        });
    let before = choice.clone();
    let mut requeue = false;
    let toggle = ui
        .checkbox(&mut choice.enabled, RichText::new(&info.name).strong())
        .on_hover_text(details(info));
    requeue |= toggle.changed();
    ui.horizontal(|ui| {
        let slider = ui
            .add_enabled(
                choice.enabled,
                Slider::new(&mut choice.weight, WEIGHT_RANGE)
                    .step_by(0.05)
                    .fixed_decimals(2),
            )
            .labelled_by(toggle.id)
            .on_hover_text("Weight: 1 as trained, 0 off, negative inverts");
        requeue |= released(&slider);
        let words = info.trigger_text();
        if ui
            .add_enabled(
                !words.is_empty(),
                egui::Button::new("Trigger words").small(),
            )
            .on_hover_text(format!("Add to the prompt: {words}"))
            .on_disabled_hover_text("This adapter lists no trigger words")
            .clicked()
        {
            insert_words(&mut studio.settings.prompt, &words);
        }
    });
    ui.weak(summary(info));
    if choice != before {
        store(&mut studio.settings.loras, choice);
    }
    requeue
}

fn store(choices: &mut Vec<LoraChoice>, choice: LoraChoice) {
    match choices.iter_mut().find(|c| c.path == choice.path) {
        Some(c) => *c = choice,
        None => choices.push(choice),
    }
}

/// Appends `words` to the prompt as a comma-separated phrase.
pub fn insert_words(prompt: &mut String, words: &str) {
    let trimmed = prompt.trim_end();
    if trimmed.is_empty() {
        *prompt = words.to_string();
    } else if trimmed.ends_with(',') {
        *prompt = format!("{trimmed} {words}");
    } else {
        *prompt = format!("{trimmed}, {words}");
    }
}

fn summary(info: &LoraInfo) -> String {
    let mut parts = vec![info.family.to_string()];
    if let Some((a, b)) = info.rank {
        parts.push(if a == b {
            format!("rank {a}")
        } else {
            format!("rank {a}–{b}")
        });
    }
    let t = &info.touches;
    parts.push(match (t.unet_layers > 0, t.text_layers > 0) {
        (true, true) => "UNet + text".into(),
        (true, false) => "UNet".into(),
        (false, true) => "text only".into(),
        (false, false) => "nothing applicable".into(),
    });
    if t.conv3x3_layers > 0 {
        parts.push("conv".into());
    }
    parts.join(" · ")
}

fn details(info: &LoraInfo) -> String {
    let mut s = format!(
        "{}\n{} · {}",
        info.path.display(),
        info.format,
        summary(info)
    );
    if let Some(a) = info.alpha {
        s.push_str(&format!(" · alpha {a}"));
    }
    let k = &info.kohya;
    if let Some(m) = &k.sd_model_name {
        s.push_str(&format!("\ntrained on {m}"));
    }
    if !k.trigger_words.is_empty() {
        s.push_str(&format!("\ntrigger words: {}", info.trigger_text()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_words_join_the_prompt_as_a_phrase() {
        let mut p = String::new();
        insert_words(&mut p, "a, b");
        assert_eq!(p, "a, b");
        let mut p = "a cat ".to_string();
        insert_words(&mut p, "x");
        assert_eq!(p, "a cat, x");
        let mut p = "a cat,".to_string();
        insert_words(&mut p, "x");
        assert_eq!(p, "a cat, x");
    }
}
