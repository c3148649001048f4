//! Draining the worker's events into UI state (once per frame, never blocking), and the
//! native dialogs, which run on the I/O runtime so the window stays live while they are open.

use std::path::PathBuf;
use std::time::Instant;

use egui::{ColorImage, TextureOptions};

use super::state::{HistoryItem, ModelState, RunningJob, Showing, Studio};
use crate::gallery::png_meta::GenerationMetadata;
use crate::worker::{Event, Restored};

/// Previews are 1/8 of the image size: linear filtering keeps the upscaled preview smooth.
const CANVAS_TEXTURE: TextureOptions = TextureOptions::LINEAR;

impl Studio {
    /// Applies every event the worker has sent since the last frame.
    pub fn drain_events(&mut self, ctx: &egui::Context) {
        while let Some(event) = self.worker.try_recv() {
            self.on_event(event, ctx);
        }
    }

    pub(super) fn on_event(&mut self, event: Event, ctx: &egui::Context) {
        match event {
            Event::ModelLoading { path } => {
                if !matches!(&self.model, ModelState::Loading { path: p, .. } if *p == path) {
                    self.model = ModelState::Loading {
                        path,
                        since: Instant::now(),
                    };
                }
            }
            Event::ModelLoaded(info) => {
                let switched = self.settings.last_model.as_deref() != Some(info.path.as_path());
                let m = info.size_multiple.max(1);
                if switched {
                    // A different model: start from its native size.
                    self.settings.width = info.native_size;
                    self.settings.height = info.native_size;
                } else {
                    self.settings.width = snap(self.settings.width, m);
                    self.settings.height = snap(self.settings.height, m);
                }
                self.settings.last_model = Some(info.path.clone());
                // A few-step model run at 20 steps and CFG 7.5 gives burnt images: offer its
                // recipe (not forced: the user may know better).
                self.few_step_offer = info
                    .few_step
                    .as_deref()
                    .filter(|f| {
                        self.settings.steps > 2 * f.steps
                            || (self.settings.cfg_scale - f.cfg_scale).abs() > 1.0
                    })
                    .map(|f| (info.name.clone(), f.clone()));
                self.info(format!(
                    "Loaded {} in {:.1} s",
                    info.name,
                    info.load_duration.as_secs_f64()
                ));
                self.model = ModelState::Ready(info);
            }
            Event::ModelFailed { path, error, kept } => {
                self.error(format!("Could not load the model: {error}"));
                self.model = match kept {
                    Some(info) => {
                        self.info(format!("Still using {}.", info.name));
                        ModelState::Ready(info)
                    }
                    None => ModelState::Failed { path, error },
                };
            }
            Event::Queue(queue) => self.queue = queue,
            Event::Started { job, recipe } => {
                self.running = Some(RunningJob {
                    job,
                    total: recipe.steps,
                    recipe,
                    step: 0,
                    elapsed: std::time::Duration::ZERO,
                    cancel_requested: None,
                });
                self.showing = Showing::Live;
            }
            Event::Progress {
                job,
                step,
                total,
                elapsed,
            } => {
                if let Some(r) = self.running.as_mut().filter(|r| r.job == job) {
                    self.metrics.last_step_duration = elapsed.saturating_sub(r.elapsed);
                    r.step = step;
                    r.total = total;
                    r.elapsed = elapsed;
                }
            }
            Event::Preview {
                job,
                image,
                computed_at,
                ..
            } => {
                // Stale previews (a cancelled job's last step) never reach the canvas.
                let Some(r) = self.running.as_ref().filter(|r| r.job == job) else {
                    return;
                };
                if r.cancel_requested.is_some() {
                    return;
                }
                let size = [r.recipe.width, r.recipe.height];
                let img = ColorImage::from_rgb([image.width, image.height], &image.rgb);
                self.set_canvas(ctx, img, size);
                self.metrics.record_preview(computed_at.elapsed());
            }
            Event::Finished {
                job,
                image,
                metadata,
                warnings,
                elapsed,
            } => {
                let img = ColorImage::from_rgb([image.width, image.height], &image.rgb);
                let texture =
                    ctx.load_texture(format!("history-{job}"), img.clone(), CANVAS_TEXTURE);
                if self.running.as_ref().is_some_and(|r| r.job == job) {
                    self.running = None;
                    self.set_canvas(ctx, img, [image.width, image.height]);
                    self.showing = Showing::Live;
                }
                for w in warnings {
                    self.info(w);
                }
                self.add_to_history(HistoryItem {
                    job,
                    number: 0,
                    texture,
                    metadata: *metadata,
                    path: None,
                    unsaved: None,
                    elapsed,
                });
            }
            Event::Saved { job, path } => {
                self.images_saved += 1;
                if let Some(item) = self.history.iter_mut().find(|h| h.job == job) {
                    item.path = Some(path);
                    item.unsaved = None;
                }
            }
            Event::SaveFailed {
                job,
                error,
                image,
                metadata,
            } => {
                self.error(format!(
                    "The image was not saved: {error}. It is kept in the history: \
                     \u{201c}Retry save\u{201d} or \u{201c}Save as…\u{201d} writes it."
                ));
                if let Some(item) = self.history.iter_mut().find(|h| h.job == job) {
                    item.metadata = *metadata;
                    item.unsaved = Some(super::state::Unsaved { error, image });
                }
            }
            Event::Cancelled { job, .. } => {
                if let Some(r) = self.running.take_if(|r| r.job == job) {
                    if let Some(at) = r.cancel_requested {
                        self.metrics.record_cancel(at.elapsed());
                    }
                }
                self.last_submission.retain(|j| *j != job);
            }
            Event::Failed { job, error } => {
                if self.running.as_ref().is_some_and(|r| r.job == job) {
                    self.running = None;
                }
                self.error(format!("Generation failed: {error}"));
            }
            Event::Restored { path, result } => match result {
                Ok(restored) => self.apply_restored(restored),
                Err(e) => self.error(format!(
                    "No settings restored from {}: {e}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                )),
            },
            Event::InitImageRead { path, result } => match result {
                Ok((picture, mask)) => self.set_init(ctx, path, picture, mask),
                Err(e) => self.error(format!("No picture to start from: {e}")),
            },
            Event::ModelPathChosen { path, verdict } => match verdict {
                Ok(()) => self.load_model(path),
                Err(why) => self.error(why),
            },
            Event::LibraryScanned(entries) => {
                self.library = entries;
                self.library_scanning = false;
            }
            Event::LibraryHashed { path, hash } => {
                for e in self.library.iter_mut().filter(|e| e.path == path) {
                    e.hash = Some(hash.clone());
                }
            }
            Event::ModelLibraryFolderPicked(dir) => {
                super::models_panel::add_model_dir(&mut self.settings, dir);
            }
            Event::LibraryFolderPicked(dir) => {
                self.info(format!("New images go to {}", dir.display()));
                self.settings.library_dir = Some(dir);
            }
            Event::Notice(n) => self.notices.push((n, Instant::now())),
        }
    }

    /// Updates the one canvas texture (created on first use).
    fn set_canvas(&mut self, ctx: &egui::Context, img: ColorImage, size: [usize; 2]) {
        match &mut self.canvas_texture {
            Some(t) => t.set(img, CANVAS_TEXTURE),
            None => self.canvas_texture = Some(ctx.load_texture("canvas", img, CANVAS_TEXTURE)),
        }
        self.canvas_size = size;
    }

    fn apply_restored(&mut self, r: Restored) {
        self.offer_model_switch(&r);
        let m = self.size_multiple();
        let s = &mut self.settings;
        if let Some(v) = &r.prompt {
            s.prompt = v.clone();
        }
        if let Some(v) = &r.negative_prompt {
            s.negative_prompt = v.clone();
        }
        if let Some(v) = r.steps {
            s.steps = v.clamp(1, 1000);
        }
        if let Some(v) = r.cfg_scale {
            s.cfg_scale = v.clamp(0.0, 100.0);
        }
        if let Some(v) = r.seed {
            s.seed = v;
            s.seed_locked = true;
        }
        if let Some(v) = r.width {
            s.width = snap(v, m);
        }
        if let Some(v) = r.height {
            s.height = snap(v, m);
        }
        if let Some(v) = r.sampler {
            s.sampler = Some(v.cli_name().to_string());
            // The image's spacing, or the automatic one when it recorded none.
            s.spacing = r.spacing.map(|v| v.name().to_string());
        }
        if let Some(v) = r.clip_skip {
            s.clip_skip = v.clamp(1, 12);
        }
        if let Some(x) = &r.sdxl {
            s.prompt_2 = x.prompt_2.clone().unwrap_or_default();
            s.negative_prompt_2 = x.negative_prompt_2.clone().unwrap_or_default();
            s.size_cond = x.size.clamped();
        }
        if let Some(h) = r.hires {
            s.hires_on = h.is_some();
            if let Some(h) = h {
                s.hires = h;
            }
        }
        match &r.init {
            // Made from text: so is the next one.
            Some(None) => {
                self.init = None;
                self.init_offer = None;
            }
            // Made from a picture: its strength now, the picture when the user says so.
            Some(Some((picture, strength, mask))) => {
                s.strength = *strength;
                self.init = None;
                self.init_offer = Some((picture.clone(), mask.clone()));
            }
            None => {}
        }
        self.info(r.summary());
    }

    /// When the image was made with a library model other than the one in use (by A1111's
    /// hash, else by name), the prompt panel offers to switch to it.
    fn offer_model_switch(&mut self, r: &Restored) {
        self.switch_offer = None;
        let found = crate::models::library::find_model(
            &self.library,
            r.model_hash.as_deref(),
            r.model_name.as_deref(),
        );
        let current = match &self.model {
            ModelState::Ready(info) => Some(info.path.as_path()),
            _ => None,
        };
        if let Some(e) = found.filter(|e| Some(e.path.as_path()) != current) {
            self.switch_offer = Some(e.clone());
        }
    }
}

/// The nearest valid size: a positive multiple of `m`.
pub fn snap(v: usize, m: usize) -> usize {
    let m = m.max(1);
    (((v + m / 2) / m) * m).max(m)
}

/// Where "Save as…" takes an image from.
enum SaveFrom {
    Library(PathBuf),
    Memory(crate::worker::FinishedImage, Box<GenerationMetadata>),
}

/// "Save as…": the native dialog, then a copy of the library file (or the PNG written from
/// memory when the library has none), both off the UI thread.
pub fn save_as(studio: &mut Studio, i: usize) {
    let Some(item) = studio.history.get(i) else {
        return;
    };
    // From the library file, or (when the library could not take it) from memory.
    let from = match (&item.path, &item.unsaved) {
        (Some(path), _) => SaveFrom::Library(path.clone()),
        (None, Some(u)) => SaveFrom::Memory(u.image.clone(), Box::new(item.metadata.clone())),
        (None, None) => {
            studio.info("Still writing this image to the library; try again in a moment.");
            return;
        }
    };
    let name = match &from {
        SaveFrom::Library(source) => source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "easel.png".into()),
        SaveFrom::Memory(_, m) => format!("easel-{}.png", m.seed),
    };
    let sink = studio.worker.sink();
    studio.worker.spawn_io(async move {
        let Some(dest) = rfd::AsyncFileDialog::new()
            .set_title("Save image as")
            .set_file_name(name)
            .add_filter("PNG image", &["png"])
            .save_file()
            .await
        else {
            return;
        };
        let dest = dest.path().to_path_buf();
        let written = match from {
            SaveFrom::Library(source) => (tokio::fs::copy(&source, &dest).await)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            SaveFrom::Memory(image, metadata) => {
                let to = dest.clone();
                tokio::task::spawn_blocking(move || {
                    crate::worker::write_unsaved(&to, &image, &metadata)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            }
        };
        let notice = match written {
            Ok(()) => crate::worker::Notice {
                error: false,
                text: format!("Saved {}", dest.display()),
            },
            Err(e) => crate::worker::Notice {
                error: true,
                text: format!("Could not save {}: {e}", dest.display()),
            },
        };
        sink.send(Event::Notice(notice));
    });
}

/// What a folder is picked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    /// A diffusers model to load.
    Model,
    /// Where finished images are written.
    ImageLibrary,
    /// A folder of models for the model library.
    ModelLibrary,
}

/// The native folder dialog.
pub fn pick_folder(studio: &mut Studio, purpose: Folder) {
    let sink = studio.worker.sink();
    let start = match purpose {
        Folder::Model => studio.settings.last_model.clone(),
        Folder::ImageLibrary => Some(studio.settings.library_dir()),
        Folder::ModelLibrary => studio.settings.model_dirs.last().cloned(),
    };
    studio.worker.spawn_io(async move {
        let mut dialog = rfd::AsyncFileDialog::new().set_title(match purpose {
            Folder::Model => "Choose a diffusers model folder",
            Folder::ImageLibrary => "Choose the library folder",
            Folder::ModelLibrary => "Add a folder of models",
        });
        if let Some(dir) = start.filter(|d| d.is_dir()) {
            dialog = dialog.set_directory(dir);
        }
        if let Some(folder) = dialog.pick_folder().await {
            let dir = folder.path().to_path_buf();
            sink.send(match purpose {
                Folder::Model => {
                    let verdict = crate::models::library::check_model_path(&dir);
                    Event::ModelPathChosen { path: dir, verdict }
                }
                Folder::ImageLibrary => Event::LibraryFolderPicked(dir),
                Folder::ModelLibrary => Event::ModelLibraryFolderPicked(dir),
            });
        }
    });
}

/// The native file dialog for a single-file checkpoint.
pub fn pick_model_file(studio: &mut Studio) {
    let sink = studio.worker.sink();
    let start = studio
        .settings
        .last_model
        .as_ref()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    studio.worker.spawn_io(async move {
        let mut dialog = rfd::AsyncFileDialog::new()
            .set_title("Choose a Stable Diffusion checkpoint")
            .add_filter("Checkpoints", &["safetensors", "ckpt", "pt", "pth"]);
        if let Some(dir) = start.filter(|d| d.is_dir()) {
            dialog = dialog.set_directory(dir);
        }
        if let Some(file) = dialog.pick_file().await {
            let path = file.path().to_path_buf();
            let verdict = crate::models::library::check_model_path(&path);
            sink.send(Event::ModelPathChosen { path, verdict });
        }
    });
}
