//! DPM-Solver++(2M) with Karras sigmas (Lu et al. 2022; Karras et al. 2022), as diffusers'
//! `DPMSolverMultistepScheduler(use_karras_sigmas=True)` with every other setting at its
//! default: `algorithm_type="dpmsolver++"`, `solver_order=2`, `solver_type="midpoint"`,
//! `lower_order_final=True`, `final_sigmas_type="zero"`. This is A1111's "DPM++ 2M Karras".
//!
//! The schedule: ρ = 7 Karras sigmas from the largest to the smallest training sigma, each
//! mapped back to a training timestep by log-sigma interpolation and *rounded* to an integer
//! (the UNet sees integer timesteps), then a final σ = 0.
//!
//! The solver works in the variance-preserving parametrisation (α_t = 1/√(σ² + 1),
//! σ_t = σ·α_t): initial noise is unit-scaled and the UNet input is unscaled. Each step turns
//! the model output into an x0 estimate; the first step is first order (DDIM-like), later steps
//! are second order using the previous x0, and the last step (to σ = 0) is first order, which
//! lands exactly on the x0 estimate.

use candle_core::Tensor;

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{alphas_cumprod_for_sigmas, karras_sigmas, sigma_to_t, train_sigmas};
use super::{check_step, lincomb, to_f32, NoiseSource, Scheduler, StepOutput};

pub(crate) struct DpmPp2mKarras {
    timesteps: Vec<f64>,
    /// One sigma per step plus the final 0, float32 as in diffusers.
    sigmas: Vec<f32>,
    prediction_type: PredictionType,
    /// The x0 estimate of the previous step and that step's index: the "2M" memory.
    previous: Option<(usize, Tensor)>,
}

impl DpmPp2mKarras {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Self {
        let train_sigmas = train_sigmas(&alphas_cumprod_for_sigmas(config));
        // numpy's np.log over a float32 array stays float32.
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
        let sigma_min = train_sigmas.first().copied().map_or(0.0, f64::from);
        let sigma_max = train_sigmas.last().copied().map_or(0.0, f64::from);
        let karras = karras_sigmas(sigma_min, sigma_max, steps);
        let timesteps = karras
            .iter()
            .map(|&sigma| sigma_to_t(sigma, &log_sigmas).round_ties_even())
            .collect();
        let mut sigmas: Vec<f32> = karras.into_iter().map(|s| s as f32).collect();
        sigmas.push(0.0);
        Self {
            timesteps,
            sigmas,
            prediction_type: config.prediction_type,
            previous: None,
        }
    }
}

/// (α_t, σ_t) of the variance-preserving process at noise level `sigma`.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log(α/σ), the half log-SNR the solver steps in. +∞ at σ = 0.
fn lambda(alpha: f64, sigma: f64) -> f64 {
    alpha.ln() - sigma.ln()
}

impl Scheduler for DpmPp2mKarras {
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
        let (alpha, sigma) = alpha_sigma(f64::from(self.sigmas[step_index]));
        lincomb(alpha, &to_f32(original)?, sigma, &to_f32(noise)?)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        step_index: usize,
        sample: &Tensor,
        _noise: &mut dyn NoiseSource,
    ) -> candle_core::Result<StepOutput> {
        let steps = self.timesteps.len();
        check_step(step_index, steps)?;
        let out_dtype = model_output.dtype();
        let (model_output, sample) = (to_f32(model_output)?, to_f32(sample)?);

        let (alpha_s0, sigma_s0) = alpha_sigma(f64::from(self.sigmas[step_index]));
        let (alpha_t, sigma_t) = alpha_sigma(f64::from(self.sigmas[step_index + 1]));
        let x0 = match self.prediction_type {
            PredictionType::Epsilon => {
                (&sample - model_output.affine(sigma_s0, 0.0)?)?.affine(1.0 / alpha_s0, 0.0)?
            }
            PredictionType::VPrediction => lincomb(alpha_s0, &sample, -sigma_s0, &model_output)?,
        };

        // The previous output only counts if it came from the step just before this one; a
        // fresh run (or one resumed mid-schedule, as img2img does) starts first order, as
        // diffusers' `lower_order_nums` counter does.
        let previous = self
            .previous
            .take()
            .filter(|(index, _)| index + 1 == step_index);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        // At the final σ = 0: h = ∞, exp(−h) = 0, and the update below returns x0 exactly.
        let coeff = alpha_t * ((-h).exp() - 1.0);
        let ratio = sigma_t / sigma_s0;
        let is_last = step_index + 1 == steps;
        let prev_sample = match previous {
            Some((_, prev_x0)) if !is_last => {
                let (alpha_s1, sigma_s1) = alpha_sigma(f64::from(self.sigmas[step_index - 1]));
                let r0 = (lambda_s0 - lambda(alpha_s1, sigma_s1)) / h;
                let d1 = (&x0 - &prev_x0)?.affine(1.0 / r0, 0.0)?;
                // Midpoint form: x·σ_t/σ_s0 − c·D0 − ½c·D1.
                (lincomb(ratio, &sample, -coeff, &x0)? - d1.affine(0.5 * coeff, 0.0)?)?
            }
            _ => lincomb(ratio, &sample, -coeff, &x0)?,
        };
        self.previous = Some((step_index, x0.clone()));
        Ok(StepOutput {
            prev_sample: prev_sample.to_dtype(out_dtype)?,
            pred_original: x0.to_dtype(out_dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmas_match_diffusers() {
        let dpm = DpmPp2mKarras::new(&SchedulerConfig::sd15(), 10);
        let recorded = super::super::recorded_sigmas("dpmpp_2m_karras_epsilon");
        super::super::assert_sigmas_match(&dpm.sigmas, &recorded);
    }

    #[test]
    fn karras_timesteps_are_rounded_integers() {
        // diffusers 0.42.1, SD 1.5 schedule, 20 steps.
        let want = [
            999, 962, 921, 876, 827, 772, 710, 640, 561, 474, 380, 285, 197, 123, 69, 35, 15, 6, 2,
            0,
        ];
        let dpm = DpmPp2mKarras::new(&SchedulerConfig::sd15(), 20);
        let want: Vec<f64> = want.iter().map(|&t| f64::from(t)).collect();
        assert_eq!(dpm.timesteps, want);
    }

    #[test]
    fn a_new_run_forgets_the_previous_one() {
        use crate::diffusion::noise::SeededNoise;
        let mut dpm = DpmPp2mKarras::new(&SchedulerConfig::sd15(), 4);
        let mut noise = SeededNoise::new(3);
        let device = candle_core::Device::Cpu;
        let init = noise.randn(&[1, 4, 2, 2], &device).unwrap();
        let mut run = |dpm: &mut DpmPp2mKarras| {
            let mut x = init.clone();
            for i in 0..4 {
                let eps = (&x * 0.05).unwrap();
                x = dpm.step(&eps, i, &x, &mut noise).unwrap().prev_sample;
            }
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let first = run(&mut dpm);
        assert_eq!(first, run(&mut dpm));
    }
}
