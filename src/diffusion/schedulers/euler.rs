//! Euler and Euler ancestral (Karras et al. 2022's k-diffusion samplers), as diffusers'
//! `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler` with their defaults.
//!
//! Both walk the same sigma ladder: timesteps laid out by the spacing (by default "linspace",
//! `linspace(0, N−1, steps)` in float32, possibly fractional; see [`super::Spacing`]), sigmas
//! linearly interpolated from the training sigmas at those timesteps, then a final σ = 0. They differ only in the step: Euler moves straight to the next
//! sigma; Euler ancestral moves to a lower σ_down and adds fresh noise of size σ_up, so that
//! σ_down² + σ_up² = σ_next².
//!
//! The latents live at noise level σ (x = x0 + σ·ε), so the initial noise is scaled by σ_max and
//! the UNet, trained on √ᾱ-scaled inputs, gets `x / √(σ² + 1)`.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{alphas_cumprod_for_sigmas, np_interp_unit, spaced_timesteps, train_sigmas};
use super::{check_step, lincomb, to_f32, NoiseSource, Scheduler, Spacing, StepOutput};

pub(crate) struct Euler {
    timesteps: Vec<f64>,
    /// One sigma per step plus the final 0, float32 as in diffusers.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    ancestral: bool,
    spacing: Spacing,
}

impl Euler {
    pub(crate) fn new(
        config: &SchedulerConfig,
        steps: usize,
        ancestral: bool,
        spacing: Spacing,
    ) -> Self {
        let train_sigmas = train_sigmas(&alphas_cumprod_for_sigmas(config));
        // np.linspace(..., dtype=np.float32) computes in f64 and rounds once to f32; the
        // other spacings are integers cast to float32.
        let timesteps_f32: Vec<f32> = spaced_timesteps(
            spacing,
            config.num_train_timesteps,
            steps,
            config.steps_offset,
        )
        .into_iter()
        .map(|t| t as f32)
        .collect();
        let mut sigmas: Vec<f32> = timesteps_f32
            .iter()
            .map(|&t| np_interp_unit(f64::from(t), &train_sigmas) as f32)
            .collect();
        sigmas.push(0.0);
        Self {
            timesteps: timesteps_f32.into_iter().map(f64::from).collect(),
            sigmas,
            prediction_type: config.prediction_type,
            ancestral,
            spacing,
        }
    }

    /// The x0 estimate both variants share (diffusers' `pred_original_sample`).
    fn pred_original(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        sigma: f64,
    ) -> candle_core::Result<Tensor> {
        match self.prediction_type {
            PredictionType::Epsilon => sample - model_output.affine(sigma, 0.0)?,
            PredictionType::VPrediction => {
                let s2p1 = sigma * sigma + 1.0;
                lincomb(-sigma / s2p1.sqrt(), model_output, 1.0 / s2p1, sample)
            }
        }
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        step_index: usize,
    ) -> candle_core::Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        to_f32(original)? + to_f32(noise)?.affine(f64::from(self.sigmas[step_index]), 0.0)?
    }

    /// diffusers: `sigmas.max()` for "linspace" and "trailing", √(max² + 1) for "leading"
    /// (in float32).
    fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
        match self.spacing {
            Spacing::Leading => f64::from((max * max + 1.0).sqrt()),
            Spacing::Linspace | Spacing::Trailing => f64::from(max),
        }
    }

    fn scale_model_input(&self, sample: &Tensor, step_index: usize) -> candle_core::Result<Tensor> {
        check_step(step_index, self.timesteps.len())?;
        let sigma = f64::from(self.sigmas[step_index]);
        sample.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)
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
        // s_churn = 0 in diffusers' default call, so σ̂ = σ and no churn noise is drawn.
        let sigma = f64::from(self.sigmas[step_index]);
        let sigma_next = f64::from(self.sigmas[step_index + 1]);
        let pred_original = self.pred_original(&model_output, &sample, sigma)?;
        // Same operation order as diffusers: d = (x − x0)/σ, then x + d·dt.
        let derivative = (&sample - &pred_original)?.affine(1.0 / sigma, 0.0)?;
        let prev_sample = if self.ancestral {
            let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next)
                / (sigma * sigma))
                .sqrt();
            let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up)
                .max(0.0)
                .sqrt();
            let moved = (&sample + derivative.affine(sigma_down - sigma, 0.0)?)?;
            // diffusers draws on every step, the last included (where σ_up = 0), so seeded runs
            // stay aligned with its generator's sequence.
            let fresh = noise.randn(model_output.dims(), model_output.device())?;
            (moved
                + fresh
                    .to_dtype(candle_core::DType::F32)?
                    .affine(sigma_up, 0.0)?)?
        } else {
            (&sample + derivative.affine(sigma_next - sigma, 0.0)?)?
        };
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(out_dtype)?,
            pred_original: pred_original.to_dtype(out_dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmas_match_diffusers() {
        for (trace, ancestral) in [("euler_epsilon", false), ("euler_a_epsilon", true)] {
            let euler = Euler::new(&SchedulerConfig::sd15(), 10, ancestral, Spacing::Linspace);
            super::super::assert_sigmas_match(&euler.sigmas, &super::super::recorded_sigmas(trace));
        }
    }

    #[test]
    fn fractional_timesteps_are_float32() {
        // diffusers 0.42.1 at 30 steps: timesteps[1] is 964.5517 rounded to f32.
        let euler = Euler::new(&SchedulerConfig::sd15(), 30, false, Spacing::Linspace);
        assert_eq!(euler.timesteps[1], 964.5516967773438);
        assert_eq!(euler.timesteps[29], 0.0);
    }
}
