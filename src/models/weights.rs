//! Finding a component's weight files and reading them into modules.
//!
//! Every model Easel loads, folder or single file, is built through [`WeightMap`]: a
//! `VarBuilder` backend that reads each tensor from its file when a module asks for it
//! (see [`super::tensor_file`]) under the name the module asks with. In a diffusers folder
//! those are the file's own names; a single-file checkpoint maps its own names onto them.
//! Nothing stays mapped after loading. In folders only safetensors are read: a pickle `.bin`
//! is refused with a message that says how to convert it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use super::error::{without_backtrace, ModelError};
use super::tensor_file::{TensorFile, TensorFileError, TensorInfo};

/// The weight files of one component (`unet/`, `vae/`, `text_encoder/`), opened and checked.
pub struct ComponentWeights {
    /// The files, in the order they were found (one file, or a sharded set).
    pub files: Vec<PathBuf>,
    pub vb: VarBuilder<'static>,
    /// Tensors the modules asked for that the files lack (see [`check_complete`]).
    pub missing: Arc<Mutex<Vec<String>>>,
}

impl ComponentWeights {
    /// The weights of a component whose names `map` provides, stored as `dtype`: F32, or F16 /
    /// BF16 for the convolution and linear weights (`--dtype`; see [`WeightMap::stored_dtype`])
    /// with every module still computing in f32.
    pub fn from_map(files: Vec<PathBuf>, map: WeightMap, dtype: DType, device: &Device) -> Self {
        let missing = map.missing.clone();
        let map = WeightMap {
            half: matches!(dtype, DType::F16 | DType::BF16).then_some(dtype),
            ..map
        };
        Self {
            files,
            vb: map.var_builder(DType::F32, device),
            missing,
        }
    }
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

/// Opens `files` (one component's safetensors, possibly sharded) and checks every header
/// before any module reads a tensor, so a truncated download is reported against its file name.
pub fn open(
    files: Vec<PathBuf>,
    dtype: DType,
    device: &Device,
) -> Result<ComponentWeights, ModelError> {
    open_with(files, dtype, device, false)
}

/// [`open`]; with `shapes_only`, no tensor is read (see [`WeightMap::shapes_only`]).
pub fn open_with(
    files: Vec<PathBuf>,
    dtype: DType,
    device: &Device,
    shapes_only: bool,
) -> Result<ComponentWeights, ModelError> {
    let mut entries = HashMap::new();
    let mut opened = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let file = TensorFile::open(f).map_err(|e| file_error(f, e))?;
        for (name, info) in &file.tensors {
            entries.insert(
                name.clone(),
                Entry {
                    file: i,
                    source: name.clone(),
                    info: info.clone(),
                },
            );
        }
        opened.push(Arc::new(file));
    }
    let mut map = WeightMap::new(opened, entries, Arc::default());
    map.shapes_only = shapes_only;
    Ok(ComponentWeights::from_map(files, map, dtype, device))
}

/// A weight-file error as a [`ModelError`] naming the file.
pub fn file_error(path: &Path, e: TensorFileError) -> ModelError {
    match e {
        TensorFileError::Io { source } => ModelError::io(path, source),
        TensorFileError::Pickle(e) => ModelError::BadCheckpoint {
            path: path.to_path_buf(),
            msg: e.to_string(),
        },
        TensorFileError::BadHeader(m) => ModelError::BadWeights {
            path: path.to_path_buf(),
            msg: format!("truncated, damaged, or another format under this name ({m})"),
        },
        e => ModelError::BadWeights {
            path: path.to_path_buf(),
            msg: e.to_string(),
        },
    }
}

/// Checks the header and data extent of one safetensors file without reading the tensors.
pub fn check_safetensors(path: &Path) -> Result<(), ModelError> {
    TensorFile::open(path).map_err(|e| file_error(path, e))?;
    Ok(())
}

/// Where one tensor a module asks for comes from.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index into the map's files.
    pub file: usize,
    /// The tensor's name in that file (a single-file checkpoint names it differently).
    pub source: String,
    pub info: TensorInfo,
}

/// The tensors one component's modules may ask for, by the names they ask with, read from
/// their files on demand (the `VarBuilder` backend for every model Easel loads).
///
/// A tensor that is not there is recorded and stood in for by zeros, so that building a
/// module lists *every* missing tensor at once; the caller turns a non-empty list into an
/// error before the model is used. The source names that were read are recorded too, so a
/// single-file loader can name the tensors nothing asked for.
pub struct WeightMap {
    files: Vec<Arc<TensorFile>>,
    entries: HashMap<String, Entry>,
    pub used: Arc<Mutex<BTreeSet<String>>>,
    pub missing: Arc<Mutex<Vec<String>>>,
    /// Checks names and shapes only: every tensor is a zero-sized stand-in (tests of key
    /// layouts on full-size architectures without their gigabytes).
    shapes_only: bool,
    /// The 16-bit type the large weight matrices are kept in, if any.
    half: Option<DType>,
}

impl WeightMap {
    pub fn new(
        files: Vec<Arc<TensorFile>>,
        entries: HashMap<String, Entry>,
        used: Arc<Mutex<BTreeSet<String>>>,
    ) -> Self {
        Self {
            files,
            entries,
            used,
            missing: Arc::default(),
            shapes_only: false,
            half: None,
        }
    }

    /// The dtype a tensor is kept in: the half type for the weights of convolutions, linear
    /// layers and embeddings (every `weight` of rank ≥ 2: 99.9% of a model's bytes), which
    /// `crate::ops` widens a layer at a time, and what was asked for (f32) for everything else
    /// (norms, biases), which the modules use as they are.
    fn stored_dtype(&self, name: &str, rank: usize, requested: DType) -> DType {
        match self.half {
            Some(half) if requested == DType::F32 && rank >= 2 && name.ends_with("weight") => half,
            _ => requested,
        }
    }

    /// Names and shapes are checked and nothing is read: every tensor is a zero stand-in.
    pub fn shapes_only(mut self, yes: bool) -> Self {
        self.shapes_only = yes;
        self
    }

    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// The names modules asked for that were not there.
    pub fn take_missing(missing: &Mutex<Vec<String>>) -> Vec<String> {
        missing
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }

    fn read(
        &self,
        name: &str,
        e: &Entry,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Ok(mut used) = self.used.lock() {
            used.insert(e.source.clone());
        }
        if self.shapes_only {
            // What a real read would refuse, a check refuses too.
            if !e.info.dtype.is_readable() {
                return Err(candle_core::Error::Msg(format!(
                    "tensor {}: {}",
                    e.source,
                    super::tensor_file::unreadable(e.info.dtype)
                )));
            }
            return stand_in(&e.info.shape, dtype, dev);
        }
        let file = &self.files[e.file];
        file.read(&e.source, &e.info, dtype, dev).map_err(|err| {
            candle_core::Error::Msg(format!("{}: {name}: {err}", file.path.display()))
        })
    }
}

/// Zeros of `shape` that take no memory (a broadcast scalar).
fn stand_in(shape: &[usize], dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

/// Shapes equal up to size-1 axes: a 1×1 convolution stored where a linear layer reads it
/// (VAE attention in LDM checkpoints) is the same matrix.
fn same_up_to_unit_axes(a: &[usize], b: &[usize]) -> bool {
    a.iter()
        .filter(|&&d| d != 1)
        .eq(b.iter().filter(|&&d| d != 1))
        && a.iter().product::<usize>() == b.iter().product::<usize>()
}

impl SimpleBackend for WeightMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(e) = self.entries.get(name) else {
            if let Ok(mut m) = self.missing.lock() {
                m.push(name.to_string());
            }
            return stand_in(s.dims(), dtype, dev);
        };
        if e.info.shape.as_slice() != s.dims() {
            if !same_up_to_unit_axes(&e.info.shape, s.dims()) {
                return Err(candle_core::Error::Msg(format!(
                    "tensor {} has shape {:?}, the model needs shape {:?}",
                    e.source,
                    e.info.shape,
                    s.dims()
                )));
            }
            let dtype = self.stored_dtype(name, s.rank(), dtype);
            return self.read(name, e, dtype, dev)?.reshape(s);
        }
        let dtype = self.stored_dtype(name, s.rank(), dtype);
        self.read(name, e, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor {name}")))?;
        self.read(name, e, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// Wraps a candle error raised while building a module from `weights` as a config/weights
/// mismatch; call [`check_complete`] first so missing tensors are listed, not stood in for.
pub fn mismatch(weights: &ComponentWeights, config: &Path, e: candle_core::Error) -> ModelError {
    ModelError::Mismatch {
        weights: weights.files.first().cloned().unwrap_or_default(),
        config: config.to_path_buf(),
        msg: without_backtrace(e).to_string(),
    }
}

/// An error naming the tensors a component's config calls for that its files lack.
pub fn check_complete(weights: &ComponentWeights, config: &Path) -> Result<(), ModelError> {
    let missing = WeightMap::take_missing(&weights.missing);
    if missing.is_empty() {
        return Ok(());
    }
    Err(ModelError::Mismatch {
        weights: weights.files.first().cloned().unwrap_or_default(),
        config: config.to_path_buf(),
        msg: missing_list(&missing),
    })
}

/// "missing 3 tensors: a, b, c" (the first few named).
pub fn missing_list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(6).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    format!(
        "missing {} tensor{}: {}{}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
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
