//! Where Easel keeps things on disk, and the preferences that survive a restart.
//!
//! Paths come from `directories` so each OS gets its conventional place (XDG data dir on
//! Linux, Application Support on macOS, AppData on Windows). The preferences are a plain
//! serde struct kept in its own file ([`store`]), and everything has a default so a newer or
//! older Easel reads whatever it finds (`#[serde(default)]`).

pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use directories::ProjectDirs;
use serde::{Deserialize, Serialize};

use crate::diffusion::schedulers::PredictionType;
use crate::models::checkpoint::LoadOptions;
use crate::models::taesd::TaesdOptions;

/// The app's folders; `None` on a system with no home directory.
pub fn project_dirs() -> Option<ProjectDirs> {
    ProjectDirs::from("org", "Easel", "Easel")
}

/// The default library folder, where every finished image is written at once:
/// `<data dir>/library`, or `./easel-library` where the OS gives no data dir.
pub fn default_library_dir() -> PathBuf {
    project_dirs()
        .map(|d| d.data_dir().join("library"))
        .unwrap_or_else(|| PathBuf::from("easel-library"))
}

/// Where a bundled model folder `models/<name>` may be, in the order looked at: beside the
/// executable (portable zip, Windows installers), `../lib/easel/models` (cargo-packager's .deb
/// and AppImage resources), `../share/easel/models` (distribution packages),
/// `../Resources/models` (macOS .app), then the source tree (`cargo run`).
pub fn bundled_candidates(name: &str) -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            for base in [
                "models",
                "../lib/easel/models",
                "../share/easel/models",
                "../Resources/models",
            ] {
                candidates.push(dir.join(base).join(name));
            }
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name),
    );
    candidates
}

/// The bundled default model (`models/default`, trained by `training/train_default_model.py`).
pub fn default_model_dir() -> Option<PathBuf> {
    bundled_candidates("default")
        .into_iter()
        .find(|p| is_model_dir(p))
}

/// The bundled LoRA adapters made for the default model (`models/loras`).
pub fn bundled_lora_dir() -> Option<PathBuf> {
    bundled_candidates("loras").into_iter().find(|p| p.is_dir())
}

/// True when `dir` looks like a diffusers model folder.
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join("model_index.json").is_file()
}

/// What the studio remembers between runs. Panel sizes are kept by egui's own memory, which
/// eframe persists alongside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub width: usize,
    pub height: usize,
    pub seed: u64,
    /// When false, Generate draws a new seed first.
    pub seed_locked: bool,
    /// Sampler CLI name; `None` = the model's own.
    pub sampler: Option<String>,
    /// Timestep spacing ("leading" | "linspace" | "trailing"); `None` = automatic (the
    /// sampler's default, or the model's for its own sampler).
    pub spacing: Option<String>,
    pub batch_count: usize,
    /// Re-queue on slider release.
    pub live: bool,
    /// The model folder last loaded successfully.
    pub last_model: Option<PathBuf>,
    /// `None` = [`default_library_dir`].
    pub library_dir: Option<PathBuf>,
    /// The tool panel shown on the right (by its id).
    pub tool_tab: String,
    /// Folders the LoRA panel lists, and where `<lora:name:w>` prompt tags are looked up.
    pub lora_dirs: Vec<PathBuf>,
    /// Folders of textual-inversion embeddings; empty = `$EASEL_EMBEDDINGS_DIR` and those found
    /// beside the model folders.
    pub embedding_dirs: Vec<PathBuf>,
    /// The LoRA panel's adapters: toggles and weights.
    pub loras: Vec<crate::lora::LoraChoice>,
    /// Folders the model library lists (A1111's models/Stable-diffusion and models/VAE,
    /// ComfyUI's models/checkpoints and models/vae, the Hugging Face cache, …).
    pub model_dirs: Vec<PathBuf>,
    /// Per-model choices (VAE, prediction type), by the model's path.
    pub model_choices: BTreeMap<PathBuf, ModelChoice>,
    /// A1111's "Clip skip": 1 uses the text encoder's last layer, 2 the one before, …
    pub clip_skip: usize,
    /// SDXL: the second text encoder's prompt and negative; empty = the prompt / negative.
    pub prompt_2: String,
    pub negative_prompt_2: String,
    /// SDXL's micro-conditioning.
    pub size_cond: crate::diffusion::SizeConditioning,
    /// Where models run: auto (a GPU when this build and machine have one), cpu, cuda, metal.
    pub device: crate::models::device::DeviceChoice,
    /// How models' weights are kept: f32, f16 or bf16 (half the memory).
    pub precision: crate::models::device::Precision,
    /// TAESD (found in the model folders) for a real preview at every step.
    pub taesd_preview: bool,
    /// TAESD for the final decode instead of the VAE (fast, slightly softer).
    pub taesd_decode: bool,
    /// img2img: how much of the starting picture is repainted (0 < strength ≤ 1).
    pub strength: f64,
    /// Inpainting: A1111's "Mask blur" in pixels.
    pub mask_blur: u32,
    /// Inpainting: generate only the box around the mask (A1111's "Only masked"), padded.
    pub only_masked: bool,
    pub masked_padding: u32,
    /// Hires fix on, and its second pass.
    pub hires_on: bool,
    pub hires: crate::diffusion::Hires,
}

/// What the user chose for one model, overriding what its files say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelChoice {
    /// A VAE file or folder to use instead of the model's own.
    pub vae: Option<PathBuf>,
    /// "epsilon" or "v"; `None` = as the model's files say.
    pub prediction: Option<String>,
}

impl ModelChoice {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            vae: self.vae.clone(),
            prediction: self.prediction.as_deref().and_then(parse_prediction),
            ..Default::default()
        }
    }
}

/// `epsilon` / `eps` or `v` / `v_prediction`, as the CLI and settings spell them.
pub fn parse_prediction(s: &str) -> Option<PredictionType> {
    match s {
        "epsilon" | "eps" => Some(PredictionType::Epsilon),
        "v" | "v_prediction" | "v-prediction" => Some(PredictionType::VPrediction),
        _ => None,
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 20,
            cfg_scale: 7.5,
            width: 512,
            height: 512,
            seed: 42,
            seed_locked: false,
            sampler: None,
            spacing: None,
            batch_count: 1,
            live: false,
            last_model: None,
            library_dir: None,
            tool_tab: String::new(),
            lora_dirs: Vec::new(),
            embedding_dirs: Vec::new(),
            loras: Vec::new(),
            model_dirs: Vec::new(),
            model_choices: BTreeMap::new(),
            clip_skip: 1,
            prompt_2: String::new(),
            negative_prompt_2: String::new(),
            size_cond: Default::default(),
            device: Default::default(),
            precision: Default::default(),
            taesd_preview: false,
            taesd_decode: false,
            strength: crate::diffusion::init_image::DEFAULT_STRENGTH,
            mask_blur: crate::diffusion::inpaint::DEFAULT_BLUR,
            only_masked: false,
            masked_padding: crate::diffusion::inpaint::DEFAULT_PADDING,
            hires_on: false,
            hires: Default::default(),
        }
    }
}

impl Settings {
    /// The remembered choices for the model at `path`, as load options. Choices are kept under
    /// the absolute path the worker reports, so a relative or symlinked path finds them too.
    pub fn model_options(&self, path: &Path) -> LoadOptions {
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let choice = self
            .model_choices
            .get(&absolute)
            .or_else(|| self.model_choices.get(path))
            .map(ModelChoice::options)
            .unwrap_or_default();
        let taesd = (self.taesd_preview || self.taesd_decode)
            .then(|| self.taesd_file(path))
            .flatten()
            .map(|file| TaesdOptions {
                path: file,
                preview: self.taesd_preview,
                final_decode: self.taesd_decode,
            });
        LoadOptions {
            device: self.device,
            precision: self.precision,
            taesd,
            ..choice
        }
    }

    /// The folders the model library lists: the chosen ones, else $EASEL_MODEL_DIR and the
    /// bundled models.
    pub fn model_dirs(&self) -> Vec<PathBuf> {
        if self.model_dirs.is_empty() {
            crate::models::library::default_model_dirs()
        } else {
            self.model_dirs.clone()
        }
    }

    /// The TAESD decoder for the model at `model`: beside it, else in the model folders
    /// (ComfyUI's `vae_approx`, A1111's `VAE-taesd`, a `taesd/` folder; see
    /// `crate::models::taesd::candidates`); TAESDXL for an SDXL model.
    pub fn taesd_file(&self, model: &Path) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = if model.is_file() {
            model.parent().map(Path::to_path_buf).into_iter().collect()
        } else {
            vec![model.to_path_buf()]
        };
        dirs.extend(self.model_dirs());
        let sdxl = crate::models::checkpoint::is_sdxl(model);
        let file = crate::models::taesd::decoder_file(sdxl);
        crate::models::taesd::find(&dirs, file).ok()
    }

    pub fn library_dir(&self) -> PathBuf {
        self.library_dir.clone().unwrap_or_else(default_library_dir)
    }
}

/// Which model the studio opens on: the last one used, else the bundled default, else none
/// (the empty state). A remembered folder that has gone is skipped.
pub fn startup_model(
    explicit: Option<&Path>,
    settings: &Settings,
    bundled: Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    settings
        .last_model
        .clone()
        .filter(|d| is_model_dir(d) || d.is_file())
        .or(bundled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_settings_without_new_fields_still_load() {
        let s: Settings = serde_json::from_str(r#"{"prompt": "a cat", "steps": 30}"#)
            .expect("partial settings parse");
        assert_eq!(s.prompt, "a cat");
        assert_eq!(s.steps, 30);
        assert_eq!(s.cfg_scale, Settings::default().cfg_scale);
    }

    #[test]
    fn model_choices_are_found_by_any_spelling_of_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.safetensors");
        std::fs::write(&file, b"x").unwrap();
        let mut s = Settings::default();
        s.model_choices.insert(
            std::fs::canonicalize(&file).unwrap(),
            ModelChoice {
                vae: None,
                prediction: Some("v".into()),
            },
        );
        let roundabout = dir.path().join(".").join("m.safetensors");
        assert_eq!(
            s.model_options(&roundabout).prediction,
            Some(PredictionType::VPrediction)
        );
        assert_eq!(
            s.model_options(Path::new("/elsewhere")),
            LoadOptions::default()
        );
    }

    #[test]
    fn startup_prefers_last_model_then_bundled() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny-a");
        let gone = PathBuf::from("/nonexistent/model");
        let bundled = Some(PathBuf::from("/bundled"));
        let mut s = Settings {
            last_model: Some(fixture.clone()),
            ..Default::default()
        };
        assert_eq!(startup_model(None, &s, bundled.clone()), Some(fixture));
        s.last_model = Some(gone);
        assert_eq!(startup_model(None, &s, bundled.clone()), bundled);
        assert_eq!(startup_model(None, &s, None), None);
        assert_eq!(
            startup_model(Some(Path::new("/x")), &s, None),
            Some(PathBuf::from("/x"))
        );
    }
}
