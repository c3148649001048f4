//! `easel lora list|info`, and the `--lora` handling `easel generate` shares.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};

use crate::diffusion::Pipeline;
use crate::lora::library::{self, default_lora_dirs, LoraInfo};
use crate::lora::{Adapter, AdapterSettings, LoraStack};
use crate::prompt::lora_tags::{parse_spec, prompt_loras, LoraSpec};

#[derive(Args, Debug)]
pub struct LoraArgs {
    #[command(subcommand)]
    pub command: LoraCommand,
}

#[derive(Subcommand, Debug)]
pub enum LoraCommand {
    /// List the adapters in a folder (sub-folders included): rank, alpha, family, what they
    /// touch, trigger words. Reads headers only.
    List {
        /// Default: the folders in $EASEL_LORA_DIR, then the bundled adapters (models/loras).
        dir: Option<PathBuf>,
        /// Only adapters whose name, base model, family or trigger words contain every word.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Describe one adapter: format, layers, rank and alpha, kohya metadata, A1111 hash; with
    /// --model, whether it fits that model.
    Info {
        file: PathBuf,
        /// Check the adapter against this diffusers model folder.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: LoraArgs) -> Result<()> {
    match args.command {
        LoraCommand::List { dir, filter, json } => list(dir, filter.as_deref(), json),
        LoraCommand::Info { file, model, json } => info(&file, model.as_deref(), json),
    }
}

fn list(dir: Option<PathBuf>, filter: Option<&str>, json: bool) -> Result<()> {
    let dirs = match dir {
        Some(d) => vec![d],
        None => default_lora_dirs(),
    };
    if dirs.is_empty() {
        bail!("no folder given: pass one, or set EASEL_LORA_DIR");
    }
    let mut infos = Vec::new();
    let mut errors = Vec::new();
    for d in &dirs {
        if !d.is_dir() {
            bail!("{}: not a folder", d.display());
        }
        for entry in library::scan(d)? {
            match entry {
                Ok(i) if filter.is_none_or(|q| i.matches(q)) => infos.push(i),
                Ok(_) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
    }
    if json {
        let items: Vec<_> = infos.iter().map(info_json).collect();
        println!(
            "{}",
            serde_json::json!({ "adapters": items, "errors": errors })
        );
        return Ok(());
    }
    println!(
        "{:<28} {:>5} {:>6}  {:<8} {:<24} {:>9}  trigger words",
        "name", "rank", "alpha", "family", "touches", "size"
    );
    for i in &infos {
        println!(
            "{:<28} {:>5} {:>6}  {:<8} {:<24} {:>9}  {}",
            i.name,
            rank_text(i),
            i.alpha.map_or("-".into(), |a| format!("{a}")),
            i.family.to_string(),
            touches_text(i),
            size_text(i.size_bytes),
            i.trigger_text()
        );
    }
    for e in &errors {
        println!("unreadable: {e}");
    }
    eprintln!("{} adapters", infos.len());
    Ok(())
}

fn rank_text(i: &LoraInfo) -> String {
    match i.rank {
        Some((a, b)) if a == b => a.to_string(),
        Some((a, b)) => format!("{a}-{b}"),
        None => "-".into(),
    }
}

fn touches_text(i: &LoraInfo) -> String {
    let t = &i.touches;
    let mut parts = Vec::new();
    if t.unet_layers > 0 {
        parts.push(format!("UNet {}", t.unet_layers));
    }
    if t.text_layers > 0 {
        parts.push(format!("text {}", t.text_layers));
    }
    if t.conv3x3_layers > 0 {
        parts.push(format!("conv3x3 {}", t.conv3x3_layers));
    }
    if parts.is_empty() {
        "nothing Easel applies".into()
    } else {
        parts.join(", ")
    }
}

fn size_text(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

fn info_json(i: &LoraInfo) -> serde_json::Value {
    serde_json::json!({
        "name": i.name, "path": i.path, "size_bytes": i.size_bytes, "format": i.format.to_string(),
        "rank": i.rank.map(|(a, b)| [a, b]), "alpha": i.alpha, "family": i.family.to_string(),
        "unet_layers": i.touches.unet_layers, "text_layers": i.touches.text_layers,
        "conv_layers": i.touches.conv_layers, "conv3x3_layers": i.touches.conv3x3_layers,
        "unrecognised_keys": i.unrecognised_keys, "total_keys": i.total_keys,
        "kohya": {
            "output_name": i.kohya.output_name, "sd_model_name": i.kohya.sd_model_name,
            "base_model_version": i.kohya.base_model_version, "network_dim": i.kohya.network_dim,
            "network_alpha": i.kohya.network_alpha, "network_module": i.kohya.network_module,
            "trigger_words": i.kohya.trigger_words,
        },
    })
}

fn info(file: &Path, model: Option<&Path>, json: bool) -> Result<()> {
    let i = library::inspect(file)?;
    let hash = library::short_hash(file)?;
    let fit = match model {
        Some(dir) => {
            let p = Pipeline::load(dir, &candle_core::Device::Cpu)?;
            let a = Adapter::load(file, &p.model)?;
            let (unet, text) = a.layer_counts();
            Some(format!(
                "fits {}: all {} keys match ({unet} UNet and {text} text-encoder layers)",
                dir.display(),
                a.total_keys
            ))
        }
        None => None,
    };
    if json {
        let mut v = info_json(&i);
        v["hash"] = hash.into();
        v["fit"] = fit.into();
        println!("{v}");
        return Ok(());
    }
    println!("{}  ({})", i.name, i.path.display());
    println!("  format        {}", i.format);
    println!("  size          {}", size_text(i.size_bytes));
    println!("  hash          {hash}  (A1111 Lora hashes)");
    println!("  family        {}", i.family);
    println!("  rank          {}", rank_text(&i));
    println!(
        "  alpha         {}",
        i.alpha.map_or("none (scale 1)".into(), |a| format!("{a}"))
    );
    println!("  touches       {}", touches_text(&i));
    println!("  keys          {}", i.total_keys);
    if i.unrecognised_keys > 0 {
        println!(
            "  not LoRA      {} keys Easel cannot apply (LoHa/LoKr/DoRA or another model family)",
            i.unrecognised_keys
        );
    }
    let k = &i.kohya;
    for (label, v) in [
        ("output name", &k.output_name),
        ("trained on", &k.sd_model_name),
        ("base model", &k.base_model_version),
        ("network dim", &k.network_dim),
        ("network alpha", &k.network_alpha),
        ("module", &k.network_module),
    ] {
        if let Some(v) = v {
            println!("  {label:<13} {v}");
        }
    }
    if !k.trigger_words.is_empty() {
        let words: Vec<_> = k
            .trigger_words
            .iter()
            .map(|(w, n)| format!("{w} ({n})"))
            .collect();
        println!("  trigger words {}", words.join(", "));
    }
    if let Some(f) = fit {
        println!("  {f}");
    }
    Ok(())
}

/// The adapters one generation uses, resolved and applied.
pub struct GenerateLoras {
    pub stack: LoraStack,
    /// The prompt to record in the PNG: the user's prompt plus an A1111 tag for each `--lora`
    /// adapter it does not already name, so the image reproduces here and in A1111.
    pub recorded_prompt: String,
}

/// Resolves `--lora` arguments and the prompt's `<lora:…>` tags (names are looked up in
/// `dirs`, then $EASEL_LORA_DIR, then the bundled adapters), reads each adapter once and applies them to the model.
pub fn apply_for_generate(
    pipeline: &Pipeline,
    args: &[String],
    dirs: &[PathBuf],
    prompt: &str,
) -> Result<GenerateLoras> {
    let mut dirs = dirs.to_vec();
    dirs.extend(default_lora_dirs());
    let tagged = prompt_loras(prompt).map_err(|e| anyhow!("--prompt: {e}"))?;
    let flagged = args
        .iter()
        .map(|a| parse_spec(a).map_err(|e| anyhow!("--lora {a}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut stack = LoraStack::new();
    let mut recorded = prompt.to_string();
    for (spec, from_flag) in tagged
        .iter()
        .map(|s| (s, false))
        .chain(flagged.iter().map(|s| (s, true)))
    {
        let path = resolve(spec, &dirs, from_flag)?;
        let settings = AdapterSettings {
            enabled: true,
            weight: spec.weight,
            te_weight: spec.te_weight,
        };
        if stack.entries().iter().any(|(a, _)| a.path == path) {
            bail!(
                "{}: named twice (in the prompt and/or --lora)",
                path.display()
            );
        }
        stack
            .add(&pipeline.model, &path, settings)
            .with_context(|| if from_flag { "--lora" } else { "--prompt" })?;
        if from_flag {
            let name = crate::lora::adapter::file_stem(&path);
            let tag = LoraSpec {
                name,
                ..spec.clone()
            }
            .to_tag();
            if !recorded.is_empty() && !recorded.ends_with(' ') {
                recorded.push(' ');
            }
            recorded.push_str(&tag);
        }
    }
    stack.apply(&pipeline.model)?;
    Ok(GenerateLoras {
        stack,
        recorded_prompt: recorded,
    })
}

/// A command-line argument may be a file; a prompt tag is always a name.
fn resolve(spec: &LoraSpec, dirs: &[PathBuf], may_be_path: bool) -> Result<PathBuf> {
    let as_path = Path::new(&spec.name);
    if may_be_path && as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let looks_like_path = spec.name.contains(['/', '\\']) || spec.name.ends_with(".safetensors");
    if may_be_path && looks_like_path {
        bail!("--lora {}: no such file", spec.name);
    }
    Ok(library::find_by_name(dirs, &spec.name)?)
}
