//! The pending-job queue: plain data, edited by commands between sampler steps.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{JobId, QueuedJob, Recipe};

/// A job that has not started.
#[derive(Debug)]
pub struct Pending {
    pub job: JobId,
    pub recipe: Recipe,
    pub save_dir: PathBuf,
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
pub struct Queue {
    jobs: VecDeque<Pending>,
}

impl Queue {
    pub fn push(&mut self, pending: Pending, front: bool) {
        if front {
            self.jobs.push_front(pending);
        } else {
            self.jobs.push_back(pending);
        }
    }

    /// The next job whose cancel flag is not set; cancelled ones are returned separately so
    /// the caller can report them.
    pub fn pop_runnable(&mut self) -> (Option<Pending>, Vec<Pending>) {
        let mut cancelled = Vec::new();
        while let Some(p) = self.jobs.pop_front() {
            if p.cancel.load(Ordering::Relaxed) {
                cancelled.push(p);
            } else {
                return (Some(p), cancelled);
            }
        }
        (None, cancelled)
    }

    pub fn remove(&mut self, job: JobId) -> Option<Pending> {
        let index = self.jobs.iter().position(|p| p.job == job)?;
        self.jobs.remove(index)
    }

    /// Moves `job` to index `to` (clamped to the end). False when it is not pending.
    pub fn move_to(&mut self, job: JobId, to: usize) -> bool {
        let Some(pending) = self.remove(job) else {
            return false;
        };
        let to = to.min(self.jobs.len());
        self.jobs.insert(to, pending);
        true
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.jobs.drain(..)
    }

    /// What the UI shows.
    pub fn snapshot(&self) -> Vec<QueuedJob> {
        self.jobs
            .iter()
            .map(|p| QueuedJob {
                job: p.job,
                recipe: p.recipe.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(job: JobId) -> Pending {
        Pending {
            job,
            recipe: Recipe {
                prompt: format!("job {job}"),
                seed: job,
                ..Default::default()
            },
            save_dir: PathBuf::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    fn order(q: &Queue) -> Vec<JobId> {
        q.snapshot().iter().map(|j| j.job).collect()
    }

    #[test]
    fn front_push_move_and_remove_keep_order() {
        let mut q = Queue::default();
        for j in 1..=3 {
            q.push(pending(j), false);
        }
        q.push(pending(4), true);
        assert_eq!(order(&q), [4, 1, 2, 3]);
        assert!(q.move_to(4, 99));
        assert_eq!(order(&q), [1, 2, 3, 4]);
        assert!(q.move_to(3, 0));
        assert_eq!(order(&q), [3, 1, 2, 4]);
        assert!(!q.move_to(42, 0));
        assert_eq!(q.remove(1).map(|p| p.job), Some(1));
        assert_eq!(order(&q), [3, 2, 4]);
    }

    #[test]
    fn cancelled_jobs_are_skipped_and_reported() {
        let mut q = Queue::default();
        let a = pending(1);
        a.cancel.store(true, Ordering::Relaxed);
        q.push(a, false);
        q.push(pending(2), false);
        let (next, cancelled) = q.pop_runnable();
        assert_eq!(next.map(|p| p.job), Some(2));
        assert_eq!(cancelled.iter().map(|p| p.job).collect::<Vec<_>>(), [1]);
        assert!(q.is_empty());
    }
}
