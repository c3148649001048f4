//! `easel index [--clip-model DIR] [--db FILE] DIR…`: bring the gallery index up to date.
//!
//! The run goes through the same background job the studio uses ([`IndexJob`]), and prints its
//! events: warnings for skipped files as they happen, progress, then one summary line. Killing
//! the process loses at most the batch in flight; running the command again carries on.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;

use crate::gallery::indexer::{IndexOptions, SkipReason};
use crate::gallery::{paths, ClipEmbedder, IndexEvent, IndexJob, JobEvent};

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// A transformers CLIP folder (config.json, model.safetensors, tokenizer files).
    /// Default: the bundled CLIP model.
    #[arg(long)]
    pub clip_model: Option<PathBuf>,
    /// The index database. Default: the app's library database.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Images per model call and per committed transaction.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Folders to index (recursively).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

pub fn run(args: IndexArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    for d in &args.dirs {
        if !d.is_dir() {
            bail!("{}: not a directory", d.display());
        }
    }
    let db = match args.db {
        Some(db) => db,
        None => paths::default_db_path()?,
    };
    let clip_dir = match args.clip_model {
        Some(d) => d,
        None => paths::default_clip_dir()?,
    };
    let embedder = Arc::new(ClipEmbedder::load(&clip_dir, &Device::Cpu)?);
    let job = IndexJob::spawn(
        db.clone(),
        embedder,
        args.dirs,
        IndexOptions {
            batch_size: args.batch_size,
        },
        Box::new(|| {}),
    )?;
    let tty = std::io::stderr().is_terminal();
    let mut err = std::io::stderr().lock();
    while let Some(event) = job.recv() {
        match event {
            JobEvent::Index(IndexEvent::Rebuilt { moved_to, reason }) => {
                writeln!(
                    err,
                    "warning: {} was not a usable index ({reason}); moved to {} and rebuilt",
                    db.display(),
                    moved_to.display()
                )?;
            }
            JobEvent::Index(IndexEvent::Scanned {
                images,
                unchanged,
                to_process,
                removed,
            }) => {
                writeln!(
                    err,
                    "{images} images: {unchanged} unchanged, {to_process} to index, {removed} gone from disk"
                )?;
            }
            JobEvent::Index(IndexEvent::Skipped {
                path,
                reason,
                detail,
            }) => {
                let what = match reason {
                    SkipReason::NotImage => "not an image",
                    SkipReason::Corrupt => "corrupt",
                    SkipReason::TooLarge => "too large",
                    SkipReason::Unreadable => "unreadable",
                    SkipReason::BadPath => "bad path",
                };
                if tty {
                    write!(err, "\r\x1b[K")?;
                }
                writeln!(
                    err,
                    "warning: skipped {} ({what}): {detail}",
                    path.display()
                )?;
            }
            JobEvent::Index(IndexEvent::Progress { done, total }) => {
                if tty {
                    write!(err, "\r\x1b[Kindexed {done}/{total}")?;
                } else {
                    writeln!(err, "indexed {done}/{total}")?;
                }
            }
            JobEvent::Finished(result) => {
                if tty {
                    writeln!(err)?;
                }
                let s = result.map_err(anyhow::Error::msg)?;
                let k = &s.skipped;
                writeln!(
                    err,
                    "done{}: {} embedded, {} reused by content hash, {} unchanged, {} removed; skipped {} ({} not images, {} corrupt, {} too large, {} unreadable, {} bad paths); index {}",
                    if s.cancelled { " (cancelled)" } else { "" },
                    s.embedded,
                    s.reused,
                    s.unchanged,
                    s.removed,
                    k.total(),
                    k.not_image,
                    k.corrupt,
                    k.too_large,
                    k.unreadable,
                    k.bad_path,
                    db.display()
                )?;
                break;
            }
        }
    }
    job.join();
    Ok(())
}
