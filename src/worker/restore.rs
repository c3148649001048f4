//! Generation settings read back from a dropped PNG: Easel's own JSON chunk (exact), then
//! AUTOMATIC1111's `parameters`, then ComfyUI's `prompt` graph — the first one found wins.
//!
//! Each field is optional because other tools' files hold only some of them; the UI
//! restores what was found and says so, and keeps the user's value for the rest.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

use crate::diffusion::schedulers::{Sampler, Spacing};
use crate::gallery::png_meta::{read_png_metadata, ParsedParameters, PngMetadata};

/// Which format the settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Easel,
    Automatic1111,
    ComfyUi,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Easel => "Easel metadata",
            Source::Automatic1111 => "AUTOMATIC1111 parameters",
            Source::ComfyUi => "ComfyUI workflow",
        }
    }
}

/// Settings found in a file; `None` = not in the file (or not usable by Easel, see `notes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub source: Source,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub steps: Option<usize>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub sampler: Option<Sampler>,
    pub spacing: Option<Spacing>,
    pub model_name: Option<String>,
    /// A1111's short hash of the model, to find it in the model library.
    pub model_hash: Option<String>,
    pub clip_skip: Option<usize>,
    /// SDXL's second prompts and micro-conditioning (Easel's own metadata only).
    pub sdxl: Option<crate::diffusion::SdxlOptions>,
    /// img2img (Easel's own metadata only): `Some(None)` = the image was made from text;
    /// `Some(Some((picture, strength, mask)))` = from that picture (inpainted where the mask
    /// is white). The files are only named here: nothing a PNG names is opened unless the user
    /// chooses it.
    pub init: Option<Option<(std::path::PathBuf, f64, Option<std::path::PathBuf>)>>,
    /// Hires fix: `Some(None)` = the image had none, `Some(Some(_))` = its second pass.
    pub hires: Option<Option<crate::diffusion::Hires>>,
    /// What was found but could not be used, in words.
    pub notes: Vec<String>,
}

impl Restored {
    fn empty(source: Source) -> Self {
        Self {
            source,
            prompt: None,
            negative_prompt: None,
            steps: None,
            cfg_scale: None,
            seed: None,
            width: None,
            height: None,
            sampler: None,
            spacing: None,
            model_name: None,
            model_hash: None,
            clip_skip: None,
            sdxl: None,
            init: None,
            hires: None,
            notes: Vec::new(),
        }
    }

    /// One line for the user: where the settings came from and what was restored.
    pub fn summary(&self) -> String {
        let mut found = Vec::new();
        if self.prompt.is_some() {
            found.push("prompt".to_string());
        }
        if self
            .negative_prompt
            .as_deref()
            .is_some_and(|n| !n.is_empty())
        {
            found.push("negative prompt".into());
        }
        if let Some(s) = self.steps {
            found.push(format!("{s} steps"));
        }
        if let Some(c) = self.cfg_scale {
            found.push(format!("CFG {c}"));
        }
        if let Some(s) = self.seed {
            found.push(format!("seed {s}"));
        }
        if let (Some(w), Some(h)) = (self.width, self.height) {
            found.push(format!("{w}×{h}"));
        }
        if let Some(s) = self.sampler {
            found.push(s.a1111_name().to_string());
        }
        if let Some(s) = self.spacing {
            found.push(format!("{s} spacing"));
        }
        if let Some(Some((_, strength, mask))) = &self.init {
            let what = if mask.is_some() {
                "inpainting"
            } else {
                "img2img"
            };
            found.push(format!("{what} strength {strength}"));
        }
        if let Some(Some(h)) = &self.hires {
            found.push(format!(
                "hires fix {}× {}",
                h.scale,
                h.upscaler.a1111_name()
            ));
        }
        if let Some(c) = self.clip_skip {
            found.push(format!("clip skip {c}"));
        }
        if self.sdxl.is_some() {
            found.push("SDXL prompts and size conditioning".into());
        }
        let mut text = format!("{}: restored {}", self.source.label(), found.join(", "));
        if let Some(m) = &self.model_name {
            let _ = write!(text, " (made with model \u{201c}{m}\u{201d})");
        }
        for note in &self.notes {
            let _ = write!(text, "; {note}");
        }
        text
    }
}

/// The longest prompt a file may restore, in characters. Real prompts are at most a few
/// thousand; a text field holding megabytes would stall every frame of the studio.
pub const MAX_PROMPT_CHARS: usize = 20_000;
/// The longest model name kept (it is only ever compared with library names).
const MAX_NAME_CHARS: usize = 256;

/// `text` without control characters (line breaks and tabs stay) and cut to `max` characters;
/// says what was done in `notes`, naming the field.
fn clean_text(text: &mut String, max: usize, field: &str, notes: &mut Vec<String>) {
    let kept = |c: &char| !c.is_control() || *c == '\n' || *c == '\t';
    if !text.chars().all(|c| kept(&c)) {
        text.retain(|c| kept(&c));
        notes.push(format!("control characters removed from the {field}"));
    }
    let chars = text.chars().count();
    if chars > max {
        *text = text.chars().take(max).collect();
        notes.push(format!(
            "the {field} was {chars} characters long; its first {max} kept"
        ));
    }
}

/// `v` within `lo..=hi`; a note names the field when it was not.
fn clamp_noted<T: PartialOrd + Copy + std::fmt::Display>(
    v: T,
    lo: T,
    hi: T,
    field: &str,
    notes: &mut Vec<String>,
) -> T {
    let c = if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    };
    if c != v {
        notes.push(format!("{field} {v} is outside {lo}..={hi}: {c} instead"));
    }
    c
}

impl Restored {
    /// What a file claims, made safe to put in the studio's fields: numbers within the ranges
    /// a generation accepts, texts without control characters and of a sane length. A file
    /// may say anything; each change is noted for the user.
    fn within_limits(mut self) -> Self {
        use crate::diffusion::pipeline::{MAX_SIDE, MAX_STEPS};
        let notes = &mut self.notes;
        self.steps = self
            .steps
            .map(|v| clamp_noted(v, 1, MAX_STEPS, "steps", notes));
        self.cfg_scale = match self.cfg_scale {
            Some(v) if !v.is_finite() => {
                notes.push(format!("CFG scale {v} is not a number; not restored"));
                None
            }
            v => v.map(|v| clamp_noted(v, 0.0, 100.0, "CFG scale", notes)),
        };
        self.width = self
            .width
            .map(|v| clamp_noted(v, 8, MAX_SIDE, "width", notes));
        self.height = self
            .height
            .map(|v| clamp_noted(v, 8, MAX_SIDE, "height", notes));
        self.clip_skip = self
            .clip_skip
            .map(|v| clamp_noted(v, 1, 12, "clip skip", notes));
        for (text, field) in [
            (self.prompt.as_mut(), "prompt"),
            (self.negative_prompt.as_mut(), "negative prompt"),
        ] {
            if let Some(t) = text {
                clean_text(t, MAX_PROMPT_CHARS, field, notes);
            }
        }
        if let Some(x) = self.sdxl.as_mut() {
            for (text, field) in [
                (x.prompt_2.as_mut(), "second prompt"),
                (x.negative_prompt_2.as_mut(), "second negative prompt"),
            ] {
                if let Some(t) = text {
                    clean_text(t, MAX_PROMPT_CHARS, field, notes);
                }
            }
            x.size = x.size.clamped();
        }
        for (text, field) in [
            (self.model_name.as_mut(), "model name"),
            (self.model_hash.as_mut(), "model hash"),
        ] {
            if let Some(t) = text {
                clean_text(t, MAX_NAME_CHARS, field, notes);
            }
        }
        self
    }
}

/// Reads the settings stored in a PNG. The error is a sentence for the user.
pub fn read_settings(path: &Path) -> Result<Restored, String> {
    let meta = read_png_metadata(path).map_err(|e| e.to_string())?;
    from_metadata(&meta).ok_or_else(|| {
        format!(
            "{} holds no generation settings (no Easel, AUTOMATIC1111 `parameters` or ComfyUI `prompt` chunk)",
            path.display()
        )
    })
}

/// The settings in already-read metadata, in order of preference, within Easel's limits
/// (see [`Restored::within_limits`]).
pub fn from_metadata(meta: &PngMetadata) -> Option<Restored> {
    found_in(meta).map(Restored::within_limits)
}

fn found_in(meta: &PngMetadata) -> Option<Restored> {
    if let Some(e) = &meta.easel {
        let mut r = Restored::empty(Source::Easel);
        r.prompt = Some(e.prompt.clone());
        r.negative_prompt = Some(e.negative_prompt.clone());
        r.steps = Some(e.steps);
        r.cfg_scale = Some(e.cfg_scale);
        r.seed = Some(e.seed);
        r.width = Some(e.width);
        r.height = Some(e.height);
        r.sampler = e.sampler.parse().ok();
        // Names only: an unknown spacing from a newer Easel is dropped, not guessed at.
        r.spacing = e.spacing.as_deref().and_then(|s| s.parse().ok());
        if r.sampler.is_none() {
            r.notes
                .push(format!("sampler {} is not available here", e.sampler));
        }
        r.model_name = Some(e.model_name.clone()).filter(|m| !m.is_empty());
        r.model_hash = Some(e.model_hash.clone()).filter(|m| !m.is_empty());
        r.clip_skip = Some(e.clip_skip);
        r.sdxl = e.sdxl.clone();
        r.init = Some(e.init_image.as_ref().map(|i| {
            // A strength from elsewhere is not trusted beyond the valid range.
            let strength = if i.strength.is_finite() {
                i.strength.clamp(0.01, 1.0)
            } else {
                crate::diffusion::init_image::DEFAULT_STRENGTH
            };
            let mask = i.mask.as_ref().map(std::path::PathBuf::from);
            (std::path::PathBuf::from(&i.path), strength, mask)
        }));
        r.hires = Some(e.hires.map(trusted_hires));
        return Some(r);
    }
    if let Some(a) = &meta.a1111 {
        return Some(from_a1111(a));
    }
    let graph: Value = serde_json::from_str(meta.text("prompt")?).ok()?;
    from_comfyui(graph.as_object()?)
}

/// Hires settings from a file, within the ranges Easel accepts (a file may claim anything).
fn trusted_hires(h: crate::diffusion::Hires) -> crate::diffusion::Hires {
    let finite = |v: f64, default: f64| if v.is_finite() { v } else { default };
    let d = crate::diffusion::Hires::default();
    crate::diffusion::Hires {
        scale: finite(h.scale, d.scale).clamp(1.05, crate::diffusion::hires::MAX_SCALE),
        steps: h.steps.min(crate::diffusion::pipeline::MAX_STEPS),
        denoise: finite(h.denoise, d.denoise).clamp(0.01, 1.0),
        upscaler: h.upscaler,
    }
}

/// A1111's hires fields (`Hires upscale` present = hires fix was on).
fn a1111_hires(a: &ParsedParameters, notes: &mut Vec<String>) -> Option<crate::diffusion::Hires> {
    let number = |key: &str| a.get(key).and_then(|v| v.trim().parse::<f64>().ok());
    let scale = number("Hires upscale")?;
    let d = crate::diffusion::Hires::default();
    let upscaler = match a.get("Hires upscaler") {
        None => d.upscaler,
        Some(name) => {
            crate::diffusion::Upscaler::from_a1111_name(name.trim()).unwrap_or_else(|| {
                notes.push(format!(
                    "hires upscaler \u{201c}{name}\u{201d} is not available here; Lanczos instead"
                ));
                crate::diffusion::Upscaler::Lanczos
            })
        }
    };
    Some(trusted_hires(crate::diffusion::Hires {
        scale,
        steps: number("Hires steps").map_or(0, |v| v.max(0.0) as usize),
        denoise: number("Denoising strength").unwrap_or(d.denoise),
        upscaler,
    }))
}

fn from_a1111(a: &ParsedParameters) -> Restored {
    let mut r = Restored::empty(Source::Automatic1111);
    r.hires = Some(a1111_hires(a, &mut r.notes));
    r.prompt = Some(a.prompt.clone());
    r.negative_prompt = Some(a.negative_prompt.clone());
    r.steps = a.steps;
    r.cfg_scale = a.cfg_scale;
    r.seed = a.seed;
    r.width = a.width;
    r.height = a.height;
    r.model_name = a.model_name.clone();
    r.model_hash = a.model_hash.clone();
    // A1111 writes the clip skip only when it is not 1.
    r.clip_skip = Some(
        a.get("Clip skip")
            .and_then(|v| v.trim().parse().ok())
            .filter(|&c| c >= 1)
            .unwrap_or(1),
    );
    if let Some(name) = &a.sampler {
        // Newer A1111 writes the schedule apart: `Sampler: DPM++ 2M, Schedule type: Karras`.
        let full = match a.get("Schedule type") {
            Some(schedule) if !name.contains(schedule) => format!("{name} {schedule}"),
            _ => name.clone(),
        };
        r.sampler = Sampler::from_a1111_name(&full).or_else(|| Sampler::from_a1111_name(name));
        if r.sampler.is_none() {
            r.notes.push(format!(
                "sampler \u{201c}{full}\u{201d} is not available here"
            ));
        }
    }
    r
}

/// ComfyUI's API graph: `{"id": {"class_type": …, "inputs": {…}}}`, where an input is a value
/// or a link `[node id, output index]`. The sampler node holds seed, steps, CFG and sampler;
/// its `positive`/`negative`/`latent_image` links lead to the prompts and the size.
fn from_comfyui(graph: &Map<String, Value>) -> Option<Restored> {
    let sampler = graph
        .values()
        .find(|n| class_of(n).is_some_and(|c| c.starts_with("KSampler")))?;
    let inputs = sampler.get("inputs")?.as_object()?;
    let mut r = Restored::empty(Source::ComfyUi);
    r.seed = inputs
        .get("seed")
        .or_else(|| inputs.get("noise_seed"))
        .and_then(Value::as_u64);
    r.steps = inputs
        .get("steps")
        .and_then(Value::as_u64)
        .and_then(|s| usize::try_from(s).ok());
    r.cfg_scale = inputs.get("cfg").and_then(Value::as_f64);
    r.prompt = inputs.get("positive").and_then(|l| text_at(graph, l, 0));
    r.negative_prompt = inputs.get("negative").and_then(|l| text_at(graph, l, 0));
    if let Some(latent) = inputs.get("latent_image").and_then(|l| linked(graph, l)) {
        let size = |k| {
            latent
                .get("inputs")
                .and_then(|i| i.get(k))
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
        };
        r.width = size("width");
        r.height = size("height");
    }
    if let Some(name) = inputs.get("sampler_name").and_then(Value::as_str) {
        let schedule = inputs
            .get("scheduler")
            .and_then(Value::as_str)
            .unwrap_or("");
        r.sampler = match (name, schedule) {
            ("euler", _) => Some(Sampler::Euler),
            ("euler_ancestral", _) => Some(Sampler::EulerAncestral),
            ("ddim", _) => Some(Sampler::Ddim),
            ("dpmpp_2m", "karras") => Some(Sampler::DpmPp2mKarras),
            _ => None,
        };
        if r.sampler.is_none() {
            r.notes.push(format!(
                "sampler \u{201c}{name}\u{201d} ({schedule} schedule) is not available here"
            ));
        }
    }
    Some(r)
}

fn class_of(node: &Value) -> Option<&str> {
    node.get("class_type").and_then(Value::as_str)
}

/// The node a link `["id", index]` points at.
fn linked<'a>(graph: &'a Map<String, Value>, link: &Value) -> Option<&'a Value> {
    let id = link.as_array()?.first()?;
    let key = match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    graph.get(&key)
}

/// The prompt text behind a conditioning link: a text-encode node's `text`, possibly through
/// a primitive or string node feeding it. Bounded so a cyclic graph cannot hang the reader.
fn text_at(graph: &Map<String, Value>, link: &Value, depth: usize) -> Option<String> {
    if depth > 6 {
        return None;
    }
    let inputs = linked(graph, link)?.get("inputs")?.as_object()?;
    for key in ["text", "text_g", "string", "value", "prompt"] {
        match inputs.get(key) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(l @ Value::Array(_)) => {
                if let Some(t) = text_at(graph, l, depth + 1) {
                    return Some(t);
                }
            }
            _ => {}
        }
    }
    // Conditioning passed through another node (e.g. a LoRA or a combine): follow it.
    inputs
        .values()
        .filter(|v| v.is_array())
        .find_map(|l| text_at(graph, l, depth + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comfyui_graph_gives_prompts_seed_steps_cfg_sampler_and_size() {
        let graph = serde_json::json!({
            "3": {"class_type": "KSampler", "inputs": {
                "seed": 1234, "steps": 25, "cfg": 6.5, "sampler_name": "dpmpp_2m",
                "scheduler": "karras", "denoise": 1.0, "model": ["4", 0],
                "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}}
        });
        let meta = PngMetadata {
            text_chunks: vec![("prompt".into(), graph.to_string())],
            ..Default::default()
        };
        let r = from_metadata(&meta).expect("settings");
        assert_eq!(r.source, Source::ComfyUi);
        assert_eq!(r.prompt.as_deref(), Some("a lighthouse at dusk"));
        assert_eq!(r.negative_prompt.as_deref(), Some("blurry"));
        assert_eq!(
            (r.seed, r.steps, r.cfg_scale),
            (Some(1234), Some(25), Some(6.5))
        );
        assert_eq!((r.width, r.height), (Some(512), Some(768)));
        assert_eq!(r.sampler, Some(Sampler::DpmPp2mKarras));
        assert!(r.summary().starts_with("ComfyUI workflow: restored prompt"));
    }

    #[test]
    fn comfyui_unknown_sampler_is_noted_and_cycles_end() {
        let graph = serde_json::json!({
            "1": {"class_type": "KSamplerAdvanced", "inputs": {
                "noise_seed": 7, "steps": 10, "cfg": 3.0, "sampler_name": "lcm",
                "scheduler": "normal", "positive": ["2", 0], "negative": ["2", 0]}},
            "2": {"class_type": "Loop", "inputs": {"conditioning": ["2", 0]}}
        });
        let r = from_comfyui(graph.as_object().expect("object")).expect("settings");
        assert_eq!(r.seed, Some(7));
        assert_eq!(r.prompt, None);
        assert_eq!(r.sampler, None);
        assert!(r.notes[0].contains("lcm"));
    }

    #[test]
    fn a1111_hires_fields_restore_clamped_and_absent_means_off() {
        let parse = |text: &str| {
            from_a1111(&crate::gallery::png_meta::parse_a1111_parameters(text).expect("parses"))
        };
        let r = parse(
            "a cat\nSteps: 20, Seed: 5, Size: 512x512, Denoising strength: 0.45, \
             Hires upscale: 2, Hires steps: 12, Hires upscaler: Latent",
        );
        let want = crate::diffusion::Hires {
            scale: 2.0,
            steps: 12,
            denoise: 0.45,
            upscaler: crate::diffusion::Upscaler::Latent,
        };
        assert_eq!(r.hires, Some(Some(want)));
        assert!(r.summary().contains("hires fix 2×"), "{}", r.summary());
        // An upscaler Easel lacks becomes Lanczos, said once; absurd values are clamped.
        let r = parse("a cat\nSteps: 20, Hires upscale: 1000, Hires steps: 99999999, Hires upscaler: R-ESRGAN 4x+");
        let h = r.hires.flatten().expect("hires");
        assert_eq!(
            (h.scale, h.upscaler),
            (4.0, crate::diffusion::Upscaler::Lanczos)
        );
        assert_eq!(h.steps, crate::diffusion::pipeline::MAX_STEPS);
        assert_eq!(h.denoise, 0.7);
        assert!(r.notes.iter().any(|n| n.contains("R-ESRGAN")));
        assert_eq!(
            parse("a cat\nSteps: 20, Seed: 5, Size: 8x8").hires,
            Some(None)
        );
    }

    #[test]
    fn absurd_values_in_a_file_are_clamped_or_dropped_with_a_note() {
        let long = "x".repeat(MAX_PROMPT_CHARS + 10);
        let text = format!(
            "a \u{1b}[31mred\u{7} cat\n{long}\nNegative prompt: ok\n\
             Steps: 1000000000, CFG scale: 1e300, Seed: 5, Size: 1000000x3, \
             Clip skip: 99, Model: ../../x\u{0}"
        );
        let meta = PngMetadata {
            a1111: crate::gallery::png_meta::parse_a1111_parameters(&text).ok(),
            ..Default::default()
        };
        let r = from_metadata(&meta).expect("settings");
        assert_eq!(r.steps, Some(crate::diffusion::pipeline::MAX_STEPS));
        assert_eq!(r.cfg_scale, Some(100.0));
        assert_eq!(
            (r.width, r.height),
            (Some(crate::diffusion::pipeline::MAX_SIDE), Some(8))
        );
        assert_eq!(r.clip_skip, Some(12));
        let prompt = r.prompt.as_deref().expect("prompt");
        assert_eq!(prompt.chars().count(), MAX_PROMPT_CHARS);
        assert!(prompt.starts_with("a [31mred cat\n"), "{prompt:.20}");
        assert_eq!(r.model_name.as_deref(), Some("../../x"));
        for field in [
            "steps",
            "CFG scale",
            "width",
            "height",
            "clip skip",
            "prompt was",
        ] {
            assert!(
                r.notes.iter().any(|n| n.contains(field)),
                "{field}: {:?}",
                r.notes
            );
        }
        let nan = PngMetadata {
            a1111: crate::gallery::png_meta::parse_a1111_parameters(
                "a\nSteps: 20, CFG scale: NaN, Seed: 1",
            )
            .ok(),
            ..Default::default()
        };
        assert_eq!(from_metadata(&nan).expect("settings").cfg_scale, None);
    }

    #[test]
    fn a1111_split_schedule_type_maps_to_karras() {
        let a = crate::gallery::png_meta::parse_a1111_parameters(
            "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x512",
        )
        .expect("parses");
        let r = from_a1111(&a);
        assert_eq!(r.sampler, Some(Sampler::DpmPp2mKarras));
        assert_eq!(r.seed, Some(5));
    }
}
