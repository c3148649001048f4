//! Text (and, for img2img, a picture) → latents → image: the pipeline, its samplers, guidance
//! and live previews.

pub mod guidance;
pub mod hires;
pub mod init_image;
pub mod inpaint;
mod memo;
pub mod memory;
pub mod noise;
pub mod pipeline;
pub mod preview;
pub mod schedulers;
pub mod text;
mod validate;

pub use hires::{Hires, Upscaler};
pub use init_image::InitImage;
pub use inpaint::Mask;
pub use memory::VaeTiling;
pub use pipeline::{
    GenerateRequest, GeneratedImage, Outcome, Pipeline, PipelineError, SdxlOptions,
    SizeConditioning, StepProgress, TaesdUse,
};
