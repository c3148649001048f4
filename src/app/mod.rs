//! The studio window: egui on eframe (wgpu renderer). This is the only module that knows egui.
//!
//! The UI thread owns UI state only ([`Studio`]) and talks to the inference thread through
//! [`crate::worker`]: panels change settings and push [`Action`]s; [`StudioApp`] turns actions
//! into commands and drains the worker's events once per frame, never waiting on it.
//!
//! Layout: the prompt panel on the left, the progress line and canvas in the middle, the
//! session's history along the bottom, and tool panels (queue, gallery, settings, …) on the
//! right. A tool panel is one file implementing [`Panel`] plus one line in [`tool_panels`].

mod actions;
mod bench;
mod canvas;
mod drop;
mod embeddings_panel;
mod empty_state;
mod events;
mod folder_list;
mod gallery_panel;
mod history;
mod lora_panel;
mod mask_editor;
mod models_panel;
mod progress;
mod prompt_panel;
mod queue;
mod settings_panel;
mod soak;
pub use soak::{run as run_soak, SoakArgs};
mod state;
pub mod theme;
mod token_count;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Result};

pub use actions::Action;
pub use bench::BenchConfig;
pub use gallery_panel::GalleryPanel;
pub use state::{HistoryItem, ModelState, RunningJob, Showing, Studio, Unsaved, HISTORY_LIMIT};

use crate::settings::{startup_model, store, Settings};
use crate::worker::Worker;

/// A panel in the right-hand tool area (queue, gallery, settings; later LoRA …).
pub trait Panel {
    /// Stable id, used to remember the selected tab.
    fn id(&self) -> &'static str;
    fn title(&self) -> &'static str;
    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio);
    /// Files dropped while the pointer was over this panel. Return true when handled (the
    /// studio's default is to restore generation settings from the file).
    fn on_drop(&mut self, _studio: &mut Studio, _files: &[PathBuf]) -> bool {
        false
    }
}

/// The tool panels, in tab order. Adding a panel is one line here.
fn tool_panels() -> Vec<Box<dyn Panel>> {
    vec![
        Box::new(queue::QueuePanel),
        Box::new(models_panel::ModelsPanel::default()),
        Box::new(lora_panel::LoraPanel::default()),
        Box::new(embeddings_panel::EmbeddingsPanel::default()),
        Box::new(gallery_panel::GalleryPanel::new()),
        Box::new(settings_panel::SettingsPanel),
    ]
}

/// How the studio starts.
#[derive(Debug, Clone, Default)]
pub struct StudioOptions {
    /// Open this model, whatever was used last.
    pub model: Option<PathBuf>,
    /// The bundled default model, if installed.
    pub bundled_model: Option<PathBuf>,
    /// Overrides the remembered library folder (tests write to a temporary one).
    pub library_dir: Option<PathBuf>,
    /// Start from default settings instead of the remembered ones.
    pub fresh: bool,
    /// Drive a measurement run instead of waiting for the user.
    pub bench: Option<BenchConfig>,
    /// When the process started, for the cold-start measurement.
    pub started: Option<Instant>,
    /// Where the settings are kept (see [`crate::settings::store`]); `None`: not kept (tests,
    /// measurement runs).
    pub settings_file: Option<PathBuf>,
}

/// The eframe app: the studio state plus the tool panels.
pub struct StudioApp {
    pub studio: Studio,
    tools: Vec<Box<dyn Panel>>,
    bench: Option<bench::BenchRun>,
    settings_file: Option<PathBuf>,
    /// The settings as last written (a write only when they changed).
    written: Option<Settings>,
    /// The last failed write's message, so that it is said once, not every autosave.
    write_error: Option<String>,
}

/// Key under which Easel before the settings file kept its settings in eframe's storage.
const SETTINGS_KEY: &str = "easel-settings";

impl StudioApp {
    pub fn new(cc: &eframe::CreationContext<'_>, options: StudioOptions) -> Result<Self> {
        theme::apply(&cc.egui_ctx);
        let mut set_aside = None;
        let legacy = || cc.storage.and_then(|s| eframe::get_value(s, SETTINGS_KEY));
        let mut settings: Settings = match options.settings_file.as_deref() {
            _ if options.fresh => Settings::default(),
            Some(path) => match store::load(path) {
                store::Loaded::Settings(s) => *s,
                store::Loaded::SetAside(notice) => {
                    set_aside = Some(notice);
                    Settings::default()
                }
                // The first start with a settings file: what eframe's storage kept.
                store::Loaded::Missing => legacy().unwrap_or_default(),
            },
            None => legacy().unwrap_or_default(),
        };
        if let Some(dir) = &options.library_dir {
            settings.library_dir = Some(dir.clone());
        }
        let ctx = cc.egui_ctx.clone();
        let worker = Worker::spawn(std::sync::Arc::new(move || ctx.request_repaint()))
            .map_err(|e| anyhow!(e))?;
        let model = startup_model(
            options.model.as_deref(),
            &settings,
            options.bundled_model.clone(),
        );
        let mut studio = Studio::new(settings, worker);
        if let Some(notice) = set_aside {
            studio.error(notice);
        }
        if let Some(dir) = model {
            studio.load_model(dir);
        }
        let bench = options
            .bench
            .map(|config| bench::BenchRun::new(config, options.started));
        let mut tools = tool_panels();
        if let Some(panel) = bench.as_ref().and_then(bench::BenchRun::gallery_panel) {
            // The gallery bench's own index and thumbnail cache, not the user's.
            tools.retain(|p| p.id() != "gallery");
            tools.insert(tools.len().min(2), Box::new(panel));
        }
        Ok(Self {
            studio,
            tools,
            bench,
            settings_file: options.settings_file,
            written: None,
            write_error: None,
        })
    }

    /// The settings as they would be saved now.
    pub fn settings(&self) -> &Settings {
        &self.studio.settings
    }

    fn draw(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.studio.handle_shortcuts(&ctx);
        egui::Panel::left("prompt_panel")
            .resizable(true)
            .default_size(320.0)
            .size_range(260.0..=560.0)
            .show(ui, |ui| prompt_panel::show(ui, &mut self.studio));
        let tools_rect = egui::Panel::right("tool_panel")
            .resizable(true)
            .default_size(280.0)
            .size_range(200.0..=520.0)
            .show(ui, |ui| self.tools_ui(ui))
            .response
            .rect;
        egui::Panel::bottom("history_strip")
            .resizable(false)
            .show(ui, |ui| history::show(ui, &mut self.studio));
        let canvas_rect = egui::CentralPanel::default_margins()
            .show(ui, |ui| {
                progress::show(ui, &mut self.studio);
                ui.separator();
                if self.studio.model.is_ready() || !self.studio.history.is_empty() {
                    canvas::show(ui, &mut self.studio);
                } else {
                    empty_state::show(ui, &mut self.studio);
                }
            })
            .response
            .rect;
        let selected = self.selected_tool();
        drop::handle(
            &ctx,
            &mut self.studio,
            &mut self.tools,
            selected,
            drop::Areas {
                tools: tools_rect,
                canvas: canvas_rect,
            },
        );
        self.studio.show_notices(&ctx);
    }

    fn selected_tool(&self) -> usize {
        self.tools
            .iter()
            .position(|p| p.id() == self.studio.settings.tool_tab)
            .unwrap_or(0)
    }

    fn tools_ui(&mut self, ui: &mut egui::Ui) {
        let selected = self.selected_tool();
        ui.horizontal_wrapped(|ui| {
            for (i, panel) in self.tools.iter().enumerate() {
                if ui.selectable_label(i == selected, panel.title()).clicked() {
                    self.studio.settings.tool_tab = panel.id().to_string();
                }
            }
        });
        ui.separator();
        if let Some(panel) = self.tools.get_mut(selected) {
            panel.ui(ui, &mut self.studio);
        }
    }
}

impl eframe::App for StudioApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let frame_start = Instant::now();
        let ctx = ui.ctx().clone();
        self.studio.drain_events(&ctx);
        if let Some(bench) = &mut self.bench {
            bench.before_frame(&ctx, &mut self.studio);
        }
        self.draw(ui);
        let actions = std::mem::take(&mut self.studio.actions);
        for action in actions {
            self.studio.apply(action, &ctx);
        }
        self.studio.metrics.record_frame(frame_start.elapsed());
        if let Some(bench) = &mut self.bench {
            bench.after_frame(&ctx, &mut self.studio);
        }
    }

    /// eframe's autosave (every half minute) and exit: the settings file, when they changed.
    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        let Some(path) = &self.settings_file else {
            return;
        };
        if self.written.as_ref() == Some(&self.studio.settings) {
            return;
        }
        match store::save(path, &self.studio.settings) {
            Ok(()) => {
                self.written = Some(self.studio.settings.clone());
                self.write_error = None;
            }
            Err(e) => {
                let text = format!(
                    "Your settings could not be saved to {}: {e}",
                    path.display()
                );
                if self.write_error.as_ref() != Some(&text) {
                    self.studio.error(text.clone());
                    self.write_error = Some(text);
                }
            }
        }
    }
}

/// Command-line options of `easel studio` (and of `easel` with no subcommand).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct StudioArgs {
    /// Open this diffusers model folder instead of the last one used.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Start from default settings, ignoring the remembered ones (they are still saved on exit).
    #[arg(long)]
    pub fresh: bool,
}

/// Opens the studio window and returns when it closes.
pub fn run(args: StudioArgs) -> Result<()> {
    let options = StudioOptions {
        model: args.model,
        bundled_model: crate::settings::default_model_dir(),
        fresh: args.fresh,
        started: Some(Instant::now()),
        settings_file: crate::settings::store::default_path(),
        ..Default::default()
    };
    run_with(options)
}

/// Opens the window with the given options, eframe's storage in its usual place.
pub fn run_with(options: StudioOptions) -> Result<()> {
    run_with_storage(options, None)
}

/// Opens the window; `storage` overrides the file where eframe keeps settings and window state.
fn run_with_storage(options: StudioOptions, storage: Option<PathBuf>) -> Result<()> {
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Easel")
        .with_app_id("easel")
        .with_inner_size([1280.0, 800.0])
        .with_min_inner_size([760.0, 480.0])
        .with_drag_and_drop(true);
    if let Ok(icon) = eframe::icon_data::from_png_bytes(theme::ICON_PNG) {
        viewport = viewport.with_icon(icon);
    }
    let native = eframe::NativeOptions {
        viewport,
        persist_window: options.bench.is_none(),
        persistence_path: storage,
        ..Default::default()
    };
    eframe::run_native(
        "Easel",
        native,
        Box::new(move |cc| Ok(Box::new(StudioApp::new(cc, options)?))),
    )
    .map_err(|e| anyhow!(explain_start_failure(&e)))
}

/// A window that cannot open is almost always a missing graphics driver: say so in words.
fn explain_start_failure(e: &eframe::Error) -> String {
    let detail = e.to_string();
    let lower = detail.to_lowercase();
    let text = if ["wayland_display", "no display", "failed to open display"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!(
            "the studio window could not start: there is no display to open it on ({detail}). \
             Run it in a desktop session (DISPLAY or WAYLAND_DISPLAY set); over SSH, the \
             headless commands (`easel generate --help`) need no display at all."
        )
    } else if ["wgpu", "adapter", "surface", "vulkan"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!(
            "the studio window could not start: no usable graphics adapter was found ({detail}). \
             Easel draws with Vulkan, Metal or DirectX 12; install or update the GPU driver. \
             On Linux without a GPU, Mesa's software renderer works: install mesa-vulkan-drivers. \
             The headless commands (`easel generate --help`) need no graphics at all."
        )
    } else {
        format!("the studio window could not start: {detail}")
    };
    show_error_dialog(&text);
    text
}

/// On Windows and macOS a double-clicked app has no terminal to print to.
fn show_error_dialog(text: &str) {
    if cfg!(any(windows, target_os = "macos")) {
        let _ = rfd::MessageDialog::new()
            .set_level(rfd::MessageLevel::Error)
            .set_title("Easel")
            .set_description(text)
            .show();
    }
}

/// Command-line options of `easel bench-ui`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchUiArgs {
    /// A diffusers model folder. Without one only the cold start is measured.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Full generations to measure before the cancel test.
    #[arg(long, default_value_t = 2)]
    pub runs: usize,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub gallery: bench::GalleryBenchArgs,
}

/// Opens the real window, runs the measurement, prints a JSON report and closes. Uses a
/// throw-away library and settings folder so it never touches the user's.
pub fn run_bench(args: BenchUiArgs) -> Result<()> {
    let started = Instant::now();
    let scratch = std::env::temp_dir().join(format!("easel-bench-ui-{}", std::process::id()));
    let gallery = bench::GalleryBench::prepare(&args.gallery)?;
    let library = gallery
        .as_ref()
        .map_or(scratch.join("library"), |g| g.library());
    let options = StudioOptions {
        // The gallery measurement generates nothing: no model to load.
        model: args.model.clone().filter(|_| gallery.is_none()),
        bundled_model: None,
        library_dir: Some(library),
        fresh: true,
        bench: Some(BenchConfig {
            model: args.model,
            steps: args.steps,
            size: args.size,
            runs: args.runs.max(1),
            out: args.out,
            gallery,
        }),
        started: Some(started),
        // A measurement leaves the user's settings alone.
        settings_file: None,
    };
    let result = run_with_storage(options, Some(scratch.join("storage.ron")));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
