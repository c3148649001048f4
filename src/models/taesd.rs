//! TAESD, madebyollin's tiny autoencoder (MIT): a 1.2 M-parameter stand-in for the SD VAE that
//! decodes latents to a good approximation of the image for a few percent of the VAE's cost.
//! Easel uses it for real per-step previews and, when asked, for the final decode.
//!
//! The network is diffusers' `AutoencoderTiny` (`DecoderTiny`/`EncoderTiny`): plain 3×3
//! convolutions, ReLU and residual blocks, no normalisation, no attention. The decoder soft-clamps
//! its input (`tanh(x/3)·3`), runs stages of blocks each followed by a nearest ×2 upsample and a
//! bias-free convolution, and ends in a 3-channel convolution; diffusers maps that [0, 1] image
//! to [-1, 1], as [`Taesd::decode`] does. It reads the latents the sampler produces unchanged
//! (`scaling_factor` 1).
//!
//! Two layouts load: a diffusers `AutoencoderTiny` folder (`config.json`, `decoder.layers.N…`)
//! and the original single files (`taesd_decoder.safetensors`, `taesdxl_decoder.safetensors`),
//! whose names are the indices of the original `nn.Sequential`: the decoder's starts with the
//! weightless clamp, so its index is diffusers' + 1 (`1.weight` = `decoder.layers.0.weight`),
//! the encoder's match. A single file carries no config, so its architecture is read from its
//! names and shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use serde::Deserialize;

use super::error::{without_backtrace, BuildError};
use super::tensor_file::TensorFile;
use super::weights::{self, ComponentWeights};
use super::ModelError;
use crate::ops::{self, Conv2d};

/// What the user asked TAESD for, and which file (the studio's toggles; the pipeline loads it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaesdOptions {
    /// A TAESD file or folder (see [`find`]).
    pub path: PathBuf,
    /// A real image preview at every step.
    pub preview: bool,
    /// The final image decoded by TAESD instead of the VAE.
    pub final_decode: bool,
}

/// The original decoder file names, SD 1.x/2.x and SDXL.
pub const DECODER_FILES: [&str; 2] = ["taesd_decoder.safetensors", "taesdxl_decoder.safetensors"];

/// Where TAESD is looked for under each model-library folder `D` (and under `D`'s parent, for a
/// library pointed at `models/checkpoints`): ComfyUI's `D/vae_approx`, A1111's `D/VAE-taesd`
/// and `D` itself, each for the decoder file, then for a folder named after it (`taesd/`,
/// `taesdxl/`; either layout).
pub fn candidates(dirs: &[PathBuf], decoder_file: &str) -> Vec<PathBuf> {
    let folder = decoder_file
        .strip_suffix("_decoder.safetensors")
        .unwrap_or("taesd");
    search_roots(dirs)
        .iter()
        .flat_map(|r| ["vae_approx", "VAE-taesd", ""].map(|sub| r.join(sub)))
        .flat_map(|base| [base.join(decoder_file), base.join(folder)])
        .collect()
}

/// The decoder file for a model family: TAESDXL for SDXL (same shapes as TAESD, but trained
/// on SDXL's latent space: the other one gives wrong colours, silently).
pub fn decoder_file(sdxl: bool) -> &'static str {
    DECODER_FILES[usize::from(sdxl)]
}

fn search_roots(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    for r in dirs
        .iter()
        .flat_map(|d| std::iter::once(d.as_path()).chain(d.parent()))
    {
        if !r.as_os_str().is_empty() && !roots.iter().any(|x| x == r) {
            roots.push(r.to_path_buf());
        }
    }
    roots
}

/// The first TAESD among [`candidates`], or an error saying where it looked.
pub fn find(dirs: &[PathBuf], decoder_file: &str) -> std::result::Result<PathBuf, String> {
    let found = candidates(dirs, decoder_file)
        .into_iter()
        .find(|p| p.exists());
    found.ok_or_else(|| {
        let roots: Vec<String> = search_roots(dirs)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "no TAESD found: looked for {decoder_file} or a taesd/ folder in vae_approx/, \
             VAE-taesd/ and the folder itself under {} (download madebyollin's \
             {decoder_file} into one, or give its path)",
            if roots.is_empty() {
                "no model folders (set EASEL_MODEL_DIR)".to_string()
            } else {
                roots.join(", ")
            }
        )
    })
}

/// diffusers' `AutoencoderTiny` config (its `config.json`); defaults are diffusers' and TAESD's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TaesdConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub latent_channels: usize,
    pub encoder_block_out_channels: Vec<usize>,
    pub decoder_block_out_channels: Vec<usize>,
    pub num_encoder_blocks: Vec<usize>,
    pub num_decoder_blocks: Vec<usize>,
    pub upsampling_scaling_factor: usize,
    pub act_fn: String,
    pub upsample_fn: String,
    pub scaling_factor: f64,
    pub shift_factor: f64,
}

impl Default for TaesdConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            upsampling_scaling_factor: 2,
            act_fn: "relu".into(),
            upsample_fn: "nearest".into(),
            scaling_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

impl TaesdConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if self.act_fn != "relu" || self.upsample_fn != "nearest" {
            return Err(format!(
                "act_fn {:?} / upsample_fn {:?}: only relu / nearest (TAESD's) are supported",
                self.act_fn, self.upsample_fn
            ));
        }
        let pairs = [
            (&self.decoder_block_out_channels, &self.num_decoder_blocks),
            (&self.encoder_block_out_channels, &self.num_encoder_blocks),
        ];
        if pairs
            .iter()
            .any(|(c, n)| c.len() != n.len() || c.is_empty())
        {
            return Err("block_out_channels and num_blocks must be equally long, not empty".into());
        }
        if self.upsampling_scaling_factor == 0 || self.scaling_factor == 0.0 {
            return Err("upsampling_scaling_factor and scaling_factor must not be 0".into());
        }
        Ok(())
    }
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    if bias {
        ops::conv2d(cin, cout, k, cfg, vb)
    } else {
        let c = candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)?;
        Conv2d::new(c.weight().clone(), None, cfg)
    }
}

/// `AutoencoderTinyBlock`: relu(conv(relu(conv(relu(conv(x))))) + skip(x)).
struct Block {
    convs: [Conv2d; 3],
    skip: Option<Conv2d>,
}

impl Block {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let c = vb.pp("conv");
        Ok(Self {
            convs: [
                conv(cin, cout, 3, 1, true, c.pp("0"))?,
                conv(cout, cout, 3, 1, true, c.pp("2"))?,
                conv(cout, cout, 3, 1, true, c.pp("4"))?,
            ],
            skip: match cin != cout {
                true => Some(conv(cin, cout, 1, 1, false, vb.pp("skip"))?),
                false => None,
            },
        })
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = relu(self.convs[0].forward(x)?)?;
        let h = relu(self.convs[1].forward(&h)?)?;
        let h = self.convs[2].forward(&h)?;
        let h = match &self.skip {
            Some(s) => ops::add_in_place(h, &s.forward(x)?)?,
            None => ops::add_in_place(h, x)?,
        };
        relu(h)
    }
}

fn relu(x: Tensor) -> Result<Tensor> {
    ops::profile::scope(ops::Kind::ElementWise, || x.relu())
}

/// One decoder stage: blocks, then (except the last) a nearest upsample fused into the conv.
struct Stage {
    blocks: Vec<Block>,
    conv: Conv2d,
    upsample: Option<usize>,
}

/// `DecoderTiny`: latents → image in [0, 1] (before diffusers' mapping to [-1, 1]).
pub struct Decoder {
    conv_in: Conv2d,
    stages: Vec<Stage>,
}

impl Decoder {
    /// `vb` is the `nn.Sequential` (`decoder.layers` or the original file's root); `offset` is
    /// the index of its first convolution (0 in diffusers, 1 after the original's clamp).
    pub fn new(vb: VarBuilder, cfg: &TaesdConfig, offset: usize) -> Result<Self> {
        let chans = &cfg.decoder_block_out_channels;
        let conv_in = conv(cfg.latent_channels, chans[0], 3, 1, true, vb.pp(offset))?;
        let mut i = offset + 2; // after the activation
        let mut stages = Vec::new();
        for (s, (&c, &n)) in chans.iter().zip(&cfg.num_decoder_blocks).enumerate() {
            let last = s + 1 == chans.len();
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(Block::new(c, c, vb.pp(i))?);
                i += 1;
            }
            if !last {
                i += 1; // the upsample
            }
            let cout = if last { cfg.out_channels } else { c };
            stages.push(Stage {
                blocks,
                conv: conv(c, cout, 3, 1, last, vb.pp(i))?,
                upsample: (!last).then_some(cfg.upsampling_scaling_factor),
            });
            i += 1;
        }
        Ok(Self { conv_in, stages })
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let x = ops::profile::scope(ops::Kind::ElementWise, || (z / 3.0)?.tanh()? * 3.0)?;
        let mut x = relu(self.conv_in.forward(&x)?)?;
        for stage in &self.stages {
            for b in &stage.blocks {
                x = b.forward(&x)?;
            }
            x = match stage.upsample {
                Some(f) => {
                    let (_, _, h, w) = x.dims4()?;
                    stage.conv.forward_upsampled(&x, (h * f, w * f))?
                }
                None => stage.conv.forward(&x)?,
            };
        }
        Ok(x)
    }
}

/// `EncoderTiny`: image in [0, 1] → raw latents.
pub struct Encoder {
    layers: Vec<(Conv2d, Vec<Block>)>,
    conv_out: Conv2d,
}

impl Encoder {
    pub fn new(vb: VarBuilder, cfg: &TaesdConfig) -> Result<Self> {
        let chans = &cfg.encoder_block_out_channels;
        let mut i = 0;
        let mut layers = Vec::new();
        for (s, (&c, &n)) in chans.iter().zip(&cfg.num_encoder_blocks).enumerate() {
            let conv = match s {
                0 => conv(cfg.in_channels, c, 3, 1, true, vb.pp(i))?,
                _ => conv(c, c, 3, 2, false, vb.pp(i))?,
            };
            i += 1;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push(Block::new(c, c, vb.pp(i))?);
                i += 1;
            }
            layers.push((conv, blocks));
        }
        let last = chans[chans.len() - 1];
        let conv_out = conv(last, cfg.latent_channels, 3, 1, true, vb.pp(i))?;
        Ok(Self { layers, conv_out })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (conv, blocks) in &self.layers {
            x = conv.forward(&x)?;
            for b in blocks {
                x = b.forward(&x)?;
            }
        }
        self.conv_out.forward(&x)
    }
}

/// A loaded TAESD: the decoder, and the encoder where the files have one.
pub struct Taesd {
    pub config: TaesdConfig,
    pub decoder: Decoder,
    pub encoder: Option<Encoder>,
    /// The decoder's weight file (for messages).
    pub file: PathBuf,
}

impl Taesd {
    /// Latents as the sampler produces them → image in [-1, 1], NCHW (diffusers'
    /// `AutoencoderTiny.decode(latents / scaling_factor + shift_factor)`).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let z = if c.scaling_factor != 1.0 || c.shift_factor != 0.0 {
            ((latents / c.scaling_factor)? + c.shift_factor)?
        } else {
            latents.clone()
        };
        let x = self.decoder.forward(&z)?;
        ops::profile::scope(ops::Kind::ElementWise, || x.affine(2.0, -1.0))
    }

    /// Image pixels per latent pixel along each side (8 for the real TAESD).
    pub fn scale(&self) -> usize {
        let stages = self.config.decoder_block_out_channels.len() as u32;
        self.config
            .upsampling_scaling_factor
            .pow(stages.saturating_sub(1))
    }

    /// Image in [-1, 1] → latents as the sampler uses them; `None` without an encoder.
    pub fn encode(&self, image: &Tensor) -> Option<Result<Tensor>> {
        let enc = self.encoder.as_ref()?;
        let c = &self.config;
        Some((|| {
            let raw = enc.forward(&image.affine(0.5, 0.5)?)?;
            (raw - c.shift_factor)? * c.scaling_factor
        })())
    }

    /// Loads a diffusers `AutoencoderTiny` folder, a folder holding `taesd_decoder.safetensors`
    /// (or the SDXL one), or one such file (original or diffusers names). F32 compute.
    pub fn load(path: &Path, device: &Device) -> std::result::Result<Self, ModelError> {
        if path.is_dir() {
            let config = path.join("config.json");
            if config.is_file() {
                return Self::load_folder(path, &config, device);
            }
            return match DECODER_FILES
                .iter()
                .map(|f| path.join(f))
                .find(|f| f.is_file())
            {
                Some(file) => Self::load_file(&file, device),
                None => Err(ModelError::Missing {
                    path: path.to_path_buf(),
                    what: format!(
                        "a TAESD: neither config.json + diffusion_pytorch_model.safetensors nor {}",
                        DECODER_FILES.join(" / ")
                    ),
                }),
            };
        }
        Self::load_file(path, device)
    }

    fn load_folder(
        dir: &Path,
        config: &Path,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let raw: serde_json::Value = weights::read_json(config)?;
        match raw.get("_class_name").and_then(|v| v.as_str()) {
            Some("AutoencoderTiny") | None => {}
            Some(other) => {
                return Err(ModelError::unsupported(
                    config,
                    format!("is diffusers' {other}, not a TAESD (AutoencoderTiny)"),
                ))
            }
        }
        let cfg: TaesdConfig = serde_json::from_value(raw)
            .map_err(|e| ModelError::bad_config(config, e.to_string()))?;
        cfg.check().map_err(|m| ModelError::bad_config(config, m))?;
        let files = weights::find_weight_files(dir, "diffusion_pytorch_model")?;
        let w = weights::open(files, DType::F32, device)?;
        let built = (|| -> std::result::Result<_, BuildError> {
            let decoder =
                Decoder::new(w.vb.pp("decoder.layers"), &cfg, 0).map_err(BuildError::Weights)?;
            let encoder = if w.vb.contains_tensor("encoder.layers.0.weight") {
                Some(Encoder::new(w.vb.pp("encoder.layers"), &cfg).map_err(BuildError::Weights)?)
            } else {
                None
            };
            Ok((decoder, encoder))
        })();
        let (decoder, encoder) = finish(&w, config, built)?;
        Ok(Self {
            config: cfg,
            decoder,
            encoder,
            file: w.files.first().cloned().unwrap_or_default(),
        })
    }

    /// A single file: the original layout (`taesd_decoder.safetensors`, with
    /// `taesd_encoder.safetensors` beside it when there) or diffusers' names in one file.
    fn load_file(file: &Path, device: &Device) -> std::result::Result<Self, ModelError> {
        let shapes = read_shapes(file)?;
        let not_taesd = |why: &str| {
            ModelError::checkpoint(
                file,
                format!(
                    "not a TAESD decoder ({why}; expected taesd_decoder.safetensors' names \
                     `1.weight`, `3.conv.0.weight`, … or diffusers' `decoder.layers.*`)"
                ),
            )
        };
        let (prefix, offset) = if shapes.keys().any(|k| k.starts_with("decoder.layers.")) {
            ("decoder.layers.", 0)
        } else if shapes.contains_key("0.weight") && !shapes.contains_key("1.weight") {
            return Err(not_taesd("it is a TAESD encoder; Easel needs the decoder"));
        } else {
            ("", 1)
        };
        let mut cfg = infer_decoder(&shapes, prefix, offset).ok_or_else(|| {
            not_taesd(&format!(
                "{} tensors such as {}",
                shapes.len(),
                shapes.keys().next().map_or("none", String::as_str)
            ))
        })?;
        // The encoder: in the same file (diffusers names), or the original file beside it.
        let encoder_file = file
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.contains("_decoder"))
            .map(|n| file.with_file_name(n.replace("_decoder", "_encoder")))
            .filter(|f| f.is_file());
        let (enc_shapes, enc_prefix) = match (&encoder_file, offset) {
            (_, 0) => (Some(shapes.clone()), "encoder.layers."),
            (Some(f), _) => (Some(read_shapes(f)?), ""),
            (None, _) => (None, ""),
        };
        let enc_cfg = enc_shapes
            .as_ref()
            .and_then(|s| infer_encoder(s, enc_prefix));
        if let Some((chans, blocks, in_channels)) = enc_cfg.clone() {
            cfg.encoder_block_out_channels = chans;
            cfg.num_encoder_blocks = blocks;
            cfg.in_channels = in_channels;
        }
        let w = weights::open(vec![file.to_path_buf()], DType::F32, device)?;
        let vb = match offset {
            0 => w.vb.pp("decoder.layers"),
            _ => w.vb.clone(),
        };
        let built = Decoder::new(vb, &cfg, offset).map_err(BuildError::Weights);
        let decoder = finish(&w, file, built)?;
        let encoder = match (enc_cfg, offset, &encoder_file) {
            (None, _, _) => None,
            (Some(_), 0, _) => Some(build_encoder(&w, w.vb.pp("encoder.layers"), &cfg, file)?),
            (Some(_), _, Some(f)) => {
                let we = weights::open(vec![f.clone()], DType::F32, device)?;
                Some(build_encoder(&we, we.vb.clone(), &cfg, f)?)
            }
            (Some(_), _, None) => None,
        };
        Ok(Self {
            config: cfg,
            decoder,
            encoder,
            file: file.to_path_buf(),
        })
    }
}

fn build_encoder(
    w: &ComponentWeights,
    vb: VarBuilder,
    cfg: &TaesdConfig,
    file: &Path,
) -> std::result::Result<Encoder, ModelError> {
    finish(w, file, Encoder::new(vb, cfg).map_err(BuildError::Weights))
}

/// Turns a build result into the model or an error naming the files (missing tensors first).
fn finish<T>(
    w: &ComponentWeights,
    config: &Path,
    built: std::result::Result<T, BuildError>,
) -> std::result::Result<T, ModelError> {
    weights::check_complete(w, config)?;
    match built {
        Ok(m) => Ok(m),
        Err(BuildError::Config(e)) => Err(e),
        Err(BuildError::Weights(e)) => Err(weights::mismatch(w, config, without_backtrace(e))),
    }
}

fn read_shapes(file: &Path) -> std::result::Result<BTreeMap<String, Vec<usize>>, ModelError> {
    let f = TensorFile::open(file).map_err(|e| weights::file_error(file, e))?;
    Ok(f.tensors.into_iter().map(|(k, v)| (k, v.shape)).collect())
}

/// What sits at one index of the `nn.Sequential`, from its tensor names and shapes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    /// A 3×3 convolution: (in, out, has bias).
    Conv(usize, usize, bool),
    /// A block of `channels`.
    Block(usize),
    /// No weights: activation, clamp or upsample.
    Empty,
}

fn item(shapes: &BTreeMap<String, Vec<usize>>, prefix: &str, i: usize) -> Item {
    if let Some(s) = shapes.get(&format!("{prefix}{i}.weight")) {
        if let [cout, cin, 3, 3] = s[..] {
            let bias = shapes.contains_key(&format!("{prefix}{i}.bias"));
            return Item::Conv(cin, cout, bias);
        }
    }
    match shapes
        .get(&format!("{prefix}{i}.conv.0.weight"))
        .map(|s| &s[..])
    {
        Some([cout, _, 3, 3]) => Item::Block(*cout),
        _ => Item::Empty,
    }
}

fn max_index(shapes: &BTreeMap<String, Vec<usize>>, prefix: &str) -> Option<usize> {
    shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse().ok())
        .max()
}

/// The decoder's architecture from its names: conv, activation, then per stage blocks,
/// (upsample,) conv. `None` when the names do not follow that shape.
fn infer_decoder(
    shapes: &BTreeMap<String, Vec<usize>>,
    prefix: &str,
    offset: usize,
) -> Option<TaesdConfig> {
    let end = max_index(shapes, prefix)?;
    let Item::Conv(latent, _, true) = item(shapes, prefix, offset) else {
        return None;
    };
    let mut cfg = TaesdConfig {
        latent_channels: latent,
        decoder_block_out_channels: vec![],
        num_decoder_blocks: vec![],
        ..Default::default()
    };
    let mut i = offset + 2;
    while i <= end {
        let mut n = 0;
        let mut chans = None;
        while let Item::Block(c) = item(shapes, prefix, i) {
            n += 1;
            chans = Some(c);
            i += 1;
        }
        match (item(shapes, prefix, i), item(shapes, prefix, i + 1)) {
            (Item::Empty, Item::Conv(c, _, false)) => {
                cfg.decoder_block_out_channels.push(chans.unwrap_or(c));
                cfg.num_decoder_blocks.push(n);
                i += 2;
            }
            (Item::Conv(c, out, true), _) if i == end => {
                cfg.decoder_block_out_channels.push(chans.unwrap_or(c));
                cfg.num_decoder_blocks.push(n);
                cfg.out_channels = out;
                return Some(cfg);
            }
            _ => return None,
        }
    }
    None
}

/// The encoder's (channels, blocks per stage, image channels) from its names.
fn infer_encoder(
    shapes: &BTreeMap<String, Vec<usize>>,
    prefix: &str,
) -> Option<(Vec<usize>, Vec<usize>, usize)> {
    let end = max_index(shapes, prefix)?;
    let Item::Conv(image, _, true) = item(shapes, prefix, 0) else {
        return None;
    };
    let (mut chans, mut blocks) = (vec![], vec![]);
    let mut i = 0;
    while i < end {
        let Item::Conv(_, c, _) = item(shapes, prefix, i) else {
            return None;
        };
        i += 1;
        let mut n = 0;
        while let Item::Block(_) = item(shapes, prefix, i) {
            n += 1;
            i += 1;
        }
        chans.push(c);
        blocks.push(n);
    }
    matches!(item(shapes, prefix, end), Item::Conv(_, _, true)).then_some((chans, blocks, image))
}
