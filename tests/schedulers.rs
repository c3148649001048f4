//! Every sampler against diffusers' own recorded run of it.
//!
//! `tests/fixtures/make_fixtures.py` drove each diffusers scheduler for 10 steps on the SD 1.5
//! schedule with random "model outputs" and recorded everything: the timesteps, sigmas, the
//! UNet inputs, every step's result, and the noise Euler ancestral drew. Here the Rust samplers
//! replay the same model outputs (and the same noise) and must land on the same numbers.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use easel::diffusion::noise::{NoiseSource, SeededNoise};
use easel::diffusion::schedulers::{
    self, PredictionType, Sampler, SchedulerConfig, SchedulerError, Spacing,
};

/// Absolute tolerance on latents (values of order 1–50 in f32).
const TOL: f32 = 1e-4;

fn trace_path(sampler: Sampler, pred: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/refs/schedulers")
        .join(format!("{}_{pred}.safetensors", sampler.cli_name()))
}

/// Replays the noise diffusers drew, one recorded tensor per draw.
struct ReplayNoise {
    draws: Vec<Tensor>,
    used: usize,
}

impl NoiseSource for ReplayNoise {
    fn randn(&mut self, shape: &[usize], _device: &Device) -> candle_core::Result<Tensor> {
        let Some(t) = self.draws.get(self.used) else {
            candle_core::bail!(
                "sampler drew more noise than diffusers did ({} draws)",
                self.draws.len()
            );
        };
        assert_eq!(
            t.dims(),
            shape,
            "noise draw {} has the wrong shape",
            self.used
        );
        self.used += 1;
        Ok(t.clone())
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs one trace; returns the largest absolute error seen across all compared tensors.
fn check_trace(
    sampler: Sampler,
    pred: &str,
    prediction_type: PredictionType,
    rescale_betas_zero_snr: bool,
    spacing: Option<Spacing>,
) -> f32 {
    let path = trace_path(sampler, pred);
    let refs: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
    let get = |name: &str| -> &Tensor {
        refs.get(name)
            .unwrap_or_else(|| panic!("{} has no tensor {name}", path.display()))
    };
    let what = format!("{}_{pred}", sampler.cli_name());

    let config = SchedulerConfig {
        prediction_type,
        rescale_betas_zero_snr,
        ..SchedulerConfig::sd15()
    };
    let want_timesteps: Vec<f64> = get("timesteps").to_vec1().unwrap();
    let mut sched = schedulers::build(sampler, &config, want_timesteps.len(), spacing).unwrap();

    assert_eq!(sched.timesteps().len(), want_timesteps.len(), "{what}");
    for (i, (got, want)) in sched.timesteps().iter().zip(&want_timesteps).enumerate() {
        assert!(
            (got - want).abs() <= 1e-6,
            "{what}: timestep {i}: {got} vs diffusers {want}"
        );
    }
    let want_sigma: Vec<f64> = get("init_noise_sigma").to_vec1().unwrap();
    let got_sigma = sched.init_noise_sigma();
    assert!(
        (got_sigma - want_sigma[0]).abs() <= 1e-5 * want_sigma[0].abs(),
        "{what}: init_noise_sigma {got_sigma} vs diffusers {}",
        want_sigma[0]
    );

    let steps = want_timesteps.len();
    let mut noise = ReplayNoise {
        draws: (0..steps)
            .filter_map(|i| refs.get(&format!("noise_{i}")).cloned())
            .collect(),
        used: 0,
    };
    let mut worst = 0f32;
    // Latents start at init_noise_sigma times the noise: with a zero terminal SNR that is 4096,
    // where one f32 ulp is 5e-4, so the tolerance scales with it (1 elsewhere).
    let tol = TOL * got_sigma.max(1.0) as f32;
    let mut compare = |got: &Tensor, name: &str| {
        let err = max_abs_diff(got, get(name));
        assert!(err <= tol, "{what}: {name} differs from diffusers by {err}");
        worst = worst.max(err);
    };

    // The chain runs on our own samples, so errors would accumulate visibly.
    let mut x = (get("init") * got_sigma).unwrap();
    let mut last_pred_original = None;
    for i in 0..steps {
        let input = sched.scale_model_input(&x, i).unwrap();
        compare(&input, &format!("model_input_{i}"));
        let out = sched
            .step(get(&format!("model_output_{i}")), i, &x, &mut noise)
            .unwrap();
        compare(&out.prev_sample, &format!("prev_sample_{i}"));
        let pred_name = format!("pred_original_{i}");
        if refs.contains_key(&pred_name) {
            compare(&out.pred_original, &pred_name);
        }
        x = out.prev_sample;
        last_pred_original = Some(out.pred_original);
    }
    // Ancestral: exactly one draw per step, as diffusers; the others draw nothing.
    assert_eq!(noise.used, noise.draws.len(), "{what}: noise draws");
    if sampler == Sampler::EulerAncestral {
        assert_eq!(noise.used, steps, "{what}: one noise draw per step");
    }
    // DPM++ does not return x0 in diffusers; its last step (to σ = 0) lands exactly on it.
    if let (Sampler::DpmPp2mKarras, Some(x0)) = (sampler, last_pred_original) {
        assert!(max_abs_diff(&x0, &x) <= tol, "{what}: last x0 estimate");
    }
    eprintln!("{what}: max abs error vs diffusers {worst:e}");
    worst
}

#[test]
fn all_samplers_match_diffusers_traces() {
    for sampler in Sampler::ALL {
        for (pred, prediction_type, zero_snr) in [
            ("epsilon", PredictionType::Epsilon, false),
            ("v_prediction", PredictionType::VPrediction, false),
            ("v_prediction_ztsnr", PredictionType::VPrediction, true),
        ] {
            check_trace(sampler, pred, prediction_type, zero_snr, None);
        }
    }
}

/// Each spacing against diffusers' `timestep_spacing`, at 10 steps and at the few steps turbo
/// models run (1, 2, 4), with zero terminal SNR (which needs "trailing") for DDIM and Euler.
#[test]
fn spacings_match_diffusers_traces() {
    use PredictionType::{Epsilon, VPrediction};
    let mut checked = 0;
    for sampler in [Sampler::Ddim, Sampler::Euler, Sampler::EulerAncestral] {
        for spacing in Spacing::ALL {
            let name = format!("epsilon_{spacing}");
            check_trace(sampler, &name, Epsilon, false, Some(spacing));
            checked += 1;
        }
        for steps in [1, 2, 4] {
            let name = format!("epsilon_trailing_{steps}");
            check_trace(sampler, &name, Epsilon, false, Some(Spacing::Trailing));
            checked += 1;
        }
        if sampler != Sampler::EulerAncestral {
            let name = "v_prediction_ztsnr_trailing";
            check_trace(sampler, name, VPrediction, true, Some(Spacing::Trailing));
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 6 + 2);
}

#[test]
fn spacing_names_parse_and_dpm_karras_refuses_one() {
    for spacing in Spacing::ALL {
        assert_eq!(spacing.name().parse::<Spacing>().unwrap(), spacing);
    }
    let msg = "uniform".parse::<Spacing>().unwrap_err().to_string();
    assert!(msg.contains("leading, linspace, trailing"), "{msg}");
    let cfg = SchedulerConfig::sd15();
    let err = schedulers::build(Sampler::DpmPp2mKarras, &cfg, 4, Some(Spacing::Trailing))
        .err()
        .unwrap();
    assert!(matches!(err, SchedulerError::SpacingUnused { .. }), "{err}");
    assert!(err.to_string().contains("sets its own steps"), "{err}");
    // Its own default is accepted, so a setting carried over from another sampler is harmless.
    assert!(schedulers::build(Sampler::DpmPp2mKarras, &cfg, 4, Some(Spacing::Linspace)).is_ok());
}

#[test]
fn sd15_file_in_fixture_model_parses_like_the_preset() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sd-tiny-a/scheduler/scheduler_config.json");
    let cfg = SchedulerConfig::from_json_file(&path).unwrap();
    assert_eq!(cfg, SchedulerConfig::sd15());
    assert_eq!(Sampler::from_diffusers_class(&cfg.class_name), None);
}

#[test]
fn config_errors_name_the_file_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value) in [
        ("beta_schedule", "squaredcos_cap_v2"),
        ("prediction_type", "sample"),
        ("prediction_type", "bogus"),
    ] {
        let path = dir.path().join(format!("{field}_{value}.json"));
        std::fs::write(
            &path,
            format!(r#"{{"_class_name": "DDIMScheduler", "{field}": "{value}"}}"#),
        )
        .unwrap();
        let err = SchedulerConfig::from_json_file(&path).unwrap_err();
        assert!(matches!(err, SchedulerError::Unsupported { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(value),
            "{msg}"
        );
    }
}

#[test]
fn zero_or_too_many_steps_are_errors() {
    let cfg = SchedulerConfig::sd15();
    for sampler in Sampler::ALL {
        let err = schedulers::build(sampler, &cfg, 0, None).err().unwrap();
        assert!(err.to_string().contains("0 steps"), "{err}");
        assert!(schedulers::build(sampler, &cfg, 1001, None).is_err());
    }
}

#[test]
fn sampler_names_parse_and_errors_list_valid_names() {
    for (name, sampler) in [
        ("ddim", Sampler::Ddim),
        ("euler", Sampler::Euler),
        ("euler_a", Sampler::EulerAncestral),
        ("dpmpp_2m_karras", Sampler::DpmPp2mKarras),
    ] {
        assert_eq!(name.parse::<Sampler>().unwrap(), sampler);
        assert_eq!(sampler.to_string(), name);
    }
    let msg = "Euler a".parse::<Sampler>().unwrap_err().to_string();
    assert!(
        msg.contains("ddim, euler, euler_a, dpmpp_2m_karras"),
        "{msg}"
    );
}

#[test]
fn seeded_noise_is_deterministic() {
    let draw = |seed| {
        SeededNoise::new(seed)
            .randn(&[1, 4, 8, 8], &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b) = (draw(1234), draw(1234));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_ne!(a, draw(1235));
}

#[test]
fn seeded_euler_ancestral_run_is_reproducible() {
    let run = || {
        let cfg = SchedulerConfig::sd15();
        let mut sched = schedulers::build(Sampler::EulerAncestral, &cfg, 5, None).unwrap();
        let mut noise = SeededNoise::new(99);
        let mut x =
            (noise.randn(&[1, 4, 4, 4], &Device::Cpu).unwrap() * sched.init_noise_sigma()).unwrap();
        for i in 0..5 {
            let eps = (&x * 0.1).unwrap();
            x = sched.step(&eps, i, &x, &mut noise).unwrap().prev_sample;
        }
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(run(), run());
}
