//! How fast can candle train the bundled default model's UNet on this CPU?
//!
//! Builds Easel's own UNet (`easel::models::unet::UNet`) with the default model's config
//! (`training/train_default_model.py`'s `UNET_CONFIG`) and trainable weights from a `VarMap`, then
//! times full training steps at the training script's batch size: forward, MSE against the noise,
//! backward, AdamW. `examples/torch_train_step.py` does the same with diffusers'
//! `UNet2DConditionModel`; `examples/train_step_bench.sh` runs both and prints the ratio.
//!
//! Before timing, the first step checks that every parameter received a gradient: an op without a
//! backward in candle (`apply_op*_no_bwd`) silently cuts the graph instead of failing, which
//! would make the timing meaningless (less work) and the training wrong.
//!
//! ```sh
//! cargo run --release --example candle_train_step [-- --steps N --warmup N --batch N]
//! ```
//!
//! `-- --dump FILE --batch 2` instead runs one step and writes its weights, inputs, loss and
//! gradients to a safetensors file; `torch_train_step.py --check FILE` loads them into diffusers
//! and compares the gradients, which checks that candle trains the same maths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use easel::models::unet::{UNet, UNetConfig};
use rand::Rng;

/// The default model's UNet (`UNET_CONFIG` in training/train_default_model.py), in diffusers'
/// config.json form; the keys not given take diffusers' defaults, as in the training script.
const CONFIG: &str = r#"{
  "sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64, 64],
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "layers_per_block": 1, "cross_attention_dim": 64, "attention_head_dim": 8, "norm_num_groups": 8,
  "act_fn": "silu", "center_input_sample": false, "flip_sin_to_cos": true, "freq_shift": 0
}"#;

/// Text-encoder sequence length and the number of diffusion timesteps, as in the training script.
const TOKENS: usize = 77;
const TRAIN_TIMESTEPS: u32 = 1000;
/// The training script's optimiser settings.
const LR: f64 = 1e-3;
const WEIGHT_DECAY: f64 = 1e-4;

struct Args {
    batch: usize,
    warmup: usize,
    steps: usize,
    dump: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        batch: 64,
        warmup: 2,
        steps: 5,
        dump: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        if flag == "--dump" {
            args.dump = Some(value.into());
            continue;
        }
        let value: usize = value
            .parse()
            .with_context(|| format!("{flag} takes a whole number"))?;
        match flag.as_str() {
            "--batch" => args.batch = value,
            "--warmup" => args.warmup = value,
            "--steps" => args.steps = value,
            other => bail!("unknown flag {other} (--batch, --warmup, --steps, --dump)"),
        }
    }
    if args.steps == 0 || args.batch == 0 {
        bail!("--steps and --batch must be at least 1");
    }
    Ok(args)
}

/// Seconds spent in each phase of one step.
#[derive(Clone, Copy)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

impl StepTimes {
    fn total(&self) -> f64 {
        self.forward + self.backward + self.optimizer
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// One step's weights (`param.NAME`), inputs, loss and gradients (`grad.NAME`), for
/// `torch_train_step.py --check`.
fn dump_step(
    unet: &UNet,
    varmap: &VarMap,
    batch: usize,
    device: &Device,
    path: &Path,
) -> Result<()> {
    let latents = Tensor::randn(0f32, 1f32, (batch, 4, 16, 16), device)?;
    let noise = Tensor::randn(0f32, 1f32, (batch, 4, 16, 16), device)?;
    let context = Tensor::randn(0f32, 1f32, (batch, TOKENS, 64), device)?;
    let timestep = 417.0;
    let loss = (unet.forward(&latents, timestep, &context)? - &noise)?
        .sqr()?
        .mean_all()?;
    let grads = loss.backward()?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        let grad = grads
            .get(var)
            .with_context(|| format!("{name} got no gradient"))?;
        out.insert(format!("param.{name}"), var.as_tensor().copy()?);
        out.insert(format!("grad.{name}"), grad.copy()?);
    }
    out.insert("latents".into(), latents);
    out.insert("noise".into(), noise);
    out.insert("context".into(), context);
    out.insert("timestep".into(), Tensor::new(&[timestep as f32], device)?);
    out.insert("loss".into(), loss.reshape(1)?);
    candle_core::safetensors::save(&out, path)?;
    println!(
        "wrote {} (loss {:.6})",
        path.display(),
        loss.reshape(())?.to_scalar::<f32>()?
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = Device::Cpu;
    let config: UNetConfig = serde_json::from_str(CONFIG)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let unet = UNet::new(vb, config, Path::new("<default model UNet config>"))
        .map_err(|e| anyhow::anyhow!("building the UNet: {e:?}"))?;
    let vars = varmap.all_vars();
    let params: usize = vars.iter().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: LR,
            weight_decay: WEIGHT_DECAY,
            ..Default::default()
        },
    )?;

    let mut rng = rand::rng();
    if let Some(path) = &args.dump {
        return dump_step(&unet, &varmap, args.batch, &device, path);
    }
    let mut step = |check_grads: bool| -> Result<StepTimes> {
        let latents = Tensor::randn(0f32, 1f32, (args.batch, 4, 16, 16), &device)?;
        let noise = Tensor::randn(0f32, 1f32, (args.batch, 4, 16, 16), &device)?;
        let context = Tensor::randn(0f32, 1f32, (args.batch, TOKENS, 64), &device)?;
        // Easel's UNet takes one timestep per call (what its samplers need), so the batch shares
        // one random timestep; torch_train_step.py does the same. The embedding is a [B, 32]
        // tensor either way, a negligible share of the step.
        let timestep = rng.random_range(0..TRAIN_TIMESTEPS) as f64;

        let t0 = Instant::now();
        let pred = unet.forward(&latents, timestep, &context)?;
        let loss = (pred - &noise)?.sqr()?.mean_all()?;
        // Reading the loss forces nothing extra on the CPU (candle is eager) but keeps it honest.
        let _loss: f32 = loss.to_scalar()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        if check_grads {
            let named = varmap.data().lock().expect("varmap lock");
            let mut missing: Vec<&str> = named
                .iter()
                .filter(|(_, v)| grads.get(v).is_none())
                .map(|(name, _)| name.as_str())
                .collect();
            if !missing.is_empty() {
                missing.sort_unstable();
                bail!(
                    "{} of {} parameter tensors got no gradient: an op in the UNet has no \
                     backward in candle and cut the graph:\n  {}",
                    missing.len(),
                    vars.len(),
                    missing.join("\n  ")
                );
            }
        }
        opt.step(&grads)?;
        let t3 = Instant::now();
        Ok(StepTimes {
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            optimizer: (t3 - t2).as_secs_f64(),
        })
    };

    println!(
        "candle: Easel UNet, {params} parameters in {} tensors, batch {}, {} threads",
        vars.len(),
        args.batch,
        candle_core::utils::get_num_threads()
    );
    step(true)?;
    for _ in 1..args.warmup {
        step(false)?;
    }
    let mut times = Vec::with_capacity(args.steps);
    for i in 0..args.steps {
        let t = step(false)?;
        println!(
            "step {}: {:.3} s (forward {:.3}, backward {:.3}, AdamW {:.3})",
            i + 1,
            t.total(),
            t.forward,
            t.backward,
            t.optimizer
        );
        times.push(t);
    }
    let med = |f: fn(&StepTimes) -> f64| median(times.iter().map(f).collect());
    println!(
        "median of {} steps: forward {:.3} s, backward {:.3} s, AdamW {:.3} s",
        args.steps,
        med(|t| t.forward),
        med(|t| t.backward),
        med(|t| t.optimizer)
    );
    println!("params {params}");
    println!("s/step {:.4}", med(StepTimes::total));
    Ok(())
}
