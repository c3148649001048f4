//! Textual-inversion embeddings: words learned as vectors, used by name in prompts
//! (`easynegative`, `bad-hands-5`), as A1111 uses them.
//!
//! An embedding file holds one or more vectors per text encoder. A1111 finds an embedding where
//! the prompt's tokens spell its name (the file stem, tokenised the same way), and there puts
//! its vectors in place of the words' own token embeddings, as many positions as it has vectors.
//! Files: A1111's `.pt` (`string_to_param` → `*`, read by the inert pickle reader) and
//! `.safetensors` (`emb_params`), SDXL's (`clip_l` + `clip_g`), and diffusers' (one tensor under
//! the token's name).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::models::tensor_file::{extension, TensorFile};

/// The most vectors an embedding may have (a whole chunk).
pub const MAX_VECTORS: usize = 75;

/// One embedding file, read.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The file stem: the word that calls it in a prompt.
    pub name: String,
    pub path: PathBuf,
    /// A1111's `TI hashes` value: the first 12 hex digits of the file's SHA-256.
    pub hash: String,
    /// [vectors, width], one per text encoder it carries (SDXL: CLIP-L's, then bigG's).
    pub vectors: Vec<Tensor>,
}

impl Embedding {
    /// The vectors for a text encoder of `width`, if the embedding has them.
    pub fn for_width(&self, width: usize) -> Option<&Tensor> {
        self.vectors.iter().find(|t| t.dim(1).ok() == Some(width))
    }

    /// How many prompt positions it takes.
    pub fn len(&self) -> usize {
        self.vectors
            .first()
            .and_then(|t| t.dim(0).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The widths it was trained for ("768", "768 + 1280").
    pub fn widths(&self) -> String {
        let w: Vec<String> = self
            .vectors
            .iter()
            .filter_map(|t| t.dim(1).ok().map(|d| d.to_string()))
            .collect();
        w.join(" + ")
    }
}

/// Why a file is not an embedding; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct EmbeddingError {
    pub path: PathBuf,
    pub msg: String,
}

/// Reads one embedding file.
pub fn load(path: &Path) -> Result<Embedding, EmbeddingError> {
    let err = |msg: String| EmbeddingError {
        path: path.to_path_buf(),
        msg,
    };
    let file = TensorFile::open(path).map_err(|e| err(e.to_string()))?;
    let read = |name: &str| -> Result<Tensor, EmbeddingError> {
        let info = &file.tensors[name];
        let t = file
            .read(name, info, DType::F32, &Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
        // A single vector may be stored flat.
        match t.rank() {
            1 => t.unsqueeze(0).map_err(|e| err(e.to_string())),
            2 => Ok(t),
            n => Err(err(format!(
                "{name} has {n} dimensions, not [vectors, width]"
            ))),
        }
    };
    let names: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
    let vectors = if names.contains(&"clip_l") && names.contains(&"clip_g") {
        vec![read("clip_l")?, read("clip_g")?]
    } else if let Some(name) = ["string_to_param.*", "emb_params"]
        .into_iter()
        .find(|n| names.contains(n))
    {
        vec![read(name)?]
    } else if let [only] = names.as_slice() {
        vec![read(only)?]
    } else {
        return Err(err(format!(
            "not a textual-inversion embedding (tensors: {})",
            names.join(", ")
        )));
    };
    let n = vectors[0].dim(0).map_err(|e| err(e.to_string()))?;
    if n == 0 || n > MAX_VECTORS || vectors.iter().any(|v| v.dim(0).ok() != Some(n)) {
        return Err(err(format!(
            "{n} vectors (an embedding has 1..={MAX_VECTORS}, the same for each encoder)"
        )));
    }
    let hash =
        crate::models::hash::sha256_hex(&[path.to_path_buf()]).map_err(|e| err(e.to_string()))?;
    Ok(Embedding {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_path_buf(),
        hash: hash.chars().take(12).collect(),
        vectors,
    })
}

/// Every embedding in `dirs` (not recursive; `.pt`, `.bin`, `.safetensors`), sorted by name,
/// and the files that are not (with the reason). A name found twice keeps its first file.
pub fn scan(dirs: &[PathBuf]) -> (Vec<Embedding>, Vec<EmbeddingError>) {
    let mut found: Vec<Embedding> = Vec::new();
    let mut skipped = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let kind = extension(&path);
            if !matches!(kind.as_deref(), Some("pt" | "bin" | "safetensors")) || !path.is_file() {
                continue;
            }
            match load(&path) {
                Ok(e) if found.iter().any(|f| f.name == e.name) => {}
                Ok(e) => found.push(e),
                Err(e) => skipped.push(e),
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    (found, skipped)
}
