//! Samplers (diffusers calls them schedulers): turn a sequence of UNet predictions into a clean
//! latent.
//!
//! Each sampler reproduces its diffusers class with that class's default settings, because users
//! compare Easel's output with diffusers and A1111 and expect the same sampler name to mean the
//! same numbers. The reference traces in `tests/fixtures/refs/schedulers/` (written by diffusers)
//! hold every sampler to that, step by step.
//!
//! The schedule (betas, ᾱ, sigmas, timesteps) is computed once on the CPU with diffusers' own
//! precision (see [`schedule`]); each step is a handful of f32 tensor operations on the device.
//!
//! Usage, per image: `build` a scheduler for the chosen steps, multiply the initial noise by
//! `init_noise_sigma`, then for each `step_index` feed the UNet
//! `scale_model_input(x, step_index)` at `timesteps()[step_index]` and pass its output to `step`.

mod config;
mod ddim;
mod dpmpp_2m;
mod error;
mod euler;
mod lcm;
mod schedule;

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor};

pub use config::{BetaSchedule, PredictionType, SchedulerConfig};
pub use error::SchedulerError;

use super::noise::NoiseSource;

/// The samplers Easel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampler {
    /// diffusers `DDIMScheduler` (η = 0, "leading" spacing).
    Ddim,
    /// diffusers `EulerDiscreteScheduler`.
    Euler,
    /// diffusers `EulerAncestralDiscreteScheduler`: draws fresh noise every step.
    EulerAncestral,
    /// diffusers `DPMSolverMultistepScheduler(use_karras_sigmas=True)`: DPM-Solver++ (2M).
    DpmPp2mKarras,
    /// diffusers `LCMScheduler`: latent consistency models and LCM-LoRA, 2–8 steps, CFG 1–2.
    Lcm,
}

impl Sampler {
    /// Every sampler, in the order menus list them.
    pub const ALL: [Sampler; 5] = [
        Sampler::Ddim,
        Sampler::Euler,
        Sampler::EulerAncestral,
        Sampler::DpmPp2mKarras,
        Sampler::Lcm,
    ];

    /// The name used on the command line and in settings.
    pub fn cli_name(&self) -> &'static str {
        match self {
            Sampler::Ddim => "ddim",
            Sampler::Euler => "euler",
            Sampler::EulerAncestral => "euler_a",
            Sampler::DpmPp2mKarras => "dpmpp_2m_karras",
            Sampler::Lcm => "lcm",
        }
    }

    /// The name AUTOMATIC1111 writes in PNG metadata, which the ecosystem reads.
    pub fn a1111_name(&self) -> &'static str {
        match self {
            Sampler::Ddim => "DDIM",
            Sampler::Euler => "Euler",
            Sampler::EulerAncestral => "Euler a",
            Sampler::DpmPp2mKarras => "DPM++ 2M Karras",
            Sampler::Lcm => "LCM",
        }
    }

    /// The sampler an A1111 metadata name refers to, if it is one of ours.
    pub fn from_a1111_name(name: &str) -> Option<Sampler> {
        Sampler::ALL.into_iter().find(|s| s.a1111_name() == name)
    }

    /// The sampler matching a model's own scheduler class (`_class_name`), used as its default.
    /// Classes we do not implement (SD 1.5 ships PNDM) give `None`: the caller picks a default.
    pub fn from_diffusers_class(class_name: &str) -> Option<Sampler> {
        match class_name {
            "DDIMScheduler" => Some(Sampler::Ddim),
            "EulerDiscreteScheduler" => Some(Sampler::Euler),
            "EulerAncestralDiscreteScheduler" => Some(Sampler::EulerAncestral),
            "DPMSolverMultistepScheduler" => Some(Sampler::DpmPp2mKarras),
            "LCMScheduler" => Some(Sampler::Lcm),
            _ => None,
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl FromStr for Sampler {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Sampler::ALL
            .into_iter()
            .find(|sampler| sampler.cli_name() == s)
            .ok_or_else(|| SchedulerError::UnknownSampler {
                name: s.to_string(),
                valid: Sampler::ALL.map(|s| s.cli_name()).join(", "),
            })
    }
}

/// How a sampler lays its steps over the training timesteps: diffusers' `timestep_spacing`
/// (Lin et al. 2023, Table 2). Each sampler has its own default (DDIM "leading", the others
/// "linspace"); "trailing" starts at the last training timestep, which few-step models
/// (SD-Turbo, SDXL-Turbo) and zero-terminal-SNR models need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spacing {
    /// `i·(N / steps) + steps_offset`: never reaches the last timestep.
    Leading,
    /// `linspace(0, N − 1, steps)`: both ends, possibly fractional.
    Linspace,
    /// `N − i·N/steps − 1`: from the last timestep down.
    Trailing,
}

impl Spacing {
    pub const ALL: [Spacing; 3] = [Spacing::Leading, Spacing::Linspace, Spacing::Trailing];

    /// The name on the command line, in settings and in diffusers' config.
    pub fn name(&self) -> &'static str {
        match self {
            Spacing::Leading => "leading",
            Spacing::Linspace => "linspace",
            Spacing::Trailing => "trailing",
        }
    }
}

impl fmt::Display for Spacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Spacing {
    type Err = SchedulerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Spacing::ALL
            .into_iter()
            .find(|spacing| spacing.name() == s)
            .ok_or_else(|| SchedulerError::UnknownSpacing {
                name: s.to_string(),
                valid: Spacing::ALL.map(|s| s.name()).join(", "),
            })
    }
}

impl Sampler {
    /// Whether a spacing changes what this sampler does (DPM++ 2M Karras and LCM set their own
    /// steps).
    pub fn takes_spacing(&self) -> bool {
        !matches!(self, Sampler::DpmPp2mKarras | Sampler::Lcm)
    }

    /// The spacing this sampler uses unless told otherwise (its diffusers class's default;
    /// LCM's own timesteps are none of the three, and it takes no other).
    pub fn default_spacing(&self) -> Spacing {
        match self {
            Sampler::Ddim | Sampler::Lcm => Spacing::Leading,
            _ => Spacing::Linspace,
        }
    }
}

/// The result of one sampler step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The latent to feed the next step (or to decode after the last).
    pub prev_sample: Tensor,
    /// The sampler's current estimate of the clean latent x0, for live previews. Every sampler
    /// computes it, including DPM++ where diffusers does not return it.
    pub pred_original: Tensor,
}

/// One configured run of a sampler over a fixed number of steps.
pub trait Scheduler: Send {
    /// The UNet timestep for each step; its length is the number of steps.
    fn timesteps(&self) -> &[f64];

    /// The standard deviation of the initial latent noise (multiply N(0, 1) noise by it):
    /// 1 for the samplers that work in ᾱ space (DDIM, DPM++, LCM), σ_max for Euler.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The UNet input for `sample` at `step_index`: the sample itself, except for the Euler
    /// samplers, which divide by √(σ² + 1).
    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> candle_core::Result<Tensor> {
        check_step(step_index, self.timesteps().len())?;
        Ok(sample.clone())
    }

    /// img2img's start: clean latents `original` noised to the level the schedule has at
    /// `step_index`, with `noise` drawn from N(0, 1) (diffusers' `add_noise` at
    /// `timesteps[step_index]`, as its img2img pipeline calls it).
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor>;

    /// Advances `sample` by one step given the (guided) UNet output. Takes `&mut self` because
    /// multistep samplers keep earlier outputs; ancestral samplers draw fresh noise from `noise`.
    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<StepOutput>;
}

/// Builds `sampler` over `steps` steps of the model's training schedule, its steps laid out by
/// `spacing` (`None`: the sampler's default). DPM++ 2M Karras takes no spacing: its Karras
/// sigmas set the steps.
pub fn build(
    sampler: Sampler,
    config: &SchedulerConfig,
    steps: usize,
    spacing: Option<Spacing>,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(SchedulerError::InvalidSteps {
            steps,
            num_train_timesteps: config.num_train_timesteps,
        });
    }
    let spaced = spacing.unwrap_or(sampler.default_spacing());
    Ok(match sampler {
        Sampler::Ddim => Box::new(ddim::Ddim::new(config, steps, spaced)?),
        Sampler::Euler => Box::new(euler::Euler::new(config, steps, false, spaced)),
        Sampler::EulerAncestral => Box::new(euler::Euler::new(config, steps, true, spaced)),
        Sampler::DpmPp2mKarras | Sampler::Lcm => {
            if let Some(spacing) = spacing.filter(|&s| s != sampler.default_spacing()) {
                return Err(SchedulerError::SpacingUnused {
                    sampler: sampler.a1111_name(),
                    spacing: spacing.to_string(),
                });
            }
            match sampler {
                Sampler::Lcm => Box::new(lcm::Lcm::new(config, steps)?),
                _ => Box::new(dpmpp_2m::DpmPp2mKarras::new(config, steps)),
            }
        }
    })
}

/// Fails clearly when a step index runs past the schedule.
fn check_step(step_index: usize, steps: usize) -> candle_core::Result<()> {
    if step_index >= steps {
        candle_core::bail!(
            "sampler step index {step_index} out of range (the schedule has {steps} steps)"
        );
    }
    Ok(())
}

/// `√ᾱ·x + √(1 − ᾱ)·ε` at the ᾱ of the `step_index`-th timestep: the forward process
/// (DDPM's `add_noise`, which DDIM and LCM use).
fn noised_at_step(
    alphas_cumprod: &[f32],
    timestep_indices: &[usize],
    x: &Tensor,
    noise: &Tensor,
    step_index: usize,
) -> candle_core::Result<Tensor> {
    check_step(step_index, timestep_indices.len())?;
    let (sqrt_a, sqrt_b) = alpha_roots(alphas_cumprod[timestep_indices[step_index]]);
    lincomb(sqrt_a, &to_f32(x)?, sqrt_b, &to_f32(noise)?)
}

/// `a·x + b·y` on tensors of the same shape.
fn lincomb(a: f64, x: &Tensor, b: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// The x0 estimate at ᾱ_t from a UNet output, for the samplers that work on ᾱ directly (DDIM,
/// LCM): `(x − √(1−ᾱ)·ε)/√ᾱ` or `√ᾱ·x − √(1−ᾱ)·v`, the square roots taken in f32 as diffusers
/// does on its tensors; clamped to ±`clip` when the config clips samples.
fn x0_from_alpha(
    prediction: PredictionType,
    alpha_prod_t: f32,
    output: &Tensor,
    sample: &Tensor,
    clip: Option<f64>,
) -> candle_core::Result<Tensor> {
    let (sqrt_a, sqrt_b) = alpha_roots(alpha_prod_t);
    let x0 = match prediction {
        PredictionType::Epsilon => {
            (sample - output.affine(sqrt_b, 0.0)?)?.affine(1.0 / sqrt_a, 0.0)?
        }
        PredictionType::VPrediction => lincomb(sqrt_a, sample, -sqrt_b, output)?,
    };
    match clip {
        Some(range) => x0.clamp(-range, range),
        None => Ok(x0),
    }
}

/// (√ᾱ, √(1 − ᾱ)), computed in f32.
fn alpha_roots(alpha_prod_t: f32) -> (f64, f64) {
    (
        f64::from(alpha_prod_t.sqrt()),
        f64::from((1.0 - alpha_prod_t).sqrt()),
    )
}

/// Samplers do their arithmetic in f32, as diffusers does, whatever dtype the UNet ran in.
fn to_f32(t: &Tensor) -> candle_core::Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// The sigmas diffusers recorded for a 10-step trace (tests/fixtures/refs/schedulers).
#[cfg(test)]
pub(crate) fn recorded_sigmas(trace: &str) -> Vec<f64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/refs/schedulers")
        .join(format!("{trace}.safetensors"));
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    tensors["sigmas"].to_vec1().unwrap()
}

/// Asserts our f32 sigmas equal diffusers' to within the last bit (see [`schedule`] on sqrt).
#[cfg(test)]
pub(crate) fn assert_sigmas_match(ours: &[f32], recorded: &[f64]) {
    assert_eq!(ours.len(), recorded.len());
    for (i, (&a, &b)) in ours.iter().zip(recorded).enumerate() {
        let a = f64::from(a);
        assert!(
            (a - b).abs() <= 2.5e-7 * b.abs(),
            "sigma {i}: {a} vs diffusers {b}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_round_trip() {
        for sampler in Sampler::ALL {
            assert_eq!(sampler.to_string().parse::<Sampler>().unwrap(), sampler);
            assert_eq!(
                Sampler::from_a1111_name(sampler.a1111_name()),
                Some(sampler)
            );
        }
        assert_eq!(
            "euler_a".parse::<Sampler>().unwrap(),
            Sampler::EulerAncestral
        );
        assert_eq!(Sampler::DpmPp2mKarras.a1111_name(), "DPM++ 2M Karras");
    }

    #[test]
    fn unknown_sampler_lists_valid_names() {
        let err = "heun".parse::<Sampler>().unwrap_err().to_string();
        assert!(err.contains("heun"), "{err}");
        for sampler in Sampler::ALL {
            assert!(err.contains(sampler.cli_name()), "{err}");
        }
    }

    #[test]
    fn diffusers_classes_map_to_samplers() {
        assert_eq!(
            Sampler::from_diffusers_class("DDIMScheduler"),
            Some(Sampler::Ddim)
        );
        assert_eq!(
            Sampler::from_diffusers_class("EulerAncestralDiscreteScheduler"),
            Some(Sampler::EulerAncestral)
        );
        assert_eq!(
            Sampler::from_diffusers_class("DPMSolverMultistepScheduler"),
            Some(Sampler::DpmPp2mKarras)
        );
        assert_eq!(Sampler::from_diffusers_class("PNDMScheduler"), None);
    }

    #[test]
    fn add_noise_reaches_the_schedule_level_of_its_step() {
        // x0 = 0 leaves the noise term alone: its size is the step's noise level.
        let cfg = SchedulerConfig::sd15();
        let device = candle_core::Device::Cpu;
        let zero = Tensor::zeros((1, 4, 2, 2), DType::F32, &device).unwrap();
        let noise = Tensor::ones((1, 4, 2, 2), DType::F32, &device).unwrap();
        for sampler in Sampler::ALL {
            let sched = build(sampler, &cfg, 10, None).unwrap();
            let mut last = f32::INFINITY;
            for i in 0..10 {
                let x = sched.add_noise(&zero, &noise, i).unwrap();
                let level: f32 = x.mean_all().unwrap().to_scalar().unwrap();
                assert!(level > 0.0 && level <= last, "{sampler} step {i}: {level}");
                last = level;
            }
            assert!(sched.add_noise(&zero, &noise, 10).is_err());
        }
    }

    #[test]
    fn step_counts_outside_the_training_schedule_are_errors() {
        let cfg = SchedulerConfig::sd15();
        for sampler in Sampler::ALL {
            assert!(matches!(
                build(sampler, &cfg, 0, None),
                Err(SchedulerError::InvalidSteps { steps: 0, .. })
            ));
            assert!(build(sampler, &cfg, 1001, None).is_err());
            let sched = build(sampler, &cfg, 1, None).unwrap();
            assert_eq!(sched.timesteps().len(), 1);
        }
    }
}
