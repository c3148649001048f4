//! What a single-file checkpoint is, from its tensor names and shapes alone.
//!
//! Everything comes from the header: no tensor is read, so the model library can describe a
//! folder of checkpoints in a fraction of a second. The numbers a shape cannot tell (attention
//! heads, activation, which text-encoder layer to use, sample size) follow the conventions of
//! the real model families, as diffusers' `from_single_file` and ComfyUI apply them:
//!
//! - **SD 1.x** (OpenAI CLIP ViT-L text encoder under `cond_stage_model.transformer.`):
//!   UNet with 8 heads per attention, conv projections; CLIP heads = width / 64, quick-GELU,
//!   last layer.
//! - **SD 2.x** (OpenCLIP ViT-H under `cond_stage_model.model.`): UNet heads of width 64,
//!   linear projections; OpenCLIP heads = width / 64, exact GELU, the penultimate layer (the
//!   last is never read).
//!
//! Anything else (SD3, Flux, depth or pix2pix UNets, LoRAs, VAEs, upscalers…) is named, so
//! the user learns what the file is rather than getting a wrong image.

use std::collections::BTreeMap;

use serde_json::json;

use crate::models::clip_text::ClipTextConfig;
use crate::models::tensor_file::{ElemType, TensorInfo};
use crate::models::unet::UNetConfig;
use crate::models::vae::VaeConfig;

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// SD 2.x saved by Stability's newer (SGM) code; also where an SDXL refiner keeps its only
/// text encoder.
pub const OPEN_CLIP_SGM_PREFIX: &str = "conditioner.embedders.0.model.";
/// SDXL's first text encoder (OpenAI CLIP ViT-L, transformers' names).
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL's second text encoder (OpenCLIP ViT-bigG, with its projection).
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

/// The model families Easel runs from single files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }

    /// The VAE's latent scaling factor (its config's `scaling_factor`).
    pub fn vae_scaling(self) -> f64 {
        match self {
            Family::Sd1 | Family::Sd2 => 0.18215,
            Family::Sdxl => 0.13025,
        }
    }
}

/// Where the text encoder's tensors are and how they are named.
#[derive(Debug, Clone, PartialEq)]
pub enum TextLayout {
    /// OpenAI CLIP in transformers' names (SD 1.x).
    Clip { prefix: &'static str },
    /// OpenCLIP with fused q/k/v (SD 2.x); `layers` of `stored` resblocks are used.
    OpenClip {
        prefix: &'static str,
        layers: usize,
        stored: usize,
    },
}

impl TextLayout {
    pub fn prefix(&self) -> &'static str {
        match self {
            TextLayout::Clip { prefix } | TextLayout::OpenClip { prefix, .. } => prefix,
        }
    }
}

/// A checkpoint Easel can run: its family and the configs its components are built from.
#[derive(Debug, Clone)]
pub struct PipelineLayout {
    pub family: Family,
    pub unet: UNetConfig,
    pub unet_layers_per_block: usize,
    pub text: TextLayout,
    pub text_config: ClipTextConfig,
    /// SDXL's second text encoder (OpenCLIP with `text_projection`).
    pub text_2: Option<(TextLayout, ClipTextConfig)>,
    /// `None` when the file carries no VAE (one must be given).
    pub vae: Option<VaeLayout>,
    /// The weights' precision (the UNet's dominant float type).
    pub precision: ElemType,
    /// ComfyUI's markers: an empty `v_pred` / `ztsnr` tensor in the state dict.
    pub v_pred_marker: bool,
    pub ztsnr_marker: bool,
}

/// An LDM-layout VAE: its config and prefix (`first_stage_model.` in a checkpoint, none in a
/// VAE file of its own).
#[derive(Debug, Clone)]
pub struct VaeLayout {
    pub prefix: &'static str,
    pub config: VaeConfig,
    pub levels: usize,
    /// True for a VAE file in diffusers' own names (no mapping needed).
    pub diffusers_names: bool,
}

/// What a file is.
#[derive(Debug, Clone)]
pub enum Identified {
    Pipeline(Box<PipelineLayout>),
    /// A VAE on its own.
    Vae(VaeLayout),
    /// Something Easel does not run as a model; `what` names it ("an SDXL checkpoint").
    Other {
        what: String,
        hint: &'static str,
    },
}

impl Identified {
    /// The short architecture label the model library shows.
    pub fn label(&self) -> String {
        match self {
            Identified::Pipeline(p) => p.family.label().to_string(),
            Identified::Vae(_) => "VAE".into(),
            Identified::Other { what, .. } => what.clone(),
        }
    }
}

/// What Easel runs, for the one-line answer to a file it does not.
pub const SUPPORTED: &str = "Easel runs SD 1.x, SD 2.x and SDXL checkpoints (single \
     .safetensors/.ckpt files or diffusers folders)";

struct Keys<'a>(&'a BTreeMap<String, TensorInfo>);

impl<'a> Keys<'a> {
    fn shape(&self, name: &str) -> Option<&'a [usize]> {
        self.0.get(name).map(|t| t.shape.as_slice())
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn any_prefix(&self, prefix: &str) -> bool {
        self.0
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }
    fn any(&self, f: impl Fn(&str) -> bool) -> bool {
        self.0.keys().any(|k| f(k))
    }
    /// The distinct `N` in `{prefix}N.…`.
    fn indices(&self, prefix: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self
            .0
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, _)| k[prefix.len()..].split('.').next()?.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
    fn dim(&self, name: &str, axis: usize) -> Result<usize, String> {
        self.shape(name)
            .and_then(|s| s.get(axis).copied())
            .ok_or_else(|| format!("missing tensor {name}"))
    }
}

fn other(what: &str, hint: &'static str) -> Identified {
    Identified::Other {
        what: what.to_string(),
        hint,
    }
}

/// Identifies a file from its tensors. `Err` is a file that looks like an SD checkpoint but
/// whose layout does not add up (the message names the tensor).
pub fn identify(tensors: &BTreeMap<String, TensorInfo>) -> Result<Identified, String> {
    let k = Keys(tensors);
    if k.any(|n| {
        n.starts_with("lora_unet_")
            || n.starts_with("lora_te")
            || n.contains(".lora_down.")
            || n.contains(".lora_A.")
            || n.contains("lora.down.weight")
            || n.contains(".hada_w1")
            || n.contains(".lokr_w1")
    }) {
        return Ok(other(
            "a LoRA adapter, not a model",
            "use it with --lora or the LoRA panel",
        ));
    }
    if k.has("emb_params") || k.any_prefix("string_to_param") || (k.has("clip_l") && k.0.len() <= 2)
    {
        return Ok(other(
            "a textual-inversion embedding, not a model",
            "embeddings are not supported yet",
        ));
    }
    if k.any(|n| n.contains("joint_blocks.0.")) {
        return Ok(other("a Stable Diffusion 3 model", SUPPORTED));
    }
    if k.any(|n| n.contains("double_blocks.0.")) {
        return Ok(other("a Flux model", SUPPORTED));
    }
    if k.has("clip_txt_mapper.weight") || k.any(|n| n.starts_with("down_blocks.1.0.channelwise")) {
        return Ok(other("a Stable Cascade model", SUPPORTED));
    }
    if k.any(|n| {
        n.starts_with("control_model.")
            || n.contains("input_hint_block.")
            || n.starts_with("controlnet_cond_embedding.")
    }) {
        return Ok(other("a ControlNet, not a model", SUPPORTED));
    }
    if k.has("conv_first.weight")
        || (k.has("model.0.weight") && k.any_prefix("model.1.sub."))
        || k.any_prefix("body.0.rdb1.")
    {
        return Ok(other("an upscaler (ESRGAN-style), not a model", SUPPORTED));
    }
    if !k.has(&format!("{UNET_PREFIX}input_blocks.0.0.weight")) {
        // A VAE file alone: SD 1.x's scaling unless the model it is used with says otherwise.
        if let Some(vae) = vae_layout(&k, Family::Sd1.vae_scaling())? {
            return Ok(Identified::Vae(vae));
        }
        if k.has("conv_in.weight") && k.any_prefix("down_blocks.0.") {
            return Ok(other(
                "a UNet alone in diffusers' layout, not a whole model",
                "open the diffusers folder it belongs to, or a single-file checkpoint",
            ));
        }
        let first: Vec<&str> = tensors.keys().take(3).map(String::as_str).collect();
        return Ok(other(
            &format!(
                "not a Stable Diffusion checkpoint Easel recognises (its first tensors: {})",
                first.join(", ")
            ),
            SUPPORTED,
        ));
    }
    pipeline(&k).map(|p| match p {
        Ok(layout) => Identified::Pipeline(Box::new(layout)),
        Err(other) => other,
    })
}

/// A checkpoint with an LDM UNet: its layout, or what it is when Easel cannot run it.
fn pipeline(k: &Keys) -> Result<Result<PipelineLayout, Identified>, String> {
    let u = |n: &str| format!("{UNET_PREFIX}{n}");
    let context =
        k.0.iter()
            .find(|(n, _)| n.starts_with(UNET_PREFIX) && n.ends_with("attn2.to_k.weight"))
            .and_then(|(_, t)| t.shape.get(1).copied());
    let sdxl = k.any_prefix("conditioner.embedders.1.") || k.has(&u("label_emb.0.0.weight"));
    // The refiner keeps only OpenCLIP bigG (under `embedders.0`) and cross-attends to 1280.
    let refiner = sdxl
        && (context == Some(1280)
            || (k.any_prefix(OPEN_CLIP_SGM_PREFIX) && !k.any_prefix(SDXL_CLIP_PREFIX)));
    if refiner {
        return Ok(Err(other(
            "an SDXL refiner checkpoint (it refines a base model's images and cannot make one \
             from text)",
            "load an SDXL base model",
        )));
    }
    let in_channels = k.dim(&u("input_blocks.0.0.weight"), 1)?;
    let unusual = match in_channels {
        // 9: an inpainting model (latents, mask, masked picture), run as such.
        4 | 9 => None,
        8 => Some("an instruct-pix2pix model (8-channel UNet)".to_string()),
        5 => Some("an SD 2.x depth model (5-channel UNet)".to_string()),
        7 => Some("the SD x4 upscaler".to_string()),
        n => Some(format!("a UNet with {n} input channels")),
    };
    if let Some(what) = unusual {
        return Ok(Err(Identified::Other {
            what,
            hint: SUPPORTED,
        }));
    }
    if sdxl {
        return sdxl_pipeline(k).map(Ok);
    }
    let text = if k.any_prefix(CLIP_PREFIX) {
        TextLayout::Clip {
            prefix: CLIP_PREFIX,
        }
    } else {
        let prefix = [OPEN_CLIP_PREFIX, OPEN_CLIP_SGM_PREFIX]
            .into_iter()
            .find(|p| k.has(&format!("{p}token_embedding.weight")));
        match prefix {
            Some(prefix) => {
                let stored = k.indices(&format!("{prefix}transformer.resblocks.")).len();
                if stored < 2 {
                    return Err(format!(
                        "{prefix}: an OpenCLIP text encoder with {stored} layers"
                    ));
                }
                TextLayout::OpenClip {
                    prefix,
                    layers: stored - 1,
                    stored,
                }
            }
            None => {
                return Err(
                    "no text encoder (cond_stage_model.*): the file holds only part of a model"
                        .into(),
                )
            }
        }
    };
    let family = match text {
        TextLayout::Clip { .. } => Family::Sd1,
        TextLayout::OpenClip { .. } => Family::Sd2,
    };
    let text_config = text_config(k, &text)?;
    let (unet, layers) = unet_config(k, family)?;
    let vae = vae_layout(k, family.vae_scaling())?;
    Ok(Ok(PipelineLayout {
        family,
        unet,
        unet_layers_per_block: layers,
        text,
        text_config,
        text_2: None,
        vae,
        precision: precision(k),
        v_pred_marker: k.has("v_pred"),
        ztsnr_marker: k.has("ztsnr"),
    }))
}

/// An SDXL base checkpoint in Stability's SGM layout: CLIP ViT-L under
/// `conditioner.embedders.0.transformer.`, OpenCLIP bigG (all its layers, with
/// `text_projection`) under `conditioner.embedders.1.model.`, the UNet with `label_emb`.
fn sdxl_pipeline(k: &Keys) -> Result<PipelineLayout, String> {
    for (prefix, which) in [
        (SDXL_CLIP_PREFIX, "first"),
        (SDXL_OPEN_CLIP_PREFIX, "second"),
    ] {
        if !k.any_prefix(prefix) {
            return Err(format!(
                "an SDXL checkpoint without its {which} text encoder ({prefix}*): the file holds \
                 only part of a model"
            ));
        }
    }
    let text = TextLayout::Clip {
        prefix: SDXL_CLIP_PREFIX,
    };
    let config_1 = text_config(k, &text)?;
    let prefix = SDXL_OPEN_CLIP_PREFIX;
    let stored = k.indices(&format!("{prefix}transformer.resblocks.")).len();
    if stored < 2 {
        return Err(format!(
            "{prefix}: an OpenCLIP text encoder with {stored} layers"
        ));
    }
    // SDXL reads the penultimate layer's states and, for the pooled embedding, the last
    // layer's: every stored layer is used.
    let text_2 = TextLayout::OpenClip {
        prefix,
        layers: stored,
        stored,
    };
    let mut text_config_2 = text_config(k, &text_2)?;
    // OpenCLIP multiplies by `text_projection` ([width, projection]) from the right.
    text_config_2.projection_dim = Some(k.dim(&format!("{prefix}text_projection"), 1)?);
    let (mut unet, layers) = unet_config(k, Family::Sdxl)?;
    let label = format!("{UNET_PREFIX}label_emb.0.0.weight");
    let input = k.dim(&label, 1)?;
    let pooled = text_config_2.projection_dim.unwrap_or(0);
    let times = input.checked_sub(pooled).filter(|t| t % 6 == 0 && *t > 0);
    let Some(times) = times else {
        return Err(format!(
            "{label} takes {input} values, which is not the {pooled}-wide pooled text embedding \
             plus 6 equal time embeddings"
        ));
    };
    unet.addition_embed_type = Some("text_time".into());
    unet.addition_time_embed_dim = Some(times / 6);
    unet.projection_class_embeddings_input_dim = Some(input);
    unet.sample_size = Some(128);
    Ok(PipelineLayout {
        family: Family::Sdxl,
        unet,
        unet_layers_per_block: layers,
        text,
        text_config: config_1,
        text_2: Some((text_2, text_config_2)),
        vae: vae_layout(k, Family::Sdxl.vae_scaling())?,
        precision: precision(k),
        v_pred_marker: k.has("v_pred"),
        ztsnr_marker: k.has("ztsnr"),
    })
}

/// The dominant float type of the UNet's tensors, by bytes.
fn precision(k: &Keys) -> ElemType {
    let mut bytes: BTreeMap<&'static str, (u64, ElemType)> = BTreeMap::new();
    for t in
        k.0.iter()
            .filter(|(n, _)| n.starts_with(UNET_PREFIX))
            .map(|(_, t)| t)
    {
        if t.dtype.is_float() {
            let e = bytes
                .entry(t.dtype.precision_name())
                .or_insert((0, t.dtype));
            e.0 += (t.numel() * t.dtype.size()) as u64;
        }
    }
    bytes
        .into_values()
        .max_by_key(|(b, _)| *b)
        .map_or(ElemType::F32, |(_, t)| t)
}

fn text_config(k: &Keys, text: &TextLayout) -> Result<ClipTextConfig, String> {
    let (vocab, hidden, positions, intermediate, layers, act) = match text {
        TextLayout::Clip { prefix } => {
            let base = if k.any_prefix(&format!("{prefix}text_model.")) {
                format!("{prefix}text_model.")
            } else {
                prefix.to_string()
            };
            let emb = format!("{base}embeddings.token_embedding.weight");
            let layers = k.indices(&format!("{base}encoder.layers.")).len();
            (
                k.dim(&emb, 0)?,
                k.dim(&emb, 1)?,
                k.dim(&format!("{base}embeddings.position_embedding.weight"), 0)?,
                k.dim(&format!("{base}encoder.layers.0.mlp.fc1.weight"), 0)?,
                layers,
                "quick_gelu",
            )
        }
        TextLayout::OpenClip { prefix, layers, .. } => {
            let emb = format!("{prefix}token_embedding.weight");
            (
                k.dim(&emb, 0)?,
                k.dim(&emb, 1)?,
                k.dim(&format!("{prefix}positional_embedding"), 0)?,
                k.dim(
                    &format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"),
                    0,
                )?,
                *layers,
                "gelu",
            )
        }
    };
    if hidden % 64 != 0 || hidden == 0 {
        return Err(format!(
            "text encoder width {hidden} is not a multiple of 64 (CLIP heads are 64 wide)"
        ));
    }
    serde_json::from_value(json!({
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }))
    .map_err(|e| e.to_string())
}

/// The UNet's diffusers config and its resnets per level.
fn unet_config(k: &Keys, family: Family) -> Result<(UNetConfig, usize), String> {
    let u = |n: &str| format!("{UNET_PREFIX}{n}");
    let conv_in = u("input_blocks.0.0.weight");
    let in_channels = k.dim(&conv_in, 1)?;
    // When absent, the build below names it among every other missing tensor.
    let out_channels = k.dim(&u("out.2.weight"), 0).unwrap_or(in_channels);
    let inputs = k.indices(&u("input_blocks."));
    let outputs = k.indices(&u("output_blocks."));
    if inputs.last() != Some(&(inputs.len() - 1)) || outputs.is_empty() {
        return Err("the UNet's input/output blocks are not numbered 0, 1, 2, …".into());
    }
    // Levels end at a downsampler (`input_blocks.N.0.op`); the last level has none.
    let downsamplers: Vec<usize> = inputs
        .iter()
        .copied()
        .filter(|n| k.has(&u(&format!("input_blocks.{n}.0.op.weight"))))
        .collect();
    let layers = match downsamplers.first() {
        Some(first) => first - 1,
        None => inputs.len() - 1,
    };
    if layers == 0 {
        return Err("the UNet has no resnets before its first downsampler".into());
    }
    let levels = (inputs.len() - 1).div_ceil(layers + 1);
    if (inputs.len() - 1) != levels * (layers + 1) - 1 || outputs.len() != levels * (layers + 1) {
        return Err(format!(
            "{} input and {} output blocks do not make {levels} levels of {layers} resnets",
            inputs.len(),
            outputs.len()
        ));
    }
    let mut channels = Vec::with_capacity(levels);
    let mut down_types = Vec::with_capacity(levels);
    let mut depth = Vec::with_capacity(levels);
    let mut linear = None;
    for level in 0..levels {
        let n = 1 + level * (layers + 1);
        channels.push(k.dim(&u(&format!("input_blocks.{n}.0.out_layers.3.weight")), 0)?);
        let attn = u(&format!("input_blocks.{n}.1."));
        if k.any_prefix(&attn) {
            down_types.push("CrossAttnDownBlock2D");
            depth.push(
                k.indices(&format!("{attn}transformer_blocks."))
                    .len()
                    .max(1),
            );
            linear = Some(
                k.shape(&format!("{attn}proj_in.weight"))
                    .is_some_and(|s| s.len() == 2),
            );
        } else {
            down_types.push("DownBlock2D");
            depth.push(1);
        }
    }
    let up_types: Vec<&str> = (0..levels)
        .map(|level| {
            let n = level * (layers + 1);
            if k.any_prefix(&u(&format!("output_blocks.{n}.1.transformer_blocks."))) {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let context =
        k.0.iter()
            .find(|(n, _)| n.starts_with(UNET_PREFIX) && n.ends_with("attn2.to_k.weight"))
            .and_then(|(_, t)| t.shape.get(1).copied())
            .ok_or("the UNet has no cross-attention")?;
    let heads = match family {
        // SD 1.x: 8 heads everywhere.
        Family::Sd1 => json!(8),
        // SD 2.x and SDXL: heads 64 wide (diffusers stores the head count in
        // `attention_head_dim`).
        // Levels without attention (SDXL's first) have no heads to size.
        Family::Sd2 | Family::Sdxl => {
            let attention = channels.iter().zip(&down_types);
            let attention = attention.filter(|(_, t)| **t == "CrossAttnDownBlock2D");
            if let Some((c, _)) = attention.clone().find(|(c, _)| *c % 64 != 0) {
                return Err(format!(
                    "UNet width {c} is not a multiple of the 64-wide heads of {}",
                    family.label()
                ));
            }
            json!(channels.iter().map(|c| (c / 64).max(1)).collect::<Vec<_>>())
        }
    };
    let config = serde_json::from_value(json!({
        "in_channels": in_channels,
        "out_channels": out_channels,
        "sample_size": 64,
        "down_block_types": down_types,
        "up_block_types": up_types,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": channels,
        "layers_per_block": layers,
        "transformer_layers_per_block": depth,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear.unwrap_or(family != Family::Sd1),
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
    }))
    .map_err(|e| e.to_string())?;
    Ok((config, layers))
}

/// An LDM-layout VAE under `first_stage_model.` (or no prefix), or a diffusers-named one.
fn vae_layout(k: &Keys, scaling: f64) -> Result<Option<VaeLayout>, String> {
    for prefix in [VAE_PREFIX, ""] {
        let p = |n: &str| format!("{prefix}{n}");
        if k.has(&p("encoder.down.0.block.0.conv1.weight")) {
            let levels = k.indices(&p("encoder.down.")).len();
            let channels = (0..levels)
                .map(|i| k.dim(&p(&format!("encoder.down.{i}.block.0.conv1.weight")), 0))
                .collect::<Result<Vec<_>, _>>()?;
            let layers = k.indices(&p("encoder.down.0.block.")).len();
            let config = vae_config(
                k.dim(&p("encoder.conv_in.weight"), 1)?,
                k.dim(&p("decoder.conv_out.weight"), 0)?,
                k.dim(&p("decoder.conv_in.weight"), 1)?,
                &channels,
                layers,
                scaling,
            )?;
            return Ok(Some(VaeLayout {
                prefix: if prefix.is_empty() { "" } else { VAE_PREFIX },
                config,
                levels,
                diffusers_names: false,
            }));
        }
    }
    if k.has("encoder.down_blocks.0.resnets.0.conv1.weight") && k.has("decoder.conv_out.weight") {
        let levels = k.indices("encoder.down_blocks.").len();
        let channels = (0..levels)
            .map(|i| {
                k.dim(
                    &format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"),
                    0,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let layers = k.indices("encoder.down_blocks.0.resnets.").len();
        let config = vae_config(
            k.dim("encoder.conv_in.weight", 1)?,
            k.dim("decoder.conv_out.weight", 0)?,
            k.dim("decoder.conv_in.weight", 1)?,
            &channels,
            layers,
            scaling,
        )?;
        return Ok(Some(VaeLayout {
            prefix: "",
            config,
            levels,
            diffusers_names: true,
        }));
    }
    Ok(None)
}

fn vae_config(
    in_channels: usize,
    out_channels: usize,
    latent_channels: usize,
    channels: &[usize],
    layers: usize,
    scaling: f64,
) -> Result<VaeConfig, String> {
    serde_json::from_value(json!({
        "in_channels": in_channels,
        "out_channels": out_channels,
        "latent_channels": latent_channels,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": vec!["DownEncoderBlock2D"; channels.len()],
        "up_block_types": vec!["UpDecoderBlock2D"; channels.len()],
        "norm_num_groups": 32,
        "scaling_factor": scaling,
    }))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::tensor_file::TensorInfo;

    /// Tensor names with their shapes.
    type Layout<'a> = &'a [(&'a str, &'a [usize])];

    fn file(keys: Layout) -> BTreeMap<String, TensorInfo> {
        keys.iter()
            .map(|(k, shape)| {
                (
                    k.to_string(),
                    TensorInfo {
                        dtype: ElemType::F16,
                        shape: shape.to_vec(),
                        offset: 0,
                        strides: None,
                        span: 0,
                    },
                )
            })
            .collect()
    }

    fn what(keys: Layout) -> String {
        match identify(&file(keys)).unwrap() {
            Identified::Other { what, .. } => what,
            other => panic!("identified as {}", other.label()),
        }
    }

    /// One line per kind of file a user may pick by mistake or too early.
    #[test]
    fn names_what_it_does_not_run() {
        let cases: [(Layout, &str); 8] = [
            (
                &[("model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", &[4, 4])],
                "Stable Diffusion 3",
            ),
            (&[("double_blocks.0.img_attn.qkv.weight", &[4, 4])], "Flux"),
            (&[("conv_first.weight", &[64, 3, 3, 3])], "upscaler"),
            (&[("control_model.input_hint_block.0.weight", &[16, 3, 3, 3])], "ControlNet"),
            (&[("emb_params", &[2, 768])], "textual-inversion"),
            (&[("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", &[4, 320])], "LoRA"),
            (
                &[
                    ("model.diffusion_model.input_blocks.0.0.weight", &[384, 4, 3, 3]),
                    ("model.diffusion_model.label_emb.0.0.weight", &[1536, 2560]),
                    ("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", &[768, 1280]),
                ],
                "SDXL refiner",
            ),
            (&[("some.random.tensor", &[3])], "not a Stable Diffusion checkpoint"),
        ];
        for (keys, needle) in cases {
            let w = what(keys);
            assert!(w.contains(needle), "{w:?} lacks {needle:?}");
        }
    }
}
