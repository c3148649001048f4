//! Model files on disk and the candle modules built from them.

pub mod clip_text;
pub mod error;
pub mod stable_diffusion;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;

pub use error::ModelError;
pub use stable_diffusion::StableDiffusion;
