//! The numbers every sampler derives from the training schedule, computed the way diffusers does.
//!
//! diffusers builds betas and ᾱ (`alphas_cumprod`) as float32 torch tensors and then mixes in
//! numpy float64 (interpolation, Karras sigmas). We reproduce each operation with the same
//! precision and order, so the schedule matches bit for bit (checked against torch 2.x on CPU):
//! - `torch.linspace(float32)` computes `start + step·i` for the first half and
//!   `end − step·(n−1−i)` for the second, each as one fused multiply-add in f32;
//! - `torch.cumprod(float32)` on the CPU accumulates in f64 and rounds each partial product to f32.
//!
//! Values that diffusers keeps as f32 are kept as f32 here; everything else is f64.
//!
//! One op cannot be matched bit for bit: torch's f32 `sqrt` on the CPU goes through MKL's vector
//! math (accurate to 1 ulp, not correctly rounded), while ours is IEEE. About a fifth of the
//! training sigmas therefore differ from diffusers' in the last bit; on GPUs torch differs from
//! itself in the same way. Integer timesteps are unaffected (checked for 1–1000 steps).

use super::config::{BetaSchedule, SchedulerConfig};
use super::Spacing;

/// `torch.linspace(start, end, n, dtype=torch.float32)`, bit for bit.
fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// ᾱ_t for t in 0..num_train_timesteps (float32, as diffusers' `alphas_cumprod`).
pub(crate) fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let betas: Vec<f32> = match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                .into_iter()
                .map(|b| b * b)
                .collect()
        }
    };
    let betas = if config.rescale_betas_zero_snr {
        rescale_zero_terminal_snr(&betas)
    } else {
        betas
    };
    cumprod_one_minus(&betas)
}

/// ᾱ as the sigma-space samplers (Euler, Euler a, DPM++) see it: with a zero terminal SNR the
/// last ᾱ is 0 and its sigma infinite, so diffusers sets it to 2⁻²⁴ (a sigma of ~4096).
pub(crate) fn alphas_cumprod_for_sigmas(config: &SchedulerConfig) -> Vec<f32> {
    let mut a = alphas_cumprod(config);
    if config.rescale_betas_zero_snr {
        if let Some(last) = a.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    a
}

/// `torch.cumprod(1 - betas)` in float32 (accumulated in f64, each partial rounded to f32).
fn cumprod_one_minus(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&beta| {
            acc *= f64::from(1.0f32 - beta);
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, "Common Diffusion Noise Schedules
/// and Sample Steps are Flawed"): shifts and scales sqrt(ᾱ) so the last step is pure noise,
/// keeping the first step's value; in float32 like the torch code.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut sqrt_ab: Vec<f32> = cumprod_one_minus(betas).iter().map(|a| a.sqrt()).collect();
    let (Some(&first), Some(&last)) = (sqrt_ab.first(), sqrt_ab.last()) else {
        return betas.to_vec();
    };
    let scale = first / (first - last);
    for s in &mut sqrt_ab {
        *s = (*s - last) * scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|s| s * s).collect();
    let mut alphas = Vec::with_capacity(ab.len());
    alphas.push(ab[0]);
    alphas.extend(ab.windows(2).map(|w| w[1] / w[0]));
    alphas.into_iter().map(|a| 1.0 - a).collect()
}

/// The training sigmas `sqrt((1 − ᾱ) / ᾱ)` in f32, ascending with t (diffusers' float32 tensor op).
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0f32 - a) / a).sqrt())
        .collect()
}

/// `np.linspace(start, stop, num)` in f64 (endpoint included, the last value set exactly).
pub(crate) fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut out: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = out.last_mut() {
        *last = stop;
    }
    out
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation over integer abscissae, in f64.
pub(crate) fn np_interp_unit(x: f64, fp: &[f32]) -> f64 {
    let Some(&last) = fp.last() else {
        return f64::NAN;
    };
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= (fp.len() - 1) as f64 {
        return f64::from(last);
    }
    // Same branch structure as numpy's C loop: exact hits return the table value.
    let j = x.floor() as usize;
    if x == j as f64 {
        return f64::from(fp[j]);
    }
    let slope = f64::from(fp[j + 1]) - f64::from(fp[j]);
    slope * (x - j as f64) + f64::from(fp[j])
}

/// diffusers' `_sigma_to_t`: the (fractional) training timestep whose sigma is `sigma`,
/// interpolating linearly in log-sigma. `log_sigmas` are float32, as numpy computes them there.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // low_idx = cumsum(dists >= 0).argmax(), i.e. the first index where the running count of
    // log_sigmas ≤ log_sigma peaks; clipped so that high_idx stays in range.
    let mut count = 0usize;
    let mut best = 0usize;
    let mut best_idx = 0usize;
    for (i, &ls) in log_sigmas.iter().enumerate() {
        if log_sigma - f64::from(ls) >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            best_idx = i;
        }
    }
    let low_idx = best_idx.min(log_sigmas.len().saturating_sub(2));
    let high_idx = low_idx + 1;
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// The timesteps `steps` steps visit under `spacing`, descending, as numpy computes them in
/// diffusers' `set_timesteps` before the cast: fractional for "linspace" (Euler keeps them,
/// DDIM rounds), integers otherwise.
///
/// "trailing" is `round(arange(N, 0, −N/steps)) − 1`. For some step counts (61, 103, …) numpy's
/// float `arange` yields one value too many, so diffusers would run a step more than asked,
/// at timestep −1; here the list stops at `steps`.
pub(crate) fn spaced_timesteps(
    spacing: Spacing,
    num_train_timesteps: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let n = num_train_timesteps;
    match spacing {
        Spacing::Linspace => np_linspace(0.0, n.saturating_sub(1) as f64, steps)
            .into_iter()
            .rev()
            .collect(),
        Spacing::Leading => {
            let ratio = n / steps.max(1);
            (0..steps)
                .rev()
                .map(|i| (i * ratio + steps_offset) as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = n as f64 / steps.max(1) as f64;
            (0..steps)
                .map(|i| (n as f64 + i as f64 * -ratio).round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// Karras et al. (2022) sigmas, ρ = 7, from `sigma_max` down to `sigma_min` (diffusers'
/// `_convert_to_karras`, in f64).
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0f64;
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_schedule_endpoints() {
        let ac = alphas_cumprod(&SchedulerConfig::sd15());
        assert_eq!(ac.len(), 1000);
        // Reference values from diffusers (float32 alphas_cumprod of SD 1.5).
        assert_eq!(ac[0], 0.99915f32);
        assert!((ac[999] - 0.004_660_095).abs() < 1e-8, "{}", ac[999]);
        let sigmas = train_sigmas(&ac);
        assert!((sigmas[999] - 14.614_647).abs() < 1e-5, "{}", sigmas[999]);
    }

    #[test]
    fn interp_and_sigma_to_t_round_trip() {
        let fp = [1.0f32, 2.0, 4.0];
        assert_eq!(np_interp_unit(0.5, &fp), 1.5);
        assert_eq!(np_interp_unit(2.0, &fp), 4.0);
        assert_eq!(np_interp_unit(-1.0, &fp), 1.0);
        let ac = alphas_cumprod(&SchedulerConfig::sd15());
        let log_sigmas: Vec<f32> = train_sigmas(&ac).iter().map(|s| s.ln()).collect();
        for t in [0usize, 1, 500, 998, 999] {
            let sigma = f64::from(log_sigmas[t]).exp();
            assert!((sigma_to_t(sigma, &log_sigmas) - t as f64).abs() < 1e-3);
        }
    }

    #[test]
    fn spacings_match_numpy() {
        // diffusers' Table 2 examples (Lin et al. 2023) at 10 steps of 1000.
        let t = |s| spaced_timesteps(s, 1000, 10, 1);
        assert_eq!(t(Spacing::Leading)[..3], [901.0, 801.0, 701.0]);
        assert_eq!(t(Spacing::Leading)[9], 1.0);
        assert_eq!(t(Spacing::Trailing)[..3], [999.0, 899.0, 799.0]);
        assert_eq!(t(Spacing::Trailing)[9], 99.0);
        assert_eq!(t(Spacing::Linspace)[0], 999.0);
        assert_eq!(t(Spacing::Linspace)[9], 0.0);
        // np.round(np.arange(1000, 0, -1000/3)) - 1 = [999, 666, 332]: halves round to even.
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 1000, 3, 0),
            [999.0, 666.0, 332.0]
        );
        // One step: the very last training timestep.
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1000, 1, 0), [999.0]);
        // 61 steps: numpy's arange gives 62 values; the list stops at 61, the last t = 15.
        let many = spaced_timesteps(Spacing::Trailing, 1000, 61, 0);
        assert_eq!(many.len(), 61);
        assert_eq!(many[60], 15.0);
    }

    #[test]
    fn linspace_matches_numpy_shape() {
        assert_eq!(np_linspace(0.0, 999.0, 10)[1], 111.0);
        assert_eq!(np_linspace(0.0, 1.0, 1), vec![0.0]);
        assert_eq!(*np_linspace(0.0, 1.0, 7).last().unwrap(), 1.0);
    }
}
