//! Prompts of any length, as A1111 feeds them to CLIP: 75-token chunks.
//!
//! CLIP reads 77 positions (start, 75 tokens, end). Diffusers cuts a longer prompt; A1111 (and
//! so every prompt shared from it) splits it into chunks of 75 tokens, encodes each chunk on its
//! own, start and end tokens included, and lays the chunks' states side by side along the
//! sequence for the UNet's cross-attention. Where a chunk fills up within 20 tokens of a comma,
//! the words after the comma move to the next chunk (A1111's "comma padding backtrack"), and
//! `BREAK` ends a chunk early. Each token keeps the weight its emphasis gave it.

use super::emphasis::{self, Weighted};
use crate::models::tokenizer::ClipTokenizer;

/// A1111's default `comma_padding_backtrack`: how far back a full chunk looks for a comma.
const COMMA_BACKTRACK: usize = 20;

/// One chunk as the text encoder reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// `[bos] tokens [eos] pad…`: the tokenizer's `max_len` ids.
    pub ids: Vec<u32>,
    /// Each position's weight (1 for the start, end and padding).
    pub weights: Vec<f32>,
}

impl Chunk {
    /// Whether any position is weighted (an unweighted chunk's states are used as they are).
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// A prompt split into chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunks {
    pub chunks: Vec<Chunk>,
    /// The prompt's tokens as A1111 counts them ("75/150": each full chunk counts 75).
    pub token_count: usize,
}

impl Chunks {
    /// The count A1111 shows after the slash: room in the chunks the prompt needs.
    pub fn capacity(&self, chunk_len: usize) -> usize {
        self.token_count.max(1).div_ceil(chunk_len) * chunk_len
    }
}

/// Tokens per chunk for a tokenizer: its length less the start and end tokens.
pub fn chunk_len(tokenizer: &ClipTokenizer) -> usize {
    tokenizer.max_len().saturating_sub(2).max(1)
}

/// Splits a prompt written in A1111's emphasis syntax (its `<lora:…>` tags already removed).
pub fn split(tokenizer: &ClipTokenizer, prompt: &str) -> Chunks {
    split_runs(tokenizer, &emphasis::parse(prompt))
}

/// The chunk an empty prompt gives; what pads a shorter prompt to a longer one's chunk count
/// (A1111's `empty_chunk`, and its "pad prompt/negative prompt to the same length").
pub fn empty(tokenizer: &ClipTokenizer) -> Chunk {
    finish(tokenizer, Vec::new(), Vec::new())
}

fn split_runs(tokenizer: &ClipTokenizer, runs: &[Weighted]) -> Chunks {
    let len = chunk_len(tokenizer);
    let comma = match tokenizer.tokenize(",").as_slice() {
        [id] => Some(*id),
        _ => None,
    };
    let mut splitter = Splitter {
        tokenizer,
        len,
        done: Vec::new(),
        tokens: Vec::new(),
        weights: Vec::new(),
        last_comma: None,
        token_count: 0,
    };
    for run in runs {
        if run.is_break() {
            splitter.next_chunk(false);
            continue;
        }
        let weight = run.weight as f32;
        for token in tokenizer.tokenize(&run.text) {
            if Some(token) == comma {
                splitter.last_comma = Some(splitter.tokens.len());
            } else if let Some(at) = splitter
                .last_comma
                .filter(|&at| splitter.tokens.len() == len && len - at <= COMMA_BACKTRACK)
            {
                // Move the words after the comma into the next chunk.
                let moved_tokens = splitter.tokens.split_off(at + 1);
                let moved_weights = splitter.weights.split_off(at + 1);
                splitter.next_chunk(false);
                splitter.tokens = moved_tokens;
                splitter.weights = moved_weights;
            }
            if splitter.tokens.len() == len {
                splitter.next_chunk(false);
            }
            splitter.tokens.push(token);
            splitter.weights.push(weight);
        }
    }
    if !splitter.tokens.is_empty() || splitter.done.is_empty() {
        splitter.next_chunk(true);
    }
    Chunks {
        chunks: splitter.done,
        token_count: splitter.token_count,
    }
}

struct Splitter<'a> {
    tokenizer: &'a ClipTokenizer,
    len: usize,
    done: Vec<Chunk>,
    tokens: Vec<u32>,
    weights: Vec<f32>,
    last_comma: Option<usize>,
    token_count: usize,
}

impl Splitter<'_> {
    /// Closes the chunk being filled. A full chunk counts `len` tokens, the last one its own.
    fn next_chunk(&mut self, last: bool) {
        self.token_count += if last { self.tokens.len() } else { self.len };
        let tokens = std::mem::take(&mut self.tokens);
        let weights = std::mem::take(&mut self.weights);
        self.done.push(finish(self.tokenizer, tokens, weights));
        self.last_comma = None;
    }
}

/// `[bos] tokens [eos] pad…` with weight 1 outside the tokens. As in A1111, everything after
/// the first end token is the tokenizer's pad (the end token again for SD 1.x, `!` for SD 2.x).
fn finish(tokenizer: &ClipTokenizer, tokens: Vec<u32>, weights: Vec<f32>) -> Chunk {
    let total = tokenizer.max_len().max(tokens.len() + 2);
    let mut ids = Vec::with_capacity(total);
    ids.push(tokenizer.bos_id());
    ids.extend_from_slice(&tokens);
    let first_end = ids.iter().position(|&t| t == tokenizer.eos_id());
    ids.push(tokenizer.eos_id());
    let first_end = first_end.unwrap_or(ids.len() - 1);
    ids.resize(total, tokenizer.eos_id());
    for id in &mut ids[first_end + 1..] {
        *id = tokenizer.pad_id();
    }
    let mut w = Vec::with_capacity(total);
    w.push(1.0);
    w.extend_from_slice(&weights);
    w.resize(total, 1.0);
    Chunk { ids, weights: w }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> ClipTokenizer {
        ClipTokenizer::bundled_openai("<|endoftext|>").unwrap()
    }

    #[test]
    fn a_short_prompt_is_one_chunk_like_the_plain_encoding() {
        let tok = tokenizer();
        let out = split(&tok, "a photo of a cat");
        assert_eq!(out.chunks.len(), 1);
        assert_eq!(out.chunks[0].ids, tok.encode("a photo of a cat").ids);
        assert!(!out.chunks[0].is_weighted());
        assert_eq!(out.token_count, 5);
        assert_eq!(out.capacity(75), 75);
    }

    #[test]
    fn weights_follow_their_tokens() {
        let tok = tokenizer();
        let out = split(&tok, "a (red:1.5) cat");
        let chunk = &out.chunks[0];
        assert_eq!(chunk.ids, tok.encode("a red cat").ids);
        assert_eq!(&chunk.weights[..5], &[1.0, 1.0, 1.5, 1.0, 1.0]);
    }

    #[test]
    fn long_prompts_and_breaks_make_more_chunks() {
        let tok = tokenizer();
        // 100 words without commas: 75 + 25.
        let long = "cat ".repeat(100);
        let out = split(&tok, &long);
        assert_eq!(out.chunks.len(), 2);
        assert_eq!(out.token_count, 100);
        assert_eq!(out.capacity(75), 150);
        assert!(out.chunks.iter().all(|c| c.ids.len() == 77));
        let out = split(&tok, "a cat BREAK a dog");
        assert_eq!(out.chunks.len(), 2);
        assert_eq!(out.chunks[1].ids, tok.encode("a dog").ids);
        assert_eq!(out.token_count, 75 + 2);
    }

    #[test]
    fn a_full_chunk_moves_the_words_after_a_recent_comma() {
        let tok = tokenizer();
        // 70 words, a comma, then 10 more: the chunk fills 4 words after the comma, which move.
        let prompt = format!("{}, {}", "cat ".repeat(70), "dog ".repeat(10));
        let out = split(&tok, &prompt);
        assert_eq!(out.chunks.len(), 2);
        let comma = tok.tokenize(",")[0];
        let first = &out.chunks[0].ids;
        assert_eq!(first[71], comma);
        assert_eq!(first[72], tok.eos_id());
        assert_eq!(
            &out.chunks[1].ids[1..11],
            &tok.tokenize(&"dog ".repeat(10))[..]
        );
    }

    #[test]
    fn an_empty_prompt_is_the_empty_chunk() {
        let tok = ClipTokenizer::bundled_openai("!").unwrap();
        let out = split(&tok, "");
        assert_eq!(out.chunks, vec![empty(&tok)]);
        assert_eq!(out.chunks[0].ids, tok.encode("").ids);
        assert_eq!(out.token_count, 0);
    }
}
