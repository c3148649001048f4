//! Text → latents → image.

pub mod schedulers;
