//! Exact nearest-neighbour search over the whole gallery, in memory.
//!
//! DESIGN.md: brute force over one row-major matrix of unit vectors is exact and fast enough to
//! ~200k images (100k × 512 floats is 200 MB read once per query, split across the cores), with
//! nothing to rebuild or tune; an ANN index can come later, built from the same SQLite rows.
//! Scores are cosine similarities (dot products of unit vectors). Metadata filters (generating
//! model, prompt words, date) narrow the rows before scoring.

use rayon::prelude::*;

use super::index::{FileRow, GalleryIndex};
use super::GalleryError;

/// What the gallery shows and filters on for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub mtime_ns: i64,
    pub gen_model: Option<String>,
    pub prompt: Option<String>,
}

/// All embedded images of one CLIP model: entries and their vectors, row i ↔ entry i.
pub struct Library {
    pub model_id: String,
    pub dim: usize,
    pub entries: Vec<Entry>,
    matrix: Vec<f32>,
    /// Files in the index with no embedding for this model (not searchable until re-indexed).
    pub not_embedded: usize,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Row in [`Library::entries`].
    pub row: usize,
    pub path: String,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// Metadata conditions; every one given must hold. Text matching ignores case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// A substring of the generating model's name.
    pub model: Option<String>,
    /// Words that must all appear in the prompt (as whole words).
    pub prompt_words: Vec<String>,
    /// Modified at or after this time (Unix seconds).
    pub after_unix: Option<i64>,
    /// Modified before this time (Unix seconds).
    pub before_unix: Option<i64>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, e: &Entry) -> bool {
        if let Some(m) = &self.model {
            let m = m.to_lowercase();
            if !e
                .gen_model
                .as_deref()
                .is_some_and(|g| g.to_lowercase().contains(&m))
            {
                return false;
            }
        }
        if !self.prompt_words.is_empty() {
            let Some(prompt) = &e.prompt else {
                return false;
            };
            let words: Vec<String> = prompt
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect();
            if !self
                .prompt_words
                .iter()
                .all(|w| words.contains(&w.to_lowercase()))
            {
                return false;
            }
        }
        let secs = e.mtime_ns.div_euclid(1_000_000_000);
        self.after_unix.is_none_or(|a| secs >= a) && self.before_unix.is_none_or(|b| secs < b)
    }
}

impl Library {
    /// Loads every embedded image of `model_id` from the index.
    pub fn load(index: &GalleryIndex, model_id: &str, dim: usize) -> Result<Self, GalleryError> {
        let mut entries = Vec::new();
        let mut matrix = Vec::new();
        let mut malformed = 0usize;
        let not_embedded = index.for_each_embedded(model_id, |row: FileRow, v| {
            // A vector of another width cannot be scored against this model's queries.
            if v.len() != dim {
                malformed += 1;
                return;
            }
            matrix.extend_from_slice(v);
            entries.push(Entry {
                path: row.path,
                width: row.width,
                height: row.height,
                mtime_ns: row.mtime_ns,
                gen_model: row.gen_model,
                prompt: row.prompt,
            });
        })?;
        Ok(Self {
            model_id: model_id.to_string(),
            dim,
            entries,
            matrix,
            not_embedded: not_embedded + malformed,
        })
    }

    /// A library built in memory (benchmarks, tests): `matrix` holds `entries.len()` rows.
    pub fn from_parts(model_id: &str, dim: usize, entries: Vec<Entry>, matrix: Vec<f32>) -> Self {
        Self {
            model_id: model_id.to_string(),
            dim,
            entries,
            matrix,
            not_embedded: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stored vector of row `row`.
    pub fn vector(&self, row: usize) -> Option<&[f32]> {
        self.matrix.get(row * self.dim..(row + 1) * self.dim)
    }

    /// The row of the image at `path`.
    pub fn row_of(&self, path: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.path == path)
    }

    /// The `k` rows most similar to `query` (a unit vector of width `dim`) among those the
    /// filter admits, best first; ties keep path order.
    pub fn top_k(&self, query: &[f32], k: usize, filter: &Filter) -> Vec<Hit> {
        if query.len() != self.dim || k == 0 || self.dim == 0 {
            return Vec::new();
        }
        let dim = self.dim;
        let admit: Option<Vec<bool>> =
            (!filter.is_empty()).then(|| self.entries.iter().map(|e| filter.matches(e)).collect());
        // Rows in chunks, one scoring task per chunk: the matrix is read once, by all cores.
        const CHUNK_ROWS: usize = 4096;
        let mut scores = vec![0f32; self.entries.len()];
        scores
            .par_chunks_mut(CHUNK_ROWS)
            .zip(self.matrix.par_chunks(CHUNK_ROWS * dim))
            .for_each(|(out, rows)| {
                for (o, row) in out.iter_mut().zip(rows.chunks_exact(dim)) {
                    *o = dot(row, query);
                }
            });
        let mut candidates: Vec<usize> = match &admit {
            Some(a) => (0..scores.len()).filter(|&i| a[i]).collect(),
            None => (0..scores.len()).collect(),
        };
        let better = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
        if candidates.len() > k {
            candidates.select_nth_unstable_by(k - 1, better);
            candidates.truncate(k);
        }
        candidates.sort_by(better);
        candidates
            .into_iter()
            .map(|row| Hit {
                row,
                path: self.entries[row].path.clone(),
                score: scores[row],
            })
            .collect()
    }
}

/// Dot product with eight independent sums, so the compiler keeps SIMD lanes busy instead of
/// waiting on one accumulator.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() - a.len() % 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Unix seconds at 00:00 UTC of a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, model: Option<&str>, prompt: Option<&str>, secs: i64) -> Entry {
        Entry {
            path: path.into(),
            width: 1,
            height: 1,
            mtime_ns: secs * 1_000_000_000,
            gen_model: model.map(Into::into),
            prompt: prompt.map(Into::into),
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-03-01"), Some(1_709_251_200));
        assert_eq!(parse_date("2024-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
    }

    #[test]
    fn top_k_orders_and_filters() {
        let entries = vec![
            entry("a", Some("sd15"), Some("a red car at night"), 100),
            entry("b", Some("SDXL base"), Some("a red car"), 200),
            entry("c", None, None, 300),
        ];
        let matrix = vec![1.0, 0.0, 0.6, 0.8, 0.0, 1.0];
        let lib = Library::from_parts("m", 2, entries, matrix);
        let hits = lib.top_k(&[1.0, 0.0], 3, &Filter::default());
        assert_eq!(
            hits.iter().map(|h| h.path.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert!((hits[1].score - 0.6).abs() < 1e-6);
        assert_eq!(lib.top_k(&[1.0, 0.0], 1, &Filter::default()).len(), 1);
        let sdxl = Filter {
            model: Some("sdxl".into()),
            ..Filter::default()
        };
        assert_eq!(lib.top_k(&[1.0, 0.0], 3, &sdxl)[0].path, "b");
        let night = Filter {
            prompt_words: vec!["Night".into()],
            ..Filter::default()
        };
        assert_eq!(lib.top_k(&[0.0, 1.0], 3, &night).len(), 1);
        let late = Filter {
            after_unix: Some(200),
            before_unix: Some(300),
            ..Filter::default()
        };
        assert_eq!(lib.top_k(&[0.0, 1.0], 3, &late)[0].path, "b");
    }
}
