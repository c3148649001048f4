//! The Embeddings tab: textual-inversion embeddings (A1111's `embeddings/` folders), each with
//! its vector count and the encoders it fits, a click away from the prompt or the negative.
//! Folders are scanned on the I/O runtime; a job reads the same folders when it runs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::folder_list::{folder_list, FolderEdit};
use super::state::Studio;
use super::Panel;
use crate::prompt::embeddings::{scan, Embedding};
use crate::settings::Settings;

/// A scan's result: what each embedding is ("3 vectors, 768"), and the files that failed.
type ScanSlot = Arc<Mutex<Option<(Vec<Row>, Vec<String>)>>>;

/// One embedding as listed.
#[derive(Debug, Clone)]
struct Row {
    name: String,
    vectors: usize,
    widths: String,
}

#[derive(Default)]
pub struct EmbeddingsPanel {
    folder_input: String,
    scanned_dirs: Option<Vec<PathBuf>>,
    rows: Vec<Row>,
    unreadable: Vec<String>,
    pending_scan: Option<ScanSlot>,
}

/// The folders jobs read embeddings from: the chosen ones, else `$EASEL_EMBEDDINGS_DIR` and
/// the `embeddings` folders beside the model folders (A1111's `webui/embeddings` for
/// `webui/models/Stable-diffusion`, ComfyUI's `models/embeddings` for `models/checkpoints`).
pub fn embedding_dirs(settings: &Settings) -> Vec<PathBuf> {
    if !settings.embedding_dirs.is_empty() {
        return settings.embedding_dirs.clone();
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("EASEL_EMBEDDINGS_DIR")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for model_dir in &settings.model_dirs {
        for up in [
            model_dir.parent(),
            model_dir.parent().and_then(|p| p.parent()),
        ] {
            let candidate = up.map(|p| p.join("embeddings"));
            if let Some(c) = candidate.filter(|c| c.is_dir() && !dirs.contains(c)) {
                dirs.push(c);
            }
        }
    }
    dirs
}

impl Panel for EmbeddingsPanel {
    fn id(&self) -> &'static str {
        "embeddings"
    }

    fn title(&self) -> &'static str {
        "Embeddings"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        // Once a frame: the default folders are found by looking on disk.
        let dirs = embedding_dirs(&studio.settings);
        self.poll(ui.ctx(), studio, &dirs);
        let removable = !studio.settings.embedding_dirs.is_empty();
        match folder_list(
            ui,
            "Embedding folders",
            &dirs,
            removable,
            &mut self.folder_input,
            "A1111's embeddings folder",
        ) {
            FolderEdit::None | FolderEdit::Browse => {}
            FolderEdit::Remove(i) => {
                studio.settings.embedding_dirs.remove(i);
            }
            FolderEdit::Add(dir) if !dir.is_dir() => {
                studio.error(format!("{} is not a folder", dir.display()));
            }
            FolderEdit::Add(dir) => {
                if studio.settings.embedding_dirs.is_empty() {
                    studio.settings.embedding_dirs = dirs.clone();
                }
                if !studio.settings.embedding_dirs.contains(&dir) {
                    studio.settings.embedding_dirs.push(dir);
                }
            }
        }
        ui.separator();
        if self.pending_scan.is_some() {
            ui.spinner();
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            if self.rows.is_empty() && self.pending_scan.is_none() {
                ui.weak(
                    "No embeddings here. A prompt calls one by its file name \
                     (easynegative.safetensors: \"easynegative\").",
                );
            }
            for row in &self.rows {
                ui.horizontal(|ui| {
                    ui.label(&row.name);
                    ui.weak(format!("{} vectors · {}", row.vectors, row.widths));
                    let s = &mut studio.settings;
                    if ui.small_button("+ prompt").clicked() {
                        super::lora_panel::insert_words(&mut s.prompt, &row.name);
                    }
                    if ui.small_button("+ negative").clicked() {
                        super::lora_panel::insert_words(&mut s.negative_prompt, &row.name);
                    }
                });
            }
            if !self.unreadable.is_empty() {
                ui.collapsing(format!("{} files skipped", self.unreadable.len()), |ui| {
                    for e in &self.unreadable {
                        ui.weak(e);
                    }
                });
            }
        });
    }
}

impl EmbeddingsPanel {
    fn poll(&mut self, ctx: &egui::Context, studio: &mut Studio, dirs: &[PathBuf]) {
        if let Some(slot) = &self.pending_scan {
            match slot.lock().ok().and_then(|mut s| s.take()) {
                Some((rows, unreadable)) => {
                    self.rows = rows;
                    self.unreadable = unreadable;
                    self.pending_scan = None;
                }
                None => ctx.request_repaint_after(Duration::from_millis(50)),
            }
        }
        if self.scanned_dirs.as_deref() != Some(dirs) && self.pending_scan.is_none() {
            let slot: ScanSlot = Arc::new(Mutex::new(None));
            let out = slot.clone();
            let task_dirs = dirs.to_vec();
            studio.worker.spawn_blocking(move || {
                let (found, skipped) = scan(&task_dirs);
                let rows = found.iter().map(row).collect();
                let skipped = skipped.iter().map(|e| e.to_string()).collect();
                if let Ok(mut s) = out.lock() {
                    *s = Some((rows, skipped));
                }
            });
            self.scanned_dirs = Some(dirs.to_vec());
            self.pending_scan = Some(slot);
            ctx.request_repaint_after(Duration::from_millis(50));
        }
    }
}

fn row(e: &Embedding) -> Row {
    Row {
        name: e.name.clone(),
        vectors: e.len(),
        widths: e.widths(),
    }
}
