//! The one error type of the samplers module.
//!
//! Every failure names what the user can act on: the config file and the offending value, the
//! sampler name that was not understood, or the step count that does not fit the model.

use std::path::PathBuf;

/// Why a scheduler could not be configured or built.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The scheduler config file could not be read.
    #[error("cannot read scheduler config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The scheduler config file is not the JSON we expect.
    #[error("cannot parse scheduler config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A field holds a value Easel's samplers do not implement.
    #[error("{path}: unsupported {field} {value} (supported: {supported})")]
    Unsupported {
        path: PathBuf,
        field: &'static str,
        value: String,
        supported: &'static str,
    },
    /// A sampler name (CLI, settings, metadata) that is not one of ours.
    #[error("unknown sampler \"{name}\" (valid: {valid})")]
    UnknownSampler { name: String, valid: String },
    /// The requested number of steps cannot be laid out on the training schedule.
    #[error(
        "cannot sample with {steps} steps: must be between 1 and the model's {num_train_timesteps} training timesteps"
    )]
    InvalidSteps {
        steps: usize,
        num_train_timesteps: usize,
    },
    #[error("unknown timestep spacing \"{name}\" (valid: {valid})")]
    UnknownSpacing { name: String, valid: String },
    /// A spacing given to a sampler that does not use one.
    #[error("{sampler} takes no timestep spacing: it sets its own steps, so \"{spacing}\" would do nothing (euler, euler_a and ddim take one)")]
    SpacingUnused {
        sampler: &'static str,
        spacing: String,
    },
    /// The schedule itself is unusable (for example a timestep past the end of the training schedule).
    #[error("invalid {sampler} schedule: {reason}")]
    InvalidSchedule {
        sampler: &'static str,
        reason: String,
    },
}
