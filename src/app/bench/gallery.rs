//! `easel bench-ui --gallery-images N`: the gallery grid of a large library, measured in the
//! real window.
//!
//! Before the window opens, a library of N distinct procedural PNGs is made (once: it is kept
//! under the system temp dir with its index and reused by later runs) and the thumbnail disk
//! cache is emptied. The studio then starts on that folder as its library folder, the Gallery
//! tab open, and the bench waits until the gallery has indexed all N images. Measured, per
//! frame: the UI thread's wall and CPU time for the frame's update (panels drawn, grid laid
//! out, thumbnails uploaded), the interval between frame starts (adds tessellation, painting
//! and presenting), thumbnails uploaded, rows laid out and cells still waiting for their
//! thumbnail, in these phases:
//!
//! - `baseline_no_grid`: the Queue tab shown instead, the window's cost without the grid;
//! - `idle_top`: the grid at the top, nothing moving;
//! - `scroll_cold`: scrolled to the bottom a fixed number of rows per frame, the disk cache
//!   empty (every thumbnail decoded from its image and written to the cache);
//! - `scroll_warm`: back to the top and down again, thumbnails from the disk cache.
//!
//! After each pass the grid stays at the bottom until every visible thumbnail is shown and
//! every one asked for has arrived (`after_pass`: how long the screen the scroll stopped at
//! waited for its thumbnails, and how long the decoder took to catch up).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rayon::prelude::*;

use super::{ms, FRAME_BUDGET};
use crate::app::gallery_panel::{scroll_grid_to_row, GalleryPanel, GridFrame};
use crate::app::state::Studio;

/// Command-line options of the gallery measurement (flattened into `easel bench-ui`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GalleryBenchArgs {
    /// Measure the gallery grid instead: a library of N distinct PNGs (made once, kept in the
    /// temp dir and reused), scrolled through with a cold and then a warm thumbnail cache.
    #[arg(long, value_name = "N")]
    pub gallery_images: Option<usize>,
    /// Side of the generated images, in pixels.
    #[arg(long, value_name = "PX", default_value_t = 64)]
    pub gallery_side: u32,
    /// Grid rows scrolled per frame.
    #[arg(long, value_name = "ROWS", default_value_t = 2)]
    pub gallery_rows_per_frame: usize,
    /// The CLIP folder the gallery indexes with (default: tests/fixtures/clip-tiny).
    #[arg(long, value_name = "DIR")]
    pub gallery_clip: Option<PathBuf>,
}

/// A library ready to be measured.
#[derive(Debug, Clone)]
pub struct GalleryBench {
    pub images: usize,
    pub side: u32,
    pub rows_per_frame: usize,
    pub clip: PathBuf,
    /// Library, index and thumbnail cache live here.
    pub work: PathBuf,
    /// Seconds spent making images this run (0 when the library was reused whole).
    pub made_s: f64,
    pub made: usize,
}

impl GalleryBench {
    /// Makes (or completes) the library and empties the thumbnail cache; `None` without
    /// `--gallery-images`.
    pub fn prepare(args: &GalleryBenchArgs) -> Result<Option<Self>> {
        let Some(images) = args.gallery_images else {
            return Ok(None);
        };
        if images == 0 || args.gallery_side < 8 || args.gallery_rows_per_frame == 0 {
            bail!("--gallery-images, --gallery-rows-per-frame must be > 0 and --gallery-side ≥ 8");
        }
        let clip = args.gallery_clip.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny")
        });
        if !clip.join("config.json").is_file() {
            bail!(
                "{}: not a CLIP folder; pass one with --gallery-clip DIR",
                clip.display()
            );
        }
        let work = std::env::temp_dir().join(format!(
            "easel-bench-gallery-{images}x{}",
            args.gallery_side
        ));
        let mut bench = Self {
            images,
            side: args.gallery_side,
            rows_per_frame: args.gallery_rows_per_frame,
            clip,
            work,
            made_s: 0.0,
            made: 0,
        };
        let t = Instant::now();
        bench.made = make_library(&bench.library(), images, bench.side)?;
        bench.made_s = t.elapsed().as_secs_f64();
        let thumbs = bench.thumbs();
        if thumbs.exists() {
            std::fs::remove_dir_all(&thumbs)
                .with_context(|| format!("emptying {}", thumbs.display()))?;
        }
        eprintln!(
            "bench-ui: gallery of {images} images in {} ({} made in {:.1} s)",
            bench.library().display(),
            bench.made,
            bench.made_s
        );
        Ok(Some(bench))
    }

    /// The studio's library folder for the run.
    pub fn library(&self) -> PathBuf {
        self.work.join("library")
    }

    fn thumbs(&self) -> PathBuf {
        self.work.join("thumbnails")
    }

    /// The gallery panel the studio shows: the index and the thumbnail cache in the work dir.
    pub fn panel(&self) -> GalleryPanel {
        GalleryPanel::with_paths(
            Some(self.work.join("index.sqlite")),
            Some(self.clip.clone()),
            Some(self.thumbs()),
        )
    }
}

/// Writes the images of `0..n` that are missing; returns how many it wrote.
fn make_library(dir: &Path, n: usize, side: u32) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let missing: Vec<usize> = (0..n)
        .filter(|i| !dir.join(image_name(*i)).is_file())
        .collect();
    missing.par_iter().try_for_each(|&i| -> Result<()> {
        let path = dir.join(image_name(i));
        // Temp file + rename: an interrupted run never leaves a truncated image to reuse.
        let tmp = dir.join(format!(".{}.tmp.png", image_name(i)));
        procedural(i, side)
            .save(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    })?;
    Ok(missing.len())
}

fn image_name(i: usize) -> String {
    format!("img_{i:06}.png")
}

/// Image `i`: one of four patterns in two colours, shaded, all drawn from `i`; its number is
/// written into the first pixels as well, so no two images have the same content hash.
fn procedural(i: usize, side: u32) -> image::RgbImage {
    let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let byte = |shift: u32| (h >> shift) as u8;
    let base = [byte(0), byte(8), byte(16)];
    let accent = [byte(24) ^ 0x80, byte(32) ^ 0x80, byte(40) ^ 0x80];
    let freq = 2 + (byte(48) as u32 % 9);
    let centre = side as i64 / 2;
    let mut img = image::RgbImage::from_fn(side, side, |x, y| {
        let (u, v) = (x * freq / side, y * freq / side);
        let on = match i % 4 {
            0 => (u + v).is_multiple_of(2),
            1 => u.is_multiple_of(2),
            2 => {
                let (dx, dy) = (x as i64 - centre, y as i64 - centre);
                (((dx * dx + dy * dy) as f64).sqrt() as u32 * freq / side).is_multiple_of(2)
            }
            _ => ((x + y) * freq / side).is_multiple_of(2),
        };
        let c = if on { accent } else { base };
        let shade = (y * 48 / side) as u8;
        image::Rgb(c.map(|v| v.saturating_add(shade)))
    });
    for (k, b) in (i as u64).to_le_bytes().iter().take(4).enumerate() {
        img.put_pixel(k as u32, 0, image::Rgb([*b, *b, *b]));
    }
    img
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The gallery is indexing the library (or loading its index).
    Wait,
    /// Another tool tab shown (no grid): the window's own cost, for comparison.
    Baseline {
        frames: usize,
    },
    Idle {
        frames: usize,
    },
    Scroll {
        pass: usize,
        row: usize,
    },
    /// At the bottom after a pass, until every visible thumbnail is shown and every one asked
    /// for has arrived.
    Settle {
        pass: usize,
        since: Instant,
        frames: usize,
        /// When (and after how many frames) no visible cell was waiting any more.
        shown: Option<(Duration, usize)>,
    },
    Done,
}

const PASSES: [&str; 2] = ["cold", "warm"];
const IDLE_FRAMES: usize = 120;
/// Longest wait for the library to be indexed (a first run embeds every image).
const WAIT_LIMIT: Duration = Duration::from_secs(3600);
/// Longest wait for the last screen's thumbnails after a pass.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// One phase's per-frame samples.
#[derive(Default)]
struct Samples {
    ui: Vec<Duration>,
    ui_cpu: Vec<Duration>,
    interval: Vec<Duration>,
    uploaded: Vec<usize>,
    waiting: Vec<usize>,
    rows_shown_max: usize,
    textures_max: usize,
    pending_max: usize,
    /// The slowest frames (UI CPU time) with what the grid did in them, slowest first.
    worst: Vec<(Duration, Duration, GridFrame)>,
    started: Option<Instant>,
    ended: Option<Instant>,
}

/// Slowest frames kept per phase.
const WORST: usize = 3;

impl Samples {
    fn report(&self) -> serde_json::Value {
        let over = self.interval.iter().filter(|d| **d > FRAME_BUDGET).count();
        serde_json::json!({
            "frames": self.ui.len(),
            "wall_s": match (self.started, self.ended) {
                (Some(a), Some(b)) => Some(((b - a).as_secs_f64() * 100.0).round() / 100.0),
                _ => None,
            },
            "ui_ms": durations(&self.ui),
            "ui_cpu_ms": durations(&self.ui_cpu),
            "frame_interval_ms": durations(&self.interval),
            "intervals_over_budget": over,
            "thumbs_uploaded_per_frame": counts(&self.uploaded),
            "thumbs_uploaded": self.uploaded.iter().sum::<usize>(),
            "cells_waiting_per_frame": counts(&self.waiting),
            "rows_laid_out_max": self.rows_shown_max,
            "textures_max": self.textures_max,
            "thumbs_pending_max": self.pending_max,
            "slowest_frames": self.worst.iter().map(|(cpu, wall, f)| serde_json::json!({
                "ui_cpu_ms": ms(*cpu),
                "ui_ms": ms(*wall),
                "thumbs_uploaded": f.thumbs_uploaded,
                "cells_waiting": f.cells_waiting,
                "textures": f.textures,
                "first_row": f.first_row,
            })).collect::<Vec<_>>(),
        })
    }
}

pub struct GalleryRun {
    bench: GalleryBench,
    out: Option<PathBuf>,
    started: Instant,
    phase: Phase,
    /// The phase the frame in progress belongs to (`None`: not sampled).
    sampling: Option<usize>,
    samples: Vec<(String, Samples)>,
    last_frame_start: Option<Instant>,
    update_start: Option<(Instant, Option<Duration>)>,
    last: GridFrame,
    indexed_after: Option<Duration>,
    /// Thumbnails still to come when the scrolling stopped.
    pending_at_stop: usize,
    settled: Vec<serde_json::Value>,
    last_note: Instant,
}

impl GalleryRun {
    pub fn new(bench: GalleryBench, out: Option<PathBuf>, started: Instant) -> Self {
        let samples = [
            "baseline_no_grid",
            "idle_top",
            "scroll_cold",
            "settle_cold",
            "scroll_warm",
            "settle_warm",
        ]
        .iter()
        .map(|k| (k.to_string(), Samples::default()))
        .collect();
        Self {
            bench,
            out,
            started,
            phase: Phase::Wait,
            sampling: None,
            samples,
            last_frame_start: None,
            update_start: None,
            last: GridFrame::default(),
            indexed_after: None,
            pending_at_stop: 0,
            settled: Vec::new(),
            last_note: Instant::now(),
        }
    }

    pub fn panel(&self) -> GalleryPanel {
        self.bench.panel()
    }

    fn slot(&self) -> Option<usize> {
        match self.phase {
            Phase::Wait | Phase::Done => None,
            Phase::Baseline { .. } => Some(0),
            Phase::Idle { .. } => Some(1),
            Phase::Scroll { pass, .. } => Some(2 + 2 * pass),
            Phase::Settle { pass, .. } => Some(3 + 2 * pass),
        }
    }

    pub fn before_frame(&mut self, ctx: &egui::Context, studio: &mut Studio) {
        let now = Instant::now();
        // The interval that ends now belongs to the frame before, and so to its phase.
        if let (Some(last), Some(slot)) = (self.last_frame_start, self.sampling) {
            self.samples[slot].1.interval.push(now - last);
        }
        self.last_frame_start = Some(now);
        ctx.request_repaint();
        let before = self.slot();
        self.advance(ctx, studio);
        let tab = match self.phase {
            Phase::Baseline { .. } => "queue",
            _ => "gallery",
        };
        if studio.settings.tool_tab != tab {
            studio.settings.tool_tab = tab.into();
        }
        if self.slot() != before {
            if let Some(slot) = self.slot() {
                eprintln!("bench-ui: {}", self.samples[slot].0);
            }
        }
        if let Phase::Scroll { row, .. } = self.phase {
            scroll_grid_to_row(ctx, row);
        }
        self.sampling = self.slot();
        if let Some(slot) = self.sampling {
            let s = &mut self.samples[slot].1;
            s.started.get_or_insert(now);
            s.ended = Some(now);
        }
        self.update_start = Some((Instant::now(), thread_cpu()));
    }

    pub fn after_frame(&mut self, ctx: &egui::Context, _studio: &mut Studio) {
        let cpu_now = thread_cpu();
        let Some((t0, cpu0)) = self.update_start.take() else {
            return;
        };
        let wall = t0.elapsed();
        // Frames without the grid (another tab shown) count as frames where it did nothing.
        let drawn = GridFrame::take(ctx);
        if let Some(f) = drawn {
            self.last = f;
        }
        let Some(slot) = self.sampling else {
            return;
        };
        let f = drawn.unwrap_or_default();
        let s = &mut self.samples[slot].1;
        s.ui.push(wall);
        if let (Some(a), Some(b)) = (cpu0, cpu_now) {
            let cpu = b.saturating_sub(a);
            s.ui_cpu.push(cpu);
            s.worst.push((cpu, wall, f));
            s.worst.sort_by_key(|w| std::cmp::Reverse(w.0));
            s.worst.truncate(WORST);
        }
        s.uploaded.push(f.thumbs_uploaded);
        s.waiting.push(f.cells_waiting);
        s.rows_shown_max = s.rows_shown_max.max(f.rows_shown);
        s.textures_max = s.textures_max.max(f.textures);
        s.pending_max = s.pending_max.max(f.thumbs_pending);
    }

    fn advance(&mut self, ctx: &egui::Context, studio: &Studio) {
        let f = self.last;
        match self.phase {
            Phase::Wait => {
                if f.items >= self.bench.images && f.indexed {
                    self.indexed_after = Some(self.started.elapsed());
                    self.phase = Phase::Baseline { frames: 0 };
                } else if self.started.elapsed() > WAIT_LIMIT {
                    eprintln!("bench-ui: the gallery did not index the library in {WAIT_LIMIT:?}");
                    self.phase = self.finish(ctx, studio);
                } else if self.last_note.elapsed() > Duration::from_secs(10) {
                    self.last_note = Instant::now();
                    eprintln!(
                        "bench-ui: waiting for the gallery: {} of {} images shown, indexed: {}",
                        f.items, self.bench.images, f.indexed
                    );
                }
            }
            Phase::Baseline { frames } if frames < IDLE_FRAMES => {
                self.phase = Phase::Baseline { frames: frames + 1 };
            }
            Phase::Baseline { .. } => {
                scroll_grid_to_row(ctx, 0);
                self.phase = Phase::Idle { frames: 0 };
            }
            Phase::Idle { frames } if frames < IDLE_FRAMES => {
                self.phase = Phase::Idle { frames: frames + 1 };
            }
            Phase::Idle { .. } => self.phase = Phase::Scroll { pass: 0, row: 0 },
            Phase::Scroll { pass, row } => {
                // The last row has reached the bottom edge: the grid cannot scroll further.
                let bottom = f.rows.saturating_sub(f.rows_shown.saturating_sub(1).max(1));
                self.phase = if row >= bottom {
                    self.pending_at_stop = f.thumbs_pending;
                    Phase::Settle {
                        pass,
                        since: Instant::now(),
                        frames: 0,
                        shown: None,
                    }
                } else {
                    Phase::Scroll {
                        pass,
                        row: (row + self.bench.rows_per_frame).min(bottom),
                    }
                };
            }
            Phase::Settle {
                pass,
                since,
                frames,
                shown,
            } => {
                let shown = shown.or((f.cells_waiting == 0).then(|| (since.elapsed(), frames)));
                let drained = f.thumbs_pending == 0;
                if (shown.is_some() && drained) || since.elapsed() > SETTLE_LIMIT {
                    self.settled.push(serde_json::json!({
                        "visible_shown_ms": shown.map(|s| ms(s.0)),
                        "visible_shown_frames": shown.map(|s| s.1),
                        "pending_drained": drained,
                        "pending_drained_ms": ms(since.elapsed()),
                        "pending_at_stop": self.pending_at_stop,
                    }));
                    self.phase = if pass + 1 < PASSES.len() {
                        Phase::Scroll {
                            pass: pass + 1,
                            row: 0,
                        }
                    } else {
                        self.finish(ctx, studio)
                    };
                } else {
                    self.phase = Phase::Settle {
                        pass,
                        since,
                        frames: frames + 1,
                        shown,
                    };
                }
            }
            Phase::Done => {}
        }
    }

    fn finish(&mut self, ctx: &egui::Context, _studio: &Studio) -> Phase {
        let report = self.report();
        println!("{report}");
        if let Some(out) = &self.out {
            if let Err(e) = std::fs::write(out, format!("{report}\n")) {
                eprintln!("bench-ui: cannot write {}: {e}", out.display());
            }
        }
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        Phase::Done
    }

    fn report(&self) -> String {
        let (files, bytes) = dir_size(&self.bench.thumbs());
        let mut phases = serde_json::Map::new();
        for (name, s) in &self.samples {
            phases.insert(name.clone(), s.report());
        }
        let mut settle = serde_json::Map::new();
        for (pass, v) in PASSES.iter().zip(&self.settled) {
            settle.insert(format!("settle_{pass}"), v.clone());
        }
        let f = self.last;
        serde_json::json!({
            "gallery_images": self.bench.images,
            "image_side": self.bench.side,
            "images_made_this_run": self.bench.made,
            "images_made_s": (self.bench.made_s * 10.0).round() / 10.0,
            "indexed_after_s": self.indexed_after.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            "grid": {
                "items": f.items,
                "columns": f.columns,
                "rows": f.rows,
                "rows_per_frame": self.bench.rows_per_frame,
            },
            "frame_budget_ms": ms(FRAME_BUDGET),
            "phases": phases,
            "after_pass": settle,
            "rss_mib_end": proc_status_mib("VmRSS:"),
            "rss_mib_peak": proc_status_mib("VmHWM:"),
            "thumb_cache": {
                "files": files,
                "mib": (bytes as f64 / (1024.0 * 1024.0) * 100.0).round() / 100.0,
                "dir": self.bench.thumbs(),
            },
        })
        .to_string()
    }
}

/// CPU time of the calling thread so far: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, exact to
/// the nanosecond (`/proc/thread-self/schedstat` only moves at scheduler ticks). `None` off
/// 64-bit Linux.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu() -> Option<Duration> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: libc's clock_gettime with a valid clock id writes one timespec (two 64-bit
    // fields on 64-bit Linux) into memory we own.
    let ok = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0;
    ok.then(|| Duration::new(t.sec as u64, t.nsec as u32))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu() -> Option<Duration> {
    None
}

fn proc_status_mib(key: &str) -> Option<f64> {
    crate::process_stats::status_mib(key).map(|mib| (mib * 10.0).round() / 10.0)
}

fn dir_size(dir: &Path) -> (usize, u64) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

fn at<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// n, median, p95, p99 and max in milliseconds.
fn durations(samples: &[Duration]) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    serde_json::json!({
        "median": ms(at(&v, 0.5)),
        "p95": ms(at(&v, 0.95)),
        "p99": ms(at(&v, 0.99)),
        "max": ms(v[v.len() - 1]),
    })
}

/// Median, p95 and max of a per-frame count.
fn counts(samples: &[usize]) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    serde_json::json!({
        "median": at(&v, 0.5),
        "p95": at(&v, 0.95),
        "max": v[v.len() - 1],
    })
}
