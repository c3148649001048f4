//! `easel bench-ui`: the real window drives itself through a measurement run and prints what
//! the issue asks to be measured — time to the first drawn frame, UI frame time while
//! generating, how late each preview is shown, how long a cancel takes — then closes.
//!
//! Without a model it measures the cold start alone (model load excluded by construction).
//! With `--gallery-images N` it measures the gallery grid of an N-image library instead
//! ([`gallery`]).

mod gallery;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::actions::Action;
use super::state::Studio;
pub use gallery::{GalleryBench, GalleryBenchArgs};

/// One frame at 60 Hz: what a smooth UI has to stay under.
const FRAME_BUDGET: Duration = Duration::from_micros(16_667);

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `None`: measure the start-up only.
    pub model: Option<PathBuf>,
    pub steps: usize,
    pub size: usize,
    /// Full generations measured before the cancel test.
    pub runs: usize,
    /// Also write the report here (JSON).
    pub out: Option<PathBuf>,
    /// Measure the gallery grid of this library instead of generating.
    pub gallery: Option<GalleryBench>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Starting,
    WaitModel,
    /// Frames with nothing running, for comparison with frames while generating.
    Idle {
        frames: usize,
    },
    Generating {
        run: usize,
    },
    Cancelling {
        sent: bool,
    },
    Done,
}

pub struct BenchRun {
    config: BenchConfig,
    started: Instant,
    frames: usize,
    first_drawn: Option<Duration>,
    phase: Phase,
    /// UI work per frame while a job runs.
    busy_frames: Vec<Duration>,
    /// Time between frame starts while a job runs (includes painting and presenting).
    busy_intervals: Vec<Duration>,
    idle_intervals: Vec<Duration>,
    last_frame_start: Option<Instant>,
    history_seen: usize,
    cancel_tries: usize,
    load_time: Option<Duration>,
    gallery: Option<gallery::GalleryRun>,
}

/// Idle frames measured before the first generation.
const IDLE_FRAMES: usize = 60;

/// Jobs started for the cancel measurement before giving up.
const MAX_CANCEL_TRIES: usize = 20;

impl BenchRun {
    pub fn new(config: BenchConfig, started: Option<Instant>) -> Self {
        let started = started.unwrap_or_else(Instant::now);
        let gallery = config
            .gallery
            .clone()
            .map(|g| gallery::GalleryRun::new(g, config.out.clone(), started));
        Self {
            config,
            started,
            frames: 0,
            first_drawn: None,
            phase: Phase::Starting,
            busy_frames: Vec::new(),
            busy_intervals: Vec::new(),
            idle_intervals: Vec::new(),
            last_frame_start: None,
            history_seen: 0,
            cancel_tries: 0,
            load_time: None,
            gallery,
        }
    }

    /// The gallery panel to show in place of the user's, for a gallery measurement.
    pub fn gallery_panel(&self) -> Option<super::GalleryPanel> {
        self.gallery.as_ref().map(gallery::GalleryRun::panel)
    }

    pub fn before_frame(&mut self, ctx: &egui::Context, studio: &mut Studio) {
        if let Some(g) = &mut self.gallery {
            return g.before_frame(ctx, studio);
        }
        let now = Instant::now();
        self.frames += 1;
        // Frame 1 has been painted and presented by the time frame 2 starts.
        if self.frames == 2 {
            self.first_drawn = Some(self.started.elapsed());
        }
        if let Some(last) = self.last_frame_start {
            if studio.running.is_some() {
                self.busy_intervals.push(now - last);
            } else if matches!(self.phase, Phase::Idle { .. }) {
                self.idle_intervals.push(now - last);
            }
        }
        self.last_frame_start = Some(now);
        // Keep frames coming so every frame during generation is sampled (a worst case: the
        // studio itself only repaints on events and input).
        ctx.request_repaint();
        let before = self.phase;
        self.advance(ctx, studio);
        if std::mem::discriminant(&self.phase) != std::mem::discriminant(&before) {
            eprintln!("bench-ui: {:?}", self.phase);
        }
    }

    pub fn after_frame(&mut self, ctx: &egui::Context, studio: &mut Studio) {
        if let Some(g) = &mut self.gallery {
            return g.after_frame(ctx, studio);
        }
        if studio.running.is_some() {
            if let Some(d) = studio.metrics.frame_times.last() {
                self.busy_frames.push(*d);
            }
        }
    }

    fn advance(&mut self, ctx: &egui::Context, studio: &mut Studio) {
        match self.phase {
            Phase::Starting if self.first_drawn.is_some() => {
                self.phase = match &self.config.model {
                    Some(_) => Phase::WaitModel,
                    None => self.finish(ctx, studio),
                };
            }
            Phase::WaitModel => {
                if let super::state::ModelState::Ready(info) = &studio.model {
                    self.load_time = Some(info.load_duration);
                    self.phase = Phase::Idle { frames: 0 };
                } else if let super::state::ModelState::Failed { error, .. } = &studio.model {
                    eprintln!("bench-ui: the model failed to load: {error}");
                    self.phase = self.finish(ctx, studio);
                }
            }
            Phase::Idle { frames } if frames < IDLE_FRAMES => {
                self.phase = Phase::Idle { frames: frames + 1 };
            }
            Phase::Idle { .. } => {
                let s = &mut studio.settings;
                s.prompt = "a red circle on a blue background".into();
                s.negative_prompt.clear();
                s.steps = self.config.steps;
                s.width = self.config.size;
                s.height = self.config.size;
                s.seed = 42;
                s.seed_locked = true;
                s.batch_count = 1;
                s.live = false;
                self.history_seen = studio.history.len();
                studio.push(Action::Generate);
                self.phase = Phase::Generating { run: 0 };
            }
            Phase::Generating { run } => {
                if studio.running.is_none()
                    && studio.queue.is_empty()
                    && studio.history.len() > self.history_seen
                {
                    self.history_seen = studio.history.len();
                    studio.push(Action::Generate);
                    self.phase = if run + 1 < self.config.runs {
                        Phase::Generating { run: run + 1 }
                    } else {
                        Phase::Cancelling { sent: false }
                    };
                }
            }
            Phase::Cancelling { sent: false } => {
                // Cancel at the first step seen; a job that finished between two frames (tiny
                // models are that fast) is simply followed by another, a bounded number of times.
                if studio.running.as_ref().is_some_and(|r| r.step >= 1) {
                    studio.push(Action::CancelAll);
                    self.phase = Phase::Cancelling { sent: true };
                } else if studio.running.is_none()
                    && studio.queue.is_empty()
                    && studio.history.len() > self.history_seen
                {
                    self.history_seen = studio.history.len();
                    self.cancel_tries += 1;
                    if self.cancel_tries > MAX_CANCEL_TRIES {
                        eprintln!("bench-ui: every job finished before a frame could cancel it");
                        self.phase = self.finish(ctx, studio);
                    } else {
                        studio.push(Action::Generate);
                    }
                }
            }
            Phase::Cancelling { sent: true } => {
                if studio.running.is_none() && !studio.metrics.cancel_latency.is_empty() {
                    self.phase = self.finish(ctx, studio);
                }
            }
            Phase::Starting | Phase::Done => {}
        }
    }

    fn finish(&mut self, ctx: &egui::Context, studio: &Studio) -> Phase {
        let report = self.report(studio);
        println!("{report}");
        if let Some(out) = &self.config.out {
            if let Err(e) = std::fs::write(out, format!("{report}\n")) {
                eprintln!("bench-ui: cannot write {}: {e}", out.display());
            }
        }
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        Phase::Done
    }

    fn report(&self, studio: &Studio) -> String {
        let m = &studio.metrics;
        let previews: Vec<Duration> = m.preview_latency.iter().map(|p| p.0).collect();
        let preview_steps: Vec<f64> = m
            .preview_latency
            .iter()
            .filter(|p| !p.1.is_zero())
            .map(|p| p.0.as_secs_f64() / p.1.as_secs_f64())
            .collect();
        let cancel_steps: Vec<f64> = m
            .cancel_latency
            .iter()
            .filter(|c| !c.1.is_zero())
            .map(|c| c.0.as_secs_f64() / c.1.as_secs_f64())
            .collect();
        let report = serde_json::json!({
            "first_frame_drawn_ms": self.first_drawn.map(ms),
            "model_load_ms": self.load_time.map(ms),
            "steps": self.config.steps,
            "size": self.config.size,
            "step_ms_last": ms(m.last_step_duration),
            "ui_frame_ms_while_generating": stats(&self.busy_frames),
            "frame_interval_ms_while_generating": stats(&self.busy_intervals),
            "frame_interval_ms_idle": stats(&self.idle_intervals),
            "preview_latency_ms": stats(&previews),
            "preview_latency_steps_max": preview_steps.iter().cloned().fold(0.0, f64::max),
            "cancel_latency_ms": stats(&m.cancel_latency.iter().map(|c| c.0).collect::<Vec<_>>()),
            "cancel_latency_steps_max": cancel_steps.iter().cloned().fold(0.0, f64::max),
            "images": studio.history.len(),
        });
        report.to_string()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// n, median, p99 and max in milliseconds.
fn stats(samples: &[Duration]) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    let mut v: Vec<Duration> = samples.to_vec();
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    serde_json::json!({
        "n": v.len(),
        "median": ms(at(0.5)),
        "p99": ms(at(0.99)),
        "max": ms(v[v.len() - 1]),
    })
}
