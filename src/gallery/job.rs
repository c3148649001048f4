//! Indexing on a background thread, as the studio runs it (DESIGN.md: the UI never waits).
//!
//! The job owns its own database connection (SQLite connections are not shared across
//! threads) and reports through a channel; the studio drains it with `try_events` each frame
//! and passes `request_repaint` as `notify`. Dropping the handle cancels at the next batch
//! boundary without blocking.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::index::{GalleryIndex, Opened};
use super::indexer::{index_folders, IndexEvent, IndexOptions, IndexSummary};
use super::{ClipEmbedder, GalleryError};

/// What the background job reports: every [`IndexEvent`], then one `Finished`.
#[derive(Debug)]
pub enum JobEvent {
    Index(IndexEvent),
    Finished(Result<IndexSummary, String>),
}

/// An indexing run on its own thread. Dropping the handle asks the run to stop at the next
/// batch boundary and does not wait for it (the UI must never block on the indexer).
pub struct IndexJob {
    cancel: Arc<AtomicBool>,
    events: Receiver<JobEvent>,
    thread: Option<JoinHandle<()>>,
}

impl IndexJob {
    /// Opens (or rebuilds) the index at `db` on a new thread and indexes `roots` into it.
    /// `notify` runs after each event is sent (the studio passes `request_repaint`).
    pub fn spawn(
        db: PathBuf,
        embedder: Arc<ClipEmbedder>,
        roots: Vec<PathBuf>,
        options: IndexOptions,
        notify: Box<dyn Fn() + Send>,
    ) -> Result<Self, GalleryError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, events) = mpsc::channel();
        let flag = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("easel-index".into())
            .spawn(move || {
                let send = |e: JobEvent| {
                    // A closed channel means the UI went away; the run stops at the cancel flag.
                    let _ = tx.send(e);
                    notify();
                };
                let result = (|| {
                    let (mut index, opened) = GalleryIndex::open(&db)?;
                    if let Opened::Rebuilt { moved_to, reason } = opened {
                        send(JobEvent::Index(IndexEvent::Rebuilt { moved_to, reason }));
                    }
                    index_folders(&mut index, &embedder, &roots, &options, &flag, &mut |e| {
                        send(JobEvent::Index(e))
                    })
                })();
                send(JobEvent::Finished(result.map_err(|e| e.to_string())));
            })
            .map_err(|e| GalleryError::io("easel-index thread", e))?;
        Ok(Self {
            cancel,
            events,
            thread: Some(thread),
        })
    }

    /// Asks the run to stop after the batch in flight.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The events sent so far, without waiting.
    pub fn try_events(&self) -> Vec<JobEvent> {
        self.events.try_iter().collect()
    }

    /// Waits for the next event (headless callers; the UI uses [`Self::try_events`]).
    pub fn recv(&self) -> Option<JobEvent> {
        self.events.recv().ok()
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for IndexJob {
    fn drop(&mut self) {
        self.cancel();
    }
}
