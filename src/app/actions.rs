//! What panels ask the studio to do. Panels only push actions; [`Studio::apply`] carries them
//! out after the frame is drawn, in one place, so a panel never needs the worker or another
//! panel's state.

use std::path::PathBuf;

use crate::worker::JobId;

#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue the current settings (`batch_count` jobs).
    Generate,
    /// Cancel the running job and everything queued.
    CancelAll,
    /// Live mode: a slider was released; re-queue with the same seed, cancelling the stale job.
    LiveRequeue,
    /// Cancel one job (running or pending).
    CancelJob(JobId),
    /// Move a pending job to a new position in the queue.
    MoveJob { job: JobId, to: usize },
    /// Show a history image on the canvas.
    View(usize),
    /// Put a history image's settings back into the prompt panel.
    Restore(usize),
    /// Copy a history image somewhere else, through the native save dialog.
    SaveAs(usize),
    /// Write a history image whose save failed to the library folder again.
    RetrySave(usize),
    /// Open the native folder dialog to choose a diffusers model folder.
    PickModelFolder,
    /// Open the native file dialog to choose a checkpoint file.
    PickModelFile,
    /// Open the native folder dialog to add a folder to the model library.
    PickModelLibraryFolder,
    /// Load this model (folder or checkpoint file).
    LoadModel(PathBuf),
    /// A model the user typed, picked, dropped or clicked in the library: checked (off the
    /// UI thread, from its header) to be one Easel runs, then loaded.
    OpenModelPath(PathBuf),
    /// Open the native folder dialog to choose the library folder.
    PickLibraryFolder,
    /// Read generation settings from a dropped PNG.
    RestoreFromFile(PathBuf),
    /// img2img: read this picture (and its inpainting mask, if any) off the UI thread and
    /// start Generate from it.
    UseAsInit {
        picture: PathBuf,
        mask: Option<PathBuf>,
    },
    /// Back to text to image.
    ClearInit,
    /// The image-search gesture, when the gallery panel cannot search itself (no CLIP model):
    /// the studio says what is missing.
    SearchByImage(PathBuf),
}
