//! CLIP's text transformer, as Stable Diffusion uses it: token ids → per-token hidden states.
//!
//! Written here rather than taken from candle-transformers because candle's SD text model only
//! builds fixed presets and its general CLIP text model knows quick-GELU alone; SD 2.x uses exact
//! GELU, and the LoRA manager will need to reach into these projections. The tensor names follow
//! transformers' `CLIPTextModel` (`text_model.encoder.layers.N.self_attn.q_proj` …); checkpoints
//! saved without the `text_model.` prefix load too.

use std::path::Path;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use super::error::ModelError;
use crate::lora::{LoraLinear, LoraSlot};

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<LoraLinear> {
    LoraLinear::new(in_dim, out_dim, true, vb)?.stored_transposed()
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_positions() -> usize {
    77
}

/// transformers' `CLIPTextConfig` (the fields the forward pass needs).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// `CLIPTextModelWithProjection`'s output width (SDXL's second encoder).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

impl ClipTextConfig {
    pub fn from_file(path: &Path) -> std::result::Result<Self, ModelError> {
        let cfg: Self = super::weights::read_json(path)?;
        cfg.activation(path)?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(ModelError::bad_config(
                path,
                format!(
                    "hidden_size {} does not split into {} attention heads",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        Ok(cfg)
    }

    fn activation(&self, path: &Path) -> std::result::Result<Activation, ModelError> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            other => Err(ModelError::unsupported(
                path,
                format!("hidden_act {other:?}"),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    GeluErf,
    GeluTanh,
}

impl Activation {
    /// Applies the activation to a layer's fresh output (in place where it can).
    fn apply(&self, xs: Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => crate::ops::quick_gelu(xs),
            Activation::GeluErf => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
        }
    }
}

struct Attention {
    q_proj: LoraLinear,
    k_proj: LoraLinear,
    v_proj: LoraLinear,
    out_proj: LoraLinear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let h = c.hidden_size;
        Ok(Self {
            q_proj: linear(h, h, vb.pp("q_proj"))?,
            k_proj: linear(h, h, vb.pp("k_proj"))?,
            v_proj: linear(h, h, vb.pp("v_proj"))?,
            out_proj: linear(h, h, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
        })
    }

    fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        out.extend([
            self.q_proj.slot(),
            self.k_proj.slot(),
            self.v_proj.slot(),
            self.out_proj.slot(),
        ]);
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let q = self.q_proj.forward(xs)?;
        let k = self.k_proj.forward(xs)?;
        let v = self.v_proj.forward(xs)?;
        // softmax(q·kᵀ/√d + causal mask)·v, the mask applied inside the kernel.
        let out = crate::ops::causal_attention(&q, &k, &v, self.heads)?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    fc1: LoraLinear,
    fc2: LoraLinear,
    layer_norm2: LayerNorm,
    act: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &ClipTextConfig, act: Activation) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(vb.pp("self_attn"), c)?,
            layer_norm1: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: linear(c.hidden_size, c.intermediate_size, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(c.intermediate_size, c.hidden_size, vb.pp("mlp").pp("fc2"))?,
            layer_norm2: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            act,
        })
    }

    fn lora_slots<'a>(&'a self, out: &mut Vec<&'a LoraSlot>) {
        self.self_attn.lora_slots(out);
        out.extend([self.fc1.slot(), self.fc2.slot()]);
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let attn = self.self_attn.forward(&self.layer_norm1.forward(xs)?)?;
        let xs = crate::ops::add_in_place(attn, xs)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let mlp = self.fc2.forward(&self.act.apply(hidden)?)?;
        crate::ops::add_in_place(mlp, &xs)
    }
}

/// Vectors that take the place of token embeddings: `vectors` [n, width] at `offset..offset+n`
/// of batch row `row` (a textual-inversion embedding).
#[derive(Debug, Clone)]
pub struct Placed {
    pub row: usize,
    pub offset: usize,
    pub vectors: Tensor,
}

/// The text encoder: ids [batch, seq] → last hidden state [batch, seq, hidden] after the final
/// layer norm, which is what the SD UNet cross-attends to.
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    /// `CLIPTextModelWithProjection`'s `text_projection` (SDXL's second encoder): maps the
    /// pooled state to the embedding SDXL's UNet takes beside the text states.
    text_projection: Option<candle_nn::Linear>,
    pub config: ClipTextConfig,
}

impl ClipTextModel {
    pub fn new(
        vb: VarBuilder,
        config: ClipTextConfig,
        config_path: &Path,
    ) -> std::result::Result<Self, super::error::BuildError> {
        use super::error::BuildError as E;
        let act = config.activation(config_path).map_err(E::Config)?;
        Self::build(vb, config, act, None).map_err(E::Weights)
    }

    /// A `CLIPTextModelWithProjection` (SDXL's second text encoder): also reads
    /// `text_projection`, [projection_dim, hidden_size], for the pooled embedding.
    pub fn with_projection(
        vb: VarBuilder,
        config: ClipTextConfig,
        projection_dim: usize,
        config_path: &Path,
    ) -> std::result::Result<Self, super::error::BuildError> {
        use super::error::BuildError as E;
        let act = config.activation(config_path).map_err(E::Config)?;
        Self::build(vb, config, act, Some(projection_dim)).map_err(E::Weights)
    }

    fn build(
        vb: VarBuilder,
        c: ClipTextConfig,
        act: Activation,
        projection_dim: Option<usize>,
    ) -> Result<Self> {
        let text_projection = match projection_dim {
            Some(dim) => Some(candle_nn::linear_no_bias(
                c.hidden_size,
                dim,
                vb.pp("text_projection"),
            )?),
            None => None,
        };
        // Real SD checkpoints carry the `text_model.` prefix; transformers 5 saves without it.
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let token_embedding = embedding(c.vocab_size, c.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = embedding(
            c.max_position_embeddings,
            c.hidden_size,
            emb.pp("position_embedding"),
        )?;
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(layers_vb.pp(i), &c, act))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            config: c,
        })
    }

    /// Every layer an adapter can attach to, in a fixed order (see [`crate::lora`]). Slot names
    /// carry the checkpoint's own prefix (`text_model.` or none).
    pub fn lora_slots(&self) -> Vec<&LoraSlot> {
        let mut out = Vec::new();
        for layer in &self.layers {
            layer.lora_slots(&mut out);
        }
        out
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_skipping(ids, 1)
    }

    /// The hidden states after layer `len - (clip_skip - 1)`, through the final layer norm:
    /// A1111's "Clip skip" (1 = the last layer; 2 = the one before, which many SD 1.x
    /// fine-tunes were trained on), the same as diffusers' `clip_skip = clip_skip - 1`.
    pub fn forward_skipping(&self, ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        self.forward_placed(ids, clip_skip, &[])
    }

    /// [`Self::forward_skipping`] with textual-inversion vectors in place of some positions'
    /// token embeddings.
    fn forward_placed(&self, ids: &Tensor, clip_skip: usize, placed: &[Placed]) -> Result<Tensor> {
        let mut xs = self.embed(ids, placed)?;
        let used = self.layers.len() + 1 - clip_skip.clamp(1, self.layers.len());
        for layer in &self.layers[..used] {
            xs = layer.forward(&xs)?;
        }
        self.final_layer_norm.forward(&xs)
    }

    /// Token plus position embeddings: [batch, seq, hidden]; `placed` vectors replace token
    /// embeddings (A1111 replaces them before the positions are added, as here).
    fn embed(&self, ids: &Tensor, placed: &[Placed]) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?;
        // Embedding tables may be kept in half precision (`--dtype`); the looked-up rows are
        // widened to the dtype the model computes in, its norms'.
        let dtype = self.final_layer_norm.weight().dtype();
        let mut tokens = self.token_embedding.forward(ids)?.to_dtype(dtype)?;
        for p in placed {
            let (n, width) = p.vectors.dims2()?;
            let v = p
                .vectors
                .to_dtype(dtype)?
                .to_device(ids.device())?
                .unsqueeze(0)?;
            if p.offset + n > seq {
                candle_core::bail!(
                    "an embedding's {n} vectors do not fit at position {}",
                    p.offset
                );
            }
            tokens =
                tokens.slice_assign(&[p.row..p.row + 1, p.offset..p.offset + n, 0..width], &v)?;
        }
        tokens.broadcast_add(
            &self
                .position_embedding
                .forward(&positions)?
                .to_dtype(dtype)?,
        )
    }

    /// SDXL's use of a text encoder: the hidden states after all but `clip_skip` layers, with
    /// no final layer norm (clip skip 1 = the penultimate layer, diffusers' `hidden_states[-2]`;
    /// N = `hidden_states[-(N + 1)]`), and, for a model with a projection, the pooled embedding:
    /// the final-norm state at each row's first `eos` token, projected (transformers'
    /// `text_embeds`).
    pub fn encode_hidden(
        &self,
        ids: &[Vec<u32>],
        eos: u32,
        device: &Device,
        clip_skip: usize,
        placed: &[Placed],
    ) -> Result<(Tensor, Option<Tensor>)> {
        let n = self.layers.len();
        let keep = n - clip_skip.clamp(1, n);
        let mut xs = self.embed(&Self::batch(ids, device)?, placed)?;
        let mut hidden = (keep == 0).then(|| xs.clone());
        let run = if self.text_projection.is_some() {
            n
        } else {
            keep
        };
        for (i, layer) in self.layers[..run].iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i + 1 == keep {
                hidden = Some(xs.clone());
            }
        }
        let hidden = hidden.unwrap_or_else(|| xs.clone());
        let Some(projection) = &self.text_projection else {
            return Ok((hidden, None));
        };
        let last = self.final_layer_norm.forward(&xs)?;
        let rows = ids
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let at = row
                    .iter()
                    .position(|&t| t == eos)
                    .unwrap_or(row.len().saturating_sub(1));
                last.get(b)?.narrow(0, at, 1)
            })
            .collect::<Result<Vec<_>>>()?;
        let pooled = crate::ops::linear(&Tensor::cat(&rows, 0)?, projection)?;
        Ok((hidden, Some(pooled)))
    }

    fn batch(ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let rows = ids
            .iter()
            .map(|ids| Tensor::new(ids.as_slice(), device))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }

    /// Encodes tokenised prompts of one length as a batch: [prompts, seq, hidden]. (The prompt
    /// and the negative of a guided run go together: one pass over the weights for both.)
    pub fn encode_batch(
        &self,
        ids: &[Vec<u32>],
        device: &Device,
        clip_skip: usize,
        placed: &[Placed],
    ) -> Result<Tensor> {
        self.forward_placed(&Self::batch(ids, device)?, clip_skip, placed)
    }

    /// The width of its token embeddings (which textual-inversion vectors must have).
    pub fn width(&self) -> usize {
        self.config.hidden_size
    }

    /// The number of transformer layers (the largest useful clip skip).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
