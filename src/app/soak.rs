//! `easel bench-soak`: a day of studio use in a few minutes. The studio's own state machine
//! ([`Studio`]: the actions the panels push, the events it drains every frame) drives the real
//! worker through hundreds of generations, with live-mode slider changes, LoRA toggles and
//! re-weights, a cancel every seventh job, queue reorders, settings written as the studio
//! writes them, and the gallery indexing the library alongside. No window is opened: a headless
//! `egui::Context` stands in for the frame, which is all [`Studio`] asks of egui.
//!
//! It then checks what a user would lose or leak: memory, threads and open files after the
//! warm-up against the end, every finished image on disk with readable metadata, the gallery
//! index equal to the folder, the settings file readable. A JSON report goes to stdout; a
//! broken check makes the command fail. Each saved image is also logged to stderr as
//! `saved <path>`, so a test can kill the process at any moment and know what was finished.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::actions::Action;
use super::state::{ModelState, Studio};
use crate::gallery::service::{GalleryService, ServiceCommand, ServiceConfig, ServiceEvent};
use crate::lora::LoraChoice;
use crate::process_stats;
use crate::settings::{store, Settings};
use crate::worker::{Event, JobId, Worker};

/// Jobs after which memory, threads and files are taken as the baseline (model, CLIP, caches
/// and thread pools all warm by then).
const WARM_UP_JOBS: usize = 50;
/// The gallery re-indexes the library after this many more finished jobs.
const INDEX_EVERY: usize = 25;
/// The longest one round (a few jobs) may take before the soak calls the studio stuck.
const ROUND_LIMIT: Duration = Duration::from_secs(120);
/// Allowed resident-memory growth from the warm-up to the end.
const MAX_RSS_GROWTH: f64 = 0.05;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Generations to run (each submitted job counts, cancelled ones included).
    #[arg(long, default_value_t = 500)]
    pub jobs: usize,
    /// Sampler steps per image.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// A diffusers model folder (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the library, index, thumbnails and settings file go (default: a temporary folder,
    /// removed afterwards). Kept when given.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Also write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One reading of what the process holds.
#[derive(Debug, Clone, serde::Serialize)]
struct Footprint {
    /// Jobs ended when it was taken.
    jobs: usize,
    rss_mib: Option<f64>,
    /// What SQLite holds (the gallery index's page cache, bounded at its 2 MiB default per
    /// connection), part of the resident memory.
    sqlite_mib: f64,
    threads: Option<u64>,
    fds: Option<usize>,
    threads_by_name: Option<BTreeMap<String, u64>>,
}

impl Footprint {
    fn now(jobs: usize) -> Self {
        Self {
            jobs,
            rss_mib: process_stats::status_mib("VmRSS:"),
            sqlite_mib: crate::gallery::sqlite_memory_used() as f64 / (1 << 20) as f64,
            threads: process_stats::threads(),
            fds: process_stats::open_fds(),
            threads_by_name: process_stats::threads_by_name(),
        }
    }
}

/// The worker's I/O runtime: one async thread and a blocking pool of at most four, which
/// grows on demand and shrinks after idle seconds (tokio's pool), so its count breathes
/// within that bound. Every other thread is fixed.
const IO_THREADS: (&str, u64) = ("easel-io", 5);

/// No thread leaked: no kind of thread grew from the warm-up to the end, except the I/O pool
/// within its bound.
fn threads_held(warm: &Footprint, end: &Footprint) -> bool {
    let (Some(before), Some(after)) = (&warm.threads_by_name, &end.threads_by_name) else {
        return true;
    };
    after.iter().all(|(name, &n)| {
        let was = before.get(name).copied().unwrap_or(0);
        n <= was || (name == IO_THREADS.0 && n <= IO_THREADS.1)
    })
}

/// What happened to the jobs, from the events the studio drained.
#[derive(Default)]
struct Ledger {
    submitted: Vec<JobId>,
    started: Vec<JobId>,
    finished: HashMap<JobId, (u64, String)>,
    saved: HashMap<JobId, PathBuf>,
    cancelled: HashSet<JobId>,
    failed: Vec<String>,
    save_failed: Vec<String>,
    /// (moved to the front, the one it jumped): a batch's last and middle jobs.
    reorders: Vec<(JobId, JobId)>,
}

impl Ledger {
    fn ended(&self) -> usize {
        self.finished.len() + self.cancelled.len() + self.failed.len()
    }

    fn record(&mut self, event: &Event) {
        match event {
            Event::Started { job, .. } => self.started.push(*job),
            Event::Finished { job, metadata, .. } => {
                self.finished
                    .insert(*job, (metadata.seed, metadata.prompt.clone()));
            }
            Event::Saved { job, path } => {
                eprintln!("saved {}", path.display());
                self.saved.insert(*job, path.clone());
            }
            Event::SaveFailed { job, error, .. } => {
                self.save_failed.push(format!("job {job}: {error}"))
            }
            Event::Cancelled { job, .. } => {
                self.cancelled.insert(*job);
            }
            Event::Failed { job, error } => self.failed.push(format!("job {job}: {error}")),
            _ => {}
        }
    }
}

/// The studio without its window, and the gallery beside it.
struct Soak {
    studio: Studio,
    ctx: egui::Context,
    gallery: GalleryService,
    ledger: Ledger,
    settings_file: PathBuf,
    settings_writes: usize,
    written: Option<Settings>,
    /// Index runs asked for and reported done.
    index_sent: usize,
    indexed_runs: usize,
    /// The gallery's list arrived after its last `Indexed` (it follows each run).
    list_fresh: bool,
    gallery_errors: Vec<String>,
    /// The gallery's list of indexed images, as last reported.
    indexed: Vec<String>,
}

impl Soak {
    /// One frame: the studio drains the worker's events (the soak reads each one first) and
    /// carries out the actions pushed since; the gallery's events are drained too.
    fn frame(&mut self) {
        let Self {
            studio,
            ctx,
            ledger,
            ..
        } = self;
        ctx.begin_pass(egui::RawInput::default());
        while let Some(event) = studio.worker.try_recv() {
            ledger.record(&event);
            studio.on_event(event, ctx);
        }
        for action in std::mem::take(&mut studio.actions) {
            studio.apply(action, ctx);
        }
        // Notices fade as in the window (the only part of the UI that holds state over time).
        studio.show_notices(ctx);
        // The texture uploads the frame collected are dropped, as a renderer would consume
        // them (the pixels are not kept anywhere else).
        ctx.end_pass().textures_delta.clear();
        for event in self.gallery.try_events() {
            match event {
                ServiceEvent::Indexed(_) => {
                    self.indexed_runs += 1;
                    self.list_fresh = false;
                }
                ServiceEvent::Library(entries) => {
                    self.indexed = entries.into_iter().map(|e| e.path).collect();
                    self.list_fresh = true;
                }
                ServiceEvent::Error(e) | ServiceEvent::ClipMissing(e) => {
                    self.gallery_errors.push(e)
                }
                _ => {}
            }
        }
    }

    /// Runs frames until `done` holds; a frame every few milliseconds, as an idle window
    /// repainting on events would.
    fn frames_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) -> Result<()> {
        let start = Instant::now();
        while !done(self) {
            if start.elapsed() > ROUND_LIMIT {
                bail!("the studio did not get there in {ROUND_LIMIT:?}: {what}");
            }
            std::thread::sleep(Duration::from_millis(2));
            self.frame();
        }
        Ok(())
    }

    /// Pushes an action as a panel would and runs the frame that applies it; returns the jobs
    /// it submitted.
    fn act(&mut self, action: Action) -> Vec<JobId> {
        let before = self.studio.last_submission.clone();
        self.studio.push(action);
        self.frame();
        let new: Vec<JobId> = (self.studio.last_submission.iter())
            .filter(|j| !before.contains(j))
            .copied()
            .collect();
        self.ledger.submitted.extend(&new);
        new
    }

    /// Waits for `job` to have run at least one step.
    fn until_running(&mut self, job: JobId) -> Result<()> {
        self.frames_until("a job to start", |s| {
            s.studio
                .running
                .as_ref()
                .is_some_and(|r| r.job == job && r.step >= 1)
                || s.ledger.finished.contains_key(&job)
        })
    }

    /// Waits until nothing is queued or running and every finished image has been saved.
    fn until_idle(&mut self) -> Result<()> {
        self.frames_until("the queue to drain", |s| {
            let l = &s.ledger;
            l.ended() == l.submitted.len()
                && l.saved.len() + l.save_failed.len() == l.finished.len()
        })
    }

    /// The studio's autosave, after every round instead of every half minute.
    fn save_settings(&mut self) -> Result<()> {
        if self.written.as_ref() == Some(&self.studio.settings) {
            return Ok(());
        }
        store::save(&self.settings_file, &self.studio.settings)
            .with_context(|| format!("writing {}", self.settings_file.display()))?;
        self.written = Some(self.studio.settings.clone());
        self.settings_writes += 1;
        Ok(())
    }

    /// One round of user behaviour, chosen by its number.
    fn round(&mut self, n: usize) -> Result<()> {
        let s = &mut self.studio.settings;
        // The LoRA manager: a toggle every fourth round, a new weight every fourth.
        if let Some(lora) = s.loras.first_mut() {
            match n % 4 {
                0 => lora.enabled = !lora.enabled,
                2 => lora.weight = 0.2 + 0.1 * (n % 9) as f64,
                _ => {}
            }
        }
        match n % 7 {
            // A cancel mid-run.
            6 => {
                let jobs = self.act(Action::Generate);
                if let Some(&job) = jobs.first() {
                    self.until_running(job)?;
                    let _ = self.act(Action::CancelJob(job));
                }
            }
            // Live mode: a slider released, then another before the first image is done;
            // the stale job is cancelled and the new one queued at the front.
            1 | 4 => {
                self.studio.settings.cfg_scale = 3.0 + (n % 5) as f64;
                let first = self.act(Action::LiveRequeue);
                if let Some(&job) = first.first() {
                    self.until_running(job)?;
                }
                self.studio.settings.steps = self.studio.settings.steps.max(2) + n % 2;
                let _ = self.act(Action::LiveRequeue);
                self.studio.settings.steps -= n % 2;
            }
            // A batch of three, the last one moved to the front of the queue.
            3 => {
                self.studio.settings.batch_count = 3;
                let jobs = self.act(Action::Generate);
                self.studio.settings.batch_count = 1;
                if let [_, middle, last] = jobs[..] {
                    let _ = self.act(Action::MoveJob { job: last, to: 0 });
                    self.ledger.reorders.push((last, middle));
                }
            }
            _ => {
                let _ = self.act(Action::Generate);
            }
        }
        self.until_idle()?;
        self.save_settings()
    }

    fn index(&mut self) {
        let folder = self.studio.settings.library_dir();
        self.gallery.send(ServiceCommand::Index(vec![folder]));
        self.index_sent += 1;
    }
}

pub fn run(args: SoakArgs) -> Result<()> {
    let model = match args.model.clone() {
        Some(m) => m,
        None => crate::settings::default_model_dir()
            .context("no bundled model was found; pass --model")?,
    };
    let scratch = args.work_dir.is_none();
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("easel-soak-{}", std::process::id())));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = soak(&args, &model, &work);
    if scratch {
        let _ = std::fs::remove_dir_all(&work);
    }
    let report = result?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    let failed: Vec<&str> = (report["checks"].as_object())
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_bool() != Some(true))
        .map(|(k, _)| k.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("soak checks failed: {}", failed.join(", "));
    }
    Ok(())
}

fn soak(args: &SoakArgs, model: &Path, work: &Path) -> Result<serde_json::Value> {
    let library = work.join("library");
    let lora = crate::settings::bundled_lora_dir().map(|d| d.join("striped.safetensors"));
    let settings = Settings {
        prompt: "a small yellow star on a purple background".into(),
        steps: args.steps.max(2),
        live: true,
        library_dir: Some(library.clone()),
        loras: (lora.iter())
            .filter(|p| p.is_file())
            .map(|path| LoraChoice {
                path: path.clone(),
                enabled: true,
                weight: 0.8,
                te_weight: None,
            })
            .collect(),
        ..Settings::default()
    };
    let has_lora = !settings.loras.is_empty();
    let worker = Worker::spawn(Arc::new(|| {}))?;
    let gallery = GalleryService::spawn(
        ServiceConfig {
            db: work.join("gallery.sqlite"),
            clip: crate::gallery::paths::default_clip_dir().ok(),
            thumbs: work.join("thumbnails"),
            folders: vec![library.clone()],
        },
        Arc::new(|| {}),
    )
    .context("starting the gallery service")?;
    let mut soak = Soak {
        studio: Studio::new(settings, worker),
        ctx: egui::Context::default(),
        gallery,
        ledger: Ledger::default(),
        settings_file: work.join("settings.json"),
        settings_writes: 0,
        written: None,
        // The service indexes its folders once at start.
        index_sent: 1,
        indexed_runs: 0,
        list_fresh: false,
        gallery_errors: Vec::new(),
        indexed: Vec::new(),
    };
    let started = Instant::now();
    soak.studio.load_model(model.to_path_buf());
    soak.frames_until("the model to load", |s| {
        !matches!(s.studio.model, ModelState::Loading { .. })
    })?;
    if let ModelState::Failed { error, .. } = &soak.studio.model {
        bail!("{}: {error}", model.display());
    }

    let mut warm: Option<Footprint> = None;
    let mut series = Vec::new();
    let mut next_index = INDEX_EVERY;
    let mut next_reading = WARM_UP_JOBS;
    let mut round = 0;
    while soak.ledger.submitted.len() < args.jobs {
        soak.round(round)?;
        round += 1;
        if soak.ledger.finished.len() >= next_index {
            soak.index();
            next_index += INDEX_EVERY;
        }
        let ended = soak.ledger.ended();
        if ended >= next_reading {
            let now = Footprint::now(ended);
            warm.get_or_insert_with(|| now.clone());
            series.push(now);
            next_reading += WARM_UP_JOBS;
        }
    }
    let generating = started.elapsed();
    let end = Footprint::now(soak.ledger.ended());

    // The last images into the index, and the index read back once every run asked for has
    // finished (runs queue up in the gallery's thread, in order).
    soak.index();
    soak.frames_until("the gallery to index the library", |s| {
        !s.gallery_errors.is_empty() || (s.indexed_runs >= s.index_sent && s.list_fresh)
    })?;

    let checks = check(&soak, &library);
    let l = &soak.ledger;
    let warm = warm.unwrap_or_else(|| end.clone());
    let growth = match (warm.rss_mib, end.rss_mib) {
        (Some(w), Some(e)) if w > 0.0 => Some(e / w - 1.0),
        _ => None,
    };
    let mut checks = checks?;
    checks.insert(
        "rss_growth_within_5_percent".into(),
        growth.is_none_or(|g| g <= MAX_RSS_GROWTH).into(),
    );
    checks.insert("no_thread_leak".into(), threads_held(&warm, &end).into());
    checks.insert("no_fd_growth".into(), (end.fds <= warm.fds).into());
    Ok(serde_json::json!({
        "model": model.display().to_string(),
        "steps": args.steps,
        "jobs": {
            "submitted": l.submitted.len(),
            "finished": l.finished.len(),
            "saved": l.saved.len(),
            "cancelled": l.cancelled.len(),
            "failed": l.failed,
            "save_failed": l.save_failed,
        },
        "rounds": round,
        "history_kept": soak.studio.history.len(),
        "lora": has_lora,
        "settings_writes": soak.settings_writes,
        "gallery": {
            "index_runs": soak.indexed_runs,
            "indexed": soak.indexed.len(),
            "errors": soak.gallery_errors,
        },
        "seconds": generating.as_secs_f64(),
        "after_warm_up": warm,
        "end": end,
        "every_50_jobs": series,
        "rss_growth": growth,
        "checks": checks,
    }))
}

/// What must hold after the run, each as a named pass/fail.
fn check(soak: &Soak, library: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let l = &soak.ledger;
    let mut checks = serde_json::Map::new();
    let mut put = |name: &str, ok: bool| {
        checks.insert(name.into(), ok.into());
    };
    put(
        "every_job_ended_once",
        l.ended() == l.submitted.len()
            && l.submitted.iter().collect::<HashSet<_>>().len() == l.submitted.len(),
    );
    put("no_failed_job", l.failed.is_empty());
    put("cancels_happened", !l.cancelled.is_empty());
    put("every_finished_image_saved", l.save_failed.is_empty());

    // Every saved file decodes and carries the metadata of the job that made it.
    let mut readable = true;
    for (job, path) in &l.saved {
        let meta = crate::gallery::png_meta::read_png_metadata(path);
        let expected = l.finished.get(job);
        let matches = match (&meta, expected) {
            (Ok(m), Some((seed, prompt))) => m
                .easel
                .as_ref()
                .is_some_and(|e| e.seed == *seed && e.prompt == *prompt),
            _ => false,
        };
        if !matches || image::open(path).is_err() {
            eprintln!("soak: {} is not what job {job} finished", path.display());
            readable = false;
        }
    }
    put("saved_images_readable_with_their_metadata", readable);

    // The folder holds exactly the saved images (no partial file, nothing extra).
    let on_disk: BTreeSet<PathBuf> = std::fs::read_dir(library)
        .with_context(|| format!("reading {}", library.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    let saved: BTreeSet<PathBuf> = l.saved.values().cloned().collect();
    put("library_holds_exactly_the_saved_images", on_disk == saved);

    // The index lists exactly the files on disk.
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let indexed: BTreeSet<PathBuf> = soak
        .indexed
        .iter()
        .map(|p| canonical(Path::new(p)))
        .collect();
    let files: BTreeSet<PathBuf> = on_disk.iter().map(|p| canonical(p)).collect();
    put(
        "index_matches_the_library",
        indexed == files && soak.gallery_errors.is_empty(),
    );

    // The settings file reads back as the last settings written.
    let settings_ok = match store::load(&soak.settings_file) {
        store::Loaded::Settings(s) => Some(&*s) == soak.written.as_ref(),
        _ => false,
    };
    put("settings_file_reads_back", settings_ok);

    put(
        "history_bounded",
        soak.studio.history.len() <= super::state::HISTORY_LIMIT,
    );

    // Moved to the front, a batch's last job ran before its middle one (the first may have
    // started before the move).
    let position = |job: &JobId| l.started.iter().position(|j| j == job);
    put(
        "queue_reorders_respected",
        !l.reorders.is_empty()
            && (l.reorders.iter()).all(|(moved, jumped)| position(moved) < position(jumped)),
    );
    Ok(checks)
}
