//! The gallery: every image in the library and the user's folders, found by text or by a
//! dropped image.
//!
//! All work happens in [`GalleryService`]'s threads (CLIP, SQLite, decoding); this panel only
//! sends commands and turns events into UI state once per frame. The grid is virtualised
//! (`show_rows`): only visible rows exist, and only their thumbnails are requested, so 10k
//! images cost what one screenful does. Thumbnail textures are bounded; the disk cache keeps
//! re-opening cheap.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::accesskit::Role;
use egui::{ColorImage, Id, Sense, TextureHandle, TextureOptions, Vec2, WidgetInfo};

use super::actions::Action;
use super::state::Studio;
use super::Panel;
use crate::gallery::search::Entry;
use crate::gallery::service::{
    GalleryService, Picture, ServiceCommand, ServiceConfig, ServiceEvent,
};
use crate::gallery::{paths, IndexEvent};

const CELL: f32 = 96.0;
/// Textures held at most: past this, those far from the view are dropped (the disk cache
/// refills them cheaply).
const MAX_TEXTURES: usize = 1500;
/// Where the chosen CLIP folder is remembered (egui's persisted memory).
const CLIP_MEMORY: &str = "easel-gallery-clip-model";
/// egui memory slots: a programmatic scroll request, and the grid's last frame.
const SCROLL_TO_ROW: &str = "easel-gallery-scroll-to-row";
const GRID_FRAME: &str = "easel-gallery-grid-frame";

/// What the grid did in the last frame it was drawn. `easel bench-ui --gallery-images` reads
/// it from egui's memory ([`GridFrame::take`]): the panel lives among the studio's tool panels,
/// out of the bench's reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GridFrame {
    /// Images in the grid (library entries, or search hits).
    pub items: usize,
    pub columns: usize,
    pub rows: usize,
    /// Rows laid out this frame (only the visible ones, however many `rows` there are).
    pub rows_shown: usize,
    pub first_row: usize,
    /// Cells laid out this frame still waiting for their thumbnail.
    pub cells_waiting: usize,
    /// Thumbnails that arrived this frame and were uploaded as textures.
    pub thumbs_uploaded: usize,
    /// Thumbnail textures held now.
    pub textures: usize,
    /// Thumbnails asked of the decoder and not yet arrived.
    pub thumbs_pending: usize,
    /// An index run of the library has finished (the grid holds everything there is).
    pub indexed: bool,
}

impl GridFrame {
    /// The numbers of the last frame the grid was drawn in, taken: `None` until it is drawn
    /// again.
    pub fn take(ctx: &egui::Context) -> Option<Self> {
        ctx.data_mut(|d| d.remove_temp(Id::unique(GRID_FRAME)))
    }
}

/// Puts `row` at the top of the grid the next time it is drawn (programmatic scrolling, as
/// `easel bench-ui` does; users scroll with the wheel or the bar).
pub fn scroll_grid_to_row(ctx: &egui::Context, row: usize) {
    ctx.data_mut(|d| d.insert_temp(Id::unique(SCROLL_TO_ROW), row));
}

pub struct GalleryPanel {
    db: Option<PathBuf>,
    clip: Option<PathBuf>,
    thumbs: Option<PathBuf>,
    service: Option<GalleryService>,
    status: String,
    progress: Option<(usize, usize)>,
    clip_missing: Option<String>,
    entries: Vec<Entry>,
    results: Option<(String, Vec<(String, f32)>)>,
    query: String,
    textures: HashMap<String, TextureHandle>,
    requested: HashSet<String>,
    full: Option<(String, Option<(TextureHandle, String)>)>,
    confirm_delete: Option<String>,
    last_error: Option<String>,
    /// A folder typed (or picked with Browse…) to add to the gallery.
    add_folder: String,
    /// This frame's numbers, published at the end of [`Panel::ui`].
    frame: GridFrame,
    /// Thumbnails asked for and received, for `GridFrame::thumbs_pending`.
    thumbs_asked: usize,
    thumbs_arrived: usize,
    /// An index run is asked for or under way (the service starts with one).
    indexing: bool,
    /// The studio's saved-image count this panel's index has caught up with.
    indexed_saves: usize,
}

impl GalleryPanel {
    /// The app's library database, thumbnail cache and the bundled CLIP model (if any).
    pub fn new() -> Self {
        let thumbs = crate::settings::project_dirs().map(|d| d.cache_dir().join("thumbnails"));
        Self::with_paths(
            paths::default_db_path().ok(),
            paths::default_clip_dir().ok(),
            thumbs,
        )
    }

    /// Explicit places (tests, or a studio started with other folders).
    pub fn with_paths(db: Option<PathBuf>, clip: Option<PathBuf>, thumbs: Option<PathBuf>) -> Self {
        Self {
            db,
            clip,
            thumbs,
            service: None,
            status: "Starting…".into(),
            progress: None,
            clip_missing: None,
            entries: Vec::new(),
            results: None,
            query: String::new(),
            textures: HashMap::new(),
            requested: HashSet::new(),
            full: None,
            confirm_delete: None,
            last_error: None,
            add_folder: String::new(),
            frame: GridFrame::default(),
            thumbs_asked: 0,
            thumbs_arrived: 0,
            indexing: false,
            indexed_saves: 0,
        }
    }

    /// A grid of `entries` with nothing behind it: no index, no search, no thumbnail decoder
    /// (every cell stays a placeholder). Tests of the grid itself use it.
    pub fn showing(entries: Vec<Entry>) -> Self {
        let mut panel = Self::with_paths(None, None, None);
        panel.entries = entries;
        panel
    }

    /// Every indexed image, newest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The last search: its query and (path, score), best first.
    pub fn results(&self) -> Option<&(String, Vec<(String, f32)>)> {
        self.results.as_ref()
    }

    pub fn thumbnails_loaded(&self) -> usize {
        self.textures.len()
    }

    /// Thumbnails asked of the decoder so far: only cells that were on screen.
    pub fn thumbnails_requested(&self) -> usize {
        self.requested.len()
    }

    pub fn status(&self) -> &str {
        &self.status
    }

    /// What the grid did in the last frame drawn.
    pub fn last_frame(&self) -> GridFrame {
        self.frame
    }

    fn start(&mut self, ctx: &egui::Context, studio: &Studio) {
        if self.clip.is_none() {
            self.clip = ctx
                .data_mut(|d| d.get_persisted::<String>(Id::unique(CLIP_MEMORY)))
                .map(PathBuf::from);
        }
        let (Some(db), Some(thumbs)) = (self.db.clone(), self.thumbs.clone()) else {
            self.status = "No data folder for the gallery index on this system.".into();
            return;
        };
        let repaint = ctx.clone();
        let config = ServiceConfig {
            db,
            clip: self.clip.clone(),
            thumbs,
            folders: vec![studio.settings.library_dir()],
        };
        match GalleryService::spawn(config, Arc::new(move || repaint.request_repaint())) {
            Ok(s) => {
                self.service = Some(s);
                // Its first run indexes the library as it is now.
                self.indexing = true;
                self.indexed_saves = studio.images_saved;
            }
            Err(e) => self.status = format!("Gallery threads did not start: {e}"),
        }
    }

    fn drain(&mut self, ctx: &egui::Context) {
        let Some(service) = &self.service else {
            return;
        };
        for event in service.try_events() {
            match event {
                ServiceEvent::ClipReady { .. } => self.status = "Indexing…".into(),
                ServiceEvent::ClipMissing(msg) => {
                    self.indexing = false;
                    self.status = msg.clone();
                    self.clip_missing = Some(msg);
                }
                ServiceEvent::IndexRebuilt(why) => {
                    self.last_error = Some(format!(
                        "The index was damaged ({why}) and is being rebuilt."
                    ))
                }
                ServiceEvent::Index(IndexEvent::Progress { done, total }) => {
                    self.progress = Some((done, total))
                }
                ServiceEvent::Index(_) => {}
                ServiceEvent::Indexed(s) => {
                    self.progress = None;
                    self.indexing = false;
                    self.frame.indexed = true;
                    let skipped = s.skipped.total();
                    self.status = format!(
                        "{} images; {} new, {} skipped{}",
                        s.images,
                        s.embedded + s.reused,
                        skipped,
                        if s.cancelled { " (stopped)" } else { "" }
                    );
                }
                ServiceEvent::Library(entries) => self.entries = entries,
                ServiceEvent::Results { query, hits } => {
                    let hits = hits.into_iter().map(|h| (h.path, h.score)).collect();
                    self.results = Some((query, hits));
                }
                ServiceEvent::Thumb(p) => {
                    self.thumbs_arrived += 1;
                    self.frame.thumbs_uploaded += 1;
                    let tex = texture(ctx, &p);
                    self.textures.insert(p.path, tex);
                }
                ServiceEvent::Full { picture, info } => {
                    if self.full.as_ref().is_some_and(|(p, _)| *p == picture.path) {
                        let tex = texture(ctx, &picture);
                        self.full = Some((picture.path, Some((tex, info))));
                    }
                }
                ServiceEvent::Deleted(path) => {
                    self.textures.remove(&path);
                    if let Some((_, hits)) = &mut self.results {
                        hits.retain(|(p, _)| *p != path);
                    }
                    if self.full.as_ref().is_some_and(|(p, _)| *p == path) {
                        self.full = None;
                    }
                }
                ServiceEvent::Error(e) => {
                    // A failed run must not stop the next one from being asked for.
                    self.indexing = false;
                    self.last_error = Some(e);
                }
            }
        }
    }

    fn send(&self, command: ServiceCommand) {
        if let Some(s) = &self.service {
            s.send(command);
        }
    }

    /// Indexes `folders` and every folder indexed before (incremental: only new or changed
    /// files are embedded).
    fn index(&mut self, folders: Vec<PathBuf>) {
        self.indexing = true;
        self.send(ServiceCommand::Index(folders));
    }

    fn header(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.query)
                    .hint_text("red car - night, 2:sunset + ./ref.png")
                    .desired_width(ui.available_width() - 70.0),
            );
            field.widget_info(|| WidgetInfo::labeled(Role::TextInput, true, "Search images"));
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if (ui.button("Search").clicked() || enter) && !self.query.trim().is_empty() {
                self.send(ServiceCommand::Search(self.query.trim().to_string()));
            }
        });
        ui.horizontal_wrapped(|ui| {
            ui.label(&self.status);
            if let Some((done, total)) = self.progress {
                ui.label(format!("indexing {done}/{total}"));
                if ui.small_button("Stop").clicked() {
                    if let Some(s) = &self.service {
                        s.cancel_indexing();
                    }
                }
            }
            if self.results.is_some() && ui.small_button("Show all").clicked() {
                self.results = None;
            }
            if ui.small_button("Rescan").clicked() {
                self.index(Vec::new());
            }
        });
        self.add_folder_row(ui);
        if let Some(e) = &self.last_error {
            ui.colored_label(ui.visuals().error_fg_color, e);
        }
    }

    /// Adds a folder of the user's own images: typed (works everywhere) or picked in the native
    /// dialog (needs a desktop portal). The service indexes it with every folder indexed before.
    fn add_folder_row(&mut self, ui: &mut egui::Ui) {
        let picked = Id::unique("easel-gallery-add-folder");
        if let Some(dir) = ui.ctx().data_mut(|d| d.remove_temp::<PathBuf>(picked)) {
            self.add_folder = dir.display().to_string();
        }
        ui.horizontal(|ui| {
            let field = ui.add(
                egui::TextEdit::singleline(&mut self.add_folder)
                    .hint_text("a folder of images to add")
                    .desired_width(220.0),
            );
            field.widget_info(|| WidgetInfo::labeled(Role::TextInput, true, "Folder to add"));
            if ui.small_button("Browse…").clicked() {
                // The native dialog blocks its thread; not this one.
                let ctx = ui.ctx().clone();
                std::thread::spawn(move || {
                    if let Some(dir) = rfd::FileDialog::new()
                        .set_title("Add a folder of images to the gallery")
                        .pick_folder()
                    {
                        ctx.data_mut(|d| d.insert_temp(picked, dir));
                        ctx.request_repaint();
                    }
                });
            }
            if ui.small_button("Add folder").clicked() {
                let dir = PathBuf::from(self.add_folder.trim());
                if dir.is_dir() {
                    self.last_error = None;
                    self.add_folder.clear();
                    self.index(vec![dir]);
                } else {
                    self.last_error = Some(format!("{}: not a folder", dir.display()));
                }
            }
        });
    }

    fn grid(&mut self, ui: &mut egui::Ui) {
        let len = match &self.results {
            Some((_, hits)) => hits.len(),
            None => self.entries.len(),
        };
        if len == 0 {
            ui.weak(if self.results.is_some() {
                "No matches."
            } else {
                "No images yet: generate some, or index a folder with `easel index`."
            });
            return;
        }
        let spacing = ui.spacing().item_spacing.x;
        let columns = ((ui.available_width() + spacing) / (CELL + spacing))
            .floor()
            .max(1.0) as usize;
        let rows = len.div_ceil(columns);
        self.frame.items = len;
        self.frame.columns = columns;
        self.frame.rows = rows;
        let mut area = egui::ScrollArea::vertical().auto_shrink([false, false]);
        if let Some(row) = ui
            .ctx()
            .data_mut(|d| d.remove_temp::<usize>(Id::unique(SCROLL_TO_ROW)))
        {
            area = area.vertical_scroll_offset(row as f32 * (CELL + ui.spacing().item_spacing.y));
        }
        area.show_rows(ui, CELL, rows, |ui, range| {
            self.frame.first_row = range.start;
            self.frame.rows_shown = range.len();
            for row in range {
                // Only the visible rows' items are touched, whatever the library's size.
                let visible: Vec<(String, Option<f32>)> = (row * columns
                    ..((row + 1) * columns).min(len))
                    .map(|i| self.item(i))
                    .collect();
                ui.horizontal(|ui| {
                    for (path, score) in &visible {
                        self.cell(ui, path, *score);
                    }
                });
            }
        });
        let first = self.frame.first_row * columns;
        self.evict_far(
            first..(first + self.frame.rows_shown * columns).min(len),
            len,
        );
    }

    /// Keeps texture memory bounded: past [`MAX_TEXTURES`], drops the textures (and forgets
    /// the requests) of all but the items around `view`. Emptying the whole cache instead
    /// blanked the screen's own thumbnails for a few frames every ~1500 images scrolled.
    fn evict_far(&mut self, view: std::ops::Range<usize>, len: usize) {
        if self.textures.len() <= MAX_TEXTURES {
            return;
        }
        let margin = MAX_TEXTURES / 4;
        let near: HashSet<String> = (view.start.saturating_sub(margin)
            ..(view.end + margin).min(len))
            .map(|i| self.item(i).0)
            .collect();
        self.textures.retain(|p, _| near.contains(p));
        self.requested.retain(|p| near.contains(p));
    }

    /// Item `i` of the grid: a search hit (with its score) or a library entry.
    fn item(&self, i: usize) -> (String, Option<f32>) {
        match &self.results {
            Some((_, hits)) => hits
                .get(i)
                .map_or((String::new(), None), |(p, s)| (p.clone(), Some(*s))),
            None => self
                .entries
                .get(i)
                .map_or((String::new(), None), |e| (e.path.clone(), None)),
        }
    }

    fn cell(&mut self, ui: &mut egui::Ui, path: &str, score: Option<f32>) {
        let name = Path::new(path)
            .file_name()
            .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned());
        let response = match self.textures.get(path) {
            Some(tex) => ui.add(
                egui::Image::new((tex.id(), fit(tex.size_vec2(), CELL)))
                    .sense(Sense::click())
                    .max_size(Vec2::splat(CELL)),
            ),
            None => {
                self.frame.cells_waiting += 1;
                if self.requested.insert(path.to_string()) {
                    if let Some(s) = &self.service {
                        s.request_picture(path, false);
                        self.thumbs_asked += 1;
                    }
                }
                let (rect, response) = ui.allocate_exact_size(Vec2::splat(CELL), Sense::click());
                ui.painter()
                    .rect_filled(rect, 4.0, ui.visuals().faint_bg_color);
                response
            }
        };
        response.widget_info(|| WidgetInfo::labeled(Role::Button, true, &name));
        let tip = match score {
            Some(s) => format!("{name}\nscore {s:.3}"),
            None => name.clone(),
        };
        if response.on_hover_text(tip).clicked() {
            self.open_full(path);
        }
    }

    fn open_full(&mut self, path: &str) {
        self.full = Some((path.to_string(), None));
        if let Some(s) = &self.service {
            s.request_picture(path, true);
        }
    }

    fn full_view(&mut self, ctx: &egui::Context, studio: &mut Studio) {
        let Some((path, loaded)) = &self.full else {
            return;
        };
        let path = path.clone();
        let name = Path::new(&path)
            .file_name()
            .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
        let mut open = true;
        let mut command = None;
        egui::Window::new(&name)
            .id(Id::unique("gallery-full-view"))
            .open(&mut open)
            .default_size([560.0, 640.0])
            .show(ctx, |ui| {
                match loaded {
                    Some((tex, info)) => {
                        let size = fit(tex.size_vec2(), ui.available_width().min(512.0));
                        ui.add(egui::Image::new((tex.id(), size)));
                        ui.label(info);
                    }
                    None => {
                        ui.spinner();
                    }
                }
                ui.horizontal_wrapped(|ui| {
                    if ui.button("Restore settings").clicked() {
                        studio.push(Action::RestoreFromFile(PathBuf::from(&path)));
                    }
                    if ui
                        .button("Use as init")
                        .on_hover_text("Start the next images from this one (img2img)")
                        .clicked()
                    {
                        studio.push(Action::UseAsInit {
                            picture: PathBuf::from(&path),
                            mask: None,
                        });
                    }
                    if ui.button("Find similar").clicked() {
                        command = Some(ServiceCommand::Similar(path.clone()));
                    }
                    if ui.button("Reveal in file manager").clicked() {
                        if let Err(e) = reveal(Path::new(&path)) {
                            studio.error(format!("Could not open the file manager: {e}"));
                        }
                    }
                    if ui.button("Delete…").clicked() {
                        self.confirm_delete = Some(path.clone());
                    }
                });
            });
        if let Some(c) = command {
            self.send(c);
        }
        if !open {
            self.full = None;
        }
    }

    fn confirm(&mut self, ctx: &egui::Context) {
        let Some(path) = self.confirm_delete.clone() else {
            return;
        };
        let mut decided = None;
        egui::Modal::new(Id::unique("gallery-confirm-delete")).show(ctx, |ui| {
            ui.label(format!("Delete {path} from disk?"));
            ui.label("This cannot be undone.");
            ui.horizontal(|ui| {
                if ui.button("Delete").clicked() {
                    decided = Some(true);
                }
                if ui.button("Keep").clicked() {
                    decided = Some(false);
                }
            });
        });
        match decided {
            Some(true) => {
                self.confirm_delete = None;
                self.send(ServiceCommand::Delete(path));
            }
            Some(false) => self.confirm_delete = None,
            None => {}
        }
    }

    fn choose_clip(&mut self, ui: &mut egui::Ui) {
        let Some(msg) = &self.clip_missing else {
            return;
        };
        ui.label(msg);
        if ui.button("Choose CLIP folder…").clicked() {
            // The native dialog blocks its thread; not this one.
            let ctx = ui.ctx().clone();
            std::thread::spawn(move || {
                if let Some(dir) = rfd::FileDialog::new()
                    .set_title("Choose a CLIP model folder (config.json, model.safetensors)")
                    .pick_folder()
                {
                    ctx.data_mut(|d| {
                        d.insert_persisted(Id::unique(CLIP_MEMORY), dir.display().to_string())
                    });
                    ctx.data_mut(|d| d.insert_temp(Id::unique(CLIP_MEMORY), true));
                    ctx.request_repaint();
                }
            });
        }
        // A folder was chosen: start over with it.
        if ui
            .ctx()
            .data_mut(|d| d.remove_temp::<bool>(Id::unique(CLIP_MEMORY)))
            == Some(true)
        {
            self.clip = None;
            self.clip_missing = None;
            self.service = None;
        }
    }
}

impl Default for GalleryPanel {
    fn default() -> Self {
        Self::new()
    }
}

impl Panel for GalleryPanel {
    fn id(&self) -> &'static str {
        "gallery"
    }

    fn title(&self) -> &'static str {
        "Gallery"
    }

    fn ui(&mut self, ui: &mut egui::Ui, studio: &mut Studio) {
        let ctx = ui.ctx().clone();
        if self.service.is_none() && self.clip_missing.is_none() {
            self.start(&ctx, studio);
        }
        self.frame = GridFrame {
            indexed: self.frame.indexed,
            ..GridFrame::default()
        };
        self.drain(&ctx);
        // Images the studio saved since are indexed, one run at a time, so new images show
        // up here and in searches without a Rescan.
        if studio.images_saved > self.indexed_saves && !self.indexing && self.service.is_some() {
            self.indexed_saves = studio.images_saved;
            self.index(Vec::new());
        }
        self.choose_clip(ui);
        self.header(ui);
        ui.separator();
        self.grid(ui);
        self.full_view(&ctx, studio);
        self.confirm(&ctx);
        self.frame.textures = self.textures.len();
        self.frame.thumbs_pending = self.thumbs_asked.saturating_sub(self.thumbs_arrived);
        let frame = self.frame;
        ctx.data_mut(|d| d.insert_temp(Id::unique(GRID_FRAME), frame));
    }

    /// The search gesture: an image dropped here finds similar ones. Without a CLIP model the
    /// studio's own answer explains what is missing.
    fn on_drop(&mut self, studio: &mut Studio, files: &[PathBuf]) -> bool {
        let Some(first) = files.first() else {
            return false;
        };
        // With a CLIP folder the search queues behind the model load; without one there is
        // nothing to search with.
        match &self.service {
            Some(_) if self.clip.is_some() && self.clip_missing.is_none() => {
                self.query = first.display().to_string();
                self.send(ServiceCommand::SearchImage(first.clone()));
            }
            _ => studio.push(Action::SearchByImage(first.clone())),
        }
        true
    }
}

fn texture(ctx: &egui::Context, p: &Picture) -> TextureHandle {
    let image = ColorImage::from_rgba_unmultiplied([p.width, p.height], &p.rgba);
    ctx.load_texture(format!("gallery:{}", p.path), image, TextureOptions::LINEAR)
}

/// `size` scaled to fit a `side`×`side` box, keeping its aspect.
fn fit(size: Vec2, side: f32) -> Vec2 {
    let scale = (side / size.x.max(1.0)).min(side / size.y.max(1.0));
    size * scale
}

/// Shows the file in the platform's file manager (selected where the platform can).
fn reveal(path: &Path) -> std::io::Result<()> {
    let mut cmd = if cfg!(target_os = "macos") {
        let mut c = std::process::Command::new("open");
        c.arg("-R").arg(path);
        c
    } else if cfg!(windows) {
        let mut c = std::process::Command::new("explorer");
        c.arg(format!("/select,{}", path.display()));
        c
    } else {
        let mut c = std::process::Command::new("xdg-open");
        c.arg(path.parent().unwrap_or(Path::new("/")));
        c
    };
    cmd.spawn().map(|_| ())
}
