//! Queries: text, an image, or a weighted mix of both, as rclip writes them.
//!
//! `red car - night` is "red car" pushed away from "night"; `2:sunset + ./ref.png` weighs the
//! text "sunset" twice as much as the image `ref.png`. Operators are a `+` or `-` standing alone
//! between spaces, so `sci-fi` and `close-up` stay words. A term is an image when it looks like
//! a path (starts with `./`, `../`, `/` or `~/`, or ends in an image extension); a path-like
//! term naming no file is an error rather than being embedded as text, so a typo in a file
//! name does not silently search for the words "./ref.pgn".
//!
//! The query vector is Σ weight × unit(embedding of term), normalised again; as in rclip, each
//! term counts by its weight alone, whatever its own embedding's norm was.

use std::path::{Path, PathBuf};

use super::embedder::{unit, ClipEmbedder};
use super::preprocess::decode_rgb;
use super::GalleryError;

#[derive(Debug, Clone, PartialEq)]
pub enum TermKind {
    Text(String),
    Image(PathBuf),
}

/// One part of a query with its signed weight (negative: "away from").
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub weight: f32,
    pub kind: TermKind,
}

const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// Whether `path` has one of the extensions the gallery indexes.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Parses a query; relative image paths are resolved against `base` (the working directory).
pub fn parse_query(query: &str, base: &Path) -> Result<Vec<Term>, GalleryError> {
    let mut terms = Vec::new();
    let mut sign = 1.0f32;
    let mut words: Vec<&str> = Vec::new();
    let mut flush = |words: &mut Vec<&str>, sign: f32| -> Result<(), GalleryError> {
        if words.is_empty() {
            return Err(GalleryError::query(
                query,
                "an operator (+ or -) needs a term on each side",
            ));
        }
        terms.push(parse_term(query, &words.join(" "), sign, base)?);
        words.clear();
        Ok(())
    };
    let tokens: Vec<&str> = query.split_whitespace().collect();
    if tokens.is_empty() {
        return Err(GalleryError::query(query, "the query is empty"));
    }
    for (i, tok) in tokens.iter().enumerate() {
        match *tok {
            "+" | "-" => {
                // A leading "-" negates the first term; elsewhere an operator closes a term.
                if i > 0 {
                    flush(&mut words, sign)?;
                }
                sign = if *tok == "-" { -1.0 } else { 1.0 };
            }
            word => words.push(word),
        }
    }
    flush(&mut words, sign)?;
    Ok(terms)
}

fn parse_term(query: &str, term: &str, sign: f32, base: &Path) -> Result<Term, GalleryError> {
    let (weight, body) = match term.split_once(':') {
        Some((w, rest)) if !rest.trim().is_empty() && is_number(w) => {
            let w: f32 = w
                .parse()
                .map_err(|_| GalleryError::query(query, format!("bad weight {w:?}")))?;
            (w, rest.trim())
        }
        _ => (1.0, term),
    };
    let path_like = ["./", "../", "/", "~/"].iter().any(|p| body.starts_with(p))
        || has_image_extension(Path::new(body));
    let kind = if path_like {
        let path = match body.strip_prefix("~/") {
            Some(rest) => std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(rest))
                .unwrap_or_else(|| PathBuf::from(body)),
            None => base.join(body),
        };
        if !path.is_file() {
            return Err(GalleryError::query(
                query,
                format!("{body:?} looks like an image path but no such file exists"),
            ));
        }
        TermKind::Image(path)
    } else {
        TermKind::Text(body.to_string())
    };
    Ok(Term {
        weight: sign * weight,
        kind,
    })
}

fn is_number(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().any(|c| c.is_ascii_digit())
}

/// The unit embedding of an image file, through the model's own preprocessing.
pub fn embed_image_file(embedder: &ClipEmbedder, path: &Path) -> Result<Vec<f32>, GalleryError> {
    let bytes = std::fs::read(path).map_err(|e| GalleryError::io(path, e))?;
    let img = decode_rgb(&bytes).map_err(|p| GalleryError::Image {
        path: path.to_path_buf(),
        reason: p.to_string(),
    })?;
    let pixels = embedder.preprocess().pixels(&img);
    embedder
        .embed_pixels(&[pixels])?
        .pop()
        .ok_or_else(|| GalleryError::Image {
            path: path.to_path_buf(),
            reason: "the model returned no embedding".into(),
        })
}

/// The query vector for parsed terms (unit length).
pub fn embed_query(
    embedder: &ClipEmbedder,
    query: &str,
    terms: &[Term],
) -> Result<Vec<f32>, GalleryError> {
    let mut sum = vec![0f32; embedder.dim()];
    for t in terms {
        let v = match &t.kind {
            TermKind::Text(text) => embedder.embed_text(text)?,
            TermKind::Image(path) => embed_image_file(embedder, path)?,
        };
        for (s, x) in sum.iter_mut().zip(&v) {
            *s += t.weight * x;
        }
    }
    let out = unit(sum);
    if out.iter().all(|&x| x == 0.0) {
        return Err(GalleryError::query(
            query,
            "the terms cancel out (nothing left to search for)",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(w: f32, s: &str) -> Term {
        Term {
            weight: w,
            kind: TermKind::Text(s.into()),
        }
    }

    #[test]
    fn operators_weights_and_words() {
        let base = Path::new("/nonexistent-base");
        assert_eq!(
            parse_query("red car - night", base).ok(),
            Some(vec![text(1.0, "red car"), text(-1.0, "night")])
        );
        assert_eq!(
            parse_query("2:sunset + 0.5:sci-fi city", base).ok(),
            Some(vec![text(2.0, "sunset"), text(0.5, "sci-fi city")])
        );
        assert_eq!(
            parse_query("- blurry", base).ok(),
            Some(vec![text(-1.0, "blurry")])
        );
        assert!(parse_query("cat + ", base).is_err());
        assert!(parse_query("   ", base).is_err());
        assert!(parse_query("a + ./missing.png", base).is_err());
    }

    #[test]
    fn image_terms_resolve_against_base() {
        let dir = std::env::temp_dir();
        let name = format!("easel-query-test-{}.png", std::process::id());
        std::fs::write(dir.join(&name), b"x").ok();
        let terms = parse_query(&format!("2:sunset + ./{name}"), &dir).ok();
        std::fs::remove_file(dir.join(&name)).ok();
        assert_eq!(
            terms,
            Some(vec![
                text(2.0, "sunset"),
                Term {
                    weight: 1.0,
                    kind: TermKind::Image(dir.join(".").join(&name)),
                },
            ])
        );
    }
}
