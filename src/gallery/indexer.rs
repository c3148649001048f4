//! Incremental indexing: make the index match the folders, embedding only what is new.
//!
//! One pass: walk the folders; a file whose path, size and mtime match its row (and whose
//! content has an embedding for this CLIP model) is left alone; every other image is read and
//! hashed, and embedded only when no embedding of that content exists (renames and duplicates
//! reuse one by hash). Rows of files that disappeared from the folders are dropped. Work goes
//! in batches, each committed in its own transaction, so a kill at any moment loses at most the
//! batch in flight, and the next run picks up from what is committed. Cancellation is checked
//! between batches, the same point.
//!
//! A file that cannot be used (not an image, corrupt, truncated, too large, unreadable) is
//! skipped with a warning event and counted; indexing continues.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::embedder::ClipEmbedder;
use super::index::{FileRow, GalleryIndex};
use super::preprocess::{decode_rgb, ImageProblem};
use super::scan::{walk, Found};
use super::GalleryError;

/// Files bigger than this are not read (no image Easel decodes needs that many bytes).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Why a file was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No image extension (never opened), or an image extension on something else.
    NotImage,
    Corrupt,
    TooLarge,
    Unreadable,
    /// The path is not valid UTF-8, which the index stores paths as.
    BadPath,
}

/// How many files were skipped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipCounts {
    pub not_image: usize,
    pub corrupt: usize,
    pub too_large: usize,
    pub unreadable: usize,
    pub bad_path: usize,
}

impl SkipCounts {
    fn add(&mut self, r: SkipReason) {
        match r {
            SkipReason::NotImage => self.not_image += 1,
            SkipReason::Corrupt => self.corrupt += 1,
            SkipReason::TooLarge => self.too_large += 1,
            SkipReason::Unreadable => self.unreadable += 1,
            SkipReason::BadPath => self.bad_path += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.not_image + self.corrupt + self.too_large + self.unreadable + self.bad_path
    }
}

/// Progress, sent as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexEvent {
    /// The index file was damaged and has been replaced by a new one.
    Rebuilt { moved_to: PathBuf, reason: String },
    /// The walk is done: how much work there is.
    Scanned {
        images: usize,
        unchanged: usize,
        to_process: usize,
        removed: usize,
    },
    /// A file was skipped. Files without an image extension are only counted, not reported.
    Skipped {
        path: PathBuf,
        reason: SkipReason,
        detail: String,
    },
    /// A batch was committed: `done` of `total` files processed so far.
    Progress { done: usize, total: usize },
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSummary {
    pub images: usize,
    pub unchanged: usize,
    /// Files whose content was embedded now.
    pub embedded: usize,
    /// Files whose content already had an embedding (renamed, duplicated, touched).
    pub reused: usize,
    pub removed: usize,
    pub skipped: SkipCounts,
    /// Stopped early by the cancel flag; what was committed stays.
    pub cancelled: bool,
}

#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Images per model call and per transaction.
    pub batch_size: usize,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self { batch_size: 16 }
    }
}

/// Brings `index` up to date with `roots` (existing directories) for `embedder`'s model.
pub fn index_folders(
    index: &mut GalleryIndex,
    embedder: &ClipEmbedder,
    roots: &[PathBuf],
    options: &IndexOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(IndexEvent),
) -> Result<IndexSummary, GalleryError> {
    let model_id = embedder.model_id().to_string();
    let mut summary = IndexSummary::default();
    let mut roots_abs = Vec::with_capacity(roots.len());
    let mut found: Vec<Found> = Vec::new();
    for root in roots {
        let root = std::fs::canonicalize(root).map_err(|e| GalleryError::io(root, e))?;
        let w = walk(&root)?;
        summary.skipped.not_image += w.other_files.len();
        for (path, detail) in w.unreadable {
            skip(&mut summary, on_event, path, SkipReason::Unreadable, detail);
        }
        found.extend(w.images);
        roots_abs.push(root);
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path == b.path);
    for root in &roots_abs {
        if let Some(s) = root.to_str() {
            index.add_folder(s)?;
        }
    }

    let states = index.file_states()?;
    let mut embedded = index.embedded_hashes(&model_id)?;
    let mut pending = Vec::new();
    let mut seen = HashSet::new();
    for f in found {
        let Some(path) = f.path.to_str().map(str::to_string) else {
            skip(
                &mut summary,
                on_event,
                f.path,
                SkipReason::BadPath,
                "the path is not UTF-8".into(),
            );
            continue;
        };
        summary.images += 1;
        let same = states.get(&path).is_some_and(|s| {
            s.size == f.size as i64 && s.mtime_ns == f.mtime_ns && embedded.contains(&s.hash)
        });
        if same {
            summary.unchanged += 1;
        } else {
            pending.push(f);
        }
        seen.insert(path);
    }
    let removed: Vec<String> = states
        .keys()
        .filter(|p| !seen.contains(*p) && roots_abs.iter().any(|r| Path::new(p).starts_with(r)))
        .cloned()
        .collect();
    summary.removed = removed.len();
    on_event(IndexEvent::Scanned {
        images: summary.images,
        unchanged: summary.unchanged,
        to_process: pending.len(),
        removed: removed.len(),
    });

    let total = pending.len();
    let mut removed = Some(removed);
    let mut done = 0;
    for batch in pending.chunks(options.batch_size.max(1)) {
        if cancel.load(Ordering::Relaxed) {
            summary.cancelled = true;
            break;
        }
        let prepared: Vec<Result<Prepared, (PathBuf, SkipReason, String)>> = batch
            .par_iter()
            .map(|f| prepare(f, &embedded, embedder))
            .collect();
        let mut rows = Vec::with_capacity(batch.len());
        // New content to embed, once per hash even when the batch holds duplicates.
        let mut to_embed: Vec<(String, Vec<f32>)> = Vec::new();
        let mut queued: HashSet<String> = HashSet::new();
        for p in prepared {
            match p {
                Err((path, reason, detail)) => skip(&mut summary, on_event, path, reason, detail),
                Ok(p) => {
                    match p.pixels {
                        Some(px) if !queued.contains(&p.row.hash) => {
                            queued.insert(p.row.hash.clone());
                            to_embed.push((p.row.hash.clone(), px));
                            summary.embedded += 1;
                        }
                        _ => summary.reused += 1,
                    }
                    rows.push(p.row);
                }
            }
        }
        let (hashes, pixels): (Vec<String>, Vec<Vec<f32>>) = to_embed.into_iter().unzip();
        let vectors = embedder.embed_pixels(&pixels)?;
        let new: Vec<(String, Vec<f32>)> = hashes.into_iter().zip(vectors).collect();
        index.commit_batch(&model_id, &new, &rows, &removed.take().unwrap_or_default())?;
        embedded.extend(new.into_iter().map(|(h, _)| h));
        done += batch.len();
        on_event(IndexEvent::Progress { done, total });
    }
    if let Some(removed) = removed.filter(|r| !r.is_empty()) {
        // Nothing was pending (or the run was cancelled before the first batch).
        index.commit_batch(&model_id, &[], &[], &removed)?;
    }
    if !summary.cancelled {
        index.collect_garbage(&model_id)?;
    }
    Ok(summary)
}

fn skip(
    summary: &mut IndexSummary,
    on_event: &mut dyn FnMut(IndexEvent),
    path: PathBuf,
    reason: SkipReason,
    detail: String,
) {
    summary.skipped.add(reason);
    on_event(IndexEvent::Skipped {
        path,
        reason,
        detail,
    });
}

/// A file read and hashed; `pixels` when its content still needs embedding.
struct Prepared {
    row: FileRow,
    pixels: Option<Vec<f32>>,
}

fn prepare(
    f: &Found,
    embedded: &HashSet<String>,
    embedder: &ClipEmbedder,
) -> Result<Prepared, (PathBuf, SkipReason, String)> {
    let fail = |reason, detail: String| (f.path.clone(), reason, detail);
    if f.size > MAX_FILE_BYTES {
        return Err(fail(
            SkipReason::TooLarge,
            format!("{} bytes is more than Easel reads", f.size),
        ));
    }
    let bytes = std::fs::read(&f.path).map_err(|e| fail(SkipReason::Unreadable, e.to_string()))?;
    let hash = hex(&Sha256::digest(&bytes));
    let (width, height, pixels) = if embedded.contains(&hash) {
        // Known content: only the header, for the gallery's layout.
        let (w, h) = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .unwrap_or((0, 0));
        (w, h, None)
    } else {
        let img = decode_rgb(&bytes).map_err(|p| {
            let reason = match p {
                ImageProblem::NotImage => SkipReason::NotImage,
                ImageProblem::TooLarge { .. } => SkipReason::TooLarge,
                ImageProblem::Corrupt(_) => SkipReason::Corrupt,
            };
            fail(reason, p.to_string())
        })?;
        let px = embedder.preprocess().pixels(&img);
        (img.width(), img.height(), Some(px))
    };
    let (gen_model, prompt) = generation_info(&f.path);
    Ok(Prepared {
        row: FileRow {
            path: f.path.to_string_lossy().into_owned(),
            size: f.size as i64,
            mtime_ns: f.mtime_ns,
            hash,
            width,
            height,
            gen_model,
            prompt,
        },
        pixels,
    })
}

/// The generating model and prompt from a PNG's metadata (Easel's chunk first, then A1111's).
fn generation_info(path: &Path) -> (Option<String>, Option<String>) {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return (None, None);
    }
    match super::png_meta::read_png_metadata(path) {
        Ok(m) => match (m.easel, m.a1111) {
            (Some(e), _) => (Some(e.model_name), Some(e.prompt)),
            (None, Some(a)) => (a.model_name, Some(a.prompt)),
            (None, None) => (None, None),
        },
        Err(_) => (None, None),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
