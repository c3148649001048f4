//! A folder of adapters, described from their headers alone.
//!
//! Users keep hundreds of adapters (often in a ComfyUI `models/loras` or A1111 `models/Lora`
//! folder); listing them reads only each file's header — rank, alpha, which layers, kohya's
//! training metadata — never the tensor data, so a scan of a big folder takes moments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::adapter::file_stem;
use super::header::{read_header, read_scalar, Header};
use super::keys::{parse_keys, Component, Format, LayerKey, ParsedKeys};
use super::LoraError;
use crate::models::StableDiffusion;

/// How many trigger words (most frequent training tags) are kept per adapter.
const TRIGGER_WORDS: usize = 8;
/// How deep a scan descends into sub-folders (people sort adapters into a level or two).
const SCAN_DEPTH: usize = 4;

/// The base-model family an adapter was made for, as far as its file tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
    Other(String),
    Unknown,
}

impl Family {
    pub fn is_known(&self) -> bool {
        !matches!(self, Family::Unknown)
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Family::Sd1 => f.write_str("SD 1.x"),
            Family::Sd2 => f.write_str("SD 2.x"),
            Family::Sdxl => f.write_str("SDXL"),
            Family::Other(s) => f.write_str(s),
            Family::Unknown => f.write_str("unknown"),
        }
    }
}

/// The family of a loaded model, from its cross-attention width.
pub fn model_family(model: &StableDiffusion) -> Family {
    match model.unet.config.cross_attention_dim() {
        Some(768) => Family::Sd1,
        Some(1024) => Family::Sd2,
        Some(2048) => Family::Sdxl,
        Some(d) => Family::Other(format!("a model with {d}-wide text states")),
        None => Family::Unknown,
    }
}

/// Guesses the family from kohya's `ss_base_model_version`, then from the keys and the width of
/// what the cross-attention and text-encoder layers take in.
pub fn guess_family(header: &Header, parsed: &ParsedKeys) -> Family {
    if let Some(v) = header.metadata.get("ss_base_model_version") {
        let v = v.to_ascii_lowercase();
        if v.starts_with("sdxl") {
            return Family::Sdxl;
        } else if v.starts_with("sd_v1") {
            return Family::Sd1;
        } else if v.starts_with("sd_v2") {
            return Family::Sd2;
        } else if v.starts_with("sd3") {
            return Family::Other("SD3".into());
        } else if v.starts_with("flux") {
            return Family::Other("Flux".into());
        }
    }
    let keys = || header.tensors.keys();
    if keys().any(|k| k.starts_with("lora_te2_") || k.starts_with("text_encoder_2.")) {
        return Family::Sdxl;
    }
    if keys().any(|k| {
        k.starts_with("lora_transformer_")
            || k.starts_with("transformer.")
            || k.contains("double_blocks")
    }) {
        return Family::Other("a transformer model (SD3/Flux)".into());
    }
    // The width a cross-attention key/value projection reads is the text encoder's width.
    let width = |pred: &dyn Fn(&str) -> bool| {
        parsed.layers.iter().find_map(|l| {
            let name = match &l.layer {
                LayerKey::Dotted(n) | LayerKey::Underscored(n) => n,
            };
            if !pred(name) {
                return None;
            }
            header.tensors.get(l.down.as_ref()?)?.shape.get(1).copied()
        })
    };
    let cross = width(&|n| n.contains("attn2") && (n.ends_with("to_k") || n.ends_with("to_v")));
    let text = width(&|n| n.ends_with("q_proj") || n.ends_with("fc1"));
    match cross.or(text) {
        Some(768) => Family::Sd1,
        Some(1024) => Family::Sd2,
        Some(2048) => Family::Sdxl,
        // kohya's sd-scripts names UNet layers by the original blocks for SDXL only.
        _ if keys().any(|k| {
            ["input_blocks_", "middle_block_", "output_blocks_"]
                .iter()
                .any(|b| {
                    k.strip_prefix("lora_unet_")
                        .is_some_and(|r| r.starts_with(b))
                })
        }) =>
        {
            Family::Sdxl
        }
        _ => Family::Unknown,
    }
}

/// Which parts of a model an adapter changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touches {
    pub unet_layers: usize,
    pub text_layers: usize,
    /// Layers adapted through convolutions (4-D factors), of those above.
    pub conv_layers: usize,
    /// Of the convolutions, those with a 3×3 (or larger) kernel: LoCon-style adapters.
    pub conv3x3_layers: usize,
}

/// kohya sd-scripts' training metadata (`ss_*`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KohyaMetadata {
    pub output_name: Option<String>,
    pub sd_model_name: Option<String>,
    pub base_model_version: Option<String>,
    pub network_dim: Option<String>,
    pub network_alpha: Option<String>,
    pub network_module: Option<String>,
    /// The most frequent training tags, most frequent first, with their counts.
    pub trigger_words: Vec<(String, u64)>,
}

/// One adapter as a LoRA folder lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraInfo {
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub format: Format,
    /// Smallest and largest rank over the layers (equal for most adapters).
    pub rank: Option<(usize, usize)>,
    /// The most common alpha (from `.alpha` tensors, or diffusers' metadata); `None` = none
    /// given, meaning scale 1.
    pub alpha: Option<f64>,
    pub touches: Touches,
    pub family: Family,
    pub kohya: KohyaMetadata,
    /// Keys that are not plain LoRA (LoHa, DoRA …); such a file will not load.
    pub unrecognised_keys: usize,
    pub total_keys: usize,
}

impl LoraInfo {
    /// True when every whitespace-separated term of `query` occurs (case-insensitively) in the
    /// name, kohya's output or base-model name, a trigger word, or the family.
    pub fn matches(&self, query: &str) -> bool {
        let mut hay = vec![
            self.name.to_lowercase(),
            self.family.to_string().to_lowercase(),
        ];
        hay.extend(
            [&self.kohya.output_name, &self.kohya.sd_model_name]
                .into_iter()
                .flatten()
                .map(|s| s.to_lowercase()),
        );
        hay.extend(
            self.kohya
                .trigger_words
                .iter()
                .map(|(w, _)| w.to_lowercase()),
        );
        query
            .split_whitespace()
            .map(str::to_lowercase)
            .all(|term| hay.iter().any(|h| h.contains(&term)))
    }

    /// The trigger words as prompt text ("word, word, …").
    pub fn trigger_text(&self) -> String {
        self.kohya
            .trigger_words
            .iter()
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Describes one adapter file from its header.
pub fn inspect(path: &Path) -> Result<LoraInfo, LoraError> {
    let header = read_header(path)?;
    let parsed = parse_keys(header.tensors.keys().map(String::as_str));
    let mut touches = Touches::default();
    let mut ranks = Vec::new();
    let mut alphas: BTreeMap<String, usize> = BTreeMap::new();
    for layer in &parsed.layers {
        let Some(down) = layer.down.as_ref().and_then(|k| header.tensors.get(k)) else {
            continue;
        };
        match layer.component {
            Component::Unet => touches.unet_layers += 1,
            Component::TextEncoder | Component::TextEncoder2 => touches.text_layers += 1,
        }
        if let [r, _, kh, _] = down.shape[..] {
            touches.conv_layers += 1;
            if kh > 1 {
                touches.conv3x3_layers += 1;
            }
            ranks.push(r);
        } else if let Some(&r) = down.shape.first() {
            ranks.push(r);
        }
        if let Some(a) = layer
            .alpha
            .as_ref()
            .and_then(|k| read_scalar(path, &header, k))
        {
            *alphas.entry(format!("{a}")).or_default() += 1;
        }
    }
    let alpha = alphas
        .iter()
        .max_by_key(|(_, n)| **n)
        .and_then(|(a, _)| a.parse().ok())
        .or_else(|| peft_alpha(&header));
    Ok(LoraInfo {
        name: file_stem(path),
        path: path.to_path_buf(),
        size_bytes: header.file_len,
        format: parsed.format,
        rank: ranks
            .iter()
            .min()
            .zip(ranks.iter().max())
            .map(|(a, b)| (*a, *b)),
        alpha,
        touches,
        family: guess_family(&header, &parsed),
        kohya: kohya_metadata(&header.metadata),
        unrecognised_keys: parsed.unrecognised.len(),
        total_keys: header.tensors.len(),
    })
}

fn peft_alpha(header: &Header) -> Option<f64> {
    let raw = header.metadata.get("lora_adapter_metadata")?;
    let json: serde_json::Value = serde_json::from_str(raw).ok()?;
    json.get("unet.lora_alpha")
        .or_else(|| json.get("text_encoder.lora_alpha"))?
        .as_f64()
}

fn kohya_metadata(meta: &BTreeMap<String, String>) -> KohyaMetadata {
    let get = |k: &str| meta.get(k).filter(|v| !v.is_empty()).cloned();
    KohyaMetadata {
        output_name: get("ss_output_name"),
        sd_model_name: get("ss_sd_model_name"),
        base_model_version: get("ss_base_model_version"),
        network_dim: get("ss_network_dim"),
        network_alpha: get("ss_network_alpha"),
        network_module: get("ss_network_module"),
        trigger_words: meta
            .get("ss_tag_frequency")
            .map(|t| top_tags(t, TRIGGER_WORDS))
            .unwrap_or_default(),
    }
}

/// kohya's `ss_tag_frequency` is `{dataset folder: {tag: count}}`; the tags used most across
/// all folders are what the adapter was trained to respond to.
pub fn top_tags(json: &str, n: usize) -> Vec<(String, u64)> {
    let Ok(serde_json::Value::Object(dirs)) = serde_json::from_str::<serde_json::Value>(json)
    else {
        return Vec::new();
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for tags in dirs.values() {
        if let serde_json::Value::Object(tags) = tags {
            for (tag, count) in tags {
                let tag = tag.trim();
                if !tag.is_empty() {
                    *counts.entry(tag.to_string()).or_default() += count.as_u64().unwrap_or(0);
                }
            }
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// One file a scan found: its description, or why it could not be read.
pub type ScanEntry = Result<LoraInfo, LoraError>;

/// Lists the adapters under `dir` (sub-folders included), sorted by name. Files that cannot be
/// read are listed with their error rather than hidden; pickle files are listed as refused.
pub fn scan(dir: &Path) -> Result<Vec<ScanEntry>, LoraError> {
    let mut files = Vec::new();
    collect(dir, SCAN_DEPTH, &mut files).map_err(|e| LoraError::io(dir, e))?;
    let mut out: Vec<ScanEntry> = files.iter().map(|p| inspect(p)).collect();
    out.sort_by_key(|e| match e {
        Ok(i) => (i.name.to_lowercase(), i.path.clone()),
        Err(_) => (String::from("\u{10ffff}"), PathBuf::new()),
    });
    Ok(out)
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            if depth > 0 {
                // An unreadable sub-folder should not hide the rest of the library.
                let _ = collect(&path, depth - 1, out);
            }
        } else if is_adapter_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_adapter_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            matches!(
                e.to_ascii_lowercase().as_str(),
                "safetensors" | "pt" | "ckpt"
            )
        })
        .unwrap_or(false)
}

/// Finds the adapter called `name` in `dirs`: by file stem (exact, then ignoring case), then by
/// kohya's `ss_output_name`, which is what many users know an adapter by.
pub fn find_by_name(dirs: &[PathBuf], name: &str) -> Result<PathBuf, LoraError> {
    let mut files = Vec::new();
    for dir in dirs {
        // A missing folder just has nothing in it.
        let _ = collect(dir, SCAN_DEPTH, &mut files);
    }
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"));
    let by_stem = |exact: bool| {
        files.iter().find(|p| {
            let stem = file_stem(p);
            if exact {
                stem == name
            } else {
                stem.eq_ignore_ascii_case(name)
            }
        })
    };
    if let Some(p) = by_stem(true).or_else(|| by_stem(false)) {
        return Ok(p.clone());
    }
    for p in &files {
        if let Ok(h) = read_header(p) {
            if h.metadata.get("ss_output_name").map(String::as_str) == Some(name) {
                return Ok(p.clone());
            }
        }
    }
    Err(LoraError::NotFound {
        name: name.to_string(),
        searched: dirs.to_vec(),
    })
}

/// AUTOMATIC1111's short hash of an adapter file (see [`super::Adapter::hash`]), streamed so a
/// large file is not held in memory.
pub fn short_hash(path: &Path) -> Result<String, LoraError> {
    let header = read_header(path)?;
    let full = crate::models::hash::sha256_hex_from(path, 8 + header.header_len)
        .map_err(|e| LoraError::io(path, e))?;
    Ok(full.chars().take(12).collect())
}

/// The folders searched for adapters named without a path when none are configured:
/// `EASEL_LORA_DIR` (a path list, like `PATH`), then the bundled `models/loras` (the default
/// model's demo adapter).
pub fn default_lora_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("EASEL_LORA_DIR")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(crate::settings::bundled_lora_dir());
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_tags_merge_folders_and_sort_by_count() {
        let json = r#"{"10_a": {"x": 3, " y": 5}, "5_b": {"x": 4, "z": 1}}"#;
        assert_eq!(
            top_tags(json, 2),
            vec![("x".to_string(), 7), ("y".to_string(), 5)]
        );
        assert!(top_tags("not json", 3).is_empty());
    }
}
