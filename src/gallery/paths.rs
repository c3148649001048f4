//! Where the gallery's files live by default: the library database and the bundled CLIP model.
//!
//! The studio's settings module (DESIGN.md: `settings.rs`) is being written alongside; until it
//! owns the app's folders these helpers do, with `directories` as DESIGN.md asks, so the CLI and
//! the studio agree on one library file.

use std::path::PathBuf;

use super::GalleryError;

/// The library database: `library.sqlite` in the app's data folder
/// (`~/.local/share/easel` on Linux, `~/Library/Application Support/Easel` on macOS,
/// `%APPDATA%\Easel\data` on Windows).
pub fn default_db_path() -> Result<PathBuf, GalleryError> {
    // The same qualifiers as `settings::project_dirs`, so both name one data folder.
    directories::ProjectDirs::from("org", "Easel", "Easel")
        .map(|d| d.data_dir().join("library.sqlite"))
        .ok_or(GalleryError::NoDataDir)
}

/// Where a bundled CLIP model is looked for: `models/default-clip` beside the executable
/// (installed layout, or `share/easel/models`), then in the source tree (`cargo run`).
pub fn bundled_clip_candidates() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("models").join("default-clip"));
            candidates.push(dir.join("../share/easel/models/default-clip"));
        }
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join("default-clip"),
    );
    candidates
}

/// The bundled CLIP model folder, or an error that says how to pass one.
pub fn default_clip_dir() -> Result<PathBuf, GalleryError> {
    let candidates = bundled_clip_candidates();
    candidates
        .iter()
        .find(|p| p.join("config.json").is_file())
        .cloned()
        .ok_or(GalleryError::NoClipModel {
            searched: candidates,
        })
}
