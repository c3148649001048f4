//! One adapter file, read into memory once and matched against a loaded model.
//!
//! Matching happens before anything is applied and is all-or-nothing: every key must belong to a
//! layer of the model with the right shape, or the load fails naming what did not fit. An
//! adapter that half-applies (say, an SDXL file whose text-encoder keys happen to fit an SD 1.5
//! model) would quietly produce something neither model's users expect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};

use super::header::{read_header, Header};
use super::keys::{parse_keys, underscored, Component, Format, LayerKey, ParsedKeys};
use super::layers::{LoraSlot, LowRankTerm};
use super::library::{guess_family, model_family};
use super::LoraError;
use crate::models::StableDiffusion;

/// An adapter ready to apply: its low-rank factors on the model's device, each bound to a layer.
pub struct Adapter {
    pub path: PathBuf,
    /// The file stem: what `--lora NAME` and `<lora:NAME:…>` refer to.
    pub name: String,
    /// AUTOMATIC1111's short hash (its `Lora hashes`): the first 12 hex digits of the SHA-256 of
    /// the file's tensor data, header excluded, so editing metadata does not change it.
    pub hash: String,
    pub format: Format,
    /// Tensor keys in the file (all of them matched, or loading would have failed).
    pub total_keys: usize,
    /// Bytes the factors occupy in memory (after conversion to the model's dtype).
    pub bytes: usize,
    pub(crate) layers: Vec<MatchedLayer>,
}

/// One adapted layer: which slot, and the term at scale alpha/rank (weight 1).
pub(crate) struct MatchedLayer {
    pub component: Component,
    pub slot_index: usize,
    pub slot_name: String,
    pub term: LowRankTerm,
}

impl Adapter {
    /// Reads `path` and matches it against `model`. The model is not changed.
    pub fn load(path: &Path, model: &StableDiffusion) -> Result<Self, LoraError> {
        let header = read_header(path)?;
        let parsed = parse_keys(header.tensors.keys().map(String::as_str));
        let slots = ModelSlots::of(model);
        let index = SlotIndex::new(&slots, &model.unet);
        let total_keys = header.tensors.len();

        let mut unmatched = parsed.unrecognised.clone();
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        for layer in &parsed.layers {
            let why = match index.find(layer.component, &layer.layer) {
                None => Some(format!("this model has no such {} layer", layer.component)),
                Some(_) if layer.down.is_none() || layer.up.is_none() => {
                    Some("its down/up partner is missing".to_string())
                }
                Some(i) if !seen.insert((layer.component, i)) => {
                    Some("a second entry for the same layer".to_string())
                }
                Some(i) => {
                    found.push((layer, i));
                    None
                }
            };
            if let Some(why) = why {
                unmatched.extend(layer.keys().map(|k| (k.clone(), why.clone())));
            }
        }
        if !unmatched.is_empty() || found.is_empty() {
            unmatched.sort();
            return Err(LoraError::Mismatch {
                path: path.to_path_buf(),
                matched_keys: total_keys - unmatched.len(),
                total_keys,
                hint: family_hint(&header, &parsed, model),
                unmatched,
            });
        }
        let peft = PeftConfigs::from_metadata(&header.metadata)
            .map_err(|msg| LoraError::unsupported(path, msg))?;

        let bytes = std::fs::read(path).map_err(|e| LoraError::io(path, e))?;
        let hash = addnet_hash(&bytes, header.header_len);
        let tensors = candle_core::safetensors::load_buffer(&bytes, &model.device)
            .map_err(|e| LoraError::corrupt(path, format!("unreadable tensor data: {e}")))?;
        drop(bytes);

        let get = |key: &str| -> Result<Tensor, LoraError> {
            let t = tensors.get(key).ok_or_else(|| {
                LoraError::corrupt(path, format!("{key} is in the header but not in the data"))
            })?;
            t.to_dtype(model.dtype)
                .map_err(|e| LoraError::tensor(path, e))
        };
        let mut layers = Vec::with_capacity(found.len());
        let mut mem = 0;
        for (keys, slot_index) in found {
            let (Some(down_key), Some(up_key)) = (&keys.down, &keys.up) else {
                continue;
            };
            let slot = slots.get(keys.component)[slot_index];
            let (down, up) = (get(down_key)?, get(up_key)?);
            let rank = down.dims().first().copied().unwrap_or(1).max(1) as f64;
            let alpha = match &keys.alpha {
                Some(k) => Some(scalar(&get(k)?).map_err(|e| LoraError::tensor(path, e))?),
                None => peft.alpha(keys.component, slot),
            };
            let scale = match alpha {
                Some(a) if peft.rslora(keys.component) => a / rank.sqrt(),
                Some(a) => a / rank,
                None => 1.0,
            };
            let term = LowRankTerm::new(slot.shape(), &down, &up, scale).map_err(|msg| {
                LoraError::Shape {
                    path: path.to_path_buf(),
                    key: down_key.clone(),
                    layer: slot.name().to_string(),
                    msg,
                    matched_keys: total_keys,
                    total_keys,
                }
            })?;
            mem += term.elem_count() * model.dtype.size_in_bytes();
            layers.push(MatchedLayer {
                component: keys.component,
                slot_index,
                slot_name: slot.name().to_string(),
                term,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            name: file_stem(path),
            hash,
            format: parsed.format,
            total_keys,
            bytes: mem,
            layers,
        })
    }

    /// How many layers of each component the adapter changes.
    pub fn layer_counts(&self) -> (usize, usize) {
        let unet = self
            .layers
            .iter()
            .filter(|l| l.component == Component::Unet)
            .count();
        (unet, self.layers.len() - unet)
    }
}

/// The file name without its extension.
pub fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// SHA-256 of everything after the header, as AUTOMATIC1111 (and Civitai's "AutoV3") compute it.
pub fn addnet_hash(file: &[u8], header_len: u64) -> String {
    let start = (8 + header_len as usize).min(file.len());
    let digest = Sha256::digest(&file[start..]);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn scalar(t: &Tensor) -> candle_core::Result<f64> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    v.first()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("empty alpha tensor".into()))
}

/// The model's adaptable layers per component, in the model's fixed order.
pub(crate) struct ModelSlots<'a> {
    pub unet: Vec<&'a LoraSlot>,
    pub text: Vec<&'a LoraSlot>,
    /// SDXL's second text encoder (empty for SD 1.x/2.x).
    pub text_2: Vec<&'a LoraSlot>,
}

impl<'a> ModelSlots<'a> {
    pub fn of(model: &'a StableDiffusion) -> Self {
        Self {
            unet: model.unet.lora_slots(),
            text: model.text_encoder.lora_slots(),
            text_2: model
                .text_encoder_2
                .as_ref()
                .map(|t| t.encoder.lora_slots())
                .unwrap_or_default(),
        }
    }

    pub fn get(&self, c: Component) -> &[&'a LoraSlot] {
        match c {
            Component::Unet => &self.unet,
            Component::TextEncoder => &self.text,
            Component::TextEncoder2 => &self.text_2,
        }
    }
}

/// A slot's name as adapters spell it: text-encoder names without `text_model.`.
pub(crate) fn canonical_name(c: Component, slot: &LoraSlot) -> &str {
    match c {
        Component::TextEncoder | Component::TextEncoder2 => slot
            .name()
            .strip_prefix("text_model.")
            .unwrap_or(slot.name()),
        Component::Unet => slot.name(),
    }
}

struct SlotIndex {
    dotted: HashMap<(Component, String), usize>,
    underscored: HashMap<(Component, String), usize>,
}

impl SlotIndex {
    fn new(slots: &ModelSlots, unet: &crate::models::unet::UNet) -> Self {
        let mut dotted = HashMap::new();
        let mut under = HashMap::new();
        for c in Component::ALL {
            for (i, slot) in slots.get(c).iter().enumerate() {
                let name = canonical_name(c, slot);
                dotted.insert((c, name.to_string()), i);
                under.insert((c, underscored(name)), i);
                // kohya's SDXL files (and some SD 1.x ones) name UNet layers by the original
                // LDM/SGM blocks: `input_blocks.4.1.transformer_blocks.0.attn1.to_q`.
                if let Some(ldm) = (c == Component::Unet)
                    .then(|| unet.ldm_name(name))
                    .flatten()
                {
                    under.insert((c, underscored(&ldm)), i);
                    dotted.insert((c, ldm), i);
                }
            }
        }
        Self {
            dotted,
            underscored: under,
        }
    }

    fn find(&self, c: Component, layer: &LayerKey) -> Option<usize> {
        match layer {
            LayerKey::Dotted(n) => self.dotted.get(&(c, n.clone())).copied(),
            LayerKey::Underscored(n) => self.underscored.get(&(c, n.clone())).copied(),
        }
    }
}

/// What the keys suggest the adapter was made for, when that is not this model.
fn family_hint(header: &Header, parsed: &ParsedKeys, model: &StableDiffusion) -> Option<String> {
    let theirs = guess_family(header, parsed);
    let ours = model_family(model);
    (theirs.is_known() && theirs != ours)
        .then(|| format!("It looks like an adapter for {theirs}; the loaded model is {ours}"))
}

/// diffusers' `lora_adapter_metadata` (the peft `LoraConfig` per component), when present.
#[derive(Default)]
struct PeftConfigs {
    per_component: HashMap<Component, PeftConfig>,
}

struct PeftConfig {
    alpha: f64,
    /// peft's `alpha_pattern`: per-layer alphas, keys matched as `(.*\.)?KEY$`.
    patterns: Vec<(regex::Regex, f64)>,
    rslora: bool,
}

/// peft's `LoraConfig.lora_alpha` default, used when the metadata names a config without one.
const PEFT_DEFAULT_ALPHA: f64 = 8.0;

impl PeftConfigs {
    fn from_metadata(meta: &BTreeMap<String, String>) -> Result<Self, String> {
        let Some(raw) = meta.get("lora_adapter_metadata") else {
            return Ok(Self::default());
        };
        let json: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw)
            .map_err(|e| format!("lora_adapter_metadata is not valid JSON ({e})"))?;
        let mut out = Self::default();
        for (c, prefix) in [
            (Component::Unet, "unet."),
            (Component::TextEncoder, "text_encoder."),
            (Component::TextEncoder2, "text_encoder_2."),
        ] {
            let field = |name: &str| json.get(&format!("{prefix}{name}"));
            if field("r").is_none() && field("lora_alpha").is_none() {
                continue;
            }
            if field("use_dora").and_then(|v| v.as_bool()) == Some(true) {
                return Err(format!("the {c} adapter is DoRA, which is not supported"));
            }
            let patterns = field("alpha_pattern")
                .and_then(|v| v.as_object())
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).ok()?;
                            Some((re, v.as_f64()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.per_component.insert(
                c,
                PeftConfig {
                    alpha: field("lora_alpha")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(PEFT_DEFAULT_ALPHA),
                    patterns,
                    rslora: field("use_rslora").and_then(|v| v.as_bool()) == Some(true),
                },
            );
        }
        Ok(out)
    }

    fn alpha(&self, c: Component, slot: &LoraSlot) -> Option<f64> {
        let cfg = self.per_component.get(&c)?;
        let name = canonical_name(c, slot);
        let prefixed = format!("text_model.{name}");
        for (re, alpha) in &cfg.patterns {
            if re.is_match(name) || (c.is_text() && re.is_match(&prefixed)) {
                return Some(*alpha);
            }
        }
        Some(cfg.alpha)
    }

    fn rslora(&self, c: Component) -> bool {
        self.per_component.get(&c).is_some_and(|p| p.rslora)
    }
}
