//! The studio's UI state, and what each [`Action`] does to it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui::{Key, KeyboardShortcut, Modifiers, TextureHandle};

use super::actions::Action;
use super::events::Folder;
use crate::diffusion::schedulers::Sampler;
use crate::gallery::png_meta::GenerationMetadata;
use crate::models::library::LibraryEntry;
use crate::settings::Settings;
use crate::worker::{JobId, ModelInfo, Notice, QueuedJob, Recipe, Worker};

/// The model as the UI knows it.
#[derive(Debug, Clone)]
pub enum ModelState {
    /// No model chosen: the empty state explains how to add one.
    None,
    Loading {
        path: PathBuf,
        since: Instant,
    },
    Ready(ModelInfo),
    Failed {
        path: PathBuf,
        error: String,
    },
}

impl ModelState {
    pub fn is_ready(&self) -> bool {
        matches!(self, ModelState::Ready(_))
    }
}

/// The job the worker is running now.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub job: JobId,
    pub recipe: Recipe,
    pub step: usize,
    pub total: usize,
    pub elapsed: Duration,
    pub cancel_requested: Option<Instant>,
}

/// A finished image of this session.
pub struct HistoryItem {
    pub job: JobId,
    /// Its number for people: the session's images counted from 1 (set by
    /// [`Studio::add_to_history`]).
    pub number: usize,
    pub texture: TextureHandle,
    pub metadata: GenerationMetadata,
    /// `None` until the worker reports it written to the library.
    pub path: Option<PathBuf>,
    /// Set when writing it to the library failed: the image is kept here (and only here)
    /// until a retry or "Save as…" writes it.
    pub unsaved: Option<Unsaved>,
    pub elapsed: Duration,
}

/// An image the library failed to take, with why.
pub struct Unsaved {
    pub error: String,
    pub image: crate::worker::FinishedImage,
}

/// img2img's starting picture, as the prompt panel shows it.
pub struct InitPicture {
    pub source: PathBuf,
    pub picture: std::sync::Arc<image::RgbImage>,
    /// A small copy for the panel.
    pub thumbnail: TextureHandle,
    /// The picture at up to the mask's editing size, for painting on the canvas.
    pub canvas: TextureHandle,
    /// Inpainting: the mask being painted, when there is one.
    pub mask: Option<super::mask_editor::MaskEditor>,
}

/// What the canvas shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Showing {
    /// The live preview / last result, in the one canvas texture.
    Live,
    History(usize),
    /// The starting picture, to paint its inpainting mask on.
    Mask,
}

/// Measurements the bench (and the curious) read: UI frame times, how late previews are shown,
/// how long a cancel takes.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub frame_times: Vec<Duration>,
    /// (time from the worker computing a preview to the UI uploading it, that step's duration)
    pub preview_latency: Vec<(Duration, Duration)>,
    /// (cancel pressed → UI told it stopped, duration of the last step before it)
    pub cancel_latency: Vec<(Duration, Duration)>,
    pub last_step_duration: Duration,
}

impl Metrics {
    pub fn record_frame(&mut self, d: Duration) {
        keep_recent(&mut self.frame_times, d);
    }

    pub fn record_preview(&mut self, late: Duration) {
        keep_recent(&mut self.preview_latency, (late, self.last_step_duration));
    }

    pub fn record_cancel(&mut self, took: Duration) {
        keep_recent(&mut self.cancel_latency, (took, self.last_step_duration));
    }
}

/// Keeps the last 100k samples: enough for any measurement, bounded for a long session.
fn keep_recent<T>(samples: &mut Vec<T>, sample: T) {
    if samples.len() >= 100_000 {
        samples.drain(..50_000);
    }
    samples.push(sample);
}

/// Images the history strip keeps, each a full-size texture. Older saved ones leave the strip
/// (they stay in the library and the gallery), so a day of generating does not fill the GPU;
/// one whose save failed stays until it is written.
pub const HISTORY_LIMIT: usize = 100;

/// All UI state. Panels read and change it and push [`Action`]s.
pub struct Studio {
    pub settings: Settings,
    pub worker: Worker,
    pub model: ModelState,
    pub running: Option<RunningJob>,
    pub queue: Vec<QueuedJob>,
    /// Jobs queued by the last Generate / live re-queue: what a live re-queue makes stale.
    pub last_submission: Vec<JobId>,
    /// The one canvas texture: created on the first preview, then updated with `set`.
    pub canvas_texture: Option<TextureHandle>,
    /// Display size (pixels) of what the canvas texture holds.
    pub canvas_size: [usize; 2],
    pub showing: Showing,
    /// `None` = fit to the panel.
    pub zoom: Option<f32>,
    /// The newest [`HISTORY_LIMIT`] images of this session, oldest first.
    pub history: Vec<HistoryItem>,
    /// Images finished this session (the last one's number).
    pub images_made: usize,
    /// Images written to the library this session (the gallery indexes them as it grows).
    pub images_saved: usize,
    /// The empty state's path field.
    pub model_path_input: String,
    pub notices: Vec<(Notice, Instant)>,
    pub actions: Vec<Action>,
    pub metrics: Metrics,
    /// The model library as last scanned (the Models panel shows it).
    pub library: Vec<LibraryEntry>,
    pub library_scanning: bool,
    /// A library model a dropped image was made with, offered as a switch.
    pub switch_offer: Option<LibraryEntry>,
    /// A just-loaded few-step model's recipe, offered while the settings are far from it.
    pub few_step_offer: Option<(String, crate::diffusion::pipeline::FewStep)>,
    /// img2img: the picture Generate starts from; `None` = text to image.
    pub init: Option<InitPicture>,
    /// The picture (and mask) a restored image started from, offered (never opened unasked).
    pub init_offer: Option<(PathBuf, Option<PathBuf>)>,
    /// The prompt panel's token counts, by prompt text (A1111's "75/150").
    pub token_counts: super::token_count::TokenCounts,
}

impl Studio {
    pub fn new(settings: Settings, worker: Worker) -> Self {
        Self {
            settings,
            worker,
            model: ModelState::None,
            running: None,
            queue: Vec::new(),
            last_submission: Vec::new(),
            canvas_texture: None,
            canvas_size: [0, 0],
            showing: Showing::Live,
            zoom: None,
            history: Vec::new(),
            images_made: 0,
            images_saved: 0,
            model_path_input: String::new(),
            notices: Vec::new(),
            actions: Vec::new(),
            metrics: Metrics::default(),
            library: Vec::new(),
            library_scanning: false,
            switch_offer: None,
            few_step_offer: None,
            init: None,
            init_offer: None,
            token_counts: Default::default(),
        }
    }

    /// Re-reads the model library in the background.
    pub fn scan_library(&mut self, dirs: Vec<PathBuf>) {
        self.library_scanning = true;
        self.worker.scan_library(dirs);
    }

    pub fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.notices.push((
            Notice {
                error: false,
                text: text.into(),
            },
            Instant::now(),
        ));
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.notices.push((
            Notice {
                error: true,
                text: text.into(),
            },
            Instant::now(),
        ));
    }

    /// Loads a model (folder or checkpoint file) with the choices remembered for it.
    pub fn load_model(&mut self, path: PathBuf) {
        let options = self.settings.model_options(&path);
        // A change of VAE or prediction type for the model in use keeps it usable meanwhile.
        let same = matches!(&self.model, ModelState::Ready(info) if info.path == path);
        if !same {
            self.model = ModelState::Loading {
                path: path.clone(),
                since: Instant::now(),
            };
        }
        self.worker.load_model(path, options);
    }

    /// Makes `picture` img2img's start, its size the generation size (its own, scaled down to
    /// the model's native area when larger).
    pub fn set_init(
        &mut self,
        ctx: &egui::Context,
        source: PathBuf,
        picture: std::sync::Arc<image::RgbImage>,
        mask: Option<image::GrayImage>,
    ) {
        let native = match &self.model {
            ModelState::Ready(info) => info.native_size,
            _ => 512,
        };
        let (w, h) =
            crate::diffusion::init_image::natural_size(&picture, native, self.size_multiple());
        let (w, h) = (
            w.min(super::prompt_panel::MAX_SIDE),
            h.min(super::prompt_panel::MAX_SIDE),
        );
        self.settings.width = w;
        self.settings.height = h;
        let small = image::imageops::thumbnail(picture.as_ref(), 160, 160);
        let rgb = egui::ColorImage::from_rgb(
            [small.width() as usize, small.height() as usize],
            small.as_raw(),
        );
        let thumbnail = ctx.load_texture("init picture", rgb, egui::TextureOptions::LINEAR);
        let side = super::mask_editor::EDIT_SIDE;
        let large = if picture.width().max(picture.height()) > side {
            image::imageops::thumbnail(picture.as_ref(), side, side)
        } else {
            picture.as_ref().clone()
        };
        let large = egui::ColorImage::from_rgb(
            [large.width() as usize, large.height() as usize],
            large.as_raw(),
        );
        let canvas = ctx.load_texture("init canvas", large, egui::TextureOptions::LINEAR);
        let mask = mask.map(|m| super::mask_editor::MaskEditor::from_mask(&m));
        if mask.is_some() {
            self.showing = Showing::Mask;
        } else if self.showing == Showing::Mask {
            self.showing = Showing::Live;
        }
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.info(format!(
            "Generate now starts from {name} ({}×{}); size set to {w}×{h}",
            picture.width(),
            picture.height()
        ));
        self.init = Some(InitPicture {
            source,
            picture,
            thumbnail,
            canvas,
            mask,
        });
    }

    /// Work is under way (running or queued).
    pub fn busy(&self) -> bool {
        self.running.is_some() || !self.queue.is_empty()
    }

    /// The sampler Generate will use: the chosen one, else the model's own.
    pub fn sampler(&self) -> Sampler {
        let chosen = self
            .settings
            .sampler
            .as_deref()
            .and_then(|s| s.parse().ok());
        match (&self.model, chosen) {
            (_, Some(s)) => s,
            (ModelState::Ready(info), None) => info.default_sampler,
            _ => Sampler::DpmPp2mKarras,
        }
    }

    pub fn size_multiple(&self) -> usize {
        match &self.model {
            ModelState::Ready(info) => info.size_multiple.max(1),
            _ => 8,
        }
    }

    /// The recipe the prompt panel describes, with this seed.
    pub fn recipe(&self, seed: u64) -> Recipe {
        let s = &self.settings;
        Recipe {
            prompt: s.prompt.clone(),
            negative_prompt: s.negative_prompt.clone(),
            steps: s.steps,
            cfg_scale: s.cfg_scale,
            seed,
            width: s.width,
            height: s.height,
            sampler: self.sampler(),
            spacing: s.spacing.as_deref().and_then(|n| n.parse().ok()),
            clip_skip: s.clip_skip.max(1),
            sdxl: Box::new(crate::diffusion::SdxlOptions {
                prompt_2: Some(s.prompt_2.clone()).filter(|p| !p.is_empty()),
                negative_prompt_2: Some(s.negative_prompt_2.clone()).filter(|p| !p.is_empty()),
                size: s.size_cond,
            }),
            loras: super::lora_panel::recipe_loras(s),
            init: self.init.as_ref().map(|i| crate::worker::RecipeInit {
                picture: i.picture.clone(),
                source: i.source.clone(),
                strength: s.strength,
                mask: (i.mask.as_ref())
                    .filter(|m| !m.is_empty())
                    .map(|m| m.snapshot()),
                mask_blur: s.mask_blur,
                only_masked: s.only_masked.then_some(s.masked_padding),
            }),
            // A1111 offers hires fix for text to image only.
            hires: (s.hires_on && self.init.is_none()).then_some(s.hires),
            embedding_dirs: super::embeddings_panel::embedding_dirs(s),
        }
    }

    /// Ctrl+Enter generates; Esc cancels while running. Consumed before the text fields see
    /// them, so Ctrl+Enter does not also insert a newline.
    pub fn handle_shortcuts(&mut self, ctx: &egui::Context) {
        let generate = KeyboardShortcut::new(Modifiers::COMMAND, Key::Enter);
        if ctx.input_mut(|i| i.consume_shortcut(&generate)) && self.model.is_ready() {
            self.push(Action::Generate);
        }
        if self.busy() && ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Escape)) {
            self.push(Action::CancelAll);
        }
    }

    /// Carries out one action.
    pub fn apply(&mut self, action: Action, ctx: &egui::Context) {
        match action {
            Action::Generate => self.generate(),
            Action::CancelAll => {
                if let Some(r) = &mut self.running {
                    r.cancel_requested.get_or_insert_with(Instant::now);
                }
                self.worker.cancel_all();
            }
            Action::LiveRequeue => self.live_requeue(),
            Action::CancelJob(job) => {
                if let Some(r) = self.running.as_mut().filter(|r| r.job == job) {
                    r.cancel_requested.get_or_insert_with(Instant::now);
                }
                // Shown gone at once; the worker's next queue report confirms it.
                self.queue.retain(|q| q.job != job);
                self.worker.cancel(job);
            }
            Action::MoveJob { job, to } => {
                if let Some(from) = self.queue.iter().position(|q| q.job == job) {
                    let item = self.queue.remove(from);
                    let to = to.min(self.queue.len());
                    self.queue.insert(to, item);
                }
                self.worker.move_job(job, to);
            }
            Action::View(i) => {
                if i < self.history.len() {
                    self.showing = Showing::History(i);
                }
            }
            Action::Restore(i) => self.restore_history(i),
            Action::SaveAs(i) => super::events::save_as(self, i),
            Action::RetrySave(i) => {
                if let Some(item) = self.history.get(i) {
                    if let Some(u) = &item.unsaved {
                        let dir = self.settings.library_dir();
                        let (image, metadata) = (u.image.clone(), item.metadata.clone());
                        self.worker.retry_save(item.job, dir, image, metadata);
                    }
                }
            }
            Action::PickModelFolder => super::events::pick_folder(self, Folder::Model),
            Action::PickLibraryFolder => super::events::pick_folder(self, Folder::ImageLibrary),
            Action::PickModelLibraryFolder => {
                super::events::pick_folder(self, Folder::ModelLibrary)
            }
            Action::PickModelFile => super::events::pick_model_file(self),
            Action::LoadModel(dir) => self.load_model(dir),
            Action::OpenModelPath(path) => self.worker.check_model_path(path),
            Action::RestoreFromFile(path) => self.worker.read_settings(path),
            Action::UseAsInit { picture, mask } => {
                self.init_offer = None;
                self.worker.read_init_image(picture, mask);
            }
            Action::ClearInit => {
                self.init = None;
                if self.showing == Showing::Mask {
                    self.showing = Showing::Live;
                }
            }
            // The gallery panel searches itself when it has a CLIP model; this is the
            // fallback when it has none.
            Action::SearchByImage(path) => self.info(format!(
                "{} was not searched: searching by image needs a CLIP model, chosen in the \
                 Gallery panel. Drop a PNG on the canvas to restore its settings instead.",
                path.display()
            )),
        }
        ctx.request_repaint();
    }

    fn generate(&mut self) {
        if !self.model.is_ready() {
            self.error("Choose a model first.");
            return;
        }
        if !self.settings.seed_locked {
            // 32-bit seeds, as A1111 and ComfyUI show them: easy to read and retype.
            self.settings.seed = u64::from(rand::random::<u32>());
        }
        let batch = self.settings.batch_count.max(1);
        let dir = self.settings.library_dir();
        self.last_submission = (0..batch)
            .map(|i| {
                let recipe = self.recipe(self.settings.seed.wrapping_add(i as u64));
                self.worker.submit(recipe, false, dir.clone())
            })
            .collect();
    }

    /// Live mode: the stale job (running or queued from the last submission) is cancelled and
    /// the same seed goes to the front of the queue.
    fn live_requeue(&mut self) {
        if !self.settings.live || !self.model.is_ready() {
            return;
        }
        for job in std::mem::take(&mut self.last_submission) {
            if let Some(r) = self.running.as_mut().filter(|r| r.job == job) {
                r.cancel_requested.get_or_insert_with(Instant::now);
            }
            self.worker.cancel(job);
        }
        let recipe = self.recipe(self.settings.seed);
        let job = self
            .worker
            .submit(recipe, true, self.settings.library_dir());
        self.last_submission = vec![job];
    }

    fn restore_history(&mut self, i: usize) {
        let Some(item) = self.history.get(i) else {
            return;
        };
        let m = item.metadata.clone();
        let s = &mut self.settings;
        s.prompt = m.prompt;
        s.negative_prompt = m.negative_prompt;
        s.steps = m.steps;
        s.cfg_scale = m.cfg_scale;
        s.seed = m.seed;
        s.width = m.width;
        s.height = m.height;
        s.sampler = Some(m.sampler);
        s.clip_skip = m.clip_skip.max(1);
        s.seed_locked = true;
        let number = item.number;
        self.info(format!("Restored the settings of image #{number}"));
    }

    /// Adds a finished image to the history; beyond [`HISTORY_LIMIT`] the oldest saved image
    /// leaves it (what the canvas shows stays shown).
    pub fn add_to_history(&mut self, mut item: HistoryItem) {
        self.images_made += 1;
        item.number = self.images_made;
        self.history.push(item);
        while self.history.len() > HISTORY_LIMIT {
            let Some(old) =
                (self.history.iter()).position(|h| h.path.is_some() && h.unsaved.is_none())
            else {
                // Every one is waiting for its save or failed it: none may go.
                break;
            };
            self.history.remove(old);
            if let Showing::History(i) = self.showing {
                self.showing = match i.cmp(&old) {
                    std::cmp::Ordering::Less => Showing::History(i),
                    std::cmp::Ordering::Equal => Showing::Live,
                    std::cmp::Ordering::Greater => Showing::History(i - 1),
                };
            }
        }
    }

    /// Shows notices for a few seconds (errors until dismissed), newest at the bottom.
    pub fn show_notices(&mut self, ctx: &egui::Context) {
        const INFO_SECS: f32 = 8.0;
        self.notices
            .retain(|(n, at)| n.error || at.elapsed().as_secs_f32() < INFO_SECS);
        if self.notices.is_empty() {
            return;
        }
        let mut dismiss = None;
        egui::Area::new(egui::Id::unique("notices"))
            .anchor(egui::Align2::CENTER_BOTTOM, [0.0, -110.0])
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                for (i, (notice, _)) in self.notices.iter().enumerate() {
                    super::theme::notice_frame(ui, notice.error).show(ui, |ui| {
                        ui.set_max_width(560.0);
                        ui.horizontal(|ui| {
                            ui.label(&notice.text);
                            if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                                dismiss = Some(i);
                            }
                        });
                    });
                }
            });
        if let Some(i) = dismiss {
            self.notices.remove(i);
        }
        // Info notices fade on their own: wake up to remove them.
        ctx.request_repaint_after(Duration::from_secs(1));
    }
}
