//! The noise schedule a model was trained with, read from diffusers' `scheduler/scheduler_config.json`.
//!
//! A diffusers model folder records one scheduler class and its parameters. The parameters that
//! describe the *training* schedule (betas, prediction type, offset) are shared by every sampler,
//! so any of our samplers can be built from any class's file, the way diffusers'
//! `SomeScheduler.from_config(other.config)` does. Fields absent from the file take diffusers'
//! constructor defaults, as `from_config` would.
//!
//! `timestep_spacing` is read, but only the sampler of the file's own class uses it (see
//! `Pipeline::spacing`): SD-Turbo's file says Euler with "trailing", and its Euler must run so.
//! Any other sampler keeps its class's default (DDIM "leading" + `steps_offset`; Euler, Euler a
//! and DPM++ "linspace"): samplers named "Euler" or "DDIM" in the ecosystem (A1111, diffusers'
//! pipelines) mean those defaults, so a spacing inherited from another class's file must not
//! change what the sampler does.
//!
//! Deliberately ignored fields:
//! - `use_karras_sigmas`, `solver_order`, `algorithm_type` and friends: the [`super::Sampler`]
//!   chosen by the user defines these, not the file.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::SchedulerError;
use super::Spacing;

/// How the per-timestep noise variances (betas) are spaced over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)`.
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end))²`: what Stable Diffusion was trained with.
    ScaledLinear,
}

/// What the UNet predicts; each sampler converts it to an estimate of the clean latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise that was added (SD 1.x, SD 2.x base).
    Epsilon,
    /// The "velocity" `alpha·noise − sigma·x0` (SD 2.x 768-v models).
    VPrediction,
}

/// The training schedule of a model plus the few sampler knobs diffusers keeps alongside it.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// The diffusers class the file names (`_class_name`); picks the model's default sampler.
    pub class_name: String,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    /// Added to DDIM's "leading" timesteps (SD 1.5 uses 1, so its last step is t = 1, not 0).
    pub steps_offset: usize,
    /// DDIM's final step: use ᾱ = 1 (true) or ᾱ₀ (false) as the "previous" cumulative alpha.
    pub set_alpha_to_one: bool,
    /// DDIM only: clamp its x0 estimate to ±`clip_sample_range` (diffusers' default is true;
    /// SD checkpoints set false, because latents are not confined to [-1, 1]).
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// diffusers' `rescale_betas_zero_snr`: betas rescaled so the last step is pure noise
    /// (zero terminal SNR), as some v-prediction fine-tunes are trained.
    pub rescale_betas_zero_snr: bool,
    /// The file's `timestep_spacing`, for its own class's sampler.
    pub timestep_spacing: Option<Spacing>,
    /// LCM only: the steps of the schedule it was distilled on (diffusers'
    /// `original_inference_steps`, 50); its timesteps are picked among them.
    pub original_inference_steps: usize,
}

impl SchedulerConfig {
    /// What Stable Diffusion 1.5 ships in `scheduler/scheduler_config.json` (a PNDM config).
    pub fn sd15() -> Self {
        Self {
            class_name: "PNDMScheduler".to_string(),
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: false,
            clip_sample_range: 1.0,
            rescale_betas_zero_snr: false,
            timestep_spacing: None,
            original_inference_steps: 50,
        }
    }

    /// Reads a diffusers `scheduler_config.json`. Absent fields take diffusers' defaults;
    /// values our samplers do not implement are errors naming the file and the value.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, SchedulerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a scheduler config; `path` is only used to name it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, SchedulerError> {
        let raw: RawConfig = serde_json::from_str(&crate::models::weights::python_json(text))
            .map_err(|source| SchedulerError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        raw.resolve(path)
    }
}

/// The file as written; `None` means "absent or null", which takes diffusers' default.
#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<String>,
    trained_betas: Option<serde_json::Value>,
    prediction_type: Option<String>,
    steps_offset: Option<usize>,
    set_alpha_to_one: Option<bool>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    thresholding: Option<bool>,
    rescale_betas_zero_snr: Option<bool>,
    original_inference_steps: Option<usize>,
    timestep_spacing: Option<String>,
}

impl RawConfig {
    fn resolve(self, path: &Path) -> Result<SchedulerConfig, SchedulerError> {
        let unsupported = |field: &'static str, value: String, supported: &'static str| {
            SchedulerError::Unsupported {
                path: PathBuf::from(path),
                field,
                value,
                supported,
            }
        };
        let beta_schedule = match self.beta_schedule.as_deref() {
            None | Some("linear") => BetaSchedule::Linear,
            Some("scaled_linear") => BetaSchedule::ScaledLinear,
            Some(other) => {
                return Err(unsupported(
                    "beta_schedule",
                    format!("{other:?}"),
                    "\"linear\", \"scaled_linear\"",
                ))
            }
        };
        let prediction_type = match self.prediction_type.as_deref() {
            None | Some("epsilon") => PredictionType::Epsilon,
            Some("v_prediction") => PredictionType::VPrediction,
            Some(other) => {
                return Err(unsupported(
                    "prediction_type",
                    format!("{other:?}"),
                    "\"epsilon\", \"v_prediction\"",
                ))
            }
        };
        // Explicit betas would bypass the schedule our samplers compute; no SD model uses them.
        if let Some(betas) = self.trained_betas.filter(|v| !v.is_null()) {
            let mut value = betas.to_string();
            if value.len() > 40 {
                value.truncate(40);
                value.push('…');
            }
            return Err(unsupported("trained_betas", value, "null"));
        }
        // Changes the schedule in a way our samplers do not reproduce; refusing beats
        // silently sampling with the wrong noise levels.
        if self.thresholding == Some(true) {
            return Err(unsupported("thresholding", "true".into(), "false"));
        }
        let timestep_spacing = match self.timestep_spacing.as_deref() {
            None => None,
            Some(s) => Some(s.parse::<Spacing>().map_err(|_| {
                unsupported(
                    "timestep_spacing",
                    format!("{s:?}"),
                    "\"leading\", \"linspace\", \"trailing\"",
                )
            })?),
        };
        Ok(SchedulerConfig {
            class_name: self.class_name.unwrap_or_default(),
            num_train_timesteps: self.num_train_timesteps.unwrap_or(1000),
            beta_start: self.beta_start.unwrap_or(0.0001),
            beta_end: self.beta_end.unwrap_or(0.02),
            beta_schedule,
            prediction_type,
            steps_offset: self.steps_offset.unwrap_or(0),
            set_alpha_to_one: self.set_alpha_to_one.unwrap_or(true),
            clip_sample: self.clip_sample.unwrap_or(true),
            clip_sample_range: self.clip_sample_range.unwrap_or(1.0),
            rescale_betas_zero_snr: self.rescale_betas_zero_snr.unwrap_or(false),
            timestep_spacing,
            original_inference_steps: self.original_inference_steps.unwrap_or(50),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(json: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(&path, json).unwrap();
        (dir, path)
    }

    #[test]
    fn reads_sd15_file() {
        let (_dir, path) = write(
            r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                "set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1,
                "trained_betas": null, "clip_sample": false}"#,
        );
        assert_eq!(
            SchedulerConfig::from_json_file(&path).unwrap(),
            SchedulerConfig::sd15()
        );
    }

    #[test]
    fn absent_fields_take_diffusers_defaults() {
        let (_dir, path) = write(r#"{"_class_name": "DDIMScheduler"}"#);
        let cfg = SchedulerConfig::from_json_file(&path).unwrap();
        assert_eq!(cfg.num_train_timesteps, 1000);
        assert_eq!(cfg.beta_schedule, BetaSchedule::Linear);
        assert_eq!(cfg.prediction_type, PredictionType::Epsilon);
        assert!(cfg.set_alpha_to_one && cfg.clip_sample);
        assert_eq!(cfg.steps_offset, 0);
    }

    #[test]
    fn timestep_spacing_is_read_and_checked() {
        let (_dir, path) =
            write(r#"{"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}"#);
        let cfg = SchedulerConfig::from_json_file(&path).unwrap();
        assert_eq!(cfg.timestep_spacing, Some(Spacing::Trailing));
        let (_dir, path) = write(r#"{"timestep_spacing": "uniform"}"#);
        let err = SchedulerConfig::from_json_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("uniform") && err.contains("trailing"), "{err}");
    }

    #[test]
    fn unsupported_beta_schedule_names_file_and_value() {
        let (_dir, path) = write(r#"{"beta_schedule": "squaredcos_cap_v2"}"#);
        let err = SchedulerConfig::from_json_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheduler_config.json"), "{err}");
        assert!(err.contains("squaredcos_cap_v2"), "{err}");
    }

    #[test]
    fn unsupported_prediction_type_names_file_and_value() {
        for bad in ["sample", "flow_prediction"] {
            let (_dir, path) = write(&format!(r#"{{"prediction_type": "{bad}"}}"#));
            let err = SchedulerConfig::from_json_file(&path)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("scheduler_config.json") && err.contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn trained_betas_and_bad_json_are_errors() {
        let (_dir, path) = write(r#"{"trained_betas": [0.1, 0.2]}"#);
        let err = SchedulerConfig::from_json_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trained_betas"), "{err}");
        let (_dir, path) = write("{not json");
        let err = SchedulerConfig::from_json_file(&path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheduler_config.json"), "{err}");
    }

    #[test]
    fn missing_file_names_it() {
        let err = SchedulerConfig::from_json_file("/nonexistent/sched.json").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/sched.json"), "{err}");
    }
}
