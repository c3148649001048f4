//! One error type for everything that can be wrong with a model on disk.
//!
//! Every variant names the file it is about, so a user with a broken download sees which
//! file to replace, not a bare tensor name.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: missing ({what})")]
    Missing { path: PathBuf, what: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid config: {msg}")]
    BadConfig { path: PathBuf, msg: String },

    #[error("{path}: not a readable safetensors file: {msg}")]
    BadWeights { path: PathBuf, msg: String },

    /// A single-file checkpoint Easel cannot run, or a damaged one; `msg` says which and why.
    #[error("{path}: {msg}")]
    BadCheckpoint { path: PathBuf, msg: String },

    #[error("{weights}: does not match {config}: {msg}")]
    Mismatch {
        weights: PathBuf,
        config: PathBuf,
        msg: String,
    },

    #[error("{path}: unsupported: {msg}")]
    Unsupported { path: PathBuf, msg: String },

    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::BadConfig {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::BadCheckpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Unsupported {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The error without the backtrace candle captures when `RUST_BACKTRACE` is set: candle prints
/// it as part of the message, which would turn a one-line user error into a hundred lines.
pub fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => without_backtrace(*inner),
        E::WithPath { inner, path } => E::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        E::Context { inner, context } => E::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        e => e,
    }
}

/// Building a module fails either on its config (before any weight is read) or on its weights;
/// the loader turns the second kind into [`ModelError::Mismatch`] naming both files.
#[derive(Debug)]
pub enum BuildError {
    Config(ModelError),
    Weights(candle_core::Error),
}
