//! AUTOMATIC1111's prompt language, which the prompts people copy from Civitai are written in.
//!
//! - [`emphasis`]: `(word)`, `[word]`, `(word:1.3)`, escapes and `BREAK` → runs of weighted text.
//! - [`chunks`]: weighted text → 75-token chunks of (token, weight), as A1111 splits long prompts.
//! - [`lora_tags`]: `<lora:name:weight>` tags, which choose adapters and are not text.
//! - [`embeddings`]: textual-inversion embeddings, called by name.
//!
//! [`weigh`] is A1111's emphasis math on a chunk's encoded states; the pipeline encodes the
//! chunks and joins them (`crate::diffusion::pipeline`).

pub mod chunks;
pub mod embeddings;
pub mod emphasis;
pub mod lora_tags;

use candle_core::{DType, Tensor};

pub use chunks::{Chunk, Chunks};

/// A1111's "Original" emphasis on one chunk's text states `[1, seq, width]`: each position's
/// state times its weight, then the whole chunk rescaled so that its mean is what it was (A1111
/// keeps the mean to avoid the artefacts plain scaling gives). An unweighted chunk is returned
/// as it is.
pub fn weigh(states: &Tensor, chunk: &Chunk) -> candle_core::Result<Tensor> {
    if !chunk.is_weighted() {
        return Ok(states.clone());
    }
    let dtype = states.dtype();
    let z = states.to_dtype(DType::F32)?;
    let seq = chunk.weights.len();
    let weights = Tensor::from_slice(&chunk.weights, (1, seq, 1), z.device())?;
    let original_mean = z.mean_all()?.to_scalar::<f32>()?;
    let weighted = z.broadcast_mul(&weights)?;
    let new_mean = weighted.mean_all()?.to_scalar::<f32>()?;
    let rescale = original_mean / new_mean;
    // Every weight 0 leaves nothing to rescale (A1111 would give NaN).
    let rescaled = if rescale.is_finite() {
        (weighted * f64::from(rescale))?
    } else {
        weighted
    };
    rescaled.to_dtype(dtype)
}
