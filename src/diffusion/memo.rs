//! What a pipeline keeps from one job to the next: the last prompts' text states and the
//! latents of the last pictures it encoded.
//!
//! Iterating is the common case: a Live re-render after a strength, steps or LoRA-weight
//! change, the next seed of the same prompt, img2img on the picture just made. Those jobs
//! repeat the text encode and the VAE encode with the very same inputs; a memo hit makes their
//! cost only the steps they run. Each entry is keyed by everything its result depends on, so a
//! hit gives exactly what computing would: the text states by the prompts, clip skip, the
//! embeddings that can be called and the adapter terms in the text encoders; the latents by
//! the pixels, the tiling and the VAE chosen.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use candle_core::{Tensor, TensorId};

use super::text::TextEncoding;

/// Pictures' latents kept: an inpainting job encodes two (the picture, and the masked one for
/// 9-channel UNets), so two keeps both of the last job's.
const PICTURES: usize = 2;

#[derive(Default)]
pub struct Memo {
    text: Mutex<Option<(TextKey, TextEncoding)>>,
    pictures: Mutex<Vec<(PictureKey, Tensor)>>,
}

/// Everything a text encoding depends on besides the (fixed) text-encoder weights.
#[derive(Debug, Clone, PartialEq)]
pub struct TextKey {
    pub texts: Vec<String>,
    pub texts_2: Vec<String>,
    pub clip_skip: usize,
    /// Name and content hash of every embedding a prompt could call.
    pub embeddings: Vec<(String, String)>,
    /// The adapter terms in the text encoders' layers (see `LoraSlot::fingerprint`).
    pub adapters: Vec<(TensorId, u64)>,
}

/// Everything a picture's latents depend on besides the VAE file chosen.
#[derive(PartialEq)]
pub struct PictureKey {
    pub picture: image::RgbImage,
    pub tiled: bool,
    /// The VAE chosen (`None`: the model's own); the one in memory changes only with it.
    pub vae: Option<PathBuf>,
}

/// A poisoned lock only means a job panicked mid-way; entries are replaced whole, so what is
/// kept is still right.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Memo {
    pub fn clear(&self) {
        *lock(&self.text) = None;
        lock(&self.pictures).clear();
    }

    pub fn text(&self, key: &TextKey) -> Option<TextEncoding> {
        lock(&self.text)
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| t.clone())
    }

    pub fn keep_text(&self, key: TextKey, encoding: &TextEncoding) {
        *lock(&self.text) = Some((key, encoding.clone()));
    }

    pub fn picture(&self, key: &PictureKey) -> Option<Tensor> {
        let mut kept = lock(&self.pictures);
        let i = kept.iter().position(|(k, _)| k == key)?;
        // Most recently used last.
        let entry = kept.remove(i);
        let latents = entry.1.clone();
        kept.push(entry);
        Some(latents)
    }

    pub fn keep_picture(&self, key: PictureKey, latents: &Tensor) {
        let mut kept = lock(&self.pictures);
        kept.retain(|(k, _)| *k != key);
        if kept.len() >= PICTURES {
            kept.remove(0);
        }
        kept.push((key, latents.clone()));
    }
}
