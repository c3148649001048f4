//! Finding and opening a component's weight files.
//!
//! Weights are memory-mapped (candle copies each tensor once, into its own storage, when a
//! module asks for it). Only safetensors are read: a pickle `.bin` can execute code, so it is
//! refused with a message that says how to convert it.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::error::{without_backtrace, ModelError};

/// The weight files of one component (`unet/`, `vae/`, `text_encoder/`), opened and checked.
pub struct ComponentWeights {
    /// The files, in the order they were found (one file, or a sharded set).
    pub files: Vec<PathBuf>,
    pub vb: VarBuilder<'static>,
}

/// Reads and parses a component's `config.json` (or any JSON file) with the file named in errors.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::Missing {
                path: path.to_path_buf(),
                what: "config file".into(),
            }
        } else {
            ModelError::io(path, e)
        }
    })?;
    serde_json::from_str(&python_json(&text))
        .map_err(|e| ModelError::bad_config(path, e.to_string()))
}

/// Python's `json` module writes `NaN`, `Infinity` and `-Infinity`, which JSON does not have;
/// diffusers' configs contain them (DPMSolverMultistepScheduler's `lambda_min_clipped` is
/// `-Infinity`). They become `null` here, which every config field reads as "use the default".
pub fn python_json(text: &str) -> std::borrow::Cow<'_, str> {
    const WORDS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    if !WORDS.iter().any(|w| text.contains(w)) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(w) = WORDS.iter().find(|w| rest.starts_with(**w)) {
                out.push_str("null");
                rest = &rest[w.len()..];
                continue;
            }
        }
        if in_string && escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out.into()
}

/// Picks the weight files in `dir`: `<stem>.safetensors`, else the `fp16` variant
/// `<stem>.fp16.safetensors`, else sharded `<stem>-0000N-of-0000M.safetensors`.
pub fn find_weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>, ModelError> {
    let plain = dir.join(format!("{stem}.safetensors"));
    if plain.is_file() {
        return Ok(vec![plain]);
    }
    let fp16 = dir.join(format!("{stem}.fp16.safetensors"));
    if fp16.is_file() {
        return Ok(vec![fp16]);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::Missing {
                path: dir.to_path_buf(),
                what: "component folder".into(),
            }
        } else {
            ModelError::io(dir, e)
        }
    })?;
    let mut shards = Vec::new();
    let mut pickles = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}-")) && name.ends_with(".safetensors") {
            shards.push(entry.path());
        } else if name.ends_with(".bin") || name.ends_with(".ckpt") || name.ends_with(".pt") {
            pickles.push(entry.path());
        }
    }
    shards.sort();
    if !shards.is_empty() {
        return Ok(shards);
    }
    if let Some(p) = pickles.first() {
        return Err(ModelError::unsupported(
            p,
            "pickle weights can execute code and are not loaded; convert them to .safetensors",
        ));
    }
    Err(ModelError::Missing {
        path: plain,
        what: "weights (no .safetensors file in the folder)".into(),
    })
}

/// Memory-maps `files` and checks each is a complete safetensors file before any module reads it,
/// so a truncated download is reported against its file name.
pub fn open(
    files: Vec<PathBuf>,
    dtype: DType,
    device: &Device,
) -> Result<ComponentWeights, ModelError> {
    for f in &files {
        check_safetensors(f)?;
    }
    // SAFETY: the files are mapped read-only; like every mmap user we rely on nobody truncating
    // them while Easel runs. candle copies each tensor out of the map when a module is built.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(|e| {
            ModelError::BadWeights {
                path: files.first().cloned().unwrap_or_default(),
                msg: without_backtrace(e).to_string(),
            }
        })?;
    Ok(ComponentWeights { files, vb })
}

/// Validates the header and data extent of one safetensors file without reading the tensors.
pub fn check_safetensors(path: &Path) -> Result<(), ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    if len == 0 {
        return Err(ModelError::BadWeights {
            path: path.to_path_buf(),
            msg: "the file is empty (0 bytes)".into(),
        });
    }
    // SAFETY: read-only map of a file we just opened; see `open`.
    let mmap =
        unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| ModelError::io(path, e))?;
    safetensors::SafeTensors::deserialize(&mmap).map_err(|e| ModelError::BadWeights {
        path: path.to_path_buf(),
        msg: describe_safetensors_error(&e),
    })?;
    Ok(())
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall
        | E::HeaderTooLarge
        | E::MetadataIncompleteBuffer
        | E::InvalidHeaderLength
        | E::InvalidHeader(_) => {
            format!("truncated, damaged, or another format under this name ({e})")
        }
        _ => e.to_string(),
    }
}

/// Wraps a candle error raised while building a module from `weights` as a config/weights mismatch.
pub fn mismatch(weights: &ComponentWeights, config: &Path, e: candle_core::Error) -> ModelError {
    ModelError::Mismatch {
        weights: weights.files.first().cloned().unwrap_or_default(),
        config: config.to_path_buf(),
        msg: without_backtrace(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn python_json_extensions_become_null_outside_strings() {
        let text =
            r#"{"a": -Infinity, "b": [NaN, Infinity], "c": "NaN -Infinity \" Infinity", "d": 1}"#;
        let v: serde_json::Value = serde_json::from_str(&super::python_json(text)).unwrap();
        assert!(v["a"].is_null() && v["b"][0].is_null() && v["b"][1].is_null());
        assert_eq!(v["c"], "NaN -Infinity \" Infinity");
        assert_eq!(v["d"], 1);
    }
}
