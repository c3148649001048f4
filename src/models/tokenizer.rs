//! CLIP's byte-level BPE tokenizer.
//!
//! Stable Diffusion's text encoders were trained on ids from OpenAI's CLIP tokenizer, and
//! diffusers feeds them ids from transformers' `CLIPTokenizer`. In transformers 5 that class
//! is backed by the `tokenizers` library, whose pipeline differs from OpenAI's Python code in
//! small ways that change ids (special tokens found in the text, `!` as SD 2's pad token,
//! per-character lower-casing). We reproduce *that* pipeline step by step, because ids that
//! differ from diffusers' give different images for the same prompt:
//!
//! 1. Special tokens (bos/eos/unk/pad) are cut out of the raw text first ("added tokens");
//!    those marked `normalized` are looked for again after normalisation.
//! 2. Normalisation: NFC (module `nfc`), whitespace runs → one space, lower-case.
//! 3. Pre-tokenisation: CLIP's split pattern, then GPT-2's byte-level split, then every byte
//!    becomes a printable character (OpenAI's `bytes_to_unicode`).
//! 4. BPE per word, the last symbol carrying `</w>`, with the merge order of `tokenizers`.
//! 5. `[bos] ids [eos]`, truncated to `max_len` keeping eos last, padded with the pad id.
//!
//! One BPE implementation serves both a diffusers `tokenizer/` folder and the bundled OpenAI
//! vocabulary, so a fix to one is a fix to both.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

mod nfc;
mod nfc_tables;

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
static WORD_AT_START: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\w").expect("word-start pattern is valid"));
static WORD_AT_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\w$").expect("word-end pattern is valid"));

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

/// rustc's FxHash. Loading hashes ~200k strings and pairs and encoding hashes every symbol
/// pair; the keys come from the model's own files, so SipHash's flooding resistance buys
/// nothing and would take about half the load time.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

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

/// A token the tokenizer cuts out of the text before BPE (transformers' `AddedToken`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct AddedToken {
    content: String,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    /// Matched against the normalised (lower-cased) text instead of the raw text.
    normalized: bool,
}

impl AddedToken {
    /// A special token given as a plain string: transformers adds it with `normalized=False`.
    fn plain(content: &str) -> Self {
        Self {
            content: content.to_owned(),
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
        }
    }

    /// A token from a config value: a string, or an `AddedToken` dict whose `normalized`
    /// defaults differ by file (`default_normalized`). `None` for null or a missing content.
    fn from_json(value: &Value, default_normalized: bool) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self::plain(s)),
            Value::Object(map) => {
                let content = map.get("content")?.as_str()?;
                let flag = |key: &str, default: bool| {
                    map.get(key).and_then(Value::as_bool).unwrap_or(default)
                };
                // `AddedToken(**dict)`: normalized defaults to `not special`.
                let default_normalized = match map.get("special").and_then(Value::as_bool) {
                    Some(special) => !special,
                    None => default_normalized,
                };
                Some(Self {
                    content: content.to_owned(),
                    single_word: flag("single_word", false),
                    lstrip: flag("lstrip", false),
                    rstrip: flag("rstrip", false),
                    normalized: flag("normalized", default_normalized),
                })
            }
            _ => None,
        }
    }
}

/// The special-token attributes transformers registers, in its order: when two share one
/// string (eos, unk and pad are all `<|endoftext|>` in SD 1.x), the last one's flags win.
const SPECIAL_ATTRS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Special tokens and length as read from the config files.
struct SpecialConfig {
    /// One entry per [`SPECIAL_ATTRS`] slot.
    attrs: [Option<AddedToken>; 7],
    /// `added_tokens_decoder` of tokenizer_config.json, in id order.
    decoder: Vec<AddedToken>,
    max_len: usize,
}

impl SpecialConfig {
    /// OpenAI's bos/eos/unk with `pad`. `bos_normalized`: false for CLIPTokenizer's own
    /// defaults; true as SD 1.x and SDXL checkpoints' tokenizer files end up flagging it (so
    /// an upper-case `<|STARTOFTEXT|>` in a prompt still becomes the token there, while an
    /// upper-case `<|ENDOFTEXT|>` does not).
    fn openai(pad: &str, bos_normalized: bool) -> Self {
        let mut attrs: [Option<AddedToken>; 7] = Default::default();
        attrs[0] = Some(AddedToken {
            normalized: bos_normalized,
            ..AddedToken::plain(BOS)
        });
        attrs[1] = Some(AddedToken::plain(EOS));
        attrs[2] = Some(AddedToken::plain(EOS));
        attrs[4] = Some(AddedToken::plain(pad));
        Self {
            attrs,
            decoder: Vec::new(),
            max_len: DEFAULT_MAX_LEN,
        }
    }

    fn attr(&self, name: &str) -> Option<&AddedToken> {
        let slot = SPECIAL_ATTRS.iter().position(|a| *a == name)?;
        self.attrs[slot].as_ref()
    }
}

/// The tokens cut out of the text, with the flags and ids of their final registration.
struct AddedVocab {
    /// (pattern to find, id, flags): matched in the raw text.
    raw: Vec<(String, u32, AddedToken)>,
    /// Matched in each normalised piece; the pattern is the normalised content.
    normalized: Vec<(String, u32, AddedToken)>,
    ids: HashMap<String, u32>,
}

impl AddedVocab {
    /// Registers `tokens` in order the way `tokenizers`' `AddedVocabulary::add_tokens` does: an
    /// id comes from the first registration (vocab id, else the next free id), flags from the
    /// last.
    fn new(tokens: &[AddedToken], vocab: &FastMap<String, u32>) -> Self {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut by_id: BTreeMap<u32, AddedToken> = BTreeMap::new();
        for token in tokens.iter().filter(|t| !t.content.is_empty()) {
            let id = match ids
                .get(&token.content)
                .or_else(|| vocab.get(&token.content))
            {
                Some(&id) => id,
                None => {
                    let floor = u32::try_from(vocab.len()).unwrap_or(u32::MAX);
                    by_id
                        .keys()
                        .next_back()
                        .map_or(floor, |&max| floor.max(max.saturating_add(1)))
                }
            };
            ids.insert(token.content.clone(), id);
            by_id.insert(id, token.clone());
        }
        let (normalized, raw): (Vec<_>, Vec<_>) = by_id
            .into_iter()
            .map(|(id, token)| {
                let pattern = if token.normalized {
                    normalize(&token.content)
                } else {
                    token.content.clone()
                };
                (pattern, id, token)
            })
            .partition(|(_, _, token)| token.normalized);
        Self {
            raw,
            normalized,
            ids,
        }
    }
}

/// A byte-level BPE model with `</w>` end-of-word suffixes (`tokenizers`' `BPE` model with
/// CLIP's settings: no dropout, no unk fusing, no continuing-subword prefix).
struct Bpe {
    vocab: FastMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: FastMap<(u32, u32), (u32, u32)>,
    unk_id: u32,
    byte_chars: [char; 256],
}

impl Bpe {
    fn new(
        vocab: FastMap<String, u32>,
        merges: &[(&str, &str)],
        unk: &str,
        vocab_path: &Path,
        merges_path: &Path,
    ) -> Result<Self, TokenizerError> {
        let unk_id = *vocab.get(unk).ok_or_else(|| {
            TokenizerError::invalid(vocab_path, format!("the unk token {unk:?} is not in it"))
        })?;
        let mut merge_map = FastMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut joined = String::new();
        for (rank, &(a, b)) in merges.iter().enumerate() {
            let id_of = |token: &str| {
                vocab.get(token).copied().ok_or_else(|| {
                    TokenizerError::invalid(
                        merges_path,
                        format!(
                            "merge {} ({a} {b}) needs {token:?}, which is not in {}",
                            rank + 1,
                            vocab_path.display()
                        ),
                    )
                })
            };
            let rank = u32::try_from(rank)
                .map_err(|_| TokenizerError::invalid(merges_path, "too many merges"))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let merged = id_of(&joined)?;
            // Like `tokenizers`, a repeated pair keeps its last rank.
            merge_map.insert((id_of(a)?, id_of(b)?), (rank, merged));
        }
        Ok(Self {
            vocab,
            merges: merge_map,
            unk_id,
            byte_chars: bytes_to_unicode(),
        })
    }

    /// BPE of one pre-tokenised piece (raw bytes), appending its ids to `out`.
    fn encode_word(&self, piece: &str, out: &mut Vec<u32>) {
        let n = piece.len();
        // Symbols as a linked list over the initial characters, as `tokenizers`' `Word` does.
        let mut ids = Vec::with_capacity(n);
        let mut buf = String::new();
        for (i, &byte) in piece.as_bytes().iter().enumerate() {
            buf.clear();
            buf.push(self.byte_chars[usize::from(byte)]);
            if i + 1 == n {
                buf.push_str("</w>");
            }
            // fuse_unk=false: every unknown character is its own unk.
            ids.push(self.vocab.get(&buf).copied().unwrap_or(self.unk_id));
        }
        let mut alive = vec![true; n];
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();

        // Lowest rank first, leftmost among equals; stale entries are skipped by checking that
        // the pair at `pos` still merges into the same id, exactly like `Word::merge_all`.
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = ids
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| {
                let &(rank, merged) = self.merges.get(&(w[0], w[1]))?;
                Some(Reverse((rank, pos, merged)))
            })
            .collect();
        while let Some(Reverse((_, pos, merged))) = queue.pop() {
            let Some(right) = next[pos].filter(|_| alive[pos]) else {
                continue;
            };
            if self.merges.get(&(ids[pos], ids[right])).map(|m| m.1) != Some(merged) {
                continue;
            }
            ids[pos] = merged;
            alive[right] = false;
            next[pos] = next[right];
            if let Some(after) = next[right] {
                prev[after] = Some(pos);
            }
            if let Some(before) = prev[pos] {
                if let Some(&(rank, id)) = self.merges.get(&(ids[before], ids[pos])) {
                    queue.push(Reverse((rank, before, id)));
                }
            }
            if let Some(after) = next[pos] {
                if let Some(&(rank, id)) = self.merges.get(&(ids[pos], ids[after])) {
                    queue.push(Reverse((rank, pos, id)));
                }
            }
        }
        out.extend(
            ids.iter()
                .zip(&alive)
                .filter(|(_, &alive)| alive)
                .map(|(&id, _)| id),
        );
    }
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
    let text = nfc::nfc(text);
    let text = WHITESPACE_RUN.replace_all(&text, " ");
    text.chars().flat_map(char::to_lowercase).collect()
}

/// Splits `text` into pieces with the added token each is, if any: leftmost-longest matches
/// of the patterns, with `single_word`, `lstrip` and `rstrip` handled as `tokenizers`'
/// `AddedVocabulary::find_matches` does.
fn find_added<'a>(
    text: &'a str,
    patterns: &[(String, u32, AddedToken)],
) -> Vec<(&'a str, Option<u32>)> {
    let mut pieces = Vec::new();
    let mut search_from = 0;
    let mut piece_start = 0;
    while search_from < text.len() {
        // Leftmost start first, then the longest pattern there.
        let best = patterns
            .iter()
            .filter_map(|(pattern, id, token)| {
                let start = search_from + text[search_from..].find(pattern.as_str())?;
                Some((start, pattern.len(), *id, token))
            })
            .min_by_key(|&(start, len, _, _)| (start, Reverse(len)));
        let Some((start, len, id, token)) = best else {
            break;
        };
        let end = start + len;
        search_from = end;
        if token.single_word
            && (WORD_AT_END.is_match(&text[..start]) || WORD_AT_START.is_match(&text[end..]))
        {
            continue;
        }
        let start = if token.lstrip {
            let trimmed = text[..start].trim_end_matches(char::is_whitespace).len();
            trimmed.max(piece_start)
        } else {
            start
        };
        let end = if token.rstrip {
            text.len() - text[end..].trim_start_matches(char::is_whitespace).len()
        } else {
            end
        };
        if piece_start < start {
            pieces.push((&text[piece_start..start], None));
        }
        pieces.push((&text[start..end], Some(id)));
        piece_start = end;
    }
    if piece_start < text.len() {
        pieces.push((&text[piece_start..], None));
    }
    pieces
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

/// OpenAI's `bytes_to_unicode`: printable bytes stand for themselves, the other 68 map to
/// U+0100.. in byte order, so every byte has a visible, whitespace-free character.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next_extra = 256u32;
    for (byte, slot) in (0u8..=255).zip(table.iter_mut()) {
        *slot = if printable(byte) {
            char::from(byte)
        } else {
            let c = char::from_u32(next_extra).unwrap_or(char::REPLACEMENT_CHARACTER);
            next_extra += 1;
            c
        };
    }
    table
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json(text: &str, path: &Path) -> Result<Value, TokenizerError> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// vocab.json: an object of token → id.
fn parse_vocab(text: &str, path: &Path) -> Result<FastMap<String, u32>, TokenizerError> {
    let Value::Object(map) = parse_json(text, path)? else {
        return Err(TokenizerError::invalid(
            path,
            "expected an object of token → id",
        ));
    };
    map.into_iter()
        .map(|(token, id)| {
            let id = id.as_u64().and_then(|id| u32::try_from(id).ok());
            let id = id.ok_or_else(|| {
                TokenizerError::invalid(path, format!("the id of {token:?} is not a u32"))
            })?;
            Ok((token, id))
        })
        .collect()
}

/// merges.txt: `#version` lines, then one `left right` pair per line, best first.
fn parse_merges<'a>(text: &'a str, path: &Path) -> Result<Vec<(&'a str, &'a str)>, TokenizerError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with("#version"))
        .map(|(i, line)| match line.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a, b)),
            _ => Err(TokenizerError::invalid(
                path,
                format!(
                    "line {} is not two tokens separated by a space: {line:?}",
                    i + 1
                ),
            )),
        })
        .collect()
}

/// Reads tokenizer_config.json and special_tokens_map.json (both optional) the way
/// transformers 5's `from_pretrained` combines them.
fn read_special_config(dir: &Path) -> Result<SpecialConfig, TokenizerError> {
    let mut config = SpecialConfig::openai(EOS, false);
    let config_path = dir.join("tokenizer_config.json");
    let tokenizer_config = read_optional_json(&config_path)?;
    let mut has_decoder = false;
    if let Some(json) = &tokenizer_config {
        for (slot, attr) in SPECIAL_ATTRS.iter().enumerate() {
            if let Some(token) = json.get(attr).and_then(|v| AddedToken::from_json(v, true)) {
                config.attrs[slot] = Some(token);
            }
        }
        if let Some(Value::Object(decoder)) = json.get("added_tokens_decoder") {
            has_decoder = true;
            let mut entries = Vec::new();
            for (id, value) in decoder {
                let id: u64 = id.parse().map_err(|_| {
                    TokenizerError::invalid(&config_path, format!("added token id {id:?}"))
                })?;
                let token = AddedToken::from_json(value, true).ok_or_else(|| {
                    TokenizerError::invalid(
                        &config_path,
                        format!("added token {id} has no content"),
                    )
                })?;
                entries.push((id, token));
            }
            entries.sort_by_key(|(id, _)| *id);
            config.decoder = entries.into_iter().map(|(_, t)| t).collect();
        }
        config.max_len = match json.get("model_max_length") {
            None | Some(Value::Null) => DEFAULT_MAX_LEN,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (3..=1 << 20).contains(n))
                .ok_or_else(|| {
                    TokenizerError::invalid(
                        &config_path,
                        format!("model_max_length {v} is not a usable length (3..=1048576)"),
                    )
                })?,
        };
    }
    // transformers reads special_tokens_map.json only when tokenizer_config.json has no
    // `added_tokens_decoder`; its entries then override the config's.
    if !has_decoder {
        let map_path = dir.join("special_tokens_map.json");
        if let Some(json) = read_optional_json(&map_path)? {
            for (slot, attr) in SPECIAL_ATTRS.iter().enumerate() {
                // Dicts here become `AddedToken(**value, special=True)`: normalized=False
                // unless they say otherwise.
                if let Some(token) = json.get(attr).and_then(|v| AddedToken::from_json(v, false)) {
                    config.attrs[slot] = Some(token);
                }
            }
        }
    }
    // A special token named by string takes the flags of its `added_tokens_decoder` entry.
    for token in config.attrs.iter_mut().flatten() {
        if let Some(entry) = config.decoder.iter().find(|d| d.content == token.content) {
            *token = entry.clone();
        }
    }
    Ok(config)
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_json(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_compile() {
        for re in [
            &CLIP_SPLIT,
            &GPT2_SPLIT,
            &WHITESPACE_RUN,
            &WORD_AT_START,
            &WORD_AT_END,
        ] {
            LazyLock::force(re);
        }
    }

    #[test]
    fn bytes_to_unicode_matches_openai() {
        let table = bytes_to_unicode();
        assert_eq!(table[usize::from(b'a')], 'a');
        assert_eq!(table[0], '\u{100}');
        assert_eq!(table[usize::from(b' ')], '\u{120}');
        assert_eq!(table[0xAD], '\u{143}');
        let mut sorted = table.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
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

    #[test]
    fn find_added_strips_and_checks_words() {
        let token = |content: &str, single_word, lstrip, rstrip| {
            (
                content.to_owned(),
                7,
                AddedToken {
                    content: content.to_owned(),
                    single_word,
                    lstrip,
                    rstrip,
                    normalized: false,
                },
            )
        };
        let pieces = find_added("a  <m>  b", &[token("<m>", false, true, true)]);
        assert_eq!(pieces, [("a", None), ("  <m>  ", Some(7)), ("b", None)]);
        let pieces = find_added("x<m> <m>", &[token("<m>", true, false, false)]);
        assert_eq!(pieces, [("x<m> ", None), ("<m>", Some(7))]);
    }
}
