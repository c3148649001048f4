//! LoRA adapters, hot-applied from memory.
//!
//! The base model is loaded once; an adapter is read once ([`Adapter::load`], which checks every
//! key against the model's layers), and from then on enabling, disabling or re-weighting any
//! number of adapters is an [`LoraStack::apply`] that only swaps small tensors in and out of the
//! model's LoRA-aware layers ([`layers`]). Nothing re-reads the checkpoint and nothing modifies a
//! base weight, so the plain model is always one `apply` of an empty stack away, bit for bit.
//!
//! - [`keys`]: kohya, diffusers/peft and pre-peft diffusers key names → layers.
//! - [`adapter`]: one file read and matched (all-or-nothing, with a report of what did not fit).
//! - [`stack`]: the adapters in use and their weights; `apply`.
//! - [`library`]: a folder of adapters described from headers alone (rank, family, trigger words).
//! - `<lora:name:weight>` prompt tags are read in [`crate::prompt::lora_tags`].
//!
//! Effective scale of an adapter on a layer = weight × alpha / rank (1 × weight without alpha).

pub mod adapter;
mod error;
mod fused;
pub mod header;
pub mod keys;
pub mod layers;
pub mod library;
pub mod stack;

pub use crate::prompt::lora_tags::LoraSpec;
pub use adapter::Adapter;
pub use error::LoraError;
pub use keys::{Component, Format};
pub use layers::{LoraConv2d, LoraLinear, LoraSlot, LowRankTerm, SlotShape};
pub use library::{Family, LoraInfo};
pub use stack::{AdapterSettings, ApplyReport, LoraChoice, LoraStack};
