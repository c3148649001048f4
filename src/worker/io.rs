//! I/O-bound work done on the small tokio runtime: writing every finished image to the
//! library at once, and hashing the model for the PNGs' `Model hash`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Event, EventSink, FinishedImage, JobId};
use crate::gallery::png_meta::{self, GenerationMetadata};

/// A finished image on its way to disk.
pub struct SaveJob {
    pub job: JobId,
    pub dir: PathBuf,
    pub image: FinishedImage,
    pub metadata: GenerationMetadata,
    pub hash: Arc<OnceCell<String>>,
    pub unet_files: Arc<Vec<PathBuf>>,
}

/// Writes the image (temp file + rename, by `write_png`) and reports `Saved` or `SaveFailed`.
pub async fn save(mut save: SaveJob, sink: EventSink) {
    save.metadata.model_hash = cached_hash(&save.hash, save.unet_files.clone()).await;
    let job = save.job;
    let written = tokio::task::spawn_blocking(move || write_to_library(&save)).await;
    let event = match written {
        Ok(Ok(path)) => Event::Saved { job, path },
        Ok(Err(error)) => Event::SaveFailed { job, error },
        Err(e) => Event::SaveFailed {
            job,
            error: format!("the save task stopped: {e}"),
        },
    };
    sink.send(event);
}

fn write_to_library(save: &SaveJob) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&save.dir).map_err(|e| {
        format!(
            "cannot create the library folder {}: {e}",
            save.dir.display()
        )
    })?;
    let path = save
        .dir
        .join(library_file_name(save.job, save.metadata.seed));
    png_meta::write_png(
        &path,
        save.image.width,
        save.image.height,
        &save.image.rgb,
        &save.metadata,
    )
    .map_err(|e| e.to_string())?;
    Ok(path)
}

/// `<unix milliseconds>-<job>-<seed>.png`: sorts by time in any file browser, and the job id
/// keeps two images finished in the same millisecond apart.
pub fn library_file_name(job: JobId, seed: u64) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{millis}-{job:04}-{seed}.png")
}

/// The model's short hash, computed once per loaded model (the first caller computes it, the
/// others wait for it). An unreadable file gives an empty hash rather than losing the image.
pub async fn cached_hash(cell: &OnceCell<String>, files: Arc<Vec<PathBuf>>) -> String {
    cell.get_or_init(|| async move {
        tokio::task::spawn_blocking(move || model_short_hash(&files).unwrap_or_default())
            .await
            .unwrap_or_default()
    })
    .await
    .clone()
}

/// The same hash as `StableDiffusion::short_hash` (the first 10 hex digits of the SHA-256 of
/// the UNet weight files), computed from the paths alone so it can run off the inference
/// thread. A test keeps the two in step.
pub fn model_short_hash(files: &[PathBuf]) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        hash_file(f, &mut hasher, &mut buf)?;
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(5).map(|b| format!("{b:02x}")).collect())
}

fn hash_file(path: &Path, hasher: &mut Sha256, buf: &mut [u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}
