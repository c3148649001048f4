//! CLIP text and image embeddings from a transformers-layout CLIP folder.
//!
//! The towers are candle-transformers' (`ClipTextTransformer`, `ClipVisionTransformer`), built
//! from the folder's `config.json` so a tiny test CLIP and OpenAI's ViT-B/32 or ViT-L/14 run the
//! same code. Two things are ours, because candle's `ClipModel` does not match transformers
//! there:
//!
//! - the projection width is the top-level `projection_dim` (candle reads the tower's), and
//! - text pooling follows transformers' `CLIPTextTransformer`: the hidden state at the *first*
//!   `eos_token_id` (argmax of the ids only for legacy configs with `eos_token_id == 2`). candle
//!   takes the argmax of the ids, which is the EOS only when EOS is the largest id.
//!
//! candle's towers know quick-GELU and ε = 1e-5 alone (OpenAI's CLIPs); other configs are
//! refused with a message instead of giving wrong embeddings. Embeddings are L2-normalised.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear_no_bias, Linear};
use candle_transformers::models::clip::text_model::{
    Activation, ClipTextConfig as CandleTextConfig, ClipTextTransformer,
};
use candle_transformers::models::clip::vision_model::{
    ClipVisionConfig as CandleVisionConfig, ClipVisionTransformer,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::preprocess::PreprocessConfig;
use super::GalleryError;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::{weights, ModelError};

/// transformers' `CLIPConfig`: the fields the forward pass needs, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
}

fn default_projection() -> usize {
    512
}

/// transformers' `CLIPTextConfig` (defaults: OpenAI ViT-B/32's text tower).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    /// transformers 5 allows a list; the first entry is the one pooling uses.
    pub eos_token_id: Option<OneOrMany>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// transformers' `CLIPVisionConfig` (defaults: OpenAI ViT-B/32's vision tower).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let cfg: Self = weights::read_json(path)?;
        let unsupported = |msg: String| ModelError::Unsupported {
            path: path.to_path_buf(),
            msg,
        };
        for (tower, act, eps) in [
            (
                "text",
                &cfg.text_config.hidden_act,
                cfg.text_config.layer_norm_eps,
            ),
            (
                "vision",
                &cfg.vision_config.hidden_act,
                cfg.vision_config.layer_norm_eps,
            ),
        ] {
            if act != "quick_gelu" || (eps - 1e-5).abs() > 1e-12 {
                return Err(unsupported(format!(
                    "{tower}_config has hidden_act {act:?} and layer_norm_eps {eps}; candle-transformers' CLIP implements quick_gelu with 1e-5 (OpenAI's CLIP models)"
                )));
            }
        }
        let v = &cfg.vision_config;
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(ModelError::BadConfig {
                path: path.to_path_buf(),
                msg: format!(
                    "image_size {} is not a multiple of patch_size {}",
                    v.image_size, v.patch_size
                ),
            });
        }
        for (tower, h, heads) in [
            (
                "text",
                cfg.text_config.hidden_size,
                cfg.text_config.num_attention_heads,
            ),
            ("vision", v.hidden_size, v.num_attention_heads),
        ] {
            if heads == 0 || !h.is_multiple_of(heads) {
                return Err(ModelError::BadConfig {
                    path: path.to_path_buf(),
                    msg: format!("{tower} hidden_size {h} does not split into {heads} heads"),
                });
            }
        }
        Ok(cfg)
    }

    fn candle_text(&self) -> CandleTextConfig {
        let t = &self.text_config;
        CandleTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: t.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: self.projection_dim,
        }
    }

    fn candle_vision(&self) -> CandleVisionConfig {
        let v = &self.vision_config;
        CandleVisionConfig {
            embed_dim: v.hidden_size,
            activation: Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: self.projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        }
    }
}

/// How the text tower's output is pooled to one vector (transformers' rule).
#[derive(Debug, Clone, Copy)]
enum Pooling {
    /// Legacy configs (`eos_token_id == 2`): the position of the largest id.
    ArgmaxId,
    /// The first position holding this id.
    FirstEos(u32),
}

/// A loaded CLIP model: tokenizer, both towers, both projections, preprocessing.
pub struct ClipEmbedder {
    text: ClipTextTransformer,
    vision: ClipVisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    tokenizer: ClipTokenizer,
    pooling: Pooling,
    max_positions: usize,
    preprocess: PreprocessConfig,
    model_id: String,
    dir: PathBuf,
    dim: usize,
    device: Device,
}

impl ClipEmbedder {
    /// Loads a transformers CLIP folder: `config.json`, `model.safetensors` and the tokenizer
    /// files (vocab.json + merges.txt; OpenAI's bundled vocabulary when absent), plus
    /// `preprocessor_config.json` when present.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, GalleryError> {
        let config_path = dir.join("config.json");
        let config = ClipConfig::from_file(&config_path)?;
        let files = weights::find_weight_files(dir, "model")?;
        let model_id = model_id(dir, &config_path, &files)?;
        let w = weights::open(files, DType::F32, device)?;
        let mismatch = |e| GalleryError::Model(weights::mismatch(&w, &config_path, e));
        let vb = &w.vb;
        let text = ClipTextTransformer::new(vb.pp("text_model"), &config.candle_text())
            .map_err(mismatch)?;
        let vision = ClipVisionTransformer::new(vb.pp("vision_model"), &config.candle_vision())
            .map_err(mismatch)?;
        let dim = config.projection_dim;
        let text_projection = linear_no_bias(
            config.text_config.hidden_size,
            dim,
            vb.pp("text_projection"),
        )
        .map_err(mismatch)?;
        let visual_projection = linear_no_bias(
            config.vision_config.hidden_size,
            dim,
            vb.pp("visual_projection"),
        )
        .map_err(mismatch)?;
        weights::check_complete(&w, &config_path)?;
        let tokenizer = if dir.join("vocab.json").is_file() {
            ClipTokenizer::from_dir(dir)?
        } else {
            ClipTokenizer::bundled_openai("<|endoftext|>")?
        };
        let pooling = match &config.text_config.eos_token_id {
            Some(OneOrMany::One(2)) => Pooling::ArgmaxId,
            Some(OneOrMany::One(id)) => Pooling::FirstEos(*id),
            Some(OneOrMany::Many(ids)) => {
                Pooling::FirstEos(ids.first().copied().unwrap_or(tokenizer.eos_id()))
            }
            None => Pooling::FirstEos(tokenizer.eos_id()),
        };
        let preprocess = PreprocessConfig::for_model(dir, config.vision_config.image_size)?;
        Ok(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            tokenizer,
            pooling,
            max_positions: config.text_config.max_position_embeddings,
            preprocess,
            model_id,
            dir: dir.to_path_buf(),
            dim,
            device: device.clone(),
        })
    }

    /// Identifies the weights and preprocessing: embeddings from two models with different
    /// ids are not comparable, so the index re-embeds when it changes.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Width of an embedding (`projection_dim`).
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// transformers' `get_text_features` for each row of ids (rows may differ in length and
    /// may carry padding after the EOS): `[rows, projection_dim]`, not normalised.
    pub fn text_features(&self, rows: &[Vec<u32>]) -> Result<Tensor, GalleryError> {
        let err = |e| GalleryError::compute(&self.dir, e);
        let mut pooled = Vec::with_capacity(rows.len());
        for ids in rows {
            let ids = &ids[..ids.len().min(self.max_positions)];
            let pos = self.pool_position(ids);
            let t = Tensor::new(ids, &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(err)?;
            // The causal mask alone, as transformers uses with no attention mask: what follows
            // the EOS cannot change the state at the EOS.
            let hidden = self.text.forward_with_mask(&t, usize::MAX).map_err(err)?;
            pooled.push(hidden.get(0).and_then(|h| h.get(pos)).map_err(err)?);
        }
        Tensor::stack(&pooled, 0)
            .and_then(|p| self.text_projection.forward(&p))
            .map_err(err)
    }

    fn pool_position(&self, ids: &[u32]) -> usize {
        let last = ids.len().saturating_sub(1);
        match self.pooling {
            Pooling::ArgmaxId => ids
                .iter()
                .enumerate()
                // `max_by_key` keeps the last maximum; torch's argmax the first.
                .rev()
                .max_by_key(|(_, &id)| id)
                .map_or(last, |(i, _)| i),
            Pooling::FirstEos(eos) => ids.iter().position(|&id| id == eos).unwrap_or(last),
        }
    }

    /// transformers' `get_image_features`: `[n, 3, s, s]` pixels → `[n, projection_dim]`, not
    /// normalised.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor, GalleryError> {
        self.vision
            .forward(pixels)
            .and_then(|h| self.visual_projection.forward(&h))
            .map_err(|e| GalleryError::compute(&self.dir, e))
    }

    /// The unit-length embedding of a text query.
    pub fn embed_text(&self, text: &str) -> Result<Vec<f32>, GalleryError> {
        let enc = self.tokenizer.encode(text);
        // Without the padding: pooling reads the EOS, and nothing after it matters.
        let len = (enc.n_tokens + 2).min(enc.ids.len());
        let features = self.text_features(&[enc.ids[..len].to_vec()])?;
        self.unit_rows(&features)?
            .pop()
            .ok_or_else(|| GalleryError::Compute {
                path: self.dir.clone(),
                msg: "the text tower returned no rows".into(),
            })
    }

    /// Unit-length embeddings of preprocessed images (each `preprocess().pixels_len()` floats).
    pub fn embed_pixels(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, GalleryError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (h, w) = self.preprocess.crop;
        let flat: Vec<f32> = images.concat();
        let pixels = Tensor::from_vec(flat, (images.len(), 3, h, w), &self.device)
            .map_err(|e| GalleryError::compute(&self.dir, e))?;
        let features = self.image_features(&pixels)?;
        self.unit_rows(&features)
    }

    fn unit_rows(&self, features: &Tensor) -> Result<Vec<Vec<f32>>, GalleryError> {
        let rows = features
            .to_dtype(DType::F32)
            .and_then(|f| f.to_vec2::<f32>())
            .map_err(|e| GalleryError::compute(&self.dir, e))?;
        Ok(rows.into_iter().map(unit).collect())
    }
}

/// Scales a vector to unit length (a zero vector stays zero).
pub fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// `sha256:` + 16 hex digits of config.json, the weights and preprocessor_config.json.
/// Hashing the weights costs about a second for ViT-L/14, paid once per load; a cheaper
/// fingerprint (sizes, dates) would miss a fine-tune saved over the same file name.
fn model_id(dir: &Path, config: &Path, files: &[PathBuf]) -> Result<String, GalleryError> {
    let mut hasher = Sha256::new();
    let preprocessor = dir.join("preprocessor_config.json");
    for path in std::iter::once(config.to_path_buf())
        .chain(files.iter().cloned())
        .chain(preprocessor.is_file().then_some(preprocessor))
    {
        let file = std::fs::File::open(&path).map_err(|e| GalleryError::io(&path, e))?;
        // SAFETY: read-only map, read once right away; see models::weights::open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| GalleryError::io(&path, e))?;
        hasher.update((map.len() as u64).to_le_bytes());
        hasher.update(&map[..]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}
