//! Single-file checkpoints: the `.safetensors` / `.ckpt` files people download, in the
//! original (LDM) layout, loaded into the same modules as a diffusers folder.
//!
//! [`detect`] reads what the file is from its header; [`keymap`] renames its tensors to the
//! names Easel's modules ask for; [`pickle`] reads `.ckpt` files without running them;
//! [`sidecar`] reads what A1111 keeps beside a checkpoint (a `.yaml`, a `.vae.safetensors`).
//! `unet.rs`, `clip_text.rs` and the VAE never learn where their weights came from.

pub mod detect;
pub mod keymap;
pub mod pickle;
pub mod sidecar;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use super::clip_text::ClipTextModel;
use super::error::{BuildError, ModelError};
use super::tensor_file::TensorFile;
use super::unet::UNet;
use super::vae::Vae;
use super::weights::{self, Entry, WeightMap};
use crate::diffusion::schedulers::{PredictionType, SchedulerConfig};
use detect::{Identified, PipelineLayout, TextLayout, VaeLayout};
use keymap::{Part, Target};

/// Choices that override what a model's files say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// A VAE to use instead of the model's own: a single file or a diffusers `vae/` folder.
    pub vae: Option<PathBuf>,
    /// Overrides the prediction type the files imply.
    pub prediction: Option<PredictionType>,
    /// Where the model runs (the worker opens it; the loaders take the opened device).
    pub device: crate::models::device::DeviceChoice,
    /// How the weights are kept in memory (`--dtype`).
    pub precision: crate::models::device::Precision,
    /// TAESD for real per-step previews and/or a fast final decode; `None`: the latent
    /// projection and the VAE.
    pub taesd: Option<crate::models::taesd::TaesdOptions>,
}

/// The modules of a single-file checkpoint, ready to run.
pub struct SingleFile {
    pub layout: PipelineLayout,
    pub text_encoder: ClipTextModel,
    /// SDXL's second text encoder, with its projection.
    pub text_encoder_2: Option<ClipTextModel>,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    /// How the prediction type was decided, for the user ("v-prediction: model.yaml").
    pub prediction_source: &'static str,
    /// The prediction type the file implies, whatever the user chose.
    pub auto_prediction: PredictionType,
    /// The external VAE used, if any (the `--vae` choice or A1111's `<stem>.vae.*` beside).
    pub vae_file: Option<PathBuf>,
}

/// Opens a weight file and says what it is (headers only).
pub fn identify_file(path: &Path) -> Result<(TensorFile, Identified), ModelError> {
    let file = TensorFile::open(path).map_err(|e| weights::file_error(path, e))?;
    let what = detect::identify(&file.tensors).map_err(|m| ModelError::checkpoint(path, m))?;
    Ok((file, what))
}

/// Whether the model at `path` (a diffusers folder or a single file) is SDXL, from the folder's
/// layout or the file's header alone; false for anything unreadable.
pub fn is_sdxl(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("text_encoder_2").is_dir();
    }
    matches!(identify_file(path), Ok((_, Identified::Pipeline(p))) if p.family == detect::Family::Sdxl)
}

/// Loads a single-file SD 1.x / 2.x / SDXL checkpoint. With `shapes_only`, everything is checked
/// (kind, layout, every tensor's name and shape, missing and extra tensors) but no weight is
/// read: the modules hold zero stand-ins. That is how a model is vetted before the one in
/// use is unloaded.
pub fn load(
    path: &Path,
    opts: &LoadOptions,
    device: &Device,
    dtype: DType,
    shapes_only: bool,
) -> Result<SingleFile, ModelError> {
    let (file, what) = identify_file(path)?;
    let mut layout = match what {
        Identified::Pipeline(p) => *p,
        Identified::Vae(_) => {
            return Err(ModelError::checkpoint(
                path,
                "a VAE on its own, not a whole model: choose it as the VAE (--vae) of a model",
            ))
        }
        Identified::Other { what, hint } => {
            return Err(ModelError::checkpoint(path, format!("{what}; {hint}")))
        }
    };
    let yaml = sidecar::read_yaml(path)?;
    let yaml_prediction = yaml.as_ref().and_then(|y| y.prediction);
    let (auto_prediction, auto_source) = if let Some(p) = yaml_prediction {
        (p, "the .yaml beside it")
    } else if layout.v_pred_marker {
        (PredictionType::VPrediction, "the file's v_pred marker")
    } else if v_prediction_heuristic(&file, &layout)? {
        (
            PredictionType::VPrediction,
            "its weights (an SD 2.x 768-v model)",
        )
    } else {
        (PredictionType::Epsilon, "the default")
    };
    let (prediction, prediction_source) = match opts.prediction {
        Some(p) => (p, "your setting"),
        None => (auto_prediction, auto_source),
    };
    let zero_snr = layout.ztsnr_marker || yaml.as_ref().is_some_and(|y| y.zero_terminal_snr);
    if prediction == PredictionType::VPrediction && layout.family == detect::Family::Sd2 {
        // SD 2.x v-models are the 768 px ones.
        layout.unet.sample_size = Some(96);
    }

    let file = Arc::new(file);
    let used: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let names = mapped_names(&file, &layout)?;
    let component = |c: Component| {
        let entries = names
            .iter()
            .filter(|((comp, _), _)| *comp == c)
            .map(|((_, name), e)| (name.clone(), e.clone()))
            .collect::<HashMap<_, _>>();
        weights::ComponentWeights::from_map(
            vec![path.to_path_buf()],
            WeightMap::new(vec![file.clone()], entries, used.clone()).shapes_only(shapes_only),
            dtype,
            device,
        )
    };

    // Missing tensors are collected over all components, so one error names them all.
    let mut missing = Vec::new();
    let te = component(Component::Text);
    let text_encoder = build(
        ClipTextModel::new(te.vb.clone(), layout.text_config.clone(), path),
        &te,
        path,
        &mut missing,
    )?;
    let text_encoder_2 = match &layout.text_2 {
        Some((_, config)) => {
            let w = component(Component::Text2);
            let projection = config.projection_dim.unwrap_or(0);
            Some(build(
                ClipTextModel::with_projection(w.vb.clone(), config.clone(), projection, path),
                &w,
                path,
                &mut missing,
            )?)
        }
        None => None,
    };
    let unet_w = component(Component::Unet);
    let unet = build(
        UNet::new(unet_w.vb.clone(), layout.unet.clone(), path),
        &unet_w,
        path,
        &mut missing,
    )?;

    let external = opts.vae.clone().or_else(|| sidecar::vae_beside(path));
    let (vae, vae_file) = match (&external, &layout.vae) {
        (Some(v), own) => {
            let fit = VaeFit {
                latent_channels: unet.config.out_channels,
                factor: own.as_ref().map(|o| o.config.downscale_factor()),
                scaling: layout.family.vae_scaling(),
            };
            let vae = load_vae_instead(v, &fit, device, dtype, shapes_only)?;
            (vae, external.clone())
        }
        (None, Some(own)) => {
            let w = component(Component::Vae);
            let vae = build(
                Vae::new(w.vb.clone(), own.config.clone(), path),
                &w,
                path,
                &mut missing,
            )?;
            (vae, None)
        }
        (None, None) => {
            return Err(ModelError::checkpoint(
                path,
                "the file has no VAE (first_stage_model.*): choose one with --vae or in the model's settings",
            ))
        }
    };

    if !missing.is_empty() {
        return Err(ModelError::checkpoint(
            path,
            format!("incomplete checkpoint: {}", weights::missing_list(&missing)),
        ));
    }
    check_no_extras(path, &file, &used, &layout, external.is_some())?;
    let mut scheduler = SchedulerConfig::sd15();
    scheduler.prediction_type = prediction;
    scheduler.rescale_betas_zero_snr = zero_snr;
    Ok(SingleFile {
        layout,
        text_encoder,
        text_encoder_2,
        unet,
        vae,
        scheduler,
        prediction_source,
        auto_prediction,
        vae_file,
    })
}

/// A module built from a single file; the tensors it lacked are added to `missing`.
fn build<T>(
    result: Result<T, BuildError>,
    w: &weights::ComponentWeights,
    path: &Path,
    missing: &mut Vec<String>,
) -> Result<T, ModelError> {
    let built = result.map_err(|e| match e {
        BuildError::Config(e) => e,
        BuildError::Weights(e) => {
            ModelError::checkpoint(path, super::error::without_backtrace(e).to_string())
        }
    })?;
    missing.extend(WeightMap::take_missing(&w.missing));
    Ok(built)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Component {
    Unet,
    Text,
    /// SDXL's second text encoder.
    Text2,
    Vae,
}

/// Every module-side name the file provides, per component (SDXL's two text encoders use the
/// same names), with its source.
fn mapped_names(
    file: &TensorFile,
    layout: &PipelineLayout,
) -> Result<HashMap<(Component, String), Entry>, ModelError> {
    let mut out = HashMap::new();
    for (key, info) in &file.tensors {
        let Some((component, targets)) = map_key(key, layout) else {
            continue;
        };
        for (name, part) in targets {
            let info = match part {
                Part::Whole => info.clone(),
                Part::Transposed => info.transposed().ok_or_else(|| {
                    ModelError::checkpoint(
                        &file.path,
                        format!("tensor {key} with shape {:?} is not a matrix", info.shape),
                    )
                })?,
                Part::Rows { index, of } => {
                    let rows = info.shape.first().copied().unwrap_or(0) / of;
                    info.rows(index * rows, rows).ok_or_else(|| {
                        ModelError::checkpoint(
                            &file.path,
                            format!(
                                "tensor {key} with shape {:?} cannot be split in {of}",
                                info.shape
                            ),
                        )
                    })?
                }
            };
            out.insert(
                (component, name),
                Entry {
                    file: 0,
                    source: key.clone(),
                    info,
                },
            );
        }
    }
    Ok(out)
}

fn map_key(key: &str, layout: &PipelineLayout) -> Option<(Component, Vec<Target>)> {
    if let Some(k) = key.strip_prefix(detect::UNET_PREFIX) {
        return Some((
            Component::Unet,
            keymap::unet::map(k, layout.unet_layers_per_block)?,
        ));
    }
    if let Some(vae) = &layout.vae {
        if let Some(k) = key.strip_prefix(vae.prefix) {
            return Some((Component::Vae, keymap::vae::map(k, vae.levels)?));
        }
    }
    if let Some((text_2, _)) = &layout.text_2 {
        if let Some(k) = key.strip_prefix(text_2.prefix()) {
            return Some((Component::Text2, map_text(text_2, k)?));
        }
    }
    let k = key.strip_prefix(layout.text.prefix())?;
    Some((Component::Text, map_text(&layout.text, k)?))
}

fn map_text(text: &TextLayout, key: &str) -> Option<Vec<Target>> {
    match text {
        TextLayout::Clip { .. } => keymap::clip::map_clip(key),
        TextLayout::OpenClip { .. } => keymap::clip::map_open_clip(key),
    }
}

/// Tensors of the model's own parts that nothing read: a sign the file is not the model the
/// keys suggested. Known leftovers (position ids, OpenCLIP's unused last layer and projection,
/// a VAE's training loss, ComfyUI's markers, EMA copies, LDM's schedule buffers) are fine.
fn check_no_extras(
    path: &Path,
    file: &TensorFile,
    used: &Mutex<BTreeSet<String>>,
    layout: &PipelineLayout,
    external_vae: bool,
) -> Result<(), ModelError> {
    let used = used.lock().map(|u| u.clone()).unwrap_or_default();
    let text_prefix = layout.text.prefix();
    let last_layer = match &layout.text {
        TextLayout::OpenClip { stored, .. } => Some(format!(
            "{text_prefix}transformer.resblocks.{}.",
            stored - 1
        )),
        TextLayout::Clip { .. } => None,
    };
    let vae_prefix = layout.vae.as_ref().map_or(detect::VAE_PREFIX, |v| v.prefix);
    let extras: Vec<&str> = file
        .tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .filter(|k| {
            let ours = k.starts_with(detect::UNET_PREFIX)
                || k.starts_with(text_prefix)
                || layout
                    .text_2
                    .as_ref()
                    .is_some_and(|(t, _)| k.starts_with(t.prefix()))
                || (!external_vae && !vae_prefix.is_empty() && k.starts_with(vae_prefix));
            ours && !k.ends_with("position_ids")
                && !k.ends_with("text_projection")
                && !k.ends_with("logit_scale")
                && !k.starts_with("first_stage_model.loss.")
                && !last_layer
                    .as_ref()
                    .is_some_and(|l| k.starts_with(l.as_str()))
        })
        .map(String::as_str)
        .collect();
    if extras.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = extras.iter().take(6).copied().collect();
    Err(ModelError::checkpoint(
        path,
        format!(
            "{} tensor{} that an {} model does not have: {}{}",
            extras.len(),
            if extras.len() == 1 { "" } else { "s" },
            layout.family.label(),
            shown.join(", "),
            if extras.len() > shown.len() {
                format!(" and {} more", extras.len() - shown.len())
            } else {
                String::new()
            }
        ),
    ))
}

/// ComfyUI's test for SD 2.x 768-v checkpoints with no yaml: trained v-models have a spread-out
/// bias in the last up block's first transformer norm (std > 0.09); epsilon models do not.
/// It reads one small tensor and needs trained weights (random ones read as epsilon).
fn v_prediction_heuristic(file: &TensorFile, layout: &PipelineLayout) -> Result<bool, ModelError> {
    if layout.family != detect::Family::Sd2 || layout.unet.in_channels != 4 {
        return Ok(false);
    }
    let name = format!(
        "{}output_blocks.{}.1.transformer_blocks.0.norm1.bias",
        detect::UNET_PREFIX,
        layout.unet.block_out_channels.len() * (layout.unet_layers_per_block + 1) - 1
    );
    let Some(info) = file.tensors.get(&name) else {
        return Ok(false);
    };
    let t = file
        .read(&name, info, DType::F32, &Device::Cpu)
        .map_err(|e| weights::file_error(&file.path, e))?;
    let std = population_std(
        &t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap_or_default(),
    );
    Ok(std > 0.09)
}

pub(crate) fn population_std(v: &[f32]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    (v.iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

/// What a VAE used instead of a model's own must fit.
pub struct VaeFit {
    /// The UNet's latent channels.
    pub latent_channels: usize,
    /// Pixels per latent of the model's own VAE, when it has one to compare with.
    pub factor: Option<usize>,
    /// The model family's latent scaling (SDXL's 0.13025): it belongs to the model, and a VAE
    /// file says nothing of it.
    pub scaling: f64,
}

/// Loads a VAE to use instead of a model's own ([`load_vae`]), refused when it scales images by
/// another factor than the model's (every SD-family VAE uses 8: other latents would not be the
/// size the UNet was trained on), and given the model's latent scaling.
pub fn load_vae_instead(
    path: &Path,
    fit: &VaeFit,
    device: &Device,
    dtype: DType,
    shapes_only: bool,
) -> Result<Vae, ModelError> {
    let mut vae = load_vae(path, fit.latent_channels, device, dtype, shapes_only)?;
    let factor = vae.config.downscale_factor();
    if let Some(model_factor) = fit.factor.filter(|&f| f != factor) {
        return Err(ModelError::checkpoint(
            path,
            format!(
                "as a VAE: it scales images by {factor} and this model's VAE by {model_factor} \
                 (a VAE for another architecture)"
            ),
        ));
    }
    vae.config.scaling_factor = fit.scaling;
    Ok(vae)
}

/// Loads a VAE from a single file (LDM or diffusers names) or a diffusers `vae/` folder, for
/// a model whose UNet has `latent_channels` channels.
pub fn load_vae(
    path: &Path,
    latent_channels: usize,
    device: &Device,
    dtype: DType,
    shapes_only: bool,
) -> Result<Vae, ModelError> {
    let vae_err = |m: String| ModelError::checkpoint(path, format!("as a VAE: {m}"));
    let vae = if path.is_dir() {
        let config_path = path.join("config.json");
        let config = super::vae::VaeConfig::from_file(&config_path)?;
        let files = weights::find_weight_files(path, "diffusion_pytorch_model")?;
        let w = weights::open_with(files, dtype, device, shapes_only)?;
        let vae = Vae::new(w.vb.clone(), config, &config_path).map_err(|e| match e {
            BuildError::Config(e) => e,
            BuildError::Weights(e) => weights::mismatch(&w, &config_path, e),
        })?;
        weights::check_complete(&w, &config_path)?;
        vae
    } else {
        let (file, what) = identify_file(path)?;
        let layout: VaeLayout = match what {
            Identified::Vae(v) => v,
            Identified::Pipeline(p) => match p.vae {
                // A whole checkpoint's VAE is a fine choice too.
                Some(v) => v,
                None => return Err(vae_err("a checkpoint without a VAE".into())),
            },
            Identified::Other { what, .. } => return Err(vae_err(format!("this is {what}"))),
        };
        let entries: HashMap<String, Entry> = file
            .tensors
            .iter()
            .filter_map(|(key, info)| {
                let k = key.strip_prefix(layout.prefix)?;
                let name = if layout.diffusers_names {
                    k.to_string()
                } else {
                    keymap::vae::map(k, layout.levels)?.into_iter().next()?.0
                };
                Some((
                    name,
                    Entry {
                        file: 0,
                        source: key.clone(),
                        info: info.clone(),
                    },
                ))
            })
            .collect();
        let w = weights::ComponentWeights::from_map(
            vec![path.to_path_buf()],
            WeightMap::new(vec![Arc::new(file)], entries, Arc::default()).shapes_only(shapes_only),
            dtype,
            device,
        );
        let mut missing = Vec::new();
        let vae = build(
            Vae::new(w.vb.clone(), layout.config, path),
            &w,
            path,
            &mut missing,
        )?;
        if !missing.is_empty() {
            return Err(vae_err(format!(
                "incomplete: {}",
                weights::missing_list(&missing)
            )));
        }
        vae
    };
    if vae.config.latent_channels != latent_channels {
        return Err(vae_err(format!(
            "it makes {}-channel latents and this model's UNet works on {latent_channels} \
             (a VAE for another architecture, such as SD3 or Flux)",
            vae.config.latent_channels
        )));
    }
    Ok(vae)
}
