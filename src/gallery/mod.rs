//! What is kept with every image, and finding it again.
//!
//! - [`png_meta`]: the recipe inside each PNG (A1111 parameters + Easel's JSON).
//! - [`embedder`]: CLIP text and image embeddings ([`preprocess`] and [`resample`] turn a file
//!   into CLIP's pixels exactly as OpenAI/transformers do).
//! - [`index`]: the SQLite index; [`indexer`] keeps it in step with the folders ([`scan`]),
//!   on a background thread when run as a [`job`].
//! - [`search`]: exact top-k over the embeddings with metadata filters; [`query`] parses
//!   rclip-style queries (`red car - night`, `2:sunset + ./ref.png`).

pub mod embedder;
mod error;
pub mod index;
pub mod indexer;
pub mod job;
pub mod paths;
pub mod png_meta;
pub mod preprocess;
pub mod query;
pub mod resample;
pub mod scan;
pub mod search;
pub mod service;

pub use embedder::ClipEmbedder;
pub use error::GalleryError;
pub use index::{sqlite_memory_used, GalleryIndex};
pub use indexer::{index_folders, IndexEvent, IndexOptions, IndexSummary, SkipReason};
pub use job::{IndexJob, JobEvent};
pub use search::{Filter, Hit, Library};
