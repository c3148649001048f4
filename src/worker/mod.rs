//! The inference worker: one OS thread that owns the model and runs generations, a queue of
//! pending jobs, cancellation, and a small tokio runtime for I/O-bound work (saving PNGs,
//! hashing the model, reading dropped files, dialogs).
//!
//! The UI talks to it only through typed messages: it sends [`Command`]s and drains [`Event`]s
//! with [`Worker::try_recv`] every frame, so it never waits on inference (DESIGN.md). Every
//! event is followed by a call to the repaint hook the UI passed in; this module knows nothing
//! of egui, which keeps it testable without a window.
//!
//! Cancellation is an `Arc<AtomicBool>` per job, set directly by [`Worker::cancel`] (the
//! pipeline checks it between sampler steps, so a cancel takes effect within one step) and
//! followed by a [`Command::Remove`] so a job that has not started yet leaves the queue. Job
//! ids let the UI ignore events from a job it has already given up on.

mod io;
pub use io::write_unsaved;
mod lora;
mod queue;
pub mod restore;
mod thread;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::diffusion::preview::Preview;
use crate::diffusion::schedulers::{Sampler, Spacing};
use crate::gallery::png_meta::GenerationMetadata;

pub use io::{library_file_name, model_short_hash};
pub use lora::LoraRecipe;
pub use restore::Restored;

/// Identifies one generation from queueing to its last event.
pub type JobId = u64;

/// Called after every event so the UI wakes up and drains the channel (the UI passes
/// `egui::Context::request_repaint`; tests pass a no-op).
pub type RepaintHook = Arc<dyn Fn() + Send + Sync>;

/// Everything that decides one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub sampler: Sampler,
    /// The sampler's timestep spacing; `None`: its default (or the model file's, see
    /// `Pipeline::spacing`).
    pub spacing: Option<Spacing>,
    /// A1111's "Clip skip" (1 = the text encoder's last layer).
    pub clip_skip: usize,
    /// SDXL's second prompts and micro-conditioning (ignored by other models); boxed, as most
    /// recipes are not SDXL's and commands stay small.
    pub sdxl: Box<crate::diffusion::SdxlOptions>,
    /// The LoRA adapters, applied from memory before the first step.
    pub loras: LoraRecipe,
    /// img2img: the picture to start from and the strength; `None` for text to image.
    pub init: Option<RecipeInit>,
    /// Hires fix: a second pass at a larger size.
    pub hires: Option<crate::diffusion::Hires>,
    /// Folders of textual-inversion embeddings the prompts may call (read when the job runs).
    pub embedding_dirs: Vec<PathBuf>,
}

/// The picture an img2img recipe starts from. Any size: the worker fits it to the recipe's
/// (covered and centre-cropped, as the CLI does).
#[derive(Clone, PartialEq)]
pub struct RecipeInit {
    pub picture: Arc<image::RgbImage>,
    /// Where it was read from (recorded in the PNG).
    pub source: PathBuf,
    /// 0 < strength ≤ 1: how much of it is repainted.
    pub strength: f64,
    /// Inpainting: white = repaint, in the picture's proportions (any size: fitted with it).
    pub mask: Option<Arc<image::GrayImage>>,
    /// Inpainting: A1111's "Mask blur" in pixels (0: the image as decoded).
    pub mask_blur: u32,
    /// Inpainting: A1111's "Only masked" area, with this padding; the image keeps the
    /// picture's size.
    pub only_masked: Option<u32>,
}

impl std::fmt::Debug for RecipeInit {
    /// The size, not the pixels.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipeInit")
            .field("source", &self.source)
            .field("size", &self.picture.dimensions())
            .field("strength", &self.strength)
            .finish()
    }
}

/// The studio's defaults (20 steps, CFG 7.5, 512×512, DPM++ 2M Karras); tests and callers
/// set what they care about with `..Default::default()`.
impl Default for Recipe {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            cfg_scale: 7.5,
            seed: 0,
            width: 512,
            height: 512,
            sampler: Sampler::DpmPp2mKarras,
            spacing: None,
            clip_skip: 1,
            sdxl: Default::default(),
            loras: Default::default(),
            init: None,
            hires: None,
            embedding_dirs: Vec::new(),
        }
    }
}

/// What the UI asks of the worker thread. Each is answered by [`Event`]s.
#[derive(Debug)]
pub enum Command {
    /// Load a model (a diffusers folder or a single-file checkpoint), replacing the current
    /// one. A running job finishes first; pending jobs then run on the new model. The new
    /// model is vetted before the current one is unloaded, so a bad file keeps the model in
    /// use. The same path with other `options` (VAE, prediction type) changes the model in
    /// memory. Answered by `ModelLoading`, then `ModelLoaded` or `ModelFailed`.
    LoadModel {
        path: PathBuf,
        options: crate::models::checkpoint::LoadOptions,
    },
    /// Queue a job (at the front when `front`, e.g. a live re-queue). Answered by `Queue`, then
    /// `Started`, `Progress`/`Preview` per step, and `Finished` + `Saved`, `Cancelled` or
    /// `Failed`.
    Enqueue {
        job: JobId,
        /// Boxed: a recipe is several times the size of the other commands.
        recipe: Box<Recipe>,
        front: bool,
        /// Finished images are written here at once (created if missing).
        save_dir: PathBuf,
        cancel: Arc<AtomicBool>,
    },
    /// Drop a pending job; answered by `Queue` and `Cancelled` (a running job is stopped
    /// through its cancel flag instead).
    Remove { job: JobId },
    /// Move a pending job to position `to` (clamped) in the queue; answered by `Queue`.
    Move { job: JobId, to: usize },
    /// Stop the thread after cancelling everything.
    Shutdown,
}

/// A job waiting in the queue, as the queue panel shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedJob {
    pub job: JobId,
    pub recipe: Recipe,
}

/// What a loaded model offers the UI.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The folder or checkpoint file.
    pub path: PathBuf,
    pub name: String,
    /// "SD 1.x · fp16 · single file", "diffusers folder".
    pub description: String,
    /// How settings the files do not state were decided (prediction type…).
    pub notes: Vec<String>,
    /// The VAE used instead of the model's own, if any.
    pub vae_file: Option<PathBuf>,
    /// The choices it was loaded with.
    pub options: crate::models::checkpoint::LoadOptions,
    /// The size the model was trained at (pixels, square).
    pub native_size: usize,
    /// Width and height must be multiples of this.
    pub size_multiple: usize,
    pub default_sampler: Sampler,
    /// SDXL: two text encoders, size conditioning (the prompt panel shows their fields).
    pub sdxl: bool,
    /// Set for few-step models (LCM, SD-Turbo): the steps and CFG they are made for.
    pub few_step: Option<Box<crate::diffusion::pipeline::FewStep>>,
    /// The (first) tokenizer, for the prompt panel's token counts.
    pub tokenizer: SharedTokenizer,
    pub load_duration: Duration,
}

/// A model's tokenizer shared with the UI; equal when it is the same one.
#[derive(Clone)]
pub struct SharedTokenizer(pub Arc<crate::models::tokenizer::ClipTokenizer>);

impl PartialEq for SharedTokenizer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for SharedTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A finished image; the pixels are shared with the task that writes the PNG.
#[derive(Debug, Clone)]
pub struct FinishedImage {
    pub width: usize,
    pub height: usize,
    /// Row-major 8-bit RGB.
    pub rgb: Arc<Vec<u8>>,
}

/// A message for the user that is not tied to a job (dialog results, I/O errors).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub error: bool,
    pub text: String,
}

/// What the worker (and the I/O tasks) report back. Drained by the UI every frame.
#[derive(Debug)]
pub enum Event {
    ModelLoading {
        path: PathBuf,
    },
    ModelLoaded(ModelInfo),
    ModelFailed {
        path: PathBuf,
        error: String,
        /// The model still in use (a bad file never unloads the current model).
        kept: Option<ModelInfo>,
    },
    /// The pending jobs, in run order, after any change.
    Queue(Vec<QueuedJob>),
    Started {
        job: JobId,
        recipe: Recipe,
    },
    /// After every step; `step` is 1-based.
    Progress {
        job: JobId,
        step: usize,
        total: usize,
        elapsed: Duration,
    },
    /// The step's preview (predicted clean image at latent resolution), and when it was
    /// computed, so the UI can measure how late it is shown.
    Preview {
        job: JobId,
        step: usize,
        image: Preview,
        computed_at: Instant,
    },
    Finished {
        job: JobId,
        image: FinishedImage,
        metadata: Box<GenerationMetadata>,
        warnings: Vec<String>,
        elapsed: Duration,
    },
    /// The finished image of `job` is on disk.
    Saved {
        job: JobId,
        path: PathBuf,
    },
    /// The image is not on disk; it comes back (with its metadata as far as the save
    /// completed it) so the studio keeps it and can write it again or elsewhere.
    SaveFailed {
        job: JobId,
        error: String,
        image: FinishedImage,
        metadata: Box<GenerationMetadata>,
    },
    /// Stopped by its cancel flag (or removed before it started: `completed_steps` 0).
    Cancelled {
        job: JobId,
        completed_steps: usize,
        /// When the worker saw the flag.
        observed_at: Instant,
    },
    Failed {
        job: JobId,
        error: String,
    },
    /// Settings read from a dropped PNG (or why none could be).
    /// A picture to start img2img from (and its inpainting mask), read off the UI thread.
    InitImageRead {
        path: PathBuf,
        result: Result<(Arc<image::RgbImage>, Option<image::GrayImage>), String>,
    },
    Restored {
        path: PathBuf,
        result: Result<Restored, String>,
    },
    /// The user chose a model (dialog, typed path or a dropped file): `Ok` when it is one
    /// Easel runs, else why not, checked off the UI thread from its header.
    ModelPathChosen {
        path: PathBuf,
        verdict: Result<(), String>,
    },
    /// The model library as found in its folders (headers only; hashes from the cache).
    LibraryScanned(Vec<crate::models::library::LibraryEntry>),
    /// A library entry's A1111 hash, computed in the background.
    LibraryHashed {
        path: PathBuf,
        hash: String,
    },
    /// The user picked a library folder in the native dialog.
    LibraryFolderPicked(PathBuf),
    /// The user picked a folder to add to the model library.
    ModelLibraryFolderPicked(PathBuf),
    Notice(Notice),
}

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot start the inference thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Sends events to the UI and wakes it. Cloned into the inference thread and I/O tasks.
#[derive(Clone)]
pub struct EventSink {
    tx: Sender<Event>,
    repaint: RepaintHook,
}

impl EventSink {
    /// Sends and wakes the UI. A closed channel means the UI is gone: nothing left to tell.
    pub fn send(&self, event: Event) {
        if self.tx.send(event).is_ok() {
            (self.repaint)();
        }
    }
}

/// The UI's handle on the worker thread. Dropping it cancels every job and stops the thread
/// without waiting for it.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    sink: EventSink,
    /// `None` only during drop.
    runtime: Option<tokio::runtime::Runtime>,
    next_job: JobId,
    /// Cancel flags of jobs not yet known to be over.
    flags: HashMap<JobId, Arc<AtomicBool>>,
}

impl Worker {
    /// Starts the inference thread and the I/O runtime.
    pub fn spawn(repaint: RepaintHook) -> Result<Self, WorkerError> {
        // One async worker is plenty: the I/O here is a few files per image, and the CPU
        // cores belong to inference. Blocking file work goes to tokio's blocking pool.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(4)
            .thread_name("easel-io")
            .enable_all()
            .build()
            .map_err(WorkerError::Runtime)?;
        let (commands, command_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let sink = EventSink {
            tx: event_tx,
            repaint,
        };
        let thread_sink = sink.clone();
        let io = runtime.handle().clone();
        std::thread::Builder::new()
            .name("easel-inference".into())
            .spawn(move || thread::run(command_rx, thread_sink, io))
            .map_err(WorkerError::Thread)?;
        Ok(Self {
            commands,
            events,
            sink,
            runtime: Some(runtime),
            next_job: 1,
            flags: HashMap::new(),
        })
    }

    /// Loads a model (folder or checkpoint file) in the background.
    pub fn load_model(&self, path: PathBuf, options: crate::models::checkpoint::LoadOptions) {
        self.send(Command::LoadModel { path, options });
    }

    /// Queues a generation; returns its id.
    pub fn submit(&mut self, recipe: Recipe, front: bool, save_dir: PathBuf) -> JobId {
        let job = self.next_job;
        self.next_job += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.flags.insert(job, cancel.clone());
        self.send(Command::Enqueue {
            job,
            recipe: Box::new(recipe),
            front,
            save_dir,
            cancel,
        });
        job
    }

    /// Cancels a job: a running one stops within one step, a pending one leaves the queue.
    pub fn cancel(&self, job: JobId) {
        if let Some(flag) = self.flags.get(&job) {
            flag.store(true, Ordering::Relaxed);
        }
        self.send(Command::Remove { job });
    }

    /// Cancels every job not yet over.
    pub fn cancel_all(&self) {
        let mut jobs: Vec<JobId> = self.flags.keys().copied().collect();
        jobs.sort_unstable();
        for job in jobs {
            self.cancel(job);
        }
    }

    /// Moves a pending job to position `to` in the queue.
    pub fn move_job(&self, job: JobId, to: usize) {
        self.send(Command::Move { job, to });
    }

    /// The next event, if any; never blocks.
    pub fn try_recv(&mut self) -> Option<Event> {
        match self.events.try_recv() {
            Ok(event) => {
                if let Event::Finished { job, .. }
                | Event::Cancelled { job, .. }
                | Event::Failed { job, .. } = &event
                {
                    self.flags.remove(job);
                }
                Some(event)
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Where I/O results go: I/O tasks started by the UI (dialogs) report through this.
    pub fn sink(&self) -> EventSink {
        self.sink.clone()
    }

    /// Writes an image whose save failed to `dir` again; `Saved` or `SaveFailed` follows.
    pub fn retry_save(
        &self,
        job: JobId,
        dir: PathBuf,
        image: FinishedImage,
        metadata: GenerationMetadata,
    ) {
        let save = io::retry(job, dir, image, metadata);
        self.spawn_io(io::save(save, self.sink()));
    }

    /// Runs a future on the I/O runtime (dialogs, file copies: nothing that may block the UI).
    pub fn spawn_io<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(rt) = &self.runtime {
            rt.spawn(task);
        }
    }

    /// Runs blocking file work on the I/O runtime's blocking pool.
    pub fn spawn_blocking<F>(&self, task: F)
    where
        F: FnOnce() + Send + 'static,
    {
        if let Some(rt) = &self.runtime {
            rt.spawn_blocking(task);
        }
    }

    /// Reads the generation settings of a dropped PNG on the I/O runtime; answered by
    /// [`Event::Restored`].
    pub fn read_settings(&self, path: PathBuf) {
        let sink = self.sink();
        self.spawn_blocking(move || {
            let result = restore::read_settings(&path);
            sink.send(Event::Restored { path, result });
        });
    }

    /// Reads a picture for img2img, and an inpainting mask for it, on the I/O runtime;
    /// answered by [`Event::InitImageRead`].
    pub fn read_init_image(&self, path: PathBuf, mask: Option<PathBuf>) {
        let sink = self.sink();
        self.spawn_blocking(move || {
            let read = crate::diffusion::init_image::read;
            let result = read(&path).map_err(|e| e.to_string()).and_then(|picture| {
                let mask = match &mask {
                    Some(m) => Some(
                        image::DynamicImage::ImageRgb8(
                            read(m).map_err(|e| format!("its mask {e}"))?,
                        )
                        .to_luma8(),
                    ),
                    None => None,
                };
                Ok((Arc::new(picture), mask))
            });
            sink.send(Event::InitImageRead { path, result });
        });
    }

    /// Checks on the I/O runtime that `path` is a model Easel runs (a diffusers folder, or a
    /// checkpoint file judged by its header); answered by [`Event::ModelPathChosen`].
    pub fn check_model_path(&self, path: PathBuf) {
        let sink = self.sink();
        self.spawn_blocking(move || {
            let verdict = crate::models::library::check_model_path(&path);
            sink.send(Event::ModelPathChosen { path, verdict });
        });
    }

    /// Lists the model library on the I/O runtime; answered by [`Event::LibraryScanned`].
    pub fn scan_library(&self, dirs: Vec<PathBuf>) {
        let sink = self.sink();
        self.spawn_blocking(move || {
            sink.send(Event::LibraryScanned(crate::models::library::scan(&dirs)));
        });
    }

    /// Hashes library entries (each file read once, then cached); one
    /// [`Event::LibraryHashed`] per entry.
    pub fn hash_library(&self, entries: Vec<crate::models::library::LibraryEntry>) {
        let sink = self.sink();
        self.spawn_blocking(move || {
            for e in entries {
                if let Ok(hash) = crate::models::hash::short_hash(&e.hash_files()) {
                    sink.send(Event::LibraryHashed { path: e.path, hash });
                }
            }
        });
    }

    fn send(&self, command: Command) {
        // A closed channel means the thread died (a bug, reported as `Failed` by the thread
        // before it went); nothing else to do here.
        let _ = self.commands.send(command);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for flag in self.flags.values() {
            flag.store(true, Ordering::Relaxed);
        }
        let _ = self.commands.send(Command::Shutdown);
        // A PNG being written when the window closes gets a moment to land ("nothing is
        // lost"); anything slower (a model hash, an open dialog) is abandoned rather than
        // holding the exit.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(SAVE_GRACE);
        }
    }
}

/// How long closing the window waits for PNG writes in flight.
const SAVE_GRACE: Duration = Duration::from_secs(2);
