//! AUTOMATIC1111's model hash (AutoV2: the first 10 hex digits of the file's SHA-256), as
//! Civitai and every PNG-info tool show it, cached so a 2 GB file is hashed once.
//!
//! The cache is a small JSON file in the app's cache folder, keyed by the files' absolute
//! paths, sizes and modification times: a file replaced under the same name is hashed again.
//! A damaged or missing cache only costs time.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One cache entry: what the files were when hashed, and the full SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// `size:mtime_ns` per file, in order.
    stamp: Vec<String>,
    sha256: String,
}

/// Serialises reads and writes of the cache file within this process.
static CACHE_LOCK: Mutex<()> = Mutex::new(());

fn cache_path() -> Option<PathBuf> {
    crate::settings::project_dirs().map(|d| d.cache_dir().join("model-hashes.json"))
}

fn key(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| {
            std::fs::canonicalize(f)
                .unwrap_or_else(|_| f.clone())
                .display()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn stamp(files: &[PathBuf]) -> std::io::Result<Vec<String>> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f)?;
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            Ok(format!("{}:{mtime}", m.len()))
        })
        .collect()
}

fn read_cache(path: &Path) -> BTreeMap<String, Entry> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The cached hash of `files`, if they have not changed since it was computed.
pub fn cached_short_hash(files: &[PathBuf]) -> Option<String> {
    let path = cache_path()?;
    let stamp = stamp(files).ok()?;
    let _guard = CACHE_LOCK.lock().ok()?;
    read_cache(&path)
        .get(&key(files))
        .filter(|e| e.stamp == stamp)
        .map(|e| short(&e.sha256))
}

/// A1111's short hash of `files` hashed as one stream (one file for a checkpoint; the UNet
/// weights of a diffusers folder), from the cache when the files are unchanged.
pub fn short_hash(files: &[PathBuf]) -> std::io::Result<String> {
    if let Some(h) = cached_short_hash(files) {
        return Ok(h);
    }
    let before = stamp(files)?;
    let full = sha256_hex(files)?;
    // Cached only if nothing changed while hashing.
    if let (Some(path), Ok(after)) = (cache_path(), stamp(files)) {
        if after == before {
            if let Ok(_guard) = CACHE_LOCK.lock() {
                let mut cache = read_cache(&path);
                cache.insert(
                    key(files),
                    Entry {
                        stamp: after,
                        sha256: full.clone(),
                    },
                );
                write_cache(&path, &cache);
            }
        }
    }
    Ok(short(&full))
}

fn short(sha256: &str) -> String {
    sha256.chars().take(10).collect()
}

/// Writes the cache atomically; failure (a read-only cache folder) is not an error.
fn write_cache(path: &Path, cache: &BTreeMap<String, Entry>) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let written = serde_json::to_vec(cache)
        .ok()
        .is_some_and(|bytes| std::fs::write(&tmp, bytes).is_ok());
    if !written || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The SHA-256 of the files read one after another, in hex.
pub fn sha256_hex(files: &[PathBuf]) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    for f in files {
        feed(&mut hasher, std::fs::File::open(f)?)?;
    }
    Ok(hex(hasher))
}

/// The SHA-256 of `path` from byte `offset` on, in hex (the LoRA hash skips the header).
pub fn sha256_hex_from(path: &Path, offset: u64) -> std::io::Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    feed(&mut hasher, file)?;
    Ok(hex(hasher))
}

/// Hashes a reader in 1 MiB reads, so a large file is never held in memory.
fn feed(hasher: &mut Sha256, mut reader: impl Read) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autov2_is_the_first_ten_hex_digits_of_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.safetensors");
        std::fs::write(&f, b"abc").unwrap();
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(short_hash(std::slice::from_ref(&f)).unwrap(), "ba7816bf8f");
        assert_eq!(
            cached_short_hash(std::slice::from_ref(&f)).as_deref(),
            Some("ba7816bf8f")
        );
        // Replaced under the same name (another size): hashed again, not served stale.
        std::fs::write(&f, b"abcd").unwrap();
        assert_ne!(
            cached_short_hash(std::slice::from_ref(&f)).as_deref(),
            Some("ba7816bf8f")
        );
        assert_eq!(short_hash(&[f]).unwrap(), "88d4266fd4");
    }
}
