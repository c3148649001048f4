//! The inference worker without any window: commands in, events out, on the tiny model.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use easel::diffusion::schedulers::Sampler;
use easel::diffusion::Pipeline;
use easel::worker::{model_short_hash, Event, JobId, Recipe, Worker};

mod common;

fn tiny_model() -> PathBuf {
    common::fixtures().join("sd-tiny-a")
}

fn recipe(seed: u64, steps: usize) -> Recipe {
    Recipe {
        prompt: "a red circle".into(),
        steps,
        seed,
        width: 32,
        height: 32,
        sampler: Sampler::Euler,
        ..Default::default()
    }
}

/// Collects events until `done` says stop; fails after `limit`.
fn collect_until(
    w: &mut Worker,
    limit: Duration,
    mut done: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        while let Some(e) = w.try_recv() {
            let stop = done(&e);
            seen.push(e);
            if stop {
                return seen;
            }
        }
        assert!(
            start.elapsed() < limit,
            "no end event in {limit:?}: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn background_hash_equals_the_models_own_short_hash() {
    let pipeline = Pipeline::load(&tiny_model(), &candle_core::Device::Cpu).expect("loads");
    let ours = model_short_hash(&pipeline.model.hash_files).expect("hash");
    assert_eq!(ours, pipeline.model.short_hash().expect("hash"));
}

#[test]
fn queue_reorder_and_remove_decide_the_run_order() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut w = Worker::spawn(Arc::new(|| {})).expect("worker");
    // Queued before the model exists: the jobs wait, so the edits below happen in the queue.
    let a = w.submit(recipe(1, 2), false, lib.path().to_path_buf());
    let b = w.submit(recipe(2, 2), false, lib.path().to_path_buf());
    let c = w.submit(recipe(3, 2), false, lib.path().to_path_buf());
    w.move_job(c, 0);
    w.cancel(b);
    w.load_model(tiny_model(), Default::default());
    let mut saved = 0;
    let events = collect_until(&mut w, Duration::from_secs(60), |e| {
        saved += usize::from(matches!(e, Event::Saved { .. }));
        saved == 2
    });
    let started: Vec<JobId> = events
        .iter()
        .filter_map(|e| match e {
            Event::Started { job, .. } => Some(*job),
            _ => None,
        })
        .collect();
    assert_eq!(started, [c, a], "c moved to the front, b removed");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Cancelled { job, completed_steps: 0, .. } if *job == b)));
    // Every finished image is on disk, with a valid PNG.
    for e in &events {
        if let Event::Saved { path, .. } = e {
            assert!(path.starts_with(lib.path()));
            easel::gallery::png_meta::read_png_metadata(path).expect("a complete PNG");
        }
    }
}

#[test]
fn previews_arrive_every_step_and_errors_are_events() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut w = Worker::spawn(Arc::new(|| {})).expect("worker");
    w.load_model(tiny_model(), Default::default());
    let job = w.submit(recipe(7, 5), false, lib.path().to_path_buf());
    let events = collect_until(&mut w, Duration::from_secs(60), |e| {
        matches!(e, Event::Finished { .. })
    });
    let previews: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Preview { job: j, step, .. } if *j == job => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(previews, [1, 2, 3, 4, 5]);

    // A size the model cannot do fails as an event, and the worker goes on working.
    let mut bad = recipe(8, 2);
    bad.width = 33;
    let bad_job = w.submit(bad, false, lib.path().to_path_buf());
    let good_job = w.submit(recipe(9, 2), false, lib.path().to_path_buf());
    let events = collect_until(
        &mut w,
        Duration::from_secs(60),
        |e| matches!(e, Event::Finished { job, .. } if *job == good_job),
    );
    let failed = events.iter().find_map(|e| match e {
        Event::Failed { job, error } if *job == bad_job => Some(error.clone()),
        _ => None,
    });
    assert!(
        failed.as_deref().is_some_and(|m| m.contains("width")),
        "{failed:?}"
    );
}
