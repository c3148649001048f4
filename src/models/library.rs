//! The model library: every model in the folders a user keeps them in, described from file
//! headers alone so a folder of 200 checkpoints lists in well under a second.
//!
//! Understood layouts: A1111's `models/Stable-diffusion` and `models/VAE`, ComfyUI's
//! `models/checkpoints` and `models/vae`, plain folders of diffusers models, and the Hugging
//! Face cache (`models--org--name/snapshots/<revision>/`). Folders are walked recursively
//! (hidden ones skipped); a diffusers folder is one entry and is not walked into. Hashes come
//! from the hash cache only ([`super::hash`]): computing one reads the whole file, which the
//! caller does when it can afford to (`easel models list --hash`, or the studio in the
//! background).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::checkpoint::detect::Identified;
use super::checkpoint::identify_file;
use super::tensor_file::extension;

/// What kind of thing a library entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A single-file checkpoint.
    Checkpoint,
    /// A diffusers model folder.
    Folder,
    /// A VAE on its own (a file or a diffusers `vae/`-style folder).
    Vae,
}

/// One model (or VAE) found in the library folders.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LibraryEntry {
    pub path: PathBuf,
    /// The file stem, the folder name, or `org/name` for the Hugging Face cache.
    pub name: String,
    pub kind: EntryKind,
    /// "SD 1.x", "SD 2.x", "an SDXL checkpoint", "VAE"…
    pub architecture: String,
    /// True for a model Easel runs.
    pub runnable: bool,
    /// "fp16", "fp32", "bf16"; `None` when unknown.
    pub precision: Option<String>,
    pub size_bytes: u64,
    /// A1111's short hash, when the hash cache knows it.
    pub hash: Option<String>,
    /// Why a file could not be read (truncated, damaged…).
    pub error: Option<String>,
}

impl LibraryEntry {
    /// The files hashed for A1111's `Model hash` (what [`super::StableDiffusion::short_hash`]
    /// hashes once loaded).
    pub fn hash_files(&self) -> Vec<PathBuf> {
        match self.kind {
            EntryKind::Folder => super::weights::find_weight_files(
                &self.path.join("unet"),
                "diffusion_pytorch_model",
            )
            .unwrap_or_default(),
            _ => vec![self.path.clone()],
        }
    }
}

/// Where the library looks when no folder is chosen: $EASEL_MODEL_DIR (a path list), then the
/// bundled models folder.
pub fn default_model_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("EASEL_MODEL_DIR")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        crate::settings::default_model_dir().and_then(|d| d.parent().map(Path::to_path_buf)),
    );
    dirs
}

/// The entry of a library made with the model an image names: by A1111's short hash when
/// known, else by name (A1111's `Model` field is the file stem).
pub fn find_model<'a>(
    entries: &'a [LibraryEntry],
    hash: Option<&str>,
    name: Option<&str>,
) -> Option<&'a LibraryEntry> {
    let runnable = || {
        entries
            .iter()
            .filter(|e| e.runnable && e.kind != EntryKind::Vae)
    };
    let by_hash = hash.filter(|h| !h.is_empty()).and_then(|h| {
        runnable().find(|e| {
            e.hash
                .as_deref()
                .is_some_and(|eh| eh.eq_ignore_ascii_case(h))
        })
    });
    by_hash.or_else(|| {
        let name = name.filter(|n| !n.is_empty())?;
        runnable().find(|e| e.name == name)
    })
}

const WEIGHT_EXTENSIONS: [&str; 4] = ["safetensors", "ckpt", "pt", "pth"];
/// How deep folders are walked below each library folder.
const MAX_DEPTH: usize = 8;

/// Every model and VAE under `dirs` (each may also be a single model folder or file), sorted
/// by kind and name. Unreadable entries are listed with their error, not dropped.
pub fn scan(dirs: &[PathBuf]) -> Vec<LibraryEntry> {
    let mut candidates = Vec::new();
    for dir in dirs {
        collect(dir, 0, &mut candidates);
    }
    candidates.sort();
    candidates.dedup();
    let mut entries: Vec<LibraryEntry> =
        candidates.par_iter().filter_map(|c| describe(c)).collect();
    entries.sort_by(|a, b| {
        (a.kind == EntryKind::Vae, a.name.to_lowercase(), &a.path).cmp(&(
            b.kind == EntryKind::Vae,
            b.name.to_lowercase(),
            &b.path,
        ))
    });
    entries
}

fn collect(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        if extension(path).is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e.as_str())) {
            out.push(path.to_path_buf());
        }
        return;
    }
    if !path.is_dir() || depth > MAX_DEPTH {
        return;
    }
    if crate::settings::is_model_dir(path) || is_vae_folder(path) {
        out.push(path.to_path_buf());
        return;
    }
    let Ok(read) = std::fs::read_dir(path) else {
        return;
    };
    let mut children: Vec<PathBuf> = read
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    children.sort();
    for child in children {
        collect(&child, depth + 1, out);
    }
}

/// A diffusers VAE folder on its own (`config.json` of an `AutoencoderKL` + weights).
fn is_vae_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json")).is_ok_and(|t| t.contains("\"AutoencoderKL\""))
        && dir.join("diffusion_pytorch_model.safetensors").is_file()
}

/// `org/name` for a path inside the Hugging Face cache (`models--org--name/snapshots/…`).
fn hub_name(path: &Path) -> Option<String> {
    path.ancestors().find_map(|a| {
        let name = a.file_name()?.to_str()?;
        let repo = name.strip_prefix("models--")?;
        Some(repo.replacen("--", "/", 1))
    })
}

fn describe(path: &Path) -> Option<LibraryEntry> {
    let name = hub_name(path).unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    if path.is_dir() {
        return Some(describe_folder(path, name));
    }
    let size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut entry = LibraryEntry {
        path: path.to_path_buf(),
        name,
        kind: EntryKind::Checkpoint,
        architecture: String::new(),
        runnable: false,
        precision: None,
        size_bytes,
        hash: None,
        error: None,
    };
    match identify_file(path) {
        Ok((_, Identified::Pipeline(p))) => {
            entry.architecture = p.family.label().to_string();
            entry.precision = Some(p.precision.precision_name().to_string());
            entry.runnable = true;
        }
        Ok((file, Identified::Vae(_))) => {
            entry.kind = EntryKind::Vae;
            entry.architecture = "VAE".into();
            entry.precision = dominant_precision(&file);
            entry.runnable = true;
        }
        Ok((_, Identified::Other { what, .. })) => {
            // Adapters and embeddings are not models; the LoRA panel lists them.
            if what.contains("LoRA") || what.contains("embedding") {
                return None;
            }
            entry.architecture = what;
        }
        Err(e) => {
            entry.architecture = "unreadable".into();
            entry.error = Some(e.to_string());
        }
    }
    entry.hash = super::hash::cached_short_hash(&entry.hash_files());
    Some(entry)
}

fn dominant_precision(file: &super::tensor_file::TensorFile) -> Option<String> {
    let mut counts = std::collections::BTreeMap::new();
    for t in file.tensors.values().filter(|t| t.dtype.is_float()) {
        *counts.entry(t.dtype.precision_name()).or_insert(0usize) += t.numel();
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(p, _)| p.to_string())
}

fn describe_folder(dir: &Path, name: String) -> LibraryEntry {
    let vae_only = !crate::settings::is_model_dir(dir);
    let mut entry = LibraryEntry {
        path: dir.to_path_buf(),
        name,
        kind: if vae_only {
            EntryKind::Vae
        } else {
            EntryKind::Folder
        },
        architecture: if vae_only {
            "VAE".into()
        } else {
            String::new()
        },
        runnable: true,
        precision: None,
        size_bytes: folder_weights(dir).iter().map(|(_, n)| n).sum(),
        hash: None,
        error: None,
    };
    if !vae_only {
        let unet: Result<serde_json::Value, _> =
            super::weights::read_json(&dir.join("unet").join("config.json"));
        match unet {
            Ok(cfg) => {
                let (arch, runnable) = folder_architecture(&cfg);
                entry.architecture = arch;
                entry.runnable = runnable;
            }
            Err(e) => {
                entry.architecture = "unreadable".into();
                entry.runnable = false;
                entry.error = Some(e.to_string());
            }
        }
    }
    // The UNet's (or a VAE folder's) weights say, from their header.
    let first = entry
        .hash_files()
        .into_iter()
        .chain(folder_weights(dir).into_iter().map(|(p, _)| p))
        .next();
    entry.precision = first
        .and_then(|f| super::tensor_file::TensorFile::open(&f).ok())
        .and_then(|f| dominant_precision(&f));
    entry.hash = super::hash::cached_short_hash(&entry.hash_files());
    entry
}

/// The family of a diffusers folder, from its UNet config.
fn folder_architecture(unet: &serde_json::Value) -> (String, bool) {
    if unet["addition_embed_type"].as_str() == Some("text_time") {
        return ("SDXL".into(), false);
    }
    let family = match unet["cross_attention_dim"].as_u64() {
        Some(768) => "SD 1.x",
        Some(1024) => "SD 2.x",
        _ => "SD-style (custom size)",
    };
    match unet["in_channels"].as_u64() {
        Some(9) => (format!("{family} inpainting"), true),
        Some(4) | None => (family.into(), true),
        Some(n) => (format!("{family} ({n}-channel UNet)"), false),
    }
}

/// Weight files in a diffusers folder (its component subfolders, or itself), with sizes.
fn folder_weights(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for sub in ["", "unet", "vae", "text_encoder"] {
        let Ok(read) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for e in read.flatten() {
            let p = e.path();
            if extension(&p).as_deref() == Some("safetensors") {
                out.push((p, e.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    out
}

/// Whether `path` is a model Easel runs, judged from its header (a checkpoint file) or its
/// `model_index.json` (a folder); the error is one line naming the path.
pub fn check_model_path(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        if crate::settings::is_model_dir(path) {
            return Ok(());
        }
        return Err(format!(
            "{} is not a diffusers model folder (it has no model_index.json)",
            path.display()
        ));
    }
    if !path.exists() {
        return Err(format!("{}: no such file or folder", path.display()));
    }
    match identify_file(path) {
        Ok((_, Identified::Pipeline(_))) => Ok(()),
        Ok((_, Identified::Vae(_))) => Err(format!(
            "{}: a VAE on its own, not a model; choose it as a model's VAE in the Models tab",
            path.display()
        )),
        Ok((_, Identified::Other { what, hint })) => {
            Err(format!("{}: {what}; {hint}", path.display()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The human size of `bytes` ("2.13 GB").
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names() {
        let p = Path::new("/c/hub/models--stabilityai--stable-diffusion-2-1/snapshots/abc123");
        assert_eq!(
            hub_name(p).as_deref(),
            Some("stabilityai/stable-diffusion-2-1")
        );
        assert_eq!(
            hub_name(Path::new("/models/Stable-diffusion/x.safetensors")),
            None
        );
    }
}

#[cfg(test)]
mod find_tests {
    use super::*;

    fn entry(name: &str, hash: Option<&str>, kind: EntryKind) -> LibraryEntry {
        LibraryEntry {
            path: PathBuf::from(format!("/m/{name}.safetensors")),
            name: name.into(),
            kind,
            architecture: "SD 1.x".into(),
            runnable: true,
            precision: None,
            size_bytes: 0,
            hash: hash.map(str::to_string),
            error: None,
        }
    }

    #[test]
    fn an_image_finds_its_model_by_hash_then_by_name() {
        let lib = vec![
            entry("dreamy", Some("0123456789"), EntryKind::Checkpoint),
            entry("renamed", Some("abcdef0123"), EntryKind::Checkpoint),
            entry("vae", Some("ffffffffff"), EntryKind::Vae),
        ];
        // A file renamed since: the hash still finds it.
        let found = find_model(&lib, Some("ABCDEF0123"), Some("old-name")).unwrap();
        assert_eq!(found.name, "renamed");
        // Hash unknown: the name does.
        assert_eq!(
            find_model(&lib, Some("9999999999"), Some("dreamy"))
                .unwrap()
                .name,
            "dreamy"
        );
        // VAEs are never offered as models; nothing matching is nothing.
        assert!(find_model(&lib, Some("ffffffffff"), None).is_none());
        assert!(find_model(&lib, None, Some("absent")).is_none());
    }
}
