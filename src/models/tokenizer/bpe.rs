//! The byte-level BPE model: `tokenizers`' `BPE` with CLIP's settings, and OpenAI's
//! byte ↔ character table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use super::TokenizerError;

/// rustc's FxHash. Loading hashes ~200k strings and pairs and encoding hashes every symbol
/// pair; the keys come from the model's own files, so SipHash's flooding resistance buys
/// nothing and would take about half the load time.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

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

pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A byte-level BPE model with `</w>` end-of-word suffixes (`tokenizers`' `BPE` model with
/// CLIP's settings: no dropout, no unk fusing, no continuing-subword prefix).
pub(super) struct Bpe {
    pub(super) vocab: FastMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    pub(super) merges: FastMap<(u32, u32), (u32, u32)>,
    unk_id: u32,
    byte_chars: [char; 256],
}

impl Bpe {
    pub(super) fn new(
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
    pub(super) fn encode_word(&self, piece: &str, out: &mut Vec<u32>) {
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

/// OpenAI's `bytes_to_unicode`: printable bytes stand for themselves, the other 68 map to
/// U+0100.. in byte order, so every byte has a visible, whitespace-free character.
pub(super) fn bytes_to_unicode() -> [char; 256] {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
