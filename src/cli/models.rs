//! `easel models list`: the model library as the studio's picker shows it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::models::library::{self, human_size, LibraryEntry};

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// List every model and VAE in the folders (sub-folders included): name, architecture,
    /// precision, size and A1111 hash. Reads headers only; hashes come from the hash cache
    /// unless --hash computes the missing ones (which reads each file once).
    List {
        /// Folders or files. Default: the folders in $EASEL_MODEL_DIR, then the bundled models.
        dirs: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Compute the hashes the cache lacks.
        #[arg(long)]
        hash: bool,
    },
}

pub fn run(args: ModelsArgs) -> Result<()> {
    match args.command {
        ModelsCommand::List { dirs, json, hash } => list(dirs, json, hash),
    }
}

fn list(dirs: Vec<PathBuf>, json: bool, hash: bool) -> Result<()> {
    let dirs = if dirs.is_empty() {
        library::default_model_dirs()
    } else {
        dirs
    };
    if let Some(missing) = dirs.iter().find(|d| !d.exists()) {
        bail!("{}: no such folder or file", missing.display());
    }
    let start = Instant::now();
    let mut entries = library::scan(&dirs);
    let scan_secs = start.elapsed().as_secs_f64();
    if hash {
        for e in entries
            .iter_mut()
            .filter(|e| e.hash.is_none() && e.error.is_none())
        {
            e.hash = crate::models::hash::short_hash(&e.hash_files()).ok();
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    print_table(&entries);
    eprintln!(
        "{} entries in {:.3} s{}",
        entries.len(),
        scan_secs,
        if hash {
            ""
        } else {
            " (hashes from the cache; --hash computes the rest)"
        }
    );
    Ok(())
}

fn print_table(entries: &[LibraryEntry]) {
    let name_w = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 48);
    let arch_w = entries
        .iter()
        .map(|e| e.architecture.len() + if e.runnable { 0 } else { 15 })
        .max()
        .unwrap_or(0)
        .clamp(12, 60);
    println!(
        "{:name_w$}  {:arch_w$}  {:9}  {:>9}  {:10}  PATH",
        "NAME", "ARCHITECTURE", "PRECISION", "SIZE", "HASH"
    );
    for e in entries {
        let arch = if e.runnable {
            e.architecture.clone()
        } else {
            format!("{} (not runnable)", e.architecture)
        };
        println!(
            "{:name_w$}  {:arch_w$}  {:9}  {:>9}  {:10}  {}{}",
            e.name,
            arch,
            e.precision.as_deref().unwrap_or("-"),
            human_size(e.size_bytes),
            e.hash.as_deref().unwrap_or("-"),
            e.path.display(),
            e.error
                .as_ref()
                .map_or(String::new(), |err| format!("  ({err})"))
        );
    }
}
