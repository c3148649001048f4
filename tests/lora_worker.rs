//! The worker's LoRA handling without a window: a `<lora:name:w>` tag in the prompt and the
//! panel's choices reach the model, the PNG records them, a tag wins over a panel choice for the
//! same file, and an adapter that does not fit fails the job (not the worker) with the reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use easel::diffusion::schedulers::Sampler;
use easel::gallery::png_meta::GenerationMetadata;
use easel::lora::LoraChoice;
use easel::worker::{Event, LoraRecipe, Recipe, Worker};

mod common;

fn loras() -> PathBuf {
    common::fixtures().join("loras")
}

fn recipe(prompt: &str, loras: LoraRecipe) -> Recipe {
    Recipe {
        prompt: prompt.into(),
        steps: 3,
        seed: 9,
        width: 32,
        height: 32,
        sampler: Sampler::Euler,
        loras,
        ..Default::default()
    }
}

fn choice(file: &str, weight: f64) -> LoraChoice {
    LoraChoice {
        path: loras().join(file),
        enabled: true,
        weight,
        te_weight: None,
    }
}

/// Runs one job to its end: the finished metadata, or the failure text.
fn run(w: &mut Worker, recipe: Recipe) -> Result<GenerationMetadata, String> {
    let lib = tempfile::tempdir().expect("tempdir");
    w.submit(recipe, false, lib.path().to_path_buf());
    let start = Instant::now();
    loop {
        while let Some(e) = w.try_recv() {
            match e {
                Event::Finished { metadata, .. } => return Ok(*metadata),
                Event::Failed { error, .. } => return Err(error),
                _ => {}
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no end event");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn tags_and_panel_choices_reach_the_model_and_the_metadata() {
    let mut w = Worker::spawn(Arc::new(|| {})).expect("worker");
    w.load_model(common::fixtures().join("sd-tiny-a"), Default::default());
    let dirs = LoraRecipe {
        choices: Vec::new(),
        dirs: vec![loras()],
    };

    let tagged = run(
        &mut w,
        recipe("a cat <lora:tiny-detail:-0.5>", dirs.clone()),
    )
    .unwrap();
    assert_eq!(
        tagged.prompt, "a cat <lora:tiny-detail:-0.5>",
        "the tag stays"
    );
    assert_eq!(tagged.loras.len(), 1);
    assert_eq!(
        (tagged.loras[0].name.as_str(), tagged.loras[0].weight),
        ("tiny-detail", -0.5)
    );

    // A panel choice is recorded as a tag; the prompt's own tag wins for the same file.
    let both = LoraRecipe {
        choices: vec![
            choice("tiny-style.safetensors", 0.8),
            choice("tiny-detail.safetensors", 2.0),
        ],
        dirs: vec![loras()],
    };
    let m = run(&mut w, recipe("a cat <lora:tiny-detail:-0.5>", both)).unwrap();
    assert_eq!(
        m.prompt,
        "a cat <lora:tiny-detail:-0.5> <lora:tiny-style:0.8>"
    );
    let weights: Vec<_> = m
        .loras
        .iter()
        .map(|l| (l.name.as_str(), l.weight))
        .collect();
    assert_eq!(weights, [("tiny-detail", -0.5), ("tiny-style", 0.8)]);

    // Unknown name, or an adapter for another model: the job fails, the worker carries on.
    let err = run(&mut w, recipe("<lora:nope:1>", dirs.clone())).unwrap_err();
    assert!(err.contains("no LoRA named \"nope\""), "{err}");
    w.load_model(common::fixtures().join("sd-tiny-b"), Default::default());
    let other = LoraRecipe {
        choices: vec![choice("tiny-style.safetensors", 1.0)],
        dirs: Vec::new(),
    };
    let err = run(&mut w, recipe("a cat", other)).unwrap_err();
    assert!(err.contains("keys match this model's layers"), "{err}");
    let plain = run(&mut w, recipe("a cat", LoraRecipe::default())).unwrap();
    assert!(plain.loras.is_empty());
}
