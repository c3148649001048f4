//! What can go wrong in the gallery: loading the CLIP model, the index database, a query.
//!
//! Every variant names the file it is about: these errors reach the user from a folder scan or
//! a search box, where the path is the only clue to what to fix. Per-image problems met while
//! indexing are not errors at all (they are counted and skipped, see [`super::SkipReason`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    /// The CLIP folder's config, weights or tokenizer (the model error names the file).
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),

    /// The CLIP folder's tokenizer files (the tokenizer error names the file).
    #[error(transparent)]
    Tokenizer(#[from] crate::models::tokenizer::TokenizerError),

    /// A tensor operation failed inside the CLIP model (shape bugs, out of memory).
    #[error("CLIP model {}: {msg}", path.display())]
    Compute { path: PathBuf, msg: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("index database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// The database opened but is not one Easel can use, even after rebuilding it.
    #[error("index database {}: {msg}", path.display())]
    BadDb { path: PathBuf, msg: String },

    #[error("cannot read image {}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },

    #[error("query {query:?}: {msg}")]
    Query { query: String, msg: String },

    /// No `--clip-model` given and no bundled CLIP model found.
    #[error("no CLIP model: pass --clip-model DIR (a transformers CLIP folder with config.json, model.safetensors and tokenizer files); none is bundled at {}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
    NoClipModel { searched: Vec<PathBuf> },

    #[error("no data directory for the library database (no home directory?): pass --db FILE")]
    NoDataDir,
}

impl GalleryError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn db(path: impl Into<PathBuf>, source: rusqlite::Error) -> Self {
        Self::Db {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn compute(path: impl Into<PathBuf>, e: candle_core::Error) -> Self {
        Self::Compute {
            path: path.into(),
            msg: without_backtrace(e).to_string(),
        }
    }

    pub(crate) fn query(query: &str, msg: impl Into<String>) -> Self {
        Self::Query {
            query: query.to_string(),
            msg: msg.into(),
        }
    }
}

/// candle appends a captured backtrace to its message when `RUST_BACKTRACE` is set; a search
/// box or a CLI line wants the message alone.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}
