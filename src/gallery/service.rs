//! The gallery's background side for the studio: CLIP, the index, searches and thumbnails on
//! their own threads, answered with [`ServiceEvent`]s.
//!
//! DESIGN.md: the UI thread never waits. Two threads, because their work has different
//! shapes: the *library* thread owns the CLIP model, the SQLite connection and the in-memory
//! [`Library`] (indexing, searches, deletes, one at a time, in order), and the *thumbnail*
//! thread decodes images and keeps a disk cache of small PNGs, so scrolling a 10k grid shows
//! thumbnails while an index runs. Pixels go out as RGBA bytes: this module knows no egui.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use candle_core::Device;
use sha2::{Digest, Sha256};

use super::index::Opened;
use super::preprocess::decode_rgb;
use super::query::{embed_image_file, embed_query, parse_query};
use super::search::Entry;
use super::{
    index_folders, ClipEmbedder, Filter, GalleryIndex, Hit, IndexEvent, IndexOptions, IndexSummary,
    Library,
};

/// Longest side of a cached thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 192;
/// Longest side of the full view.
pub const FULL_SIDE: u32 = 1024;
/// Results a search returns.
pub const TOP_K: usize = 200;

/// Where things are; `clip: None` leaves search off (the panel asks for a model).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub db: PathBuf,
    pub clip: Option<PathBuf>,
    pub thumbs: PathBuf,
    /// Folders indexed at start (the studio's library folder); the index's own list is added.
    pub folders: Vec<PathBuf>,
}

#[derive(Debug)]
pub enum ServiceCommand {
    /// Index these folders (and every folder indexed before).
    Index(Vec<PathBuf>),
    Search(String),
    SearchImage(PathBuf),
    /// "Find similar": the stored embedding of an indexed image.
    Similar(String),
    /// Delete the file from disk and the index (the UI has asked the user first).
    Delete(String),
}

#[derive(Debug)]
pub enum ServiceEvent {
    ClipReady {
        model_id: String,
    },
    /// No usable CLIP model: why, in one line.
    ClipMissing(String),
    IndexRebuilt(String),
    Index(IndexEvent),
    Indexed(IndexSummary),
    /// Every indexed image, newest first.
    Library(Vec<Entry>),
    Results {
        query: String,
        hits: Vec<Hit>,
    },
    Thumb(Picture),
    Full {
        picture: Picture,
        info: String,
    },
    Deleted(String),
    Error(String),
}

/// RGBA8 pixels of one image.
#[derive(Debug, Clone)]
pub struct Picture {
    pub path: String,
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u8>,
}

pub struct GalleryService {
    commands: Sender<ServiceCommand>,
    pictures: Sender<(String, bool)>,
    events: Receiver<ServiceEvent>,
    cancel: Arc<AtomicBool>,
}

type Notify = Arc<dyn Fn() + Send + Sync>;

impl GalleryService {
    /// Starts both threads; `notify` runs after every event (the studio's `request_repaint`).
    pub fn spawn(config: ServiceConfig, notify: Notify) -> std::io::Result<Self> {
        let (commands, command_rx) = mpsc::channel();
        let (pictures, picture_rx) = mpsc::channel::<(String, bool)>();
        let (tx, events) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let send = {
            let notify = notify.clone();
            let tx = tx.clone();
            move |e: ServiceEvent| {
                // A closed channel means the panel is gone; the threads end with their inputs.
                let _ = tx.send(e);
                notify();
            }
        };
        let thumbs = config.thumbs.clone();
        let send_pictures = send.clone();
        std::thread::Builder::new()
            .name("easel-thumbnails".into())
            .spawn(move || {
                let mut pending = Vec::new();
                while let Some((path, full)) = next_picture(&picture_rx, &mut pending) {
                    match picture(&path, full, &thumbs) {
                        Ok(e) => send_pictures(e),
                        Err(e) => send_pictures(ServiceEvent::Error(e)),
                    }
                }
            })?;
        let flag = cancel.clone();
        std::thread::Builder::new()
            .name("easel-library".into())
            .spawn(move || library_thread(config, command_rx, flag, &send))?;
        Ok(Self {
            commands,
            pictures,
            events,
            cancel,
        })
    }

    pub fn send(&self, command: ServiceCommand) {
        if matches!(command, ServiceCommand::Index(_)) {
            self.cancel.store(false, Ordering::Relaxed);
        }
        let _ = self.commands.send(command);
    }

    /// Asks for a thumbnail (`full: false`) or the full view of an image.
    pub fn request_picture(&self, path: &str, full: bool) {
        let _ = self.pictures.send((path.to_string(), full));
    }

    /// Stops a running index after its current batch.
    pub fn cancel_indexing(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    pub fn try_events(&self) -> Vec<ServiceEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for GalleryService {
    fn drop(&mut self) {
        self.cancel_indexing();
    }
}

struct Loaded {
    embedder: ClipEmbedder,
    index: GalleryIndex,
    library: Library,
    folders: Vec<PathBuf>,
}

fn library_thread(
    config: ServiceConfig,
    commands: Receiver<ServiceCommand>,
    cancel: Arc<AtomicBool>,
    send: &dyn Fn(ServiceEvent),
) {
    let loaded = (|| -> Result<Loaded, String> {
        let clip = config
            .clip
            .clone()
            .ok_or("No CLIP model chosen: choose a CLIP folder to search by text or image.")?;
        let embedder = ClipEmbedder::load(&clip, &Device::Cpu).map_err(|e| e.to_string())?;
        send(ServiceEvent::ClipReady {
            model_id: embedder.model_id().to_string(),
        });
        let (index, opened) = GalleryIndex::open(&config.db).map_err(|e| e.to_string())?;
        if let Opened::Rebuilt { reason, .. } = opened {
            send(ServiceEvent::IndexRebuilt(reason));
        }
        let library = Library::load(&index, embedder.model_id(), embedder.dim())
            .map_err(|e| e.to_string())?;
        Ok(Loaded {
            embedder,
            index,
            library,
            folders: config.folders.clone(),
        })
    })();
    let mut s = match loaded {
        Ok(s) => s,
        Err(msg) => {
            send(ServiceEvent::ClipMissing(msg));
            return;
        }
    };
    send(ServiceEvent::Library(newest_first(&s.library)));
    reindex(&mut s, Vec::new(), &cancel, send);
    for command in commands {
        let result = match command {
            ServiceCommand::Index(folders) => {
                reindex(&mut s, folders, &cancel, send);
                Ok(())
            }
            ServiceCommand::Search(query) => {
                search_text(&s, &query).map(|hits| send(ServiceEvent::Results { query, hits }))
            }
            ServiceCommand::SearchImage(path) => embed_image_file(&s.embedder, &path)
                .map_err(|e| e.to_string())
                .map(|v| {
                    let hits = s.library.top_k(&v, TOP_K, &Filter::default());
                    let query = path.display().to_string();
                    send(ServiceEvent::Results { query, hits });
                }),
            ServiceCommand::Similar(path) => match s.library.row_of(&path) {
                Some(row) => {
                    let v = s
                        .library
                        .vector(row)
                        .map(<[f32]>::to_vec)
                        .unwrap_or_default();
                    let hits = s.library.top_k(&v, TOP_K, &Filter::default());
                    send(ServiceEvent::Results { query: path, hits });
                    Ok(())
                }
                None => Err(format!("{path} is not indexed yet")),
            },
            ServiceCommand::Delete(path) => delete(&mut s, &path).map(|()| {
                send(ServiceEvent::Deleted(path));
                send(ServiceEvent::Library(newest_first(&s.library)));
            }),
        };
        if let Err(e) = result {
            send(ServiceEvent::Error(e));
        }
    }
}

fn search_text(s: &Loaded, query: &str) -> Result<Vec<Hit>, String> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let terms = parse_query(query, &cwd).map_err(|e| e.to_string())?;
    let v = embed_query(&s.embedder, query, &terms).map_err(|e| e.to_string())?;
    Ok(s.library.top_k(&v, TOP_K, &Filter::default()))
}

fn reindex(s: &mut Loaded, extra: Vec<PathBuf>, cancel: &AtomicBool, send: &dyn Fn(ServiceEvent)) {
    for f in extra {
        if !s.folders.contains(&f) {
            s.folders.push(f);
        }
    }
    let mut roots: Vec<PathBuf> = s.folders.clone();
    roots.extend(
        s.index
            .folders()
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from),
    );
    roots.retain(|r| r.is_dir());
    roots.sort();
    roots.dedup();
    let result = index_folders(
        &mut s.index,
        &s.embedder,
        &roots,
        &IndexOptions::default(),
        cancel,
        &mut |e| send(ServiceEvent::Index(e)),
    );
    match result {
        Ok(summary) => send(ServiceEvent::Indexed(summary)),
        Err(e) => send(ServiceEvent::Error(e.to_string())),
    }
    match Library::load(&s.index, s.embedder.model_id(), s.embedder.dim()) {
        Ok(l) => {
            s.library = l;
            send(ServiceEvent::Library(newest_first(&s.library)));
        }
        Err(e) => send(ServiceEvent::Error(e.to_string())),
    }
}

fn delete(s: &mut Loaded, path: &str) -> Result<(), String> {
    std::fs::remove_file(path).map_err(|e| format!("cannot delete {path}: {e}"))?;
    let model = s.embedder.model_id().to_string();
    s.index
        .commit_batch(&model, &[], &[], &[path.to_string()])
        .map_err(|e| e.to_string())?;
    s.library = Library::load(&s.index, &model, s.embedder.dim()).map_err(|e| e.to_string())?;
    Ok(())
}

fn newest_first(library: &Library) -> Vec<Entry> {
    let mut entries = library.entries.clone();
    entries.sort_by(|a, b| b.mtime_ns.cmp(&a.mtime_ns).then(a.path.cmp(&b.path)));
    entries
}

/// The next picture to make: a full view (a click) first, else the newest thumbnail asked for.
/// Newest first because after a fast scroll the screen the user stopped at must not wait behind
/// every thumbnail asked for on the way (those still follow, and fill the disk cache). `None`
/// once the panel is gone and nothing is left.
fn next_picture(
    requests: &Receiver<(String, bool)>,
    pending: &mut Vec<(String, bool)>,
) -> Option<(String, bool)> {
    if pending.is_empty() {
        pending.push(requests.recv().ok()?);
    }
    pending.extend(requests.try_iter());
    match pending.iter().rposition(|(_, full)| *full) {
        Some(i) => Some(pending.remove(i)),
        None => pending.pop(),
    }
}

/// A thumbnail (from the disk cache when fresh) or the full view, with its settings text.
fn picture(path: &str, full: bool, thumbs: &Path) -> Result<ServiceEvent, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    let mtime = super::scan::mtime_ns(&meta);
    // The key changes with the file, so an edited image never shows a stale thumbnail.
    let key: String = Sha256::digest(format!("{path}\n{}\n{mtime}", meta.len()))
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let cached = thumbs.join(format!("{key}.png"));
    if !full {
        if let Ok(img) = image::open(&cached) {
            return Ok(ServiceEvent::Thumb(to_picture(path, img.into_rgba8())));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let rgb = decode_rgb(&bytes).map_err(|e| format!("{path}: {e}"))?;
    let side = if full { FULL_SIDE } else { THUMB_SIDE };
    let small = if rgb.width() > side || rgb.height() > side {
        image::DynamicImage::ImageRgb8(rgb).thumbnail(side, side)
    } else {
        image::DynamicImage::ImageRgb8(rgb)
    };
    if full {
        let info = settings_text(Path::new(path));
        return Ok(ServiceEvent::Full {
            picture: to_picture(path, small.into_rgba8()),
            info,
        });
    }
    // A cache that cannot be written only costs a decode next time.
    if std::fs::create_dir_all(thumbs).is_ok() {
        let tmp = thumbs.join(format!("{key}.tmp.png"));
        if small.save(&tmp).is_ok() {
            let _ = std::fs::rename(&tmp, &cached);
        }
    }
    Ok(ServiceEvent::Thumb(to_picture(path, small.into_rgba8())))
}

fn to_picture(path: &str, rgba: image::RgbaImage) -> Picture {
    Picture {
        path: path.to_string(),
        width: rgba.width() as usize,
        height: rgba.height() as usize,
        rgba: rgba.into_raw(),
    }
}

/// The generation settings in an image, as the full view shows them.
fn settings_text(path: &Path) -> String {
    match super::png_meta::read_png_metadata(path) {
        Ok(m) => match (m.easel, m.a1111) {
            (Some(e), _) => format!(
                "{}\nNegative: {}\n{} steps, CFG {}, seed {}, {}, {}×{}, model {}",
                e.prompt,
                e.negative_prompt,
                e.steps,
                e.cfg_scale,
                e.seed,
                e.sampler_a1111,
                e.width,
                e.height,
                e.model_name
            ),
            (None, Some(a)) => a.prompt,
            (None, None) => "No generation settings in this image.".into(),
        },
        Err(_) => "No generation settings in this image.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a scroll the newest thumbnail asked for comes first; a full view (a click) comes
    /// before any thumbnail; nothing is lost.
    #[test]
    fn full_views_then_newest_thumbnails_first() {
        let (tx, rx) = mpsc::channel();
        for (path, full) in [("a", false), ("b", false), ("big", true), ("c", false)] {
            tx.send((path.to_string(), full)).unwrap();
        }
        let mut pending = Vec::new();
        let mut order = Vec::new();
        let first = next_picture(&rx, &mut pending).unwrap();
        order.push(first.0);
        tx.send(("d".to_string(), false)).unwrap();
        drop(tx);
        while let Some((path, _)) = next_picture(&rx, &mut pending) {
            order.push(path);
        }
        assert_eq!(order, ["big", "d", "c", "b", "a"]);
    }
}
