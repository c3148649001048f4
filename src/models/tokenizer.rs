//! CLIP's byte-level BPE tokenizer.
//!
//! Stable Diffusion's text encoders were trained on ids from OpenAI's CLIP tokenizer, and
//! diffusers feeds them ids from transformers' `CLIPTokenizer`. In transformers 5 that class
//! is backed by the `tokenizers` library, whose pipeline differs from OpenAI's Python code in
//! small ways that change ids (special tokens found in the text, `!` as SD 2's pad token,
//! per-character lower-casing). We reproduce *that* pipeline step by step, because ids that
//! differ from diffusers' give different images for the same prompt:
//!
//! 1. Special tokens (bos/eos/unk/pad) are cut out of the raw text first ("added tokens",
//!    module `added`; their flags come from the config files, module `config`); those marked
//!    `normalized` are looked for again after normalisation.
//! 2. Normalisation: NFC (unicode-normalization), whitespace runs → one space, lower-case.
//! 3. Pre-tokenisation: CLIP's split pattern, then GPT-2's byte-level split, then every byte
//!    becomes a printable character (OpenAI's `bytes_to_unicode`).
//! 4. BPE per word (module `bpe`), the last symbol carrying `</w>`, with the merge order of
//!    `tokenizers`.
//! 5. `[bos] ids [eos]`, truncated to `max_len` keeping eos last, padded with the pad id.
//!
//! One BPE implementation serves both a diffusers `tokenizer/` folder and the bundled OpenAI
//! vocabulary, so a fix to one is a fix to both.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

mod added;
mod bpe;
mod config;

use added::{find_added, AddedVocab};
use bpe::{bytes_to_unicode, Bpe, FastMap};
use config::{parse_merges, parse_vocab, read, read_special_config, AddedToken, SpecialConfig};

/// CLIP's context length; every SD text encoder has 77 positions.
pub const DEFAULT_MAX_LEN: usize = 77;
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// OpenAI's merge rules, vendored (assets/clip/NOTICE): instant-clip-tokenizer ships the same
/// data but has no API that returns it, and downloading at run time is not an option.
const OPENAI_MERGES: &str = include_str!("../../assets/clip/openai_clip_merges.txt");
const OPENAI_MERGES_NAME: &str = "assets/clip/openai_clip_merges.txt (bundled)";

/// CLIP's word split, as transformers 5 gives it to `tokenizers` (applied after lower-casing,
/// so it needs no case-insensitive flag).
static CLIP_SPLIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    )
    // A constant pattern; `regexes_compile` in the unit tests proves it valid.
    .expect("CLIP split pattern is valid")
});

/// GPT-2's split, which the `ByteLevel` pre-tokenizer applies to every CLIP piece. It only
/// changes pieces like `<|endoftext|>` (→ `<|`, `endoftext`, `|>`), which reach it when the
/// special token was not cut out first (e.g. upper-case in the prompt). The original ends in
/// `\s+(?!\S)|\s+`; pieces never hold whitespace, so the look-ahead (unsupported by `regex`)
/// can go.
static GPT2_SPLIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("GPT-2 split pattern is valid")
});

static WHITESPACE_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s+").expect("whitespace pattern is valid"));

/// What can go wrong loading a tokenizer; every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl TokenizerError {
    fn invalid(path: &Path, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// The ids for one prompt, ready for the text encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// `[bos] tokens [eos] pad…`, exactly `max_len` long.
    pub ids: Vec<u32>,
    /// The prompt had more than `max_len - 2` tokens and lost its tail (the UI warns on it).
    pub truncated: bool,
    /// Tokens the prompt produced before truncation, without bos/eos.
    pub n_tokens: usize,
}

/// CLIP's tokenizer: text → the ids SD's text encoder expects.
pub struct ClipTokenizer {
    bpe: Bpe,
    added: AddedVocab,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_len: usize,
}

impl ClipTokenizer {
    /// Loads a diffusers `tokenizer/` folder: vocab.json + merges.txt, plus the special tokens
    /// and `model_max_length` of tokenizer_config.json / special_tokens_map.json when present
    /// (defaults: OpenAI's, pad = `<|endoftext|>`, 77). A tokenizer.json, if any, is ignored.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let vocab_path = dir.join("vocab.json");
        let merges_path = dir.join("merges.txt");
        let vocab = parse_vocab(&read(&vocab_path)?, &vocab_path)?;
        let merges_text = read(&merges_path)?;
        let merges = parse_merges(&merges_text, &merges_path)?;
        let config = read_special_config(dir)?;
        Self::build(vocab, &merges, &config, &vocab_path, &merges_path)
    }

    /// OpenAI's CLIP vocabulary, bundled with Easel (no download), for checkpoints that come
    /// without tokenizer files. Special tokens are flagged as in SD checkpoints'
    /// tokenizer_config.json, so ids equal those of their `tokenizer/` folders. `pad_token`:
    /// `"<|endoftext|>"` for SD 1.x, `"!"` for SD 2.x and SDXL's second encoder.
    pub fn bundled_openai(pad_token: &str) -> Result<Self, TokenizerError> {
        let path = Path::new(OPENAI_MERGES_NAME);
        let merges = parse_merges(OPENAI_MERGES, path)?;
        // OpenAI's simple_tokenizer.py: 256 byte characters, the same with `</w>`, one token
        // per merge, then the two special tokens. A repeated string keeps its last id.
        // The byte characters come in OpenAI's order: printable bytes first, then the rest.
        let table = bytes_to_unicode();
        let (printable, other): (Vec<char>, Vec<char>) =
            table.iter().partition(|&&c| u32::from(c) < 256);
        let byte_chars: Vec<char> = printable.into_iter().chain(other).collect();
        let words = byte_chars
            .iter()
            .map(|c| c.to_string())
            .chain(byte_chars.iter().map(|c| format!("{c}</w>")))
            .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
            .chain([BOS.to_owned(), EOS.to_owned()]);
        let mut vocab =
            FastMap::with_capacity_and_hasher(512 + merges.len() + 2, Default::default());
        for (id, word) in words.enumerate() {
            let id = u32::try_from(id)
                .map_err(|_| TokenizerError::invalid(path, "vocabulary too large"))?;
            vocab.insert(word, id);
        }
        let config = SpecialConfig::openai(pad_token, true);
        Self::build(vocab, &merges, &config, path, path)
    }

    fn build(
        vocab: FastMap<String, u32>,
        merges: &[(&str, &str)],
        config: &SpecialConfig,
        vocab_path: &Path,
        merges_path: &Path,
    ) -> Result<Self, TokenizerError> {
        let token_of = |name: &str| {
            config.attr(name).cloned().ok_or_else(|| {
                TokenizerError::invalid(vocab_path, format!("no {name} is configured"))
            })
        };
        let (bos, eos, unk, pad) = (
            token_of("bos_token")?,
            token_of("eos_token")?,
            token_of("unk_token")?,
            token_of("pad_token")?,
        );
        let bpe = Bpe::new(vocab, merges, &unk.content, vocab_path, merges_path)?;

        // transformers first adds the `added_tokens_decoder` entries, then (in `_post_init`)
        // every special-token attribute in order; later registrations override flags.
        let registrations: Vec<AddedToken> = config
            .decoder
            .iter()
            .cloned()
            .chain(config.attrs.iter().flatten().cloned())
            .collect();
        let added = AddedVocab::new(&registrations, &bpe.vocab);
        let id_of = |token: &AddedToken| {
            added.ids.get(&token.content).copied().ok_or_else(|| {
                TokenizerError::invalid(vocab_path, format!("{:?} has no id", token.content))
            })
        };
        Ok(Self {
            bos_id: id_of(&bos)?,
            eos_id: id_of(&eos)?,
            pad_id: id_of(&pad)?,
            max_len: config.max_len,
            added,
            bpe,
        })
    }

    /// `[bos] tokens [eos]`, cut to [`max_len`](Self::max_len) with eos kept last, padded
    /// with the pad id: what diffusers gets from `padding="max_length", truncation=True`.
    pub fn encode(&self, text: &str) -> Encoding {
        let mut tokens = self.tokenize(text);
        let n_tokens = tokens.len();
        let room = self.max_len - 2;
        tokens.truncate(room);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos_id);
        ids.extend_from_slice(&tokens);
        ids.push(self.eos_id);
        ids.resize(self.max_len, self.pad_id);
        Encoding {
            ids,
            truncated: n_tokens > room,
            n_tokens,
        }
    }

    /// The prompt's token ids without bos/eos, untruncated (for counting tokens, or splitting
    /// a long prompt into 75-token chunks).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for (piece, id) in find_added(text, &self.added.raw) {
            if let Some(id) = id {
                out.push(id);
                continue;
            }
            let normalized = normalize(piece);
            for (piece, id) in find_added(&normalized, &self.added.normalized) {
                match id {
                    Some(id) => out.push(id),
                    None => self.encode_normalized(piece, &mut out),
                }
            }
        }
        out
    }

    /// Pre-tokenises a normalised piece and BPE-encodes each word.
    fn encode_normalized(&self, text: &str, out: &mut Vec<u32>) {
        for clip_piece in CLIP_SPLIT.find_iter(text) {
            for word in split_isolated(&GPT2_SPLIT, clip_piece.as_str()) {
                self.bpe.encode_word(word, out);
            }
        }
    }

    /// Length of every [`Encoding::ids`] (`model_max_length`, 77 for CLIP).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Fills [`Encoding::ids`] after eos: 49407 (`<|endoftext|>`) for SD 1.x, 0 (`!`) for
    /// SD 2.x; the text encoder's output at these positions differs between the two.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Ends every sequence; SDXL's pooled embedding is taken at its (first) position.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Starts every sequence.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
}

impl std::fmt::Debug for ClipTokenizer {
    /// A summary: the tables run to ~100k entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_len", &self.bpe.vocab.len())
            .field("merges_len", &self.bpe.merges.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_len", &self.max_len)
            .finish()
    }
}

/// `tokenizers`' normaliser for CLIP: NFC, whitespace runs → " ", per-character lower-case
/// (`char::to_lowercase`, so a final `Σ` becomes `σ`, not `ς`, as in `tokenizers`).
fn normalize(text: &str) -> String {
    let text: String = unicode_normalization::UnicodeNormalization::nfc(text).collect();
    let text = WHITESPACE_RUN.replace_all(&text, " ");
    text.chars().flat_map(char::to_lowercase).collect()
}

/// Matches and the text between them, in order (`SplitDelimiterBehavior::Isolated`).
fn split_isolated<'a>(re: &Regex, text: &'a str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut last = 0;
    for m in re.find_iter(text) {
        if last < m.start() {
            parts.push(&text[last..m.start()]);
        }
        parts.push(m.as_str());
        last = m.end();
    }
    if last < text.len() {
        parts.push(&text[last..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_compile() {
        for re in [&CLIP_SPLIT, &GPT2_SPLIT, &WHITESPACE_RUN] {
            LazyLock::force(re);
        }
    }

    #[test]
    fn normalize_lowercases_per_char_and_collapses_whitespace() {
        assert_eq!(normalize("A \t\n B"), "a b");
        assert_eq!(normalize("ΟΔΟΣ"), "οδοσ");
    }

    #[test]
    fn bundled_known_ids() {
        let tok = ClipTokenizer::bundled_openai(EOS).expect("bundled tokenizer");
        // From instant-clip-tokenizer's documentation (OpenAI's reference tokenizer).
        assert_eq!(tok.tokenize("Hi there"), [1883, 997]);
        assert_eq!(tok.tokenize("How are you?"), [829, 631, 592, 286]);
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.pad_id()),
            (49406, 49407, 49407)
        );
        let bang = ClipTokenizer::bundled_openai("!").expect("bundled tokenizer");
        assert_eq!(bang.pad_id(), 0);
        // `!` is a special token once it is the pad token, exactly as in transformers.
        assert_eq!(bang.tokenize("hello!"), [3306, 0]);
        assert_eq!(tok.tokenize("hello!"), [3306, 256]);
    }

    #[test]
    fn matches_instant_clip_tokenizer_on_plain_text() {
        let ours = ClipTokenizer::bundled_openai(EOS).expect("bundled tokenizer");
        let theirs = instant_clip_tokenizer::Tokenizer::new();
        for text in [
            "a photograph of an astronaut riding a horse, 4k, trending on artstation",
            "Ünïcödé wörds — and “quotes”, 1234567890 it's we're they'll I'd",
            "pneumonoultramicroscopicsilicovolcanoconiosis 🙂🙂 emoji!!!",
        ] {
            let mut expected = Vec::new();
            theirs.encode(text, &mut expected);
            let expected: Vec<u32> = expected.iter().map(|t| u32::from(t.to_u16())).collect();
            assert_eq!(ours.tokenize(text), expected, "{text}");
        }
    }
}
