//! Encoding an image with its metadata and saving it atomically.
//!
//! The whole PNG is encoded in memory first, so every check (buffer length, size, metadata)
//! fails before the disk is touched. It is then written to a hidden temporary file in the
//! destination's directory (same filesystem, so the rename is atomic), flushed to disk, and
//! renamed over the destination: a crash or a full disk leaves either the old file or the new
//! one, never half an image for the gallery to trip over.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{GenerationMetadata, PngMetaError, EASEL_KEYWORD, PARAMETERS_KEYWORD};

/// Writes `rgb` (8-bit RGB, row-major, `width * height * 3` bytes) as a PNG at `path` with
/// A1111's `parameters` chunk and Easel's `easel` JSON chunk, replacing any existing file
/// atomically.
///
/// `parameters` is tEXt when the text is Latin-1, else iTXt (UTF-8): the same choice Pillow
/// makes, so tools that only read tEXt still see every Latin-1 prompt. `easel` is always
/// uncompressed iTXt, UTF-8.
pub fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
    meta: &GenerationMetadata,
) -> Result<(), PngMetaError> {
    let bytes = encode(path, width, height, rgb, meta)?;
    write_atomically(path, &bytes)
}

/// The complete PNG file in memory.
fn encode(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
    meta: &GenerationMetadata,
) -> Result<Vec<u8>, PngMetaError> {
    let invalid_size = || PngMetaError::InvalidSize {
        path: path.to_path_buf(),
        width,
        height,
    };
    // PNG stores each side as a u32 of at most 2^31 - 1, and zero is not allowed.
    let to_side = |v: usize| {
        u32::try_from(v)
            .ok()
            .filter(|&v| (1..=i32::MAX as u32).contains(&v))
    };
    let (w, h) = match (to_side(width), to_side(height)) {
        (Some(w), Some(h)) => (w, h),
        _ => return Err(invalid_size()),
    };
    let expected = width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(3))
        .ok_or_else(invalid_size)?;
    if rgb.len() != expected {
        return Err(PngMetaError::WrongBufferLength {
            path: path.to_path_buf(),
            width,
            height,
            expected,
            actual: rgb.len(),
        });
    }
    if !meta.cfg_scale.is_finite() {
        // JSON has no NaN/inf: serde_json would write `null`, which then does not read back.
        return Err(PngMetaError::InvalidMetadata {
            path: path.to_path_buf(),
            detail: format!("cfg_scale {} is not a finite number", meta.cfg_scale),
        });
    }
    let parameters = meta.a1111_parameters();
    let json = serde_json::to_string(meta).map_err(|source| PngMetaError::Json {
        path: path.to_path_buf(),
        source,
    })?;

    let encode_err = |source| PngMetaError::Encode {
        path: path.to_path_buf(),
        source,
    };
    let mut out = Vec::with_capacity(expected / 2 + parameters.len() + json.len() + 1024);
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    if is_latin1(&parameters) {
        encoder.add_text_chunk(PARAMETERS_KEYWORD.to_string(), parameters)
    } else {
        encoder.add_itxt_chunk(PARAMETERS_KEYWORD.to_string(), parameters)
    }
    .map_err(encode_err)?;
    encoder
        .add_itxt_chunk(EASEL_KEYWORD.to_string(), json)
        .map_err(encode_err)?;
    let mut writer = encoder.write_header().map_err(encode_err)?;
    writer.write_image_data(rgb).map_err(encode_err)?;
    writer.finish().map_err(encode_err)?;
    Ok(out)
}

/// Whether Pillow would store this text as tEXt (`value.encode("latin-1")` succeeds).
fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| u32::from(c) <= 0xFF)
}

/// Distinguishes temporary files of concurrent writes from one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless the rename succeeded, including on panic.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            // Nothing more can be done if this fails; the original error is what matters.
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PngMetaError> {
    let io_err = |target: &Path, action: &'static str| {
        let target = target.to_path_buf();
        move |source| PngMetaError::Io {
            path: target,
            action,
            source,
        }
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| PngMetaError::InvalidMetadata {
            path: path.to_path_buf(),
            detail: "the path has no file name".to_string(),
        })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(PngMetaError::MissingDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    // Hidden and suffixed `.tmp` so gallery scans skip it.
    let temp_path = dir.join(format!(
        ".{}.{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp_path)
        .map_err(io_err(path, "write"))?;
    let mut guard = TempGuard {
        path: temp_path.clone(),
        armed: true,
    };
    // Errors name the file the user asked for: the temporary one is gone by the time they
    // read it.
    file.write_all(bytes).map_err(io_err(path, "write"))?;
    file.sync_all().map_err(io_err(path, "flush to disk"))?;
    drop(file);
    fs::rename(&temp_path, path).map_err(io_err(path, "replace"))?;
    guard.armed = false;
    sync_dir(dir);
    Ok(())
}

/// Makes the rename itself durable. Best effort: some filesystems refuse to fsync a
/// directory, and the image is already complete under its final name by now.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_is_what_pillow_encodes() {
        assert!(is_latin1("café, ÿ, \u{0}"));
        assert!(!is_latin1("日本の猫"));
        assert!(!is_latin1("€"));
    }
}
