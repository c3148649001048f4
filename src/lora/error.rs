//! What can go wrong with an adapter. Every variant names the file: these errors reach the user
//! from a folder of hundreds of adapters, where the path is the only clue.

use std::fmt::Write as _;
use std::path::PathBuf;

/// How many unmatched keys an error message quotes before summarising the rest.
const QUOTED_KEYS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a safetensors file, or a damaged one.
    #[error("{}: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    /// A format Easel refuses to read (pickle) or a kind of adapter it does not implement.
    #[error("{}: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// Some keys do not belong to any layer of the loaded model. Nothing was applied.
    #[error("{}", describe_mismatch(path, *matched_keys, *total_keys, unmatched, hint.as_deref()))]
    Mismatch {
        path: PathBuf,
        matched_keys: usize,
        total_keys: usize,
        /// Each unmatched key with why it did not match, in file order.
        unmatched: Vec<(String, String)>,
        /// A guess at what the adapter was made for, when the keys say so (e.g. SDXL).
        hint: Option<String>,
    },
    /// A key names a layer of the model but its tensor has the wrong shape. Nothing was applied.
    #[error("{}: {key}: {msg} (layer {layer}; {matched_keys} of {total_keys} keys matched by name — this adapter was made for a model of another size)", path.display())]
    Shape {
        path: PathBuf,
        key: String,
        layer: String,
        msg: String,
        matched_keys: usize,
        total_keys: usize,
    },
    /// The adapter was matched against another model than the one it is applied to.
    #[error("{}: was loaded for another model ({layer} is not where it was); load it again for this one", path.display())]
    StaleModel { path: PathBuf, layer: String },
    /// A name given on the command line or in a `<lora:…>` tag that no LoRA folder holds.
    #[error("no LoRA named {name:?} in {}", describe_dirs(searched))]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("{}: {source}", path.display())]
    Tensor {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
}

fn describe_mismatch(
    path: &std::path::Path,
    matched: usize,
    total: usize,
    unmatched: &[(String, String)],
    hint: Option<&str>,
) -> String {
    let mut s = format!(
        "{}: {matched} of {total} keys match this model's layers; not matched:",
        path.display()
    );
    for (key, why) in unmatched.iter().take(QUOTED_KEYS) {
        let _ = write!(s, " {key} ({why});");
    }
    if unmatched.len() > QUOTED_KEYS {
        let _ = write!(s, " and {} more;", unmatched.len() - QUOTED_KEYS);
    }
    s.pop();
    if let Some(h) = hint {
        let _ = write!(s, ". {h}");
    }
    s.push_str(". Nothing was applied");
    s
}

fn describe_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "any folder (give --lora-dir DIR or set EASEL_LORA_DIR, or pass a file path)"
            .into();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl LoraError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn corrupt(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn unsupported(path: &std::path::Path, msg: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn tensor(path: &std::path::Path, source: candle_core::Error) -> Self {
        Self::Tensor {
            path: path.to_path_buf(),
            source,
        }
    }
}
