//! Prompts → text states: A1111's language (see [`crate::prompt`]) through the model's one or
//! two text encoders, with textual-inversion vectors put in place and each chunk weighted.

use candle_core::Tensor;

use super::memo::TextKey;
use super::pipeline::{compute, Pipeline, PipelineError};
use crate::lora::adapter::ModelSlots;
use crate::models::clip_text::Placed;
use crate::prompt::chunks::EmbeddingWord;
use crate::prompt::embeddings::Embedding;
use crate::prompt::{self, Chunk, Chunks};

/// Prompts encoded for the UNet.
#[derive(Clone)]
pub struct TextEncoding {
    /// The text states: [prompts, 77 × chunks, width] (SDXL: both encoders' side by side).
    pub states: Tensor,
    /// SDXL: the second encoder's pooled projection (of each prompt's first chunk),
    /// [prompts, pooled].
    pub pooled: Option<Tensor>,
}

impl Pipeline {
    /// Encodes one prompt: [1, 77 × chunks, hidden].
    pub fn encode_prompt(&self, text: &str) -> Result<Tensor, PipelineError> {
        self.encode_prompt_skipping(text, 1)
    }

    /// [`Self::encode_prompt`] with A1111's clip skip.
    pub fn encode_prompt_skipping(
        &self,
        text: &str,
        clip_skip: usize,
    ) -> Result<Tensor, PipelineError> {
        Ok(self.encode_texts(&[text], &[text], clip_skip)?.states)
    }

    /// Encodes prompts as one batch. `texts_2` go to SDXL's second encoder (ignored by other
    /// models), whose states are joined to the first's along the width. Prompts are read in
    /// A1111's language (see [`crate::prompt`]): each is split into 75-token chunks, weighted,
    /// and every prompt is padded with empty chunks to the longest one's count, so the states
    /// are [prompts, 77 × chunks, width].
    ///
    /// The last call's result is kept (see [`super::memo`]): the same prompts again cost
    /// nothing.
    pub fn encode_texts(
        &self,
        texts: &[&str],
        texts_2: &[&str],
        clip_skip: usize,
    ) -> Result<TextEncoding, PipelineError> {
        let slots = ModelSlots::of(&self.model);
        let key = TextKey {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            texts_2: texts_2.iter().map(|t| t.to_string()).collect(),
            clip_skip,
            embeddings: (self.embeddings.iter())
                .map(|e| (e.name.clone(), e.hash.clone()))
                .collect(),
            adapters: (slots.text.iter().chain(&slots.text_2))
                .flat_map(|s| s.fingerprint())
                .collect(),
        };
        if let Some(kept) = self.memo.text(&key) {
            return Ok(kept);
        }
        let encoding = self.encode_texts_afresh(texts, texts_2, clip_skip)?;
        self.memo.keep_text(key, &encoding);
        Ok(encoding)
    }

    fn encode_texts_afresh(
        &self,
        texts: &[&str],
        texts_2: &[&str],
        clip_skip: usize,
    ) -> Result<TextEncoding, PipelineError> {
        let model = &self.model;
        let device = &model.device;
        let words_1 = self.embedding_words(&model.tokenizer, model.text_encoder.width());
        let split = |tokenizer, words: &[EmbeddingWord], texts: &[&str]| -> Vec<Chunks> {
            texts
                .iter()
                .map(|t| {
                    let text = prompt::lora_tags::strip_tags(t);
                    prompt::chunks::split_with(tokenizer, &text, words)
                })
                .collect()
        };
        let first = split(&model.tokenizer, &words_1, texts);
        let second = (model.text_encoder_2.as_ref()).map(|s| {
            let words = self.embedding_words(&s.tokenizer, s.encoder.width());
            (s, split(&s.tokenizer, &words, texts_2))
        });
        let n_chunks = first
            .iter()
            .chain(second.iter().flat_map(|(_, c)| c))
            .map(|c| c.chunks.len())
            .max()
            .unwrap_or(1);
        let err = compute("text encoding");
        let Some((second, chunks_2)) = second else {
            let rows = padded_rows(&model.tokenizer, &first, n_chunks);
            let ids: Vec<Vec<u32>> = rows.iter().map(|c| c.ids.clone()).collect();
            let placed = self.placed(&rows, model.text_encoder.width());
            let states = (|| {
                let states = model
                    .text_encoder
                    .encode_batch(&ids, device, clip_skip, &placed)?;
                join_chunks(&states, &rows, texts.len())
            })()
            .map_err(err)?;
            return Ok(TextEncoding {
                states,
                pooled: None,
            });
        };
        (|| {
            let rows = padded_rows(&model.tokenizer, &first, n_chunks);
            let ids: Vec<Vec<u32>> = rows.iter().map(|c| c.ids.clone()).collect();
            let eos = model.tokenizer.eos_id();
            let placed = self.placed(&rows, model.text_encoder.width());
            let (states_1, _) = model
                .text_encoder
                .encode_hidden(&ids, eos, device, clip_skip, &placed)?;
            let states_1 = join_chunks(&states_1, &rows, texts.len())?;
            let rows = padded_rows(&second.tokenizer, &chunks_2, n_chunks);
            let ids: Vec<Vec<u32>> = rows.iter().map(|c| c.ids.clone()).collect();
            let eos = second.tokenizer.eos_id();
            let placed = self.placed(&rows, second.encoder.width());
            let (states_2, pooled) = second
                .encoder
                .encode_hidden(&ids, eos, device, clip_skip, &placed)?;
            let states_2 = join_chunks(&states_2, &rows, texts.len())?;
            // A1111 pools the first chunk.
            let pooled = match pooled {
                Some(p) => {
                    let firsts: Vec<u32> = (0..texts.len() as u32)
                        .map(|i| i * n_chunks as u32)
                        .collect();
                    let at = Tensor::new(firsts.as_slice(), device)?;
                    Some(p.index_select(&at, 0)?)
                }
                None => None,
            };
            let states = Tensor::cat(&[&states_1, &states_2], 2)?;
            Ok(TextEncoding { states, pooled })
        })()
        .map_err(err)
    }

    /// The embeddings a text encoder of `width` can use, as the chunker matches them.
    fn embedding_words(
        &self,
        tokenizer: &crate::models::tokenizer::ClipTokenizer,
        width: usize,
    ) -> Vec<EmbeddingWord> {
        (self.embeddings.iter().enumerate())
            .filter_map(|(index, e)| {
                let vectors = e.for_width(width)?.dim(0).ok()?;
                Some(EmbeddingWord {
                    tokens: tokenizer.tokenize(&e.name),
                    vectors,
                    index,
                })
            })
            .collect()
    }

    /// The embedding vectors the rows' chunks place, for a text encoder of `width`.
    fn placed(&self, rows: &[Chunk], width: usize) -> Vec<Placed> {
        (rows.iter().enumerate())
            .flat_map(|(row, chunk)| {
                chunk.fixes.iter().filter_map(move |f| {
                    let vectors = self.embeddings.get(f.embedding)?.for_width(width)?.clone();
                    Some(Placed {
                        row,
                        offset: f.offset,
                        vectors,
                    })
                })
            })
            .collect()
    }

    /// The embeddings these prompts call, in order of first use (for the PNG's `TI hashes`).
    pub fn embeddings_used(&self, texts: &[&str]) -> Vec<&Embedding> {
        let width = self.model.text_encoder.width();
        let words = self.embedding_words(&self.model.tokenizer, width);
        let mut used: Vec<usize> = Vec::new();
        for text in texts {
            let text = prompt::lora_tags::strip_tags(text);
            let split = prompt::chunks::split_with(&self.model.tokenizer, &text, &words);
            for f in split.chunks.iter().flat_map(|c| &c.fixes) {
                if !used.contains(&f.embedding) {
                    used.push(f.embedding);
                }
            }
        }
        used.iter()
            .filter_map(|&i| self.embeddings.get(i))
            .collect()
    }
}

/// Every prompt's chunks, each prompt padded with empty chunks to `n_chunks`: the rows of one
/// text-encoder batch, prompt by prompt.
fn padded_rows(
    tokenizer: &crate::models::tokenizer::ClipTokenizer,
    prompts: &[Chunks],
    n_chunks: usize,
) -> Vec<Chunk> {
    let empty = prompt::chunks::empty(tokenizer);
    prompts
        .iter()
        .flat_map(|p| {
            let pad = n_chunks - p.chunks.len();
            p.chunks
                .iter()
                .cloned()
                .chain(std::iter::repeat_n(empty.clone(), pad))
        })
        .collect()
}

/// Encoded rows [prompts × chunks, 77, width] → each chunk weighted (A1111's emphasis), then
/// each prompt's chunks side by side: [prompts, 77 × chunks, width].
fn join_chunks(states: &Tensor, rows: &[Chunk], prompts: usize) -> candle_core::Result<Tensor> {
    let n_chunks = rows.len() / prompts.max(1);
    if n_chunks == 1 && rows.iter().all(|r| !r.is_weighted()) {
        return Ok(states.clone());
    }
    let mut out = Vec::with_capacity(prompts);
    for p in 0..prompts {
        let chunks = (0..n_chunks)
            .map(|c| {
                let row = p * n_chunks + c;
                prompt::weigh(&states.narrow(0, row, 1)?, &rows[row])
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        out.push(Tensor::cat(&chunks, 1)?);
    }
    Tensor::cat(&out, 0)
}
