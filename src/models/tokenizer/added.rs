//! Added tokens: the special tokens (bos/eos/unk/pad) that `tokenizers` cuts out of a
//! prompt before BPE, with transformers' rules for which flags and ids they end up with.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use regex::Regex;

use super::bpe::FastMap;
use super::config::AddedToken;
use super::normalize;

/// For `single_word` tokens, which must not touch a word character on either side.
static WORD_AT_START: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\w").expect("word-start pattern is valid"));
static WORD_AT_END: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\w$").expect("word-end pattern is valid"));

/// The tokens cut out of the text, with the flags and ids of their final registration.
pub(super) struct AddedVocab {
    /// (pattern to find, id, flags): matched in the raw text.
    pub(super) raw: Vec<(String, u32, AddedToken)>,
    /// Matched in each normalised piece; the pattern is the normalised content.
    pub(super) normalized: Vec<(String, u32, AddedToken)>,
    pub(super) ids: HashMap<String, u32>,
}

impl AddedVocab {
    /// Registers `tokens` in order the way `tokenizers`' `AddedVocabulary::add_tokens` does: an
    /// id comes from the first registration (vocab id, else the next free id), flags from the
    /// last.
    pub(super) fn new(tokens: &[AddedToken], vocab: &FastMap<String, u32>) -> Self {
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

/// Splits `text` into pieces with the added token each is, if any: leftmost-longest matches
/// of the patterns, with `single_word`, `lstrip` and `rstrip` handled as `tokenizers`'
/// `AddedVocabulary::find_matches` does.
pub(super) fn find_added<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_regexes_compile() {
        LazyLock::force(&WORD_AT_START);
        LazyLock::force(&WORD_AT_END);
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
