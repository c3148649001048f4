//! Unicode NFC, the first step of transformers' CLIP normaliser.
//!
//! `e` + U+0301 and `é` must give the same ids, as they do in diffusers. Easel has no
//! normalisation crate among its dependencies, so this is the textbook algorithm (UAX #15:
//! canonical decomposition, canonical ordering, canonical composition) over the tables that
//! `tokenizers` itself uses ([`super::nfc_tables`]), so we agree with it even where Unicode
//! versions differ.

use std::borrow::Cow;

use super::nfc_tables::{COMBINING_CLASS, COMPOSITION, DECOMPOSITION};

// Hangul syllables decompose and compose by arithmetic (Unicode §3.12), not by table.
const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

/// `text` in Normalization Form C; borrowed when nothing can change.
pub(super) fn nfc(text: &str) -> Cow<'_, str> {
    // Below U+0300 nothing has a non-zero combining class, composes onto what precedes it,
    // or changes under NFC, so most prompts take this path.
    if text.chars().all(|c| u32::from(c) < 0x300) {
        return Cow::Borrowed(text);
    }
    let mut chars = Vec::with_capacity(text.len());
    for c in text.chars() {
        decompose(c, &mut chars);
    }
    reorder(&mut chars);
    Cow::Owned(compose(&chars).into_iter().collect())
}

fn combining_class(c: char) -> u8 {
    let cp = u32::from(c);
    let i = COMBINING_CLASS.partition_point(|&(_, last, _)| last < cp);
    match COMBINING_CLASS.get(i) {
        Some(&(first, _, class)) if first <= cp => class,
        _ => 0,
    }
}

/// Appends the full canonical decomposition of `c`.
fn decompose(c: char, out: &mut Vec<char>) {
    let cp = u32::from(c);
    if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
        let s = cp - S_BASE;
        let jamo = [
            L_BASE + s / N_COUNT,
            V_BASE + (s % N_COUNT) / T_COUNT,
            T_BASE + s % T_COUNT,
        ];
        let len = if s.is_multiple_of(T_COUNT) { 2 } else { 3 };
        out.extend(jamo[..len].iter().filter_map(|&j| char::from_u32(j)));
    } else if let Ok(i) = DECOMPOSITION.binary_search_by_key(&cp, |&(k, _)| k) {
        // The tables hold only valid scalar values (checked by `tables_are_well_formed`).
        out.extend(DECOMPOSITION[i].1.iter().filter_map(|&d| char::from_u32(d)));
    } else {
        out.push(c);
    }
}

/// Canonical ordering: each run of non-starters sorted by combining class (stably).
fn reorder(chars: &mut [char]) {
    let mut start = 0;
    while start < chars.len() {
        if combining_class(chars[start]) == 0 {
            start += 1;
            continue;
        }
        let len = chars[start..]
            .iter()
            .position(|&c| combining_class(c) == 0)
            .unwrap_or(chars.len() - start);
        chars[start..start + len].sort_by_key(|&c| combining_class(c));
        start += len;
    }
}

/// Canonical composition: each character joins the last starter unless a character of equal
/// or higher class (or a starter) stands between them.
fn compose(chars: &[char]) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut starter: Option<usize> = None;
    // Class of the last character kept since the starter; None when it is adjacent.
    let mut last_class: Option<u8> = None;
    for &c in chars {
        let class = combining_class(c);
        if let Some(s) = starter {
            let blocked = last_class.is_some_and(|last| last >= class);
            if let Some(composite) = compose_pair(out[s], c).filter(|_| !blocked) {
                out[s] = composite;
                continue;
            }
        }
        if class == 0 {
            starter = Some(out.len());
            last_class = None;
        } else {
            last_class = Some(class);
        }
        out.push(c);
    }
    out
}

fn compose_pair(a: char, b: char) -> Option<char> {
    let (a, b) = (u32::from(a), u32::from(b));
    if (L_BASE..L_BASE + L_COUNT).contains(&a) && (V_BASE..V_BASE + V_COUNT).contains(&b) {
        return char::from_u32(S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a)
        && (a - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b)
    {
        return char::from_u32(a + (b - T_BASE));
    }
    let i = COMPOSITION
        .binary_search_by_key(&(a, b), |&(pair, _)| pair)
        .ok()?;
    char::from_u32(COMPOSITION[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_well_formed() {
        assert!(COMBINING_CLASS.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(DECOMPOSITION.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(COMPOSITION.windows(2).all(|w| w[0].0 < w[1].0));
        let valid = |cp: &u32| char::from_u32(*cp).is_some();
        assert!(DECOMPOSITION
            .iter()
            .all(|(k, v)| valid(k) && !v.is_empty() && v.iter().all(valid)));
        assert!(COMPOSITION
            .iter()
            .all(|((a, b), c)| valid(a) && valid(b) && valid(c)));
    }

    #[test]
    fn composes_decomposes_and_reorders() {
        assert_eq!(nfc("cafe\u{301}"), "caf\u{e9}");
        assert!(matches!(nfc("plain ascii, café"), Cow::Borrowed(_)));
        // Singletons decompose for good: the Ångström sign becomes Å.
        assert_eq!(nfc("\u{212B}"), "\u{C5}");
        // Dot below (220) sorts before acute (230) and composes first.
        assert_eq!(nfc("e\u{301}\u{323}"), "\u{1EB9}\u{301}");
        // Hangul by arithmetic, both ways.
        assert_eq!(nfc("\u{1100}\u{1161}\u{11A8}"), "\u{AC01}");
        assert_eq!(nfc("\u{AC01}"), "\u{AC01}");
        // A blocked mark stays apart: grave after a same-class mark.
        assert_eq!(nfc("a\u{301}\u{300}"), "\u{E1}\u{300}");
    }
}
