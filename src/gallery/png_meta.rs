//! PNG files that carry their own recipe.
//!
//! Every image Easel saves holds two text chunks (DESIGN.md, "PNG metadata"):
//!
//! - `parameters`: AUTOMATIC1111's infotext, because that is the format the ecosystem reads
//!   (Civitai, PNG-info tabs, Forge, most image browsers). It is lossy by design: A1111's
//!   format has no room for LoRA weights or an init-noise file, and its reader strips
//!   whitespace at line ends.
//! - `easel`: our own JSON ([`GenerationMetadata`]), which holds everything needed to
//!   reproduce the image exactly and is never re-parsed by other tools.
//!
//! Reading is forgiving about *content* (A1111, Forge, Civitai, ComfyUI and InvokeAI files are
//! all accepted; every text chunk is handed back as-is so callers can read formats we do not
//! parse) and strict about *structure*: a file that is not a complete PNG is an error that
//! names the file, never a panic.
//!
//! The code is split by concept: `a1111` is the infotext format (write and parse), `write`
//! encodes and saves atomically, `read` walks the chunk list without decoding pixels.

mod a1111;
mod read;
mod write;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use a1111::{a1111_sampler_name, parse_a1111_parameters, ParametersError, ParsedParameters};
pub use read::read_png_metadata;
pub use write::write_png;

/// Keyword of AUTOMATIC1111's infotext chunk; other tools look for exactly this name.
pub const PARAMETERS_KEYWORD: &str = "parameters";
/// Keyword of Easel's own JSON chunk.
pub const EASEL_KEYWORD: &str = "easel";

/// Everything needed to reproduce an image exactly. Serialised as Easel's own JSON chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationMetadata {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: usize,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    /// Easel's CLI name: "ddim" | "euler" | "euler_a" | "dpmpp_2m_karras".
    pub sampler: String,
    /// A1111's display name ("DDIM", "Euler", "Euler a", "DPM++ 2M Karras"), written to
    /// `parameters` so other tools recognise the sampler; see [`a1111_sampler_name`].
    pub sampler_a1111: String,
    pub model_name: String,
    /// Short hash: the first 10 hex chars of the checkpoint's SHA-256, as A1111 and Civitai use.
    pub model_hash: String,
    /// LoRAs applied, in order (empty until LoRA support lands).
    pub loras: Vec<LoraUse>,
    /// The sampler's timestep spacing when one was chosen ("leading" | "linspace" |
    /// "trailing"); absent: the sampler's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing: Option<String>,
    /// A1111's "Clip skip" (1 = the text encoder's last layer).
    #[serde(default = "one")]
    pub clip_skip: usize,
    /// A VAE used instead of the model's own (A1111's `VAE` and `VAE hash`).
    #[serde(default)]
    pub vae: Option<VaeUse>,
    /// Path of an `--init-noise` file if one replaced the seeded noise: the seed alone
    /// would not reproduce the image then.
    pub init_noise: Option<String>,
    /// img2img: the picture the image started from and the strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<InitImageUse>,
    /// Hires fix: the second pass (the image is `width` × `height` enlarged by its scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires: Option<crate::diffusion::Hires>,
    /// Textual-inversion embeddings the prompts called (A1111's `TI hashes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<EmbeddingUse>,
    /// SDXL's second prompts and micro-conditioning; absent for other models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdxl: Option<crate::diffusion::SdxlOptions>,
    pub easel_version: String,
    /// Fields a newer Easel wrote that this one does not know; kept so that re-saving does not
    /// lose them.
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn one() -> usize {
    1
}

/// An external VAE used for a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeUse {
    /// The file name, as A1111 writes it (`vae-ft-mse-840000-ema-pruned.safetensors`).
    pub name: String,
    /// A1111's short hash of the file (10 hex digits).
    pub hash: String,
}

impl VaeUse {
    /// The VAE at `path`, its hash still to be computed.
    pub fn named(path: &std::path::Path) -> Self {
        Self {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hash: String::new(),
        }
    }
}

/// The picture an img2img generation started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImageUse {
    /// Where it was read from (as given; restoring checks it still exists).
    pub path: String,
    /// How much of it was repainted (A1111's `Denoising strength`).
    pub strength: f64,
    /// Inpainting: the mask's path (white = repainted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Inpainting: A1111's "Mask blur" in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_blur: Option<u32>,
    /// Inpainting, A1111's "Only masked" area: its padding in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_masked_padding: Option<u32>,
}

/// A textual-inversion embedding a prompt called.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingUse {
    pub name: String,
    /// A1111's short hash (12 hex digits of the file's SHA-256).
    pub hash: String,
}

/// One LoRA applied to a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraUse {
    pub name: String,
    /// Short hash (10 hex chars), as in A1111's `Lora hashes`.
    pub hash: String,
    pub weight: f64,
}

/// What [`read_png_metadata`] found in a PNG.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PngMetadata {
    /// Easel's own chunk; `None` when absent or not valid JSON for this version (the raw text
    /// is still in `text_chunks`).
    pub easel: Option<GenerationMetadata>,
    /// The `parameters` chunk parsed as A1111 infotext; `None` when absent or when it has no
    /// settings line (the raw text is still in `text_chunks`).
    pub a1111: Option<ParsedParameters>,
    /// Every tEXt/zTXt/iTXt chunk as (keyword, text), in file order, including those after the
    /// image data: ComfyUI's `prompt`/`workflow`, InvokeAI's `invokeai_metadata`, ours.
    pub text_chunks: Vec<(String, String)>,
}

impl PngMetadata {
    /// The text of the first chunk with this keyword (PNG allows repeats; the first wins, as
    /// in Pillow).
    pub fn text(&self, keyword: &str) -> Option<&str> {
        self.text_chunks
            .iter()
            .find(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a PNG could not be written or read. Every variant names the file, because these
/// errors reach the user from batch jobs and gallery scans where the path is the only clue.
#[derive(Debug, thiserror::Error)]
pub enum PngMetaError {
    #[error("cannot write {}: the pixel buffer holds {actual} bytes but {width}x{height} RGB needs {expected}", path.display())]
    WrongBufferLength {
        path: PathBuf,
        width: usize,
        height: usize,
        expected: usize,
        actual: usize,
    },
    #[error("cannot write {}: {width}x{height} is not a valid PNG size (each side must be 1 to 2147483647)", path.display())]
    InvalidSize {
        path: PathBuf,
        width: usize,
        height: usize,
    },
    #[error("cannot write {}: {detail}", path.display())]
    InvalidMetadata { path: PathBuf, detail: String },
    #[error("cannot write {}: {} is not an existing directory", path.display(), dir.display())]
    MissingDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode {} as PNG: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
    #[error("cannot serialise the generation metadata for {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is empty (0 bytes), not a PNG", path.display())]
    Empty { path: PathBuf },
    #[error("{} is not a PNG (it does not start with the PNG signature)", path.display())]
    NotPng { path: PathBuf },
    #[error("{} is a truncated PNG: {detail}", path.display())]
    Truncated { path: PathBuf, detail: String },
    #[error("{} is a corrupt PNG: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}
