//! Walking the user's folders: which files there are, and what changed since the last index.
//!
//! Folders are only ever read. Hidden directories (`.git`, `.thumbnails`, `.cache`) are not
//! entered, and directory symlinks are not followed (a link back up the tree would loop);
//! symlinked files are indexed under the link's path.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::query::has_image_extension;

/// How Easel names an inpainting mask kept beside its image (`<image stem>.mask.png`).
pub const MASK_SUFFIX: &str = ".mask.png";
use super::GalleryError;

/// A file found under a root, with what tells a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Files with an image extension, in path order.
    pub images: Vec<Found>,
    /// Files with another extension (counted, never opened).
    pub other_files: Vec<PathBuf>,
    /// Entries that could not be listed or stat'ed, with why.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// Lists every file under `root` (an existing directory).
pub fn walk(root: &Path) -> Result<Walk, GalleryError> {
    let meta = std::fs::metadata(root).map_err(|e| GalleryError::io(root, e))?;
    if !meta.is_dir() {
        return Err(GalleryError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut out = Walk::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.unreadable.push((dir, e.to_string()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    out.unreadable.push((dir.clone(), e.to_string()));
                    continue;
                }
            };
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            let Ok(kind) = entry.file_type() else {
                out.unreadable.push((path, "cannot read its type".into()));
                continue;
            };
            if kind.is_dir() {
                if !hidden {
                    stack.push(path);
                }
                continue;
            }
            // `metadata` follows a file symlink; a link to a directory is left alone.
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) => {
                    out.unreadable.push((path, e.to_string()));
                    continue;
                }
            };
            // Inpainting masks Easel keeps beside its images are not pictures to search.
            let is_mask = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(MASK_SUFFIX));
            if !has_image_extension(&path) || is_mask {
                out.other_files.push(path);
                continue;
            }
            out.images.push(Found {
                path,
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
            });
        }
    }
    out.images.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Modification time in nanoseconds since the Unix epoch (0 where the platform has none).
pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}
