//! Model files on disk and the candle modules built from them.

pub mod checkpoint;
pub mod clip_text;
pub mod device;
pub mod error;
pub mod hash;
pub mod library;
pub mod stable_diffusion;
pub mod taesd;
pub mod tensor_file;
pub mod tokenizer;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
pub mod weights;

pub use error::ModelError;
pub use stable_diffusion::StableDiffusion;
