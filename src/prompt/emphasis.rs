//! AUTOMATIC1111's emphasis syntax: which parts of a prompt weigh more or less.
//!
//! `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)`
//! sets the factor, and the brackets nest (`((text))` = 1.21). `\(`, `\)`, `\[`, `\]` and `\\`
//! are the literal characters. `BREAK` (a word of its own, in capitals) starts a new 75-token
//! chunk. Prompts copied from Civitai are written in this language, so Easel reads it exactly
//! as A1111's `parse_prompt_attention` does, quirks included: brackets left open apply to the
//! end of the prompt, a closing bracket with no opening one is plain text, and a `BREAK` inside
//! brackets is read as the word "BREAK" (A1111 multiplies its marker weight too).

use std::sync::LazyLock;

use regex::Regex;

/// A1111's factor for `(…)`; `[…]` divides by it.
const BRACKET_FACTOR: f64 = 1.1;

/// A run of prompt text and the weight its tokens get.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted {
    pub text: String,
    pub weight: f64,
}

impl Weighted {
    /// A1111 marks a `BREAK` as the text "BREAK" with weight −1.
    const BREAK_WEIGHT: f64 = -1.0;

    fn new(text: &str, weight: f64) -> Self {
        Self {
            text: text.to_string(),
            weight,
        }
    }

    /// Whether this run is a chunk break (and not the word "BREAK" inside brackets).
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == Self::BREAK_WEIGHT
    }
}

static BREAK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)\s*\bBREAK\b\s*").expect("BREAK pattern is valid"));

/// The prompt as runs of text with their weights, neighbours of equal weight merged. Never
/// fails: any text is a prompt (unbalanced brackets are read as A1111 reads them).
pub fn parse(prompt: &str) -> Vec<Weighted> {
    let mut out: Vec<Weighted> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |out: &mut Vec<Weighted>, from: usize, factor: f64| {
        for run in &mut out[from..] {
            run.weight *= factor;
        }
    };
    let mut rest = prompt;
    while let Some(c) = rest.chars().next() {
        let (token, len) = next_token(rest, c);
        rest = &rest[len..];
        match token {
            Token::Literal(text) => out.push(Weighted::new(text, 1.0)),
            Token::Open('(') => round.push(out.len()),
            Token::Open(_) => square.push(out.len()),
            Token::Weight(w, _) if !round.is_empty() => {
                let from = round.pop().unwrap_or_default();
                multiply(&mut out, from, w);
            }
            Token::Close(')') if !round.is_empty() => {
                let from = round.pop().unwrap_or_default();
                multiply(&mut out, from, BRACKET_FACTOR);
            }
            Token::Close(']') if !square.is_empty() => {
                let from = square.pop().unwrap_or_default();
                multiply(&mut out, from, 1.0 / BRACKET_FACTOR);
            }
            Token::Weight(_, text) | Token::Text(text) => push_text(&mut out, text),
            Token::Close(c) => push_text(&mut out, c.encode_utf8(&mut [0; 4])),
        }
    }
    // Brackets left open reach to the end.
    for from in round {
        multiply(&mut out, from, BRACKET_FACTOR);
    }
    for from in square {
        multiply(&mut out, from, 1.0 / BRACKET_FACTOR);
    }
    if out.is_empty() {
        out.push(Weighted::new("", 1.0));
    }
    let mut merged: Vec<Weighted> = Vec::with_capacity(out.len());
    for run in out {
        match merged.last_mut() {
            Some(last) if last.weight == run.weight => last.text.push_str(&run.text),
            _ => merged.push(run),
        }
    }
    merged
}

/// Plain text, split at each `BREAK` (whose marker goes between the parts).
fn push_text(out: &mut Vec<Weighted>, text: &str) {
    for (i, part) in BREAK.split(text).enumerate() {
        if i > 0 {
            out.push(Weighted::new("BREAK", Weighted::BREAK_WEIGHT));
        }
        out.push(Weighted::new(part, 1.0));
    }
}

enum Token<'a> {
    /// An escaped character (or nothing, for a lone backslash).
    Literal(&'a str),
    Open(char),
    Close(char),
    /// `:1.3)`: the factor and the text as written.
    Weight(f64, &'a str),
    Text(&'a str),
}

/// The token at the start of `s` (whose first character is `c`) and its length in bytes,
/// tried in the order of A1111's pattern.
fn next_token(s: &str, c: char) -> (Token<'_>, usize) {
    const SPECIAL: [char; 6] = ['\\', '(', ')', '[', ']', ':'];
    match c {
        '\\' => match s[1..].chars().next() {
            Some(e @ ('(' | ')' | '[' | ']' | '\\')) => {
                (Token::Literal(&s[1..1 + e.len_utf8()]), 2)
            }
            _ => (Token::Literal(""), 1),
        },
        '(' | '[' => (Token::Open(c), 1),
        ')' | ']' => (Token::Close(c), 1),
        ':' => {
            let digits = s[1..]
                .find(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '+' || ch == '-'))
                .map_or(s.len(), |n| n + 1);
            let number = &s[1..digits];
            if weight_pattern(number) && s[digits..].starts_with(')') {
                let text = &s[..digits + 1];
                // A1111 would raise on a number like "1.2.3"; Easel reads it as text instead.
                match number.parse::<f64>() {
                    Ok(w) => (Token::Weight(w, text), text.len()),
                    Err(_) => (Token::Text(text), text.len()),
                }
            } else {
                (Token::Text(":"), 1)
            }
        }
        _ => {
            let len = s.find(SPECIAL).unwrap_or(s.len());
            (Token::Text(&s[..len]), len)
        }
    }
}

/// `[+-]?[.\d]+`, the whole string.
fn weight_pattern(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    !body.is_empty() && body.chars().all(|c| c.is_ascii_digit() || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(prompt: &str) -> Vec<(String, f64)> {
        parse(prompt)
            .into_iter()
            .map(|r| (r.text, r.weight))
            .collect()
    }

    fn want(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|&(t, w)| (t.to_string(), w)).collect()
    }

    /// A1111's own doctests for `parse_prompt_attention`, to the last bit.
    #[test]
    fn a1111_doctest_cases() {
        assert_eq!(runs("normal text"), want(&[("normal text", 1.0)]));
        assert_eq!(
            runs("an (important) word"),
            want(&[("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        );
        assert_eq!(runs("(unbalanced"), want(&[("unbalanced", 1.1)]));
        assert_eq!(runs(r"\(literal\]"), want(&[("(literal]", 1.0)]));
        assert_eq!(
            runs("(unnecessary)(parens)"),
            want(&[("unnecessaryparens", 1.1)])
        );
        assert_eq!(
            runs("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            want(&[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ])
        );
    }

    #[test]
    fn breaks_escapes_and_stray_closers() {
        assert_eq!(
            runs("a BREAK b"),
            want(&[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)])
        );
        // Inside brackets the marker is weighted too, so it is no longer a break.
        let inside = parse("(a BREAK b)");
        assert!(inside.iter().all(|r| !r.is_break()), "{inside:?}");
        // "BREAKfast" is a word, not a break.
        assert_eq!(runs("BREAKfast"), want(&[("BREAKfast", 1.0)]));
        assert_eq!(runs(r"a\\b"), want(&[(r"a\b", 1.0)]));
        assert_eq!(runs(r"\x"), want(&[("x", 1.0)]));
        assert_eq!(runs("a) b]"), want(&[("a) b]", 1.0)]));
        assert_eq!(runs("time: 3:00"), want(&[("time: 3:00", 1.0)]));
        assert_eq!(runs("a:1.5) b"), want(&[("a:1.5) b", 1.0)]));
        assert_eq!(runs("(a:1.2.3)"), want(&[("a:1.2.3)", 1.1)]));
        assert_eq!(runs(""), want(&[("", 1.0)]));
        assert_eq!(runs("[[a]]"), want(&[("a", 1.0 / 1.1 / 1.1)]));
        assert_eq!(runs("(a:-1)"), want(&[("a", -1.0)]));
    }
}
