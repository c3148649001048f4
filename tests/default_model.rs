//! The bundled default model (models/default, models/default-clip, models/loras), trained by
//! training/train_default_model.py, against issue 6's quality targets. Images are scored from
//! their pixels by easel::scenes::check (itself tested on drawn scenes in scene_checker.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use easel::diffusion::Pipeline;
use easel::gallery::ClipEmbedder;
use easel::lora::{AdapterSettings, LoraStack};
use easel::scenes::{self, measure, QualityReport, SceneAsk};

/// Prompt/seed pairs per measurement (the issue asks for at least 48).
const PAIRS: usize = 48;
const FIRST_SEED: u64 = 1000;

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

fn pipeline() -> Pipeline {
    Pipeline::load(&models().join("default"), &Device::Cpu).unwrap()
}

fn run(pipeline: &Pipeline, asks: &[SceneAsk]) -> QualityReport {
    let report = measure(pipeline, asks, FIRST_SEED, None, &mut |_, _, _, _| {}).unwrap();
    eprintln!("{}\n{}", report.summary(), report.misses.join("\n"));
    report
}

#[test]
fn default_settings_draw_the_prompted_colours_and_shape() {
    let report = run(&pipeline(), &SceneAsk::spread(PAIRS, false));
    assert_eq!(report.images, PAIRS);
    assert!(report.share(report.colour) >= 0.85, "{}", report.summary());
    assert!(
        report.share(report.background) >= 0.85,
        "{}",
        report.summary()
    );
    assert!(report.share(report.shape) >= 0.70, "{}", report.summary());
    assert!(report.share(report.striped) <= 0.10, "{}", report.summary());
}

#[test]
fn the_striped_lora_adds_stripes_only_when_on() {
    let pipeline = pipeline();
    let asks = SceneAsk::spread(PAIRS, true);
    let off = run(&pipeline, &asks);
    let mut stack = LoraStack::new();
    stack
        .add(
            &pipeline.model,
            &models().join("loras/striped.safetensors"),
            AdapterSettings::new(1.0),
        )
        .unwrap();
    stack.apply(&pipeline.model).unwrap();
    let on = run(&pipeline, &asks);
    assert!(on.share(on.striped) >= 0.80, "LoRA on: {}", on.summary());
    assert!(
        off.share(off.striped) <= 0.10,
        "LoRA off: {}",
        off.summary()
    );
    // The style keeps the background and mostly the shape; the shape's colour suffers (0.58
    // measured: blurred stripes blend it with black, and the adapter leans to its 16 examples'
    // colours; see models/README.md), so it is held only to better than a coin toss.
    assert!(
        on.share(on.background) >= 0.85 && on.share(on.shape) >= 0.60,
        "{}",
        on.summary()
    );
    assert!(on.share(on.colour) >= 0.50, "{}", on.summary());
}

#[test]
fn clip_finds_held_out_scenes_by_colour_and_shape() {
    let embedder = ClipEmbedder::load(&models().join("default-clip"), &Device::Cpu).unwrap();
    let set = scenes::read_scene_set(&common::fixtures().join("scenes/heldout")).unwrap();
    assert_eq!(set.len(), 200);
    let (hits, n) = scenes::clip_top1(&embedder, &set).unwrap();
    eprintln!("CLIP text→image top-1: {hits}/{n}");
    assert!(hits as f64 >= 0.80 * n as f64, "top-1 {hits}/{n}");
}

/// Runs `cmd`, failing the test with its stderr unless it succeeds.
fn succeeds(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn easel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_easel"));
    // keep the user's real data folder, and any configured adapters, out of the test
    c.env("XDG_DATA_HOME", "/nonexistent-easel-test-data")
        .env_remove("EASEL_LORA_DIR");
    c
}

#[test]
fn a_fresh_checkout_generates_searches_and_finds_the_lora_with_no_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("x.png");
    succeeds(
        easel()
            .args([
                "generate",
                "--prompt",
                "a large red circle on a blue background",
                "--seed",
                "7",
                "-o",
            ])
            .arg(&png),
    );
    let img = image::open(&png).unwrap().to_rgb8();
    let r = scenes::check(&img);
    assert_eq!(
        (r.colour.as_deref(), r.background.as_str()),
        (Some("red"), "blue"),
        "{r:?}"
    );

    // the gallery indexes and searches with the bundled CLIP, no --clip-model
    let db = tmp.path().join("library.sqlite");
    let pictures = tmp.path().join("pictures");
    common::copy_dir(&common::fixtures().join("scenes/heldout"), &pictures);
    succeeds(easel().args(["index", "--db"]).arg(&db).arg(&pictures));
    let out = succeeds(easel().args(["search", "--db"]).arg(&db).args([
        "--top",
        "1",
        "--json",
        "a green triangle",
    ]));
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let best = scenes::check(
        &image::open(hits[0]["path"].as_str().unwrap())
            .unwrap()
            .to_rgb8(),
    );
    assert_eq!(
        (best.colour.as_deref(), best.shape.as_deref()),
        (Some("green"), Some("triangle"))
    );

    // the demo adapter is found by name in the bundled folder
    let out = easel().args(["lora", "list", "--json"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("striped"),
        "{listed}"
    );
}
