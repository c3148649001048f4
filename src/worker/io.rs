//! I/O-bound work done on the small tokio runtime: writing every finished image to the
//! library at once, and hashing the model for the PNGs' `Model hash`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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
    pub hash_files: Arc<Vec<PathBuf>>,
    /// The external VAE whose hash the metadata needs, if any.
    pub vae_file: Option<PathBuf>,
    /// An inpainting mask painted in the studio, written beside the image (`….mask.png`) so
    /// that the image can be restored with it.
    pub mask: Option<Arc<image::GrayImage>>,
}

/// Writes the image (temp file + rename, by `write_png`) and reports `Saved` or `SaveFailed`.
pub async fn save(mut save: SaveJob, sink: EventSink) {
    save.metadata.model_hash = cached_hash(&save.hash, save.hash_files.clone()).await;
    if let (Some(vae), Some(file)) = (save.metadata.vae.as_mut(), save.vae_file.clone()) {
        // From the on-disk hash cache after the first image: the file is read once.
        vae.hash = tokio::task::spawn_blocking(move || {
            crate::models::hash::short_hash(&[file]).unwrap_or_default()
        })
        .await
        .unwrap_or_default();
    }
    let job = save.job;
    let (image, metadata) = (save.image.clone(), save.metadata.clone());
    let written = tokio::task::spawn_blocking(move || {
        let result = write_to_library(&mut save);
        (result, save.metadata)
    })
    .await;
    let event = match written {
        Ok((Ok(path), _)) => Event::Saved { job, path },
        Ok((Err(error), metadata)) => Event::SaveFailed {
            job,
            error,
            image,
            metadata: Box::new(metadata),
        },
        Err(e) => Event::SaveFailed {
            job,
            error: format!("the save task stopped: {e}"),
            image,
            metadata: Box::new(metadata),
        },
    };
    sink.send(event);
}

/// A finished image whose save failed (a read-only folder, a full disk), to be written to
/// `dir` again: the metadata as the failed attempt completed it, hashes included.
pub fn retry(
    job: JobId,
    dir: PathBuf,
    image: FinishedImage,
    metadata: GenerationMetadata,
) -> SaveJob {
    let hash = OnceCell::new_with(Some(metadata.model_hash.clone()));
    SaveJob {
        job,
        dir,
        image,
        metadata,
        hash: Arc::new(hash),
        hash_files: Arc::new(Vec::new()),
        vae_file: None,
        mask: None,
    }
}

/// "Save as…" for an image the library does not hold: the PNG, metadata included, written
/// from memory to `path` (temp file + rename, by `write_png`).
pub fn write_unsaved(
    path: &std::path::Path,
    image: &FinishedImage,
    metadata: &GenerationMetadata,
) -> Result<(), String> {
    png_meta::write_png(path, image.width, image.height, &image.rgb, metadata)
        .map_err(|e| e.to_string())
}

fn write_to_library(save: &mut SaveJob) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&save.dir).map_err(|e| {
        format!(
            "cannot create the library folder {}: {e}",
            save.dir.display()
        )
    })?;
    let path = save
        .dir
        .join(library_file_name(save.job, save.metadata.seed));
    if let (Some(mask), Some(init)) = (&save.mask, save.metadata.init_image.as_mut()) {
        // Before the image, so that an image on disk never names a mask that is not.
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let mask_path = path.with_file_name(format!("{stem}{}", crate::gallery::scan::MASK_SUFFIX));
        write_mask(mask, &mask_path)?;
        init.mask = Some(mask_path.display().to_string());
    }
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

/// A grey PNG, written to a temporary name and renamed: never a partial file under the name.
fn write_mask(mask: &image::GrayImage, path: &std::path::Path) -> Result<(), String> {
    let tmp = path.with_extension("png.part");
    mask.save_with_format(&tmp, image::ImageFormat::Png)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(image::ImageError::IoError))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write the mask {}: {e}", path.display())
        })
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

/// The same hash as `StableDiffusion::short_hash` (A1111's AutoV2 of the checkpoint file, or
/// of a folder's UNet weights), computed from the paths alone so it can run off the inference
/// thread; from the on-disk hash cache when the files are unchanged.
pub fn model_short_hash(files: &[PathBuf]) -> std::io::Result<String> {
    crate::models::hash::short_hash(files)
}
