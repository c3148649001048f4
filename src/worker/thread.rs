//! The inference thread's loop: load models, run queued jobs one at a time, and keep
//! answering commands between sampler steps.
//!
//! Compute-bound work stays on this one OS thread (candle spreads each operation over the
//! cores itself); anything that only waits on the disk goes to the I/O runtime so the next
//! job starts at once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::runtime::Handle;
use tokio::sync::OnceCell;

use super::io;
use super::queue::{Pending, Queue};
use super::{Command, Event, EventSink, FinishedImage, ModelInfo};
use crate::diffusion::pipeline::default_sampler;
use crate::diffusion::{GenerateRequest, InitImage, Outcome, Pipeline, StepProgress};
use crate::gallery::png_meta::GenerationMetadata;
use crate::models::checkpoint::LoadOptions;
use crate::models::StableDiffusion;

/// A model in memory, with its hash computed once in the background for the PNGs' metadata.
struct Loaded {
    pipeline: Pipeline,
    info: ModelInfo,
    /// Adapters read for this model; a job re-applies them from memory.
    loras: std::cell::RefCell<crate::lora::LoraStack>,
    hash: Arc<OnceCell<String>>,
    hash_files: Arc<Vec<PathBuf>>,
}

/// Everything commands change; kept apart from the model so commands can be handled while a
/// job borrows the model.
struct Control {
    sink: EventSink,
    io: Handle,
    queue: Queue,
    load_next: Option<(PathBuf, LoadOptions)>,
    shutdown: bool,
}

pub fn run(commands: Receiver<Command>, sink: EventSink, io: Handle) {
    let mut control = Control {
        sink,
        io,
        queue: Queue::default(),
        load_next: None,
        shutdown: false,
    };
    let mut model: Option<Loaded> = None;
    loop {
        if control.shutdown {
            control.cancel_pending();
            return;
        }
        if let Some((path, options)) = control.load_next.take() {
            // Remembered as an absolute path: a relative one (`--model models/x`) would not
            // be found again when the app is next started from elsewhere (a desktop launcher).
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            // The same model on the same device and precision: another VAE or prediction type
            // is set in memory. Another device or precision means other weights: a full load.
            if let Some(loaded) = model.as_mut().filter(|m| {
                let o = &m.pipeline.model.options;
                m.info.path == path
                    && o.device == options.device
                    && o.precision == options.precision
            }) {
                control.reconfigure(loaded, &options);
                continue;
            }
            control
                .sink
                .send(Event::ModelLoading { path: path.clone() });
            // Vetted before the current model goes: a bad file must not cost the user it.
            let checked = catch_unwind(|| StableDiffusion::validate(&path, &options));
            let problem = match checked {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(panic) => Some(format!(
                    "internal error while checking (a bug): {}",
                    panic_text(&panic)
                )),
            };
            if let Some(error) = problem {
                let kept = model.as_ref().map(|m| m.info.clone());
                control.sink.send(Event::ModelFailed { path, error, kept });
                continue;
            }
            // Free the old weights first: two SD models may not fit in memory together.
            drop(model.take());
            model = control.load(path, options);
            continue;
        }
        if let Some(loaded) = &mut model {
            let (next, cancelled) = control.queue.pop_runnable();
            let changed = next.is_some() || !cancelled.is_empty();
            for p in cancelled {
                control.report_cancelled(&p, 0);
            }
            if changed {
                control.send_queue();
            }
            if let Some(job) = next {
                control.run_job(loaded, job, &commands);
                continue;
            }
        }
        match commands.recv() {
            Ok(command) => control.handle(command),
            Err(_) => return,
        }
    }
}

impl Control {
    fn handle(&mut self, command: Command) {
        match command {
            Command::LoadModel { path, options } => self.load_next = Some((path, options)),
            Command::Enqueue {
                job,
                recipe,
                front,
                save_dir,
                cancel,
            } => {
                let pending = Pending {
                    job,
                    recipe: *recipe,
                    save_dir,
                    cancel,
                };
                self.queue.push(pending, front);
                self.send_queue();
            }
            Command::Remove { job } => {
                if let Some(p) = self.queue.remove(job) {
                    self.report_cancelled(&p, 0);
                    self.send_queue();
                }
            }
            Command::Move { job, to } => {
                if self.queue.move_to(job, to) {
                    self.send_queue();
                }
            }
            Command::Shutdown => self.shutdown = true,
        }
    }

    fn send_queue(&self) {
        self.sink.send(Event::Queue(self.queue.snapshot()));
    }

    fn report_cancelled(&self, p: &Pending, completed_steps: usize) {
        self.sink.send(Event::Cancelled {
            job: p.job,
            completed_steps,
            observed_at: Instant::now(),
        });
    }

    fn cancel_pending(&mut self) {
        let pending: Vec<Pending> = self.queue.drain().collect();
        for p in &pending {
            self.report_cancelled(p, 0);
        }
    }

    fn load(&self, path: PathBuf, options: LoadOptions) -> Option<Loaded> {
        let start = Instant::now();
        let device = match options.device.open() {
            Ok(d) => d,
            Err(e) => {
                self.sink.send(Event::ModelFailed {
                    path,
                    error: e.to_string(),
                    kept: None,
                });
                return None;
            }
        };
        let result = catch_unwind(|| Pipeline::load_with(&path, &options, &device));
        let pipeline = match result {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.sink.send(Event::ModelFailed {
                    path,
                    error: e.to_string(),
                    kept: None,
                });
                return None;
            }
            Err(panic) => {
                self.sink.send(Event::ModelFailed {
                    path,
                    error: format!(
                        "internal error while loading (a bug): {}",
                        panic_text(&panic)
                    ),
                    kept: None,
                });
                return None;
            }
        };
        let info = model_info(&pipeline, path, start.elapsed());
        self.sink.send(Event::ModelLoaded(info.clone()));
        let loaded = Loaded {
            loras: Default::default(),
            hash: Arc::new(OnceCell::new()),
            hash_files: Arc::new(pipeline.model.hash_files.clone()),
            info,
            pipeline,
        };
        // Hash now, in the background, so the first image's save does not wait for it.
        let (hash, files) = (loaded.hash.clone(), loaded.hash_files.clone());
        self.io.spawn(async move {
            io::cached_hash(&hash, files).await;
        });
        Some(loaded)
    }

    /// Another VAE or prediction type for the model in memory; the weights stay.
    fn reconfigure(&self, loaded: &mut Loaded, options: &LoadOptions) {
        let start = Instant::now();
        let path = loaded.info.path.clone();
        let done = loaded
            .pipeline
            .model
            .reconfigure(options)
            .and_then(|()| loaded.pipeline.configure_taesd(options.taesd.as_ref()));
        match done {
            Ok(()) => {
                loaded.info = model_info(&loaded.pipeline, path, start.elapsed());
                self.sink.send(Event::ModelLoaded(loaded.info.clone()));
            }
            Err(e) => self.sink.send(Event::ModelFailed {
                path,
                error: e.to_string(),
                kept: Some(loaded.info.clone()),
            }),
        }
    }

    fn run_job(&mut self, loaded: &mut Loaded, p: Pending, commands: &Receiver<Command>) {
        let r = &p.recipe;
        self.sink.send(Event::Started {
            job: p.job,
            recipe: r.clone(),
        });
        // Small files, read per job so a job uses the folders it was queued with.
        loaded.pipeline.embeddings = crate::prompt::embeddings::scan(&r.embedding_dirs).0;
        let loaded = &*loaded;
        let pipeline = &loaded.pipeline;
        let mut req = GenerateRequest::new(&pipeline.model, &r.prompt, r.seed);
        req.negative_prompt = r.negative_prompt.clone();
        req.steps = r.steps;
        req.cfg_scale = r.cfg_scale;
        req.width = r.width;
        req.height = r.height;
        req.sampler = r.sampler;
        req.spacing = r.spacing;
        req.clip_skip = r.clip_skip;
        req.sdxl = (*r.sdxl).clone();
        req.hires = r.hires;
        // Only masked: picture and mask keep the picture's size (the mask, painted at most
        // 1024 a side, is brought to it); otherwise both are fitted to the recipe's size.
        let only_masked = (r.init.as_ref())
            .filter(|i| i.mask.is_some())
            .and_then(|i| i.only_masked);
        let fit = |p: &image::GrayImage| match (only_masked, r.init.as_ref()) {
            (Some(_), Some(init)) => image::imageops::resize(
                p,
                init.picture.width(),
                init.picture.height(),
                image::imageops::FilterType::Triangle,
            ),
            _ => crate::diffusion::init_image::fit(p, r.width as u32, r.height as u32),
        };
        req.mask = (r.init.as_ref())
            .and_then(|init| init.mask.as_ref())
            .map(|mask| crate::diffusion::Mask {
                image: fit(mask),
                blur: r.init.as_ref().map_or(0, |i| i.mask_blur),
            });
        req.only_masked = only_masked;
        req.init_image = r.init.as_ref().map(|init| InitImage {
            image: match only_masked {
                Some(_) => init.picture.as_ref().clone(),
                None => crate::diffusion::init_image::fit(
                    &init.picture,
                    r.width as u32,
                    r.height as u32,
                ),
            },
            strength: init.strength,
        });

        let job = p.job;
        let loras = {
            let mut stack = loaded.loras.borrow_mut();
            match super::lora::apply(&mut stack, &pipeline.model, &r.loras, &r.prompt) {
                Ok(l) => l,
                Err(error) => return self.sink.send(Event::Failed { job, error }),
            }
        };
        let mut on_step = |s: &StepProgress| {
            let computed_at = Instant::now();
            self.sink.send(Event::Progress {
                job,
                step: s.step,
                total: s.total,
                elapsed: s.elapsed,
            });
            self.sink.send(Event::Preview {
                job,
                step: s.step,
                image: s.preview.clone(),
                computed_at,
            });
            // Queue edits land between steps, so the queue panel is at most a step behind.
            while let Ok(command) = commands.try_recv() {
                self.handle(command);
            }
        };
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            pipeline.generate(&req, &p.cancel, &mut on_step)
        }));
        match result {
            Ok(Ok(Outcome::Finished(image))) => {
                let metadata = GenerationMetadata {
                    prompt: loras.recorded_prompt.clone(),
                    negative_prompt: r.negative_prompt.clone(),
                    steps: r.steps,
                    cfg_scale: r.cfg_scale,
                    seed: r.seed,
                    // The recipe's size: with hires fix the image is larger (A1111 too writes
                    // the first pass's size beside "Hires upscale").
                    width: r.width,
                    height: r.height,
                    sampler: r.sampler.cli_name().to_string(),
                    sampler_a1111: r.sampler.a1111_name().to_string(),
                    model_name: pipeline.model.name.clone(),
                    // Filled in by the save task once the background hash is ready.
                    model_hash: String::new(),
                    loras: loras.uses.clone(),
                    spacing: pipeline.spacing(&req).map(|s| s.to_string()),
                    clip_skip: r.clip_skip,
                    // Its hash too is filled in by the save task.
                    vae: pipeline
                        .model
                        .vae_file
                        .as_deref()
                        .map(crate::gallery::png_meta::VaeUse::named),
                    init_noise: None,
                    init_image: r.init.as_ref().map(|init| {
                        crate::gallery::png_meta::InitImageUse {
                            path: init.source.display().to_string(),
                            strength: init.strength,
                            mask: None,
                            mask_blur: init.mask.as_ref().map(|_| init.mask_blur),
                            only_masked_padding: only_masked,
                        }
                    }),
                    hires: r.hires,
                    embeddings: pipeline
                        .embeddings_used(&[&r.prompt, &r.negative_prompt])
                        .into_iter()
                        .map(|e| crate::gallery::png_meta::EmbeddingUse {
                            name: e.name.clone(),
                            hash: e.hash.clone(),
                        })
                        .collect(),
                    sdxl: pipeline.model.is_sdxl().then(|| (*r.sdxl).clone()),
                    easel_version: env!("CARGO_PKG_VERSION").to_string(),
                    extra: Default::default(),
                };
                let finished = FinishedImage {
                    width: image.width,
                    height: image.height,
                    rgb: Arc::new(image.rgb),
                };
                self.sink.send(Event::Finished {
                    job,
                    image: finished.clone(),
                    metadata: Box::new(metadata.clone()),
                    warnings: image.warnings,
                    elapsed: start.elapsed(),
                });
                let save = io::SaveJob {
                    job,
                    dir: p.save_dir.clone(),
                    image: finished,
                    metadata,
                    hash: loaded.hash.clone(),
                    hash_files: loaded.hash_files.clone(),
                    vae_file: pipeline.model.vae_file.clone(),
                    mask: r.init.as_ref().and_then(|i| i.mask.clone()),
                };
                let sink = self.sink.clone();
                self.io.spawn(io::save(save, sink));
            }
            Ok(Ok(Outcome::Cancelled { completed_steps })) => {
                self.report_cancelled(&p, completed_steps)
            }
            Ok(Err(e)) => self.sink.send(Event::Failed {
                job,
                error: e.to_string(),
            }),
            Err(panic) => self.sink.send(Event::Failed {
                job,
                error: format!("internal error (a bug): {}", panic_text(&panic)),
            }),
        }
    }
}

fn model_info(pipeline: &Pipeline, path: PathBuf, took: std::time::Duration) -> ModelInfo {
    let model = &pipeline.model;
    ModelInfo {
        path,
        name: model.name.clone(),
        description: model.description.clone(),
        notes: model.notes.clone(),
        vae_file: model.vae_file.clone(),
        options: model.options.clone(),
        native_size: model.native_size(),
        size_multiple: model.size_multiple(),
        default_sampler: default_sampler(model),
        sdxl: model.is_sdxl(),
        few_step: crate::diffusion::pipeline::few_step_defaults(model).map(Box::new),
        tokenizer: super::SharedTokenizer(model.tokenizer.clone()),
        load_duration: took,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
