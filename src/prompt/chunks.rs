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
    /// Positions that take a textual-inversion embedding's vectors.
    pub fixes: Vec<Fix>,
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
    split_runs_with(tokenizer, &emphasis::parse(prompt), &[])
}

/// The chunk an empty prompt gives; what pads a shorter prompt to a longer one's chunk count
/// (A1111's `empty_chunk`, and its "pad prompt/negative prompt to the same length").
pub fn empty(tokenizer: &ClipTokenizer) -> Chunk {
    finish(tokenizer, Vec::new(), Vec::new())
}

/// A textual-inversion embedding as the chunker finds it: its name's tokens, and how many
/// positions its vectors take.
#[derive(Debug, Clone)]
pub struct EmbeddingWord {
    pub tokens: Vec<u32>,
    pub vectors: usize,
    /// Its index in the caller's list.
    pub index: usize,
}

/// Where a chunk's positions take an embedding's vectors instead of token embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fix {
    /// The first position, in [`Chunk::ids`] (after the start token).
    pub offset: usize,
    /// The embedding's index in the caller's list.
    pub embedding: usize,
}

/// [`split`] with textual-inversion embeddings: where the prompt's tokens spell an embedding's
/// name (the longest match first, as A1111), its vectors take as many positions, never split
/// across chunks.
pub fn split_with(tokenizer: &ClipTokenizer, prompt: &str, words: &[EmbeddingWord]) -> Chunks {
    split_runs_with(tokenizer, &emphasis::parse(prompt), words)
}

fn split_runs_with(
    tokenizer: &ClipTokenizer,
    runs: &[Weighted],
    words: &[EmbeddingWord],
) -> Chunks {
    let len = chunk_len(tokenizer);
    let comma = match tokenizer.tokenize(",").as_slice() {
        [id] => Some(*id),
        _ => None,
    };
    let mut words: Vec<&EmbeddingWord> = words.iter().filter(|w| !w.tokens.is_empty()).collect();
    words.sort_by_key(|w| std::cmp::Reverse(w.tokens.len()));
    let mut splitter = Splitter {
        tokenizer,
        len,
        done: Vec::new(),
        tokens: Vec::new(),
        weights: Vec::new(),
        fixes: Vec::new(),
        last_comma: None,
        token_count: 0,
    };
    for run in runs {
        if run.is_break() {
            splitter.next_chunk(false);
            continue;
        }
        let weight = run.weight as f32;
        let tokens = tokenizer.tokenize(&run.text);
        let mut at = 0;
        while let Some(&token) = tokens.get(at) {
            if Some(token) == comma {
                splitter.last_comma = Some(splitter.tokens.len());
            } else if let Some(cut) = splitter
                .last_comma
                .filter(|&c| splitter.tokens.len() == len && len - c <= COMMA_BACKTRACK)
            {
                // Move the words after the comma (and any embedding among them) into the
                // next chunk.
                let moved_tokens = splitter.tokens.split_off(cut + 1);
                let moved_weights = splitter.weights.split_off(cut + 1);
                let (moved_fixes, kept): (Vec<Fix>, Vec<Fix>) = std::mem::take(&mut splitter.fixes)
                    .into_iter()
                    .partition(|f| f.offset > cut);
                splitter.fixes = kept;
                splitter.next_chunk(false);
                splitter.tokens = moved_tokens;
                splitter.weights = moved_weights;
                splitter.fixes = moved_fixes
                    .into_iter()
                    .map(|f| Fix {
                        offset: f.offset - (cut + 1),
                        ..f
                    })
                    .collect();
            }
            if splitter.tokens.len() == len {
                splitter.next_chunk(false);
            }
            let found = words.iter().find(|w| tokens[at..].starts_with(&w.tokens));
            let Some(word) = found else {
                splitter.tokens.push(token);
                splitter.weights.push(weight);
                at += 1;
                continue;
            };
            if splitter.tokens.len() + word.vectors > len {
                splitter.next_chunk(false);
            }
            splitter.fixes.push(Fix {
                offset: splitter.tokens.len(),
                embedding: word.index,
            });
            // A1111's placeholder id; the vectors replace its embedding.
            let n = word.vectors.min(len);
            splitter.tokens.extend(std::iter::repeat_n(0, n));
            splitter.weights.extend(std::iter::repeat_n(weight, n));
            at += word.tokens.len();
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
    /// Offsets into `tokens`.
    fixes: Vec<Fix>,
    last_comma: Option<usize>,
    token_count: usize,
}

impl Splitter<'_> {
    /// Closes the chunk being filled. A full chunk counts `len` tokens, the last one its own.
    fn next_chunk(&mut self, last: bool) {
        self.token_count += if last { self.tokens.len() } else { self.len };
        let tokens = std::mem::take(&mut self.tokens);
        let weights = std::mem::take(&mut self.weights);
        let mut chunk = finish(self.tokenizer, tokens, weights);
        // Offsets in the chunk's ids count the start token.
        chunk.fixes = std::mem::take(&mut self.fixes)
            .into_iter()
            .map(|f| Fix {
                offset: f.offset + 1,
                ..f
            })
            .collect();
        self.done.push(chunk);
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
    Chunk {
        ids,
        weights: w,
        fixes: Vec::new(),
    }
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
    fn embeddings_take_their_vectors_positions_and_never_split() {
        let tok = tokenizer();
        let word = EmbeddingWord {
            tokens: tok.tokenize("easynegative"),
            vectors: 5,
            index: 7,
        };
        assert!(word.tokens.len() > 1);
        let out = split_with(
            &tok,
            "a (easynegative:1.5) cat",
            std::slice::from_ref(&word),
        );
        let c = &out.chunks[0];
        assert_eq!(
            c.fixes,
            [Fix {
                offset: 2,
                embedding: 7
            }]
        );
        assert_eq!(&c.ids[2..7], &[0; 5]);
        assert_eq!(c.ids[7], tok.tokenize("cat")[0]);
        assert_eq!(&c.weights[1..8], &[1.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.0]);
        assert_eq!(out.token_count, 7);
        // 72 words fill the chunk too far for 5 vectors: they start the next one whole.
        let out = split_with(&tok, &format!("{}easynegative", "cat ".repeat(72)), &[word]);
        assert_eq!(out.chunks.len(), 2);
        assert!(out.chunks[0].fixes.is_empty());
        assert_eq!(
            out.chunks[1].fixes,
            [Fix {
                offset: 1,
                embedding: 7
            }]
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
