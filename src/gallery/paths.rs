//! Where the gallery's files live by default: the library database and the bundled CLIP model.
//!
//! The folders themselves come from [`crate::settings`], so the CLI and the studio agree on one
//! library file and one bundled model.

use std::path::PathBuf;

use super::GalleryError;

/// The library database: `library.sqlite` in the app's data folder
/// (`~/.local/share/easel` on Linux, `~/Library/Application Support/Easel` on macOS,
/// `%APPDATA%\Easel\data` on Windows).
pub fn default_db_path() -> Result<PathBuf, GalleryError> {
    crate::settings::project_dirs()
        .map(|d| d.data_dir().join("library.sqlite"))
        .ok_or(GalleryError::NoDataDir)
}

/// The bundled CLIP model folder (`models/default-clip`, trained with the default model), or an
/// error that says how to pass one.
pub fn default_clip_dir() -> Result<PathBuf, GalleryError> {
    let candidates = crate::settings::bundled_candidates("default-clip");
    candidates
        .iter()
        .find(|p| p.join("config.json").is_file())
        .cloned()
        .ok_or(GalleryError::NoClipModel {
            searched: candidates,
        })
}
