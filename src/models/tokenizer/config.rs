//! Reading a diffusers `tokenizer/` folder: vocab.json, merges.txt, and the special tokens
//! of tokenizer_config.json / special_tokens_map.json, combined as transformers 5 does.

use std::path::Path;

use serde_json::Value;

use super::bpe::FastMap;
use super::{TokenizerError, BOS, DEFAULT_MAX_LEN, EOS};

/// A token the tokenizer cuts out of the text before BPE (transformers' `AddedToken`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AddedToken {
    pub(super) content: String,
    pub(super) single_word: bool,
    pub(super) lstrip: bool,
    pub(super) rstrip: bool,
    /// Matched against the normalised (lower-cased) text instead of the raw text.
    pub(super) normalized: bool,
}

impl AddedToken {
    /// A special token given as a plain string: transformers adds it with `normalized=False`.
    pub(super) fn plain(content: &str) -> Self {
        Self {
            content: content.to_owned(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
        }
    }

    /// A token from a config value: a string, or an `AddedToken` dict whose `normalized`
    /// defaults differ by file (`default_normalized`). `None` for null or a missing content.
    fn from_json(value: &Value, default_normalized: bool) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self::plain(s)),
            Value::Object(map) => {
                let content = map.get("content")?.as_str()?;
                let flag = |key: &str, default: bool| {
                    map.get(key).and_then(Value::as_bool).unwrap_or(default)
                };
                // `AddedToken(**dict)`: normalized defaults to `not special`.
                let default_normalized = match map.get("special").and_then(Value::as_bool) {
                    Some(special) => !special,
                    None => default_normalized,
                };
                Some(Self {
                    content: content.to_owned(),
                    single_word: flag("single_word", false),
                    lstrip: flag("lstrip", false),
                    rstrip: flag("rstrip", false),
                    normalized: flag("normalized", default_normalized),
                })
            }
            _ => None,
        }
    }
}

/// The special-token attributes transformers registers, in its order: when two share one
/// string (eos, unk and pad are all `<|endoftext|>` in SD 1.x), the last one's flags win.
const SPECIAL_ATTRS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Special tokens and length as read from the config files.
pub(super) struct SpecialConfig {
    /// One entry per [`SPECIAL_ATTRS`] slot.
    pub(super) attrs: [Option<AddedToken>; 7],
    /// `added_tokens_decoder` of tokenizer_config.json, in id order.
    pub(super) decoder: Vec<AddedToken>,
    pub(super) max_len: usize,
}

impl SpecialConfig {
    /// OpenAI's bos/eos/unk with `pad`. `bos_normalized`: false for CLIPTokenizer's own
    /// defaults; true as SD 1.x and SDXL checkpoints' tokenizer files end up flagging it (so
    /// an upper-case `<|STARTOFTEXT|>` in a prompt still becomes the token there, while an
    /// upper-case `<|ENDOFTEXT|>` does not).
    pub(super) fn openai(pad: &str, bos_normalized: bool) -> Self {
        let mut attrs: [Option<AddedToken>; 7] = Default::default();
        attrs[0] = Some(AddedToken {
            normalized: bos_normalized,
            ..AddedToken::plain(BOS)
        });
        attrs[1] = Some(AddedToken::plain(EOS));
        attrs[2] = Some(AddedToken::plain(EOS));
        attrs[4] = Some(AddedToken::plain(pad));
        Self {
            attrs,
            decoder: Vec::new(),
            max_len: DEFAULT_MAX_LEN,
        }
    }

    pub(super) fn attr(&self, name: &str) -> Option<&AddedToken> {
        let slot = SPECIAL_ATTRS.iter().position(|a| *a == name)?;
        self.attrs[slot].as_ref()
    }
}

pub(super) fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(text: &str, path: &Path) -> Result<Value, TokenizerError> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// vocab.json: an object of token → id.
pub(super) fn parse_vocab(text: &str, path: &Path) -> Result<FastMap<String, u32>, TokenizerError> {
    let Value::Object(map) = parse_json(text, path)? else {
        return Err(TokenizerError::invalid(
            path,
            "expected an object of token → id",
        ));
    };
    map.into_iter()
        .map(|(token, id)| {
            let id = id.as_u64().and_then(|id| u32::try_from(id).ok());
            let id = id.ok_or_else(|| {
                TokenizerError::invalid(path, format!("the id of {token:?} is not a u32"))
            })?;
            Ok((token, id))
        })
        .collect()
}

/// merges.txt: `#version` lines, then one `left right` pair per line, best first.
pub(super) fn parse_merges<'a>(
    text: &'a str,
    path: &Path,
) -> Result<Vec<(&'a str, &'a str)>, TokenizerError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("#version"))
        .map(|(i, line)| match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a, b)),
            _ => Err(TokenizerError::invalid(
                path,
                format!(
                    "line {} is not two tokens separated by a space: {line:?}",
                    i + 1
                ),
            )),
        })
        .collect()
}

/// Reads tokenizer_config.json and special_tokens_map.json (both optional) the way
/// transformers 5's `from_pretrained` combines them.
pub(super) fn read_special_config(dir: &Path) -> Result<SpecialConfig, TokenizerError> {
    let mut config = SpecialConfig::openai(EOS, false);
    let config_path = dir.join("tokenizer_config.json");
    let tokenizer_config = read_optional_json(&config_path)?;
    let mut has_decoder = false;
    if let Some(json) = &tokenizer_config {
        for (slot, attr) in SPECIAL_ATTRS.iter().enumerate() {
            if let Some(token) = json.get(attr).and_then(|v| AddedToken::from_json(v, true)) {
                config.attrs[slot] = Some(token);
            }
        }
        if let Some(Value::Object(decoder)) = json.get("added_tokens_decoder") {
            has_decoder = true;
            let mut entries = Vec::new();
            for (id, value) in decoder {
                let id: u64 = id.parse().map_err(|_| {
                    TokenizerError::invalid(&config_path, format!("added token id {id:?}"))
                })?;
                let token = AddedToken::from_json(value, true).ok_or_else(|| {
                    TokenizerError::invalid(
                        &config_path,
                        format!("added token {id} has no content"),
                    )
                })?;
                entries.push((id, token));
            }
            entries.sort_by_key(|(id, _)| *id);
            config.decoder = entries.into_iter().map(|(_, t)| t).collect();
        }
        config.max_len = match json.get("model_max_length") {
            None | Some(Value::Null) => DEFAULT_MAX_LEN,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (3..=1 << 20).contains(n))
                .ok_or_else(|| {
                    TokenizerError::invalid(
                        &config_path,
                        format!("model_max_length {v} is not a usable length (3..=1048576)"),
                    )
                })?,
        };
    }
    // transformers reads special_tokens_map.json only when tokenizer_config.json has no
    // `added_tokens_decoder`; its entries then override the config's.
    if !has_decoder {
        let map_path = dir.join("special_tokens_map.json");
        if let Some(json) = read_optional_json(&map_path)? {
            for (slot, attr) in SPECIAL_ATTRS.iter().enumerate() {
                // Dicts here become `AddedToken(**value, special=True)`: normalized=False
                // unless they say otherwise.
                if let Some(token) = json.get(attr).and_then(|v| AddedToken::from_json(v, false)) {
                    config.attrs[slot] = Some(token);
                }
            }
        }
    }
    // A special token named by string takes the flags of its `added_tokens_decoder` entry.
    for token in config.attrs.iter_mut().flatten() {
        if let Some(entry) = config.decoder.iter().find(|d| d.content == token.content) {
            *token = entry.clone();
        }
    }
    Ok(config)
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_json(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
