//! LCM (Luo et al. 2023, latent consistency models), as diffusers' `LCMScheduler`.
//!
//! A consistency model maps any point of the trajectory straight to its clean end, so each step
//! is a jump to the x0 estimate ("denoised") followed, except at the last step, by fresh noise
//! back up to the next timestep's level. The timesteps are picked among the `original_inference_steps`
//! (50) the model was distilled on, `k·i − 1` for k = N / 50: at 4 steps 999, 759, 499, 259.
//! The x0 estimate is blended with the sample by the boundary-condition scalings c_skip, c_out
//! (σ_data = 0.5, timestep scaling 10), which make the model exact at t = 0.
//!
//! Used with LCM-distilled UNets and LCM-LoRA at 2–8 steps and guidance 1–2.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::error::SchedulerError;
use super::schedule::{alphas_cumprod, np_linspace};
use super::{
    alpha_roots, check_step, lincomb, noised_at_step, to_f32, x0_from_alpha, NoiseSource,
    Scheduler, StepOutput,
};

pub(crate) struct Lcm {
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<f64>,
    timestep_indices: Vec<usize>,
    prediction_type: PredictionType,
    clip_sample_range: Option<f64>,
}

impl Lcm {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let n = config.num_train_timesteps;
        let original = config.original_inference_steps;
        if original == 0 || original > n || steps > original {
            return Err(SchedulerError::InvalidSchedule {
                sampler: "LCM",
                reason: format!(
                    "{steps} steps: LCM picks its steps among the {original} it was distilled on \
                     (original_inference_steps), so at most {original}"
                ),
            });
        }
        let k = n / original;
        // The distillation timesteps, last first: k·original − 1, …, k − 1.
        let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
        // floor(linspace(0, len, steps, endpoint=False)): numpy's linspace without its end.
        let timestep_indices: Vec<usize> = np_linspace(0.0, origin.len() as f64, steps + 1)
            .into_iter()
            .take(steps)
            .map(|x| origin[(x.floor() as usize).min(origin.len() - 1)])
            .collect();
        Ok(Self {
            alphas_cumprod: alphas_cumprod(config),
            timesteps: timestep_indices.iter().map(|&t| t as f64).collect(),
            timestep_indices,
            prediction_type: config.prediction_type,
            clip_sample_range: config.clip_sample.then_some(config.clip_sample_range),
        })
    }

    /// c_skip, c_out at timestep t, in float32 as diffusers computes them on a tensor.
    fn boundary_scalings(t: usize) -> (f32, f32) {
        let sigma_data = 0.5f32;
        let scaled = t as f32 * 10.0;
        let c_skip = sigma_data * sigma_data / (scaled * scaled + sigma_data * sigma_data);
        let c_out = scaled / (scaled * scaled + sigma_data * sigma_data).sqrt();
        (c_skip, c_out)
    }
}

impl Scheduler for Lcm {
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
        noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<StepOutput> {
        check_step(step_index, self.timesteps.len())?;
        let out_dtype = model_output.dtype();
        let (model_output, sample) = (to_f32(model_output)?, to_f32(sample)?);
        let t = self.timestep_indices[step_index];
        let pred_original = x0_from_alpha(
            self.prediction_type,
            self.alphas_cumprod[t],
            &model_output,
            &sample,
            self.clip_sample_range,
        )?;
        let (c_skip, c_out) = Self::boundary_scalings(t);
        let denoised = lincomb(f64::from(c_out), &pred_original, f64::from(c_skip), &sample)?;
        let prev_sample = match self.timestep_indices.get(step_index + 1) {
            // Back up to the next timestep's noise level with fresh noise.
            Some(&next) => {
                let (sqrt_a, sqrt_b) = alpha_roots(self.alphas_cumprod[next]);
                let fresh = noise
                    .randn(denoised.dims(), denoised.device())?
                    .to_dtype(candle_core::DType::F32)?;
                lincomb(sqrt_a, &denoised, sqrt_b, &fresh)?
            }
            None => denoised.clone(),
        };
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(out_dtype)?,
            pred_original: denoised.to_dtype(out_dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_are_picked_among_the_distillation_steps() {
        let lcm = |steps| Lcm::new(&SchedulerConfig::sd15(), steps).unwrap().timesteps;
        assert_eq!(lcm(4), [999.0, 759.0, 499.0, 259.0]);
        assert_eq!(lcm(1), [999.0]);
        assert_eq!(lcm(50).last(), Some(&19.0));
        assert!(Lcm::new(&SchedulerConfig::sd15(), 51).is_err());
    }
}
