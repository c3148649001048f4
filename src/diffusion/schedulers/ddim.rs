//! DDIM (Song et al. 2020), deterministic (η = 0), as diffusers' `DDIMScheduler` with its defaults.
//!
//! DDIM works directly on ᾱ: no sigmas, no input scaling, unit initial noise. Timesteps are
//! by default "leading": `t = i·(N / steps) + steps_offset`, so SD 1.5 at 50 steps runs 981,
//! 961, …, 1 (other spacings: [`super::Spacing`]). The step from `t` goes to `t − N/steps`
//! (integer division, as diffusers, whatever the spacing), and past the start it uses
//! `final_alpha_cumprod` (1 or ᾱ₀, per `set_alpha_to_one`).

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::error::SchedulerError;
use super::schedule::{alphas_cumprod, spaced_timesteps};
use super::{
    alpha_roots, check_step, lincomb, noised_at_step, to_f32, x0_from_alpha, NoiseSource,
    Scheduler, Spacing, StepOutput,
};

pub(crate) struct Ddim {
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    /// The same timesteps as indices into `alphas_cumprod`.
    timestep_indices: Vec<usize>,
    step_ratio: usize,
    prediction_type: PredictionType,
    clip_sample_range: Option<f64>,
}

impl Ddim {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        spacing: Spacing,
    ) -> Result<Self, SchedulerError> {
        let n = config.num_train_timesteps;
        let alphas_cumprod = alphas_cumprod(config);
        let step_ratio = n / steps;
        // DDIM's timesteps are integers: "linspace" rounds (numpy's half-to-even).
        let timestep_indices: Vec<usize> = spaced_timesteps(spacing, n, steps, config.steps_offset)
            .into_iter()
            .map(|t| t.round_ties_even().max(0.0) as usize)
            .collect();
        // diffusers would fail indexing ᾱ mid-run (e.g. SD 1.5 at 1000 steps reaches t = 1000);
        // say so up front instead.
        if let Some(&t) = timestep_indices.iter().find(|&&t| t >= n) {
            return Err(SchedulerError::InvalidSchedule {
                sampler: "DDIM",
                reason: format!(
                    "{steps} steps with steps_offset {} reach timestep {t}, past the {n} training timesteps",
                    config.steps_offset
                ),
            });
        }
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            final_alpha_cumprod,
            timesteps: timestep_indices.iter().map(|&t| t as f64).collect(),
            timestep_indices,
            alphas_cumprod,
            step_ratio,
            prediction_type: config.prediction_type,
            clip_sample_range: config.clip_sample.then_some(config.clip_sample_range),
        })
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        noised_at_step(
            &self.alphas_cumprod,
            &self.timestep_indices,
            original,
            noise,
            step_index,
        )
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<StepOutput> {
        check_step(step_index, self.timesteps.len())?;
        let out_dtype = model_output.dtype();
        let (model_output, sample) = (to_f32(model_output)?, to_f32(sample)?);
        let t = self.timestep_indices[step_index];
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_prev = t
            .checked_sub(self.step_ratio)
            .map_or(self.final_alpha_cumprod, |prev| self.alphas_cumprod[prev]);
        let pred_original = x0_from_alpha(
            self.prediction_type,
            alpha_prod_t,
            &model_output,
            &sample,
            self.clip_sample_range,
        )?;
        let pred_epsilon = match self.prediction_type {
            PredictionType::Epsilon => model_output,
            PredictionType::VPrediction => {
                let (sqrt_a, sqrt_b) = alpha_roots(alpha_prod_t);
                lincomb(sqrt_a, &model_output, sqrt_b, &sample)?
            }
        };
        // η = 0: no variance term, so the direction uses √(1 − ᾱ_prev) in full.
        let direction = f64::from((1.0 - alpha_prod_prev).sqrt());
        let prev_sample = lincomb(
            f64::from(alpha_prod_prev.sqrt()),
            &pred_original,
            direction,
            &pred_epsilon,
        )?;
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(out_dtype)?,
            pred_original: pred_original.to_dtype(out_dtype)?,
        })
    }
}
