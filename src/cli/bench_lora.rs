//! `easel bench --lora-rank R`: LoRA hot-loading measured against issue 4's targets, with the
//! no-adapter baseline in the same run.
//!
//! On the random SD 1.5 folder (or `--model`) it writes a random kohya adapter of rank R on every
//! attention and feed-forward projection of the UNet (plus the transformers' proj_in/proj_out)
//! and of the text encoder, then measures:
//! - the time from a weight change or toggle until the next step can run (an `apply`), against
//!   ≤ 250 ms and ≤ 5% of a cold load of the base model;
//! - the memory the adapter adds, against ≤ 25% of the base model;
//! - a UNet step (CFG, batch 2) with the adapter active vs without, against ≤ 10% slower,
//!   timed alternately (ABAB…) so that load from other processes hits both alike;
//! - what merging into the weights would cost instead, on the same layers: the time to rebuild
//!   them from pristine copies per change, and those copies' memory.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::bench::{median, ms, BenchArgs};
use crate::diffusion::Pipeline;
use crate::lora::keys::underscored;
use crate::lora::{AdapterSettings, LoraStack, SlotShape};
use crate::models::StableDiffusion;

const MIB: f64 = 1024.0 * 1024.0;
/// Timed repetitions of each apply (they are fast; medians of many are stable).
const APPLY_REPS: usize = 20;
const UNET_TARGETS: [&str; 8] = [
    ".to_q",
    ".to_k",
    ".to_v",
    ".to_out.0",
    ".ff.net.0.proj",
    ".ff.net.2",
    ".proj_in",
    ".proj_out",
];
const TEXT_TARGETS: [&str; 6] = [".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2"];

pub fn run(args: &BenchArgs, dir: &Path, rank: usize) -> Result<()> {
    if rank == 0 {
        bail!("--lora-rank must be at least 1");
    }
    let device = Device::Cpu;
    let reps = args.reps.max(1);

    let t = Instant::now();
    let pipeline = Pipeline::load(dir, &device)?;
    let load_ms = ms(t);
    let model = &pipeline.model;
    let base_mib = model_bytes(dir)? as f64 / MIB;

    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("easel-bench"));
    std::fs::create_dir_all(&work).with_context(|| work.display().to_string())?;
    let adapter_path = work.join(format!("{}-lora-rank{rank}.safetensors", model.name));
    if !adapter_path.is_file() {
        eprintln!(
            "making a random rank-{rank} adapter in {} (once)…",
            adapter_path.display()
        );
        make_random_adapter(model, rank, &adapter_path)?;
    }

    let rss_before = rss_mib();
    let mut stack = LoraStack::new();
    let t = Instant::now();
    let idx = stack.add(model, &adapter_path, AdapterSettings::new(1.0))?;
    let read_ms = ms(t);
    let adapter = stack.entries()[idx].0.clone();
    let (unet_layers, text_layers) = adapter.layer_counts();
    let on = AdapterSettings::new(1.0);
    let off = AdapterSettings {
        enabled: false,
        ..on
    };

    let prompt = "a photograph of an astronaut riding a horse on the moon, highly detailed";
    let encode = || -> Result<Tensor> {
        pipeline.forget_kept();
        let cond = pipeline.encode_prompt(prompt)?;
        let uncond = pipeline.encode_prompt("")?;
        Ok(Tensor::cat(&[&uncond, &cond], 0)?)
    };
    let context_plain = encode()?;
    stack.apply(model)?;
    let context_lora = encode()?;
    let text_ms = median(reps, || encode().map(|_| ()))?;
    let rss_after = rss_mib();

    let f = model.vae_scale();
    let c = model.latent_channels();
    let latents = Tensor::randn(0f32, 1f32, (1, c, args.size / f, args.size / f), &device)?;
    let batch = Tensor::cat(&[&latents, &latents], 0)?;
    let mut set = |s: AdapterSettings| -> Result<f64> {
        stack.set(idx, s);
        let t = Instant::now();
        stack.apply(model)?;
        Ok(ms(t))
    };

    // Steps, alternating plain and adapted; the first of each is a warm-up.
    set(off)?;
    let plain_out = model.unet.forward(&batch, 500.0, &context_plain)?;
    set(on)?;
    model.unet.forward(&batch, 500.0, &context_lora)?;
    let (mut plain_steps, mut lora_steps) = (Vec::new(), Vec::new());
    let (mut plain_cpu, mut lora_cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        set(off)?;
        let (t, c) = (Instant::now(), cpu_ms());
        model.unet.forward(&batch, 500.0, &context_plain)?;
        plain_steps.push(ms(t));
        plain_cpu.push(cpu_ms() - c);
        set(on)?;
        let (t, c) = (Instant::now(), cpu_ms());
        model.unet.forward(&batch, 500.0, &context_lora)?;
        lora_steps.push(ms(t));
        lora_cpu.push(cpu_ms() - c);
    }
    set(off)?;
    let again = model.unet.forward(&batch, 500.0, &context_plain)?;
    let restored_exactly = (&again - &plain_out)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        == 0.0;

    // Applies: toggle on, toggle off, re-weight (each from the other state).
    let (mut on_ms, mut off_ms, mut reweight_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..APPLY_REPS {
        set(off)?;
        on_ms.push(set(on)?);
        off_ms.push(set(off)?);
        set(on)?;
        let w = -2.0 + 4.0 * (i as f64 + 0.5) / APPLY_REPS as f64;
        reweight_ms.push(set(AdapterSettings::new(w))?);
    }

    let merge = merged_alternative(&adapter)?;
    let report = Report {
        rank,
        unet_layers,
        text_layers,
        size: args.size,
        threads: candle_core::utils::get_num_threads(),
        load_ms,
        read_ms,
        toggle_on_ms: med(&mut on_ms),
        toggle_off_ms: med(&mut off_ms),
        reweight_ms: med(&mut reweight_ms),
        text_ms,
        plain_step_cpu_ms: med(&mut plain_cpu),
        lora_step_cpu_ms: med(&mut lora_cpu),
        plain_step_ms: med(&mut plain_steps),
        lora_step_ms: med(&mut lora_steps),
        base_mib,
        adapter_mib: adapter.bytes as f64 / MIB,
        rss_growth_mib: rss_after - rss_before,
        merge_ms: merge.0,
        pristine_mib: merge.1,
        restored_exactly,
    };
    report.print(args.json, dir, &adapter_path);
    Ok(())
}

/// CPU time used by the whole process so far (all threads), in ms; 0 without /proc. Other
/// processes on a shared machine stretch wall time but not this, so it corroborates the
/// wall-clock comparison.
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // Linux reports clock ticks of 1/100 s on every common configuration.
    f.iter().sum::<f64>() * 10.0
}

fn med(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The base model's weights in bytes (every safetensors file of the three components).
fn model_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for comp in ["unet", "text_encoder", "vae"] {
        for entry in std::fs::read_dir(dir.join(comp))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
                total += std::fs::metadata(&path)?.len();
            }
        }
    }
    Ok(total)
}

/// Current resident set size (VmRSS) in MiB; 0 where /proc is not available.
fn rss_mib() -> f64 {
    super::bench::proc_status_mib("VmRSS:")
}

/// Writes a kohya-format fp16 adapter of `rank` on every attention and feed-forward projection
/// (and proj_in/proj_out) of the UNet and every attention and MLP projection of the text
/// encoder, with alpha = rank / 2 so that the alpha/rank scale is exercised.
fn make_random_adapter(model: &StableDiffusion, rank: usize, path: &Path) -> Result<()> {
    let device = Device::Cpu;
    let mut tensors = HashMap::new();
    let alpha = Tensor::new(rank as f32 / 2.0, &device)?.to_dtype(DType::F16)?;
    let groups = [
        ("lora_unet_", model.unet.lora_slots(), &UNET_TARGETS[..]),
        (
            "lora_te_text_model_",
            model.text_encoder.lora_slots(),
            &TEXT_TARGETS[..],
        ),
    ];
    for (prefix, slots, targets) in groups {
        for slot in slots {
            let name = slot
                .name()
                .strip_prefix("text_model.")
                .unwrap_or(slot.name());
            if !targets.iter().any(|t| name.ends_with(t)) {
                continue;
            }
            let shape = slot.shape();
            let (i, o, k) = (shape.in_dim(), shape.out_dim(), shape.kernel());
            let std = 1.0 / ((i * k * k) as f64).sqrt();
            let (down, up) = match shape {
                SlotShape::Linear { .. } => (
                    Tensor::randn(0f32, std as f32, (rank, i), &device)?,
                    Tensor::randn(0f32, 0.01, (o, rank), &device)?,
                ),
                SlotShape::Conv { .. } => (
                    Tensor::randn(0f32, std as f32, (rank, i, k, k), &device)?,
                    Tensor::randn(0f32, 0.01, (o, rank, 1, 1), &device)?,
                ),
            };
            let key = format!("{prefix}{}", underscored(name));
            tensors.insert(
                format!("{key}.lora_down.weight"),
                down.to_dtype(DType::F16)?,
            );
            tensors.insert(format!("{key}.lora_up.weight"), up.to_dtype(DType::F16)?);
            tensors.insert(format!("{key}.alpha"), alpha.clone());
        }
    }
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// What merging into the weights would cost on the same layers: milliseconds to rebuild every
/// adapted weight from its pristine copy (W = W₀ + s·up·down) once, and those copies' MiB.
fn merged_alternative(adapter: &crate::lora::Adapter) -> Result<(f64, f64)> {
    let mut total_ms = 0.0;
    let mut pristine = 0usize;
    for layer in &adapter.layers {
        let (down, up) = layer.term.factors();
        let r = down.dim(0)?;
        let down = down.reshape((r, ()))?;
        let up = up.reshape(((), r))?;
        let w0 = Tensor::zeros((up.dim(0)?, down.dim(1)?), down.dtype(), down.device())?;
        pristine += w0.elem_count() * w0.dtype().size_in_bytes();
        let t = Instant::now();
        let merged = (&w0 + (up.matmul(&down)? * layer.term.scale())?)?;
        total_ms += ms(t);
        drop(merged);
    }
    Ok((total_ms, pristine as f64 / MIB))
}

struct Report {
    rank: usize,
    unet_layers: usize,
    text_layers: usize,
    size: usize,
    threads: usize,
    load_ms: f64,
    read_ms: f64,
    toggle_on_ms: f64,
    toggle_off_ms: f64,
    reweight_ms: f64,
    text_ms: f64,
    plain_step_ms: f64,
    lora_step_ms: f64,
    plain_step_cpu_ms: f64,
    lora_step_cpu_ms: f64,
    base_mib: f64,
    adapter_mib: f64,
    rss_growth_mib: f64,
    merge_ms: f64,
    pristine_mib: f64,
    restored_exactly: bool,
}

impl Report {
    fn worst_apply_ms(&self) -> f64 {
        self.toggle_on_ms
            .max(self.toggle_off_ms)
            .max(self.reweight_ms)
    }

    fn print(&self, json: bool, dir: &Path, adapter: &Path) {
        let slowdown = self.lora_step_ms / self.plain_step_ms - 1.0;
        let slowdown_cpu = self.lora_step_cpu_ms / self.plain_step_cpu_ms - 1.0;
        let memory = self.adapter_mib.max(self.rss_growth_mib) / self.base_mib;
        let ready = self.worst_apply_ms();
        let ready_ok = ready <= 250.0 && ready <= 0.05 * self.load_ms;
        let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "model": dir, "adapter": adapter, "rank": self.rank, "size": self.size,
                    "threads": self.threads, "unet_layers": self.unet_layers,
                    "text_layers": self.text_layers, "cold_load_ms": self.load_ms,
                    "adapter_read_ms": self.read_ms, "toggle_on_ms": self.toggle_on_ms,
                    "toggle_off_ms": self.toggle_off_ms, "reweight_ms": self.reweight_ms,
                    "text_encode_ms": self.text_ms, "unet_step_plain_ms": self.plain_step_ms,
                    "unet_step_lora_ms": self.lora_step_ms, "step_slowdown": slowdown,
                    "unet_step_plain_cpu_ms": self.plain_step_cpu_ms,
                    "unet_step_lora_cpu_ms": self.lora_step_cpu_ms,
                    "step_slowdown_cpu": slowdown_cpu,
                    "base_model_mib": self.base_mib, "adapter_mib": self.adapter_mib,
                    "rss_growth_mib": self.rss_growth_mib, "extra_memory_fraction": memory,
                    "merged_rebuild_ms": self.merge_ms, "merged_pristine_mib": self.pristine_mib,
                    "toggle_off_restores_exactly": self.restored_exactly,
                    "targets": {"ready": ready_ok, "memory": memory <= 0.25, "step": slowdown <= 0.10},
                })
            );
            return;
        }
        println!(
            "LoRA bench: {} ({}x{}, {} threads)\nadapter {}: rank {}, {} UNet + {} text-encoder layers",
            dir.display(),
            self.size,
            self.size,
            self.threads,
            adapter.display(),
            self.rank,
            self.unet_layers,
            self.text_layers
        );
        println!("{:<44}{:>11}", "", "ms");
        println!(
            "{:<44}{:>11.1}",
            "cold load of the base model", self.load_ms
        );
        println!(
            "{:<44}{:>11.1}",
            "adapter read + matched (once)", self.read_ms
        );
        println!(
            "{:<44}{:>11.2}",
            "toggle on  → next step ready", self.toggle_on_ms
        );
        println!(
            "{:<44}{:>11.2}",
            "toggle off → next step ready", self.toggle_off_ms
        );
        println!(
            "{:<44}{:>11.2}",
            "weight change → next step ready", self.reweight_ms
        );
        println!(
            "  target ≤ 250 ms and ≤ 5% of cold load ({:.0} ms): worst {:.2} ms  {}",
            0.05 * self.load_ms,
            ready,
            pass(ready_ok)
        );
        println!(
            "{:<44}{:>11.1}",
            "  (text re-encode, prompt + negative)", self.text_ms
        );
        println!(
            "{:<44}{:>11}{:>11}",
            "UNet step with CFG (batch 2), medians", "wall", "CPU"
        );
        println!(
            "{:<44}{:>11.1}{:>11.1}",
            "  no adapter", self.plain_step_ms, self.plain_step_cpu_ms
        );
        println!(
            "{:<44}{:>11.1}{:>11.1}",
            "  adapter active", self.lora_step_ms, self.lora_step_cpu_ms
        );
        println!(
            "  target ≤ 10% slower: {:+.1}% wall ({:+.1}% CPU time)  {}",
            slowdown * 100.0,
            slowdown_cpu * 100.0,
            pass(slowdown <= 0.10)
        );
        println!(
            "memory: base model {:.0} MiB; adapter {:.1} MiB in memory, RSS +{:.1} MiB",
            self.base_mib, self.adapter_mib, self.rss_growth_mib
        );
        println!(
            "  target ≤ 25% of the base: {:.2}%  {}",
            memory * 100.0,
            pass(memory <= 0.25)
        );
        println!(
            "merged instead (same layers): {:.0} ms to rebuild the weights per change, {:.0} MiB of pristine copies ({:.1}% of the base)",
            self.merge_ms,
            self.pristine_mib,
            100.0 * self.pristine_mib / self.base_mib
        );
        println!(
            "toggle off restores the plain UNet output exactly: {}",
            self.restored_exactly
        );
    }
}
