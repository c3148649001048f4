//! Easel: a native desktop studio for Stable Diffusion.
//!
//! The library holds everything the studio window, the headless CLI, the tests and the
//! benchmarks share. The folder tree is the architecture:
//!
//! - [`models`]: model files on disk (diffusers folders, tokenizer, weights) → candle modules.
//! - [`diffusion`]: the text → latents → image pipeline, samplers, guidance, previews.
//! - [`gallery`]: what is kept with every image (PNG metadata).
//! - [`ops`]: the heavy tensor ops (attention, convolution, norms) with own CPU kernels
//!   (re-exported from `crates/ops`, built optimised even in debug).
//! - [`prompt`]: A1111's prompt language: emphasis, `BREAK`, 75-token chunks, `<lora:…>` tags.
//! - [`lora`]: LoRA adapters: formats, matching, hot application from memory, folder scans.
//! - [`cli`]: the headless subcommands.
//! - [`worker`]: the inference thread the studio talks to (typed commands and events).
//! - [`app`]: the studio window (egui); the only module that knows egui.
//! - [`scenes`]: the bundled model's procedural scenes and a checker that reads them from pixels.
//! - [`settings`]: folders and the preferences that survive a restart.
//! - [`process_stats`]: resident memory, threads and open files, for benchmarks.
//! - [`fuzzing`]: every parser of outside bytes behind one signature, for `fuzz/` and the
//!   corpus replay test.

pub mod app;
pub mod cli;
pub mod diffusion;
pub mod fuzzing;
pub mod gallery;
pub mod lora;
pub mod models;
pub mod process_stats;
pub mod prompt;
/// The heavy ops' CPU kernels live in their own crate (`crates/ops`) so that they are
/// optimised even in debug builds; `crate::ops` is their path inside Easel.
pub use easel_ops as ops;
pub mod scenes;
pub mod settings;
pub mod worker;
