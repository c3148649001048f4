//! The prompt panel's token counts, as A1111 shows them ("12/75", "87/150"): the prompt's
//! tokens as its 75-token chunks count them, and the room in those chunks. The loaded model's
//! own tokenizer counts; results are kept by prompt text, so a frame only tokenises what was
//! just typed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::models::tokenizer::ClipTokenizer;
use crate::prompt::chunks;

/// A prompt's count: tokens, room in its chunks, and the number of chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub tokens: usize,
    pub capacity: usize,
    pub chunks: usize,
}

/// Counts by prompt text for one tokenizer.
#[derive(Default)]
pub struct TokenCounts {
    tokenizer: Option<Arc<ClipTokenizer>>,
    counts: HashMap<String, Count>,
}

/// Enough for the prompts on screen while typing; the memo is cleared past it.
const KEEP: usize = 64;

impl TokenCounts {
    /// The count of `prompt` (its `<lora:…>` tags left out, as the encoder leaves them out);
    /// `None` without a tokenizer.
    pub fn count(&mut self, tokenizer: Option<&Arc<ClipTokenizer>>, prompt: &str) -> Option<Count> {
        let tokenizer = tokenizer?;
        if !self
            .tokenizer
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, tokenizer))
        {
            self.tokenizer = Some(tokenizer.clone());
            self.counts.clear();
        }
        if let Some(c) = self.counts.get(prompt) {
            return Some(*c);
        }
        if self.counts.len() >= KEEP {
            self.counts.clear();
        }
        let split = chunks::split(tokenizer, &crate::prompt::lora_tags::strip_tags(prompt));
        let count = Count {
            tokens: split.token_count,
            capacity: split.capacity(chunks::chunk_len(tokenizer)),
            chunks: split.chunks.len(),
        };
        self.counts.insert(prompt.to_string(), count);
        Some(count)
    }
}
