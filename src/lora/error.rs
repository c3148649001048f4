//! What can go wrong with an adapter. Every variant names the file: these errors reach the user
//! from a folder of hundreds of adapters, where the path is the only clue.

use std::fmt::Write as _;
use std::path::PathBuf;

/// How many unmatched layers an error message quotes before summarising the rest.
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
    // One entry per layer (its down, up and alpha keys share the reason), file order.
    let mut groups: Vec<(&str, Vec<&str>, &str)> = Vec::new();
    for (key, why) in unmatched {
        let (base, role) = split_role(key);
        match groups.last_mut() {
            Some((b, roles, w)) if *b == base && *w == why.as_str() => roles.push(role),
            _ => groups.push((base, vec![role], why)),
        }
    }
    for (base, roles, why) in groups.iter().take(QUOTED_KEYS) {
        let roles = if roles.len() == 1 {
            roles[0].to_string()
        } else {
            format!("{{{}}}", roles.join(","))
        };
        let _ = write!(s, " {base}{roles} ({why});");
    }
    if groups.len() > QUOTED_KEYS {
        let shown: usize = groups.iter().take(QUOTED_KEYS).map(|g| g.1.len()).sum();
        let _ = write!(s, " and {} more keys;", unmatched.len() - shown);
    }
    s.pop();
    if let Some(h) = hint {
        let _ = write!(s, ". {h}");
    }
    s.push_str(". Nothing was applied");
    s
}

/// `layer.lora_down.weight` → (`layer`, `.lora_down.weight`), for the roles LoRA files use.
fn split_role(key: &str) -> (&str, &str) {
    const ROLES: [&str; 8] = [
        ".lora_down.weight",
        ".lora_up.weight",
        ".lora_A.weight",
        ".lora_B.weight",
        ".down.weight",
        ".up.weight",
        ".alpha",
        ".weight",
    ];
    ROLES
        .iter()
        .find_map(|r| key.strip_suffix(r).map(|b| (b, &key[b.len()..])))
        .unwrap_or((key, ""))
}

fn describe_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "any LoRA folder (add one in the studio's LoRA tab, or pass --lora-dir DIR, or \
                set EASEL_LORA_DIR)"
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
