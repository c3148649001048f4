//! `easel search [--clip-model DIR] [--db FILE] [--top K] [--json] (TEXT | --image FILE)`.
//!
//! TEXT may combine terms rclip's way (`red car - night`, `2:sunset + ./ref.png`). `--image`
//! finds images like FILE; when FILE is itself in the index its stored embedding is used
//! (the gallery's "find similar"), otherwise it is embedded now. `--json` prints an array of
//! `{"path", "score"}`, best first; scripts depend on that shape.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;

use crate::gallery::query::{embed_image_file, embed_query, parse_query};
use crate::gallery::search::parse_date;
use crate::gallery::{paths, ClipEmbedder, Filter, GalleryIndex, Library};

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// What to look for; terms combine with ` + ` and ` - `, `W:term` weighs a term, and a term
    /// that is a path (./ref.png) stands for that image.
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    pub text: Option<String>,
    /// Find images similar to this one.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// A transformers CLIP folder. Default: the bundled CLIP model.
    #[arg(long)]
    pub clip_model: Option<PathBuf>,
    /// The index database. Default: the app's library database.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// How many results.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Print a JSON array of {"path", "score"}, best first.
    #[arg(long)]
    pub json: bool,
    /// Only images whose generating model's name contains this (case-insensitive).
    #[arg(long, value_name = "NAME")]
    pub filter_model: Option<String>,
    /// Only images whose prompt has this word (repeatable; all must appear).
    #[arg(long = "prompt-has", value_name = "WORD")]
    pub prompt_words: Vec<String>,
    /// Only images modified on or after this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub after: Option<String>,
    /// Only images modified before this day (YYYY-MM-DD, UTC).
    #[arg(long, value_name = "DATE")]
    pub before: Option<String>,
}

pub fn run(args: SearchArgs) -> Result<()> {
    let date = |flag: &str, v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|s| parse_date(s).with_context(|| format!("{flag} {s:?}: expected YYYY-MM-DD")))
            .transpose()
    };
    let filter = Filter {
        model: args.filter_model.clone(),
        prompt_words: args.prompt_words.clone(),
        after_unix: date("--after", &args.after)?,
        before_unix: date("--before", &args.before)?,
    };
    let db = match &args.db {
        Some(db) => db.clone(),
        None => paths::default_db_path()?,
    };
    let clip_dir = match &args.clip_model {
        Some(d) => d.clone(),
        None => paths::default_clip_dir()?,
    };
    let index = GalleryIndex::open_existing(&db)?;
    let embedder = ClipEmbedder::load(&clip_dir, &Device::Cpu)?;
    let library = Library::load(&index, embedder.model_id(), embedder.dim())?;
    if library.is_empty() {
        bail!(
            "{} has no images embedded with the CLIP model {} ({}): run `easel index` with this --clip-model first",
            db.display(),
            clip_dir.display(),
            embedder.model_id()
        );
    }
    if library.not_embedded > 0 {
        eprintln!(
            "warning: {} indexed images have no embedding for this CLIP model; run `easel index` to include them",
            library.not_embedded
        );
    }
    let query = match (&args.text, &args.image) {
        (_, Some(image)) => similar_to(&embedder, &library, image)?,
        (Some(text), None) => {
            let cwd = std::env::current_dir().context("reading the working directory")?;
            let terms = parse_query(text, &cwd)?;
            embed_query(&embedder, text, &terms)?
        }
        (None, None) => bail!("give a query TEXT or --image FILE"),
    };
    let hits = library.top_k(&query, args.top, &filter);
    if args.json {
        let out: Vec<_> = hits
            .iter()
            .map(|h| serde_json::json!({"path": h.path, "score": h.score}))
            .collect();
        println!("{}", serde_json::Value::Array(out));
    } else {
        for h in &hits {
            println!("{:.4}  {}", h.score, h.path);
        }
    }
    Ok(())
}

/// The stored vector when `image` is in the library (no model call), else a fresh embedding.
fn similar_to(embedder: &ClipEmbedder, library: &Library, image: &Path) -> Result<Vec<f32>> {
    let stored = std::fs::canonicalize(image)
        .ok()
        .and_then(|p| p.to_str().and_then(|s| library.row_of(s)))
        .and_then(|row| library.vector(row));
    match stored {
        Some(v) => Ok(v.to_vec()),
        None => Ok(embed_image_file(embedder, image)?),
    }
}
