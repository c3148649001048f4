//! The studio window, driven headless by egui_kittest through the real `eframe::App`, on the
//! tiny fixture model. Each test drives frames until a condition holds, with a bound on time,
//! and then asserts; nothing sleeps and hopes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use easel::app::{StudioApp, StudioOptions};
use easel::gallery::png_meta::{read_png_metadata, write_png, GenerationMetadata};
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

mod common;

type Studio<'a> = Harness<'a, StudioApp>;

fn tiny_model() -> PathBuf {
    common::fixtures().join("sd-tiny-a")
}

fn harness(model: Option<PathBuf>, library: &Path) -> Studio<'static> {
    harness_with(StudioOptions {
        model,
        library_dir: Some(library.to_path_buf()),
        fresh: true,
        ..Default::default()
    })
}

fn harness_with(options: StudioOptions) -> Studio<'static> {
    Harness::builder()
        .with_size([1280.0, 800.0])
        .build_eframe(move |cc| StudioApp::new(cc, options).expect("the studio starts"))
}

/// Steps frames until `done` holds; fails with `what` after `limit`.
fn drive(h: &mut Studio<'_>, what: &str, limit: Duration, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    let mut frames = 0u64;
    loop {
        h.step();
        frames += 1;
        if done(h.state()) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not reached in {limit:?} ({frames} frames)"
        );
        // Yield the CPU to the worker between frames (the UI would be idle-waiting too).
        std::thread::sleep(Duration::from_millis(2));
    }
}

const LOAD: Duration = Duration::from_secs(60);
const RUN: Duration = Duration::from_secs(120);

fn ready(h: &mut Studio<'_>) {
    drive(h, "model loaded", LOAD, |a| a.studio.model.is_ready());
}

fn running_step(a: &StudioApp) -> usize {
    a.studio.running.as_ref().map_or(0, |r| r.step)
}

/// Long enough on the tiny model that a test can act in the middle of it.
fn make_jobs_long(h: &mut Studio<'_>) {
    let s = &mut h.state_mut().studio.settings;
    s.steps = 150;
    s.width = 64;
    s.height = 64;
}

#[test]
fn type_prompt_generate_see_progress_and_final_image_saved() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    h.state_mut().studio.settings.steps = 40;

    h.get_by_label("Prompt").focus();
    h.step();
    h.get_by_label("Prompt").type_text("a red circle");
    h.step();
    assert_eq!(h.state().studio.settings.prompt, "a red circle");

    h.get_by_label("Generate").click();
    drive(&mut h, "first step shown", RUN, |a| running_step(a) >= 1);
    assert!(
        h.query_by_label_contains("Step ").is_some(),
        "the progress bar shows step i/n"
    );
    assert!(
        h.query_by_label("Cancel").is_some(),
        "Generate became Cancel"
    );
    drive(&mut h, "image finished and saved", RUN, |a| {
        a.studio.history.first().is_some_and(|i| i.path.is_some())
    });
    let app = h.state();
    assert!(app.studio.running.is_none());
    assert_eq!(
        app.studio.images_saved, 1,
        "the gallery is told of the save"
    );
    assert!(
        !app.studio.metrics.preview_latency.is_empty(),
        "previews reached the canvas"
    );
    assert_eq!(
        app.studio.canvas_size,
        [32, 32],
        "the canvas holds the final image"
    );
    let item = &app.studio.history[0];
    let path = item.path.clone().expect("saved");
    assert!(
        path.starts_with(lib.path()),
        "{} is in the library",
        path.display()
    );
    let meta = read_png_metadata(&path).expect("readable PNG");
    let easel = meta.easel.expect("easel chunk");
    assert_eq!(easel.prompt, "a red circle");
    assert_eq!(easel.steps, 40);
    assert_eq!(easel.model_hash.len(), 10, "the model hash is filled in");
    h.step();
    assert!(
        h.query_by_label("Generate").is_some(),
        "Cancel became Generate again"
    );

    // The history strip: a click shows the image, one more click restores its settings.
    h.get_by_label("Image #1").click();
    h.run_steps(2);
    assert!(matches!(
        h.state().studio.showing,
        easel::app::Showing::History(0)
    ));
    h.state_mut().studio.settings.prompt = "something else".into();
    h.get_by_label("Restore #1").click();
    h.step();
    h.step();
    assert_eq!(h.state().studio.settings.prompt, "a red circle");
}

#[test]
fn cancel_mid_run_by_button_and_by_escape() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    make_jobs_long(&mut h);

    h.get_by_label("Generate").click();
    drive(&mut h, "running", RUN, |a| running_step(a) >= 2);
    h.get_by_label("Cancel").click();
    drive(&mut h, "cancelled", RUN, |a| a.studio.running.is_none());
    let app = h.state();
    assert!(
        app.studio.history.is_empty(),
        "a cancelled job leaves no image"
    );
    assert_eq!(app.studio.metrics.cancel_latency.len(), 1);

    // Ctrl+Enter generates, Esc cancels.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    drive(&mut h, "running again", RUN, |a| running_step(a) >= 2);
    h.key_press(egui::Key::Escape);
    drive(&mut h, "cancelled again", RUN, |a| {
        a.studio.running.is_none()
    });
    assert!(h.state().studio.history.is_empty());
    assert_eq!(h.state().studio.metrics.cancel_latency.len(), 2);
}

#[test]
fn live_mode_slider_release_requeues_same_seed_and_cancels_stale_job() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    make_jobs_long(&mut h);
    h.get_by_label("Live").click();
    h.step();
    assert!(h.state().studio.settings.live);

    h.get_by_label("Generate").click();
    drive(&mut h, "running", RUN, |a| running_step(a) >= 1);
    let (stale, seed, cfg) = {
        let r = h.state().studio.running.as_ref().expect("running");
        (r.job, r.recipe.seed, r.recipe.cfg_scale)
    };

    h.get_by_role_and_label(Role::Slider, "CFG scale")
        .increment_accesskit();
    drive(&mut h, "re-queued job started", RUN, |a| {
        a.studio.running.as_ref().is_some_and(|r| r.job != stale)
    });
    let app = h.state();
    let r = app.studio.running.as_ref().expect("running");
    assert_eq!(r.recipe.seed, seed, "same seed");
    assert_eq!(r.recipe.cfg_scale, cfg + 0.5, "the new CFG");
    assert_eq!(
        app.studio.metrics.cancel_latency.len(),
        1,
        "the stale job was cancelled"
    );
    assert!(
        app.studio.history.is_empty(),
        "the stale job finished nothing"
    );
    assert!(app.studio.queue.is_empty(), "nothing else queued");
    h.get_by_label("Cancel").click();
    drive(&mut h, "stopped", RUN, |a| a.studio.running.is_none());
}

/// img2img in the studio: a picture dropped on the canvas becomes the start (its size the
/// generation size), Generate records it and the strength, "Use as init" under a finished
/// image starts from that one, Clear goes back to text. The prompt shows A1111's token count.
#[test]
fn a_picture_dropped_on_the_canvas_starts_img2img() {
    let lib = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    h.state_mut().studio.settings.prompt = "a red circle".into();
    h.run_steps(2);
    let tokens = match &h.state().studio.model {
        easel::app::ModelState::Ready(info) => {
            easel::prompt::chunks::split(&info.tokenizer.0, "a red circle").token_count
        }
        _ => unreachable!(),
    };
    assert!(tokens > 0);
    assert!(h.query_by_label(&format!("{tokens}/75")).is_some());

    let picture = dir.path().join("start.png");
    let image = image::RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 9) as u8, 60])
    });
    image.save(&picture).expect("save");
    // Dropped with no pointer position it restores settings, as before; over the canvas it
    // is a starting picture.
    common::drop_file_at(&mut h, &picture, Some(egui::pos2(640.0, 380.0)));
    drive(&mut h, "picture read", LOAD, |a| a.studio.init.is_some());
    let (native, multiple) = match &h.state().studio.model {
        easel::app::ModelState::Ready(info) => (info.native_size, info.size_multiple),
        _ => unreachable!(),
    };
    let want = easel::diffusion::init_image::natural_size(&image, native, multiple);
    let s = &h.state().studio.settings;
    assert_eq!(
        (s.width, s.height),
        want,
        "the picture's size, within the model's area"
    );
    h.run_steps(2);
    assert!(h.query_by_label("Starting picture").is_some());
    assert!(h.query_by_label_contains("Runs the last").is_some());

    {
        let s = &mut h.state_mut().studio.settings;
        s.steps = 6;
        s.strength = 0.5;
    }
    h.get_by_label("Generate").click();
    drive(&mut h, "img2img saved", RUN, |a| {
        a.studio.history.first().is_some_and(|i| i.path.is_some())
    });
    let saved = h.state().studio.history[0].path.clone().expect("saved");
    let easel = read_png_metadata(&saved)
        .expect("png")
        .easel
        .expect("easel");
    let init = easel.init_image.expect("init recorded");
    assert_eq!(
        (init.path.as_str(), init.strength),
        (picture.to_str().unwrap(), 0.5)
    );

    h.get_by_label("Clear").click();
    h.run_steps(2);
    assert!(h.state().studio.init.is_none());
    h.get_by_label("Use as init").click();
    drive(&mut h, "finished image as the start", LOAD, |a| {
        a.studio.init.as_ref().is_some_and(|i| i.source == saved)
    });

    // Restoring the img2img result (dropped beside the canvas) brings its strength back and
    // offers its starting picture, which is not opened until asked for.
    h.state_mut().studio.settings.strength = 0.9;
    common::drop_file(&mut h, &saved);
    drive(&mut h, "settings restored", LOAD, |a| {
        a.studio.init_offer.is_some()
    });
    assert_eq!(h.state().studio.settings.strength, 0.5);
    assert!(h.state().studio.init.is_none());
    assert_eq!(
        h.state().studio.init_offer,
        Some((picture.clone(), None)),
        "the picture, no mask"
    );
    h.run_steps(2);
    h.get_by_label("Start from it too").click();
    drive(&mut h, "offered picture used", LOAD, |a| {
        a.studio.init.as_ref().is_some_and(|i| i.source == picture)
    });
}

/// Inpainting in the studio: "Paint a mask" over a dropped 1024² picture, a drag paints it
/// (frames measured: UI-thread work per frame while painting), undo and invert work, and the
/// job's PNG records the mask, written beside the image.
#[test]
fn a_mask_painted_on_the_canvas_inpaints_and_is_saved_beside_the_image() {
    let lib = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    let picture = dir.path().join("big.png");
    image::RgbImage::from_fn(1024, 1024, |x, y| {
        image::Rgb([(x / 4) as u8, (y / 4) as u8, 90])
    })
    .save(&picture)
    .expect("save");
    common::drop_file_at(&mut h, &picture, Some(egui::pos2(640.0, 380.0)));
    drive(&mut h, "picture read", LOAD, |a| a.studio.init.is_some());
    h.run_steps(2);
    h.get_by_label("Paint a mask (inpaint)").click();
    h.run_steps(2);
    assert_eq!(h.state().studio.showing, easel::app::Showing::Mask);

    // A drag across the middle of the canvas.
    let frames_before = h.state().studio.metrics.frame_times.len();
    let button = |pos, pressed| egui::Event::PointerButton {
        pos,
        button: egui::PointerButton::Primary,
        pressed,
        modifiers: egui::Modifiers::NONE,
    };
    let start = egui::pos2(560.0, 380.0);
    h.input_mut().events.push(egui::Event::PointerMoved(start));
    h.step();
    h.input_mut().events.push(button(start, true));
    h.step();
    for i in 1..=30 {
        let p = start + egui::vec2(i as f32 * 5.0, 0.0);
        h.input_mut().events.push(egui::Event::PointerMoved(p));
        h.step();
    }
    h.input_mut()
        .events
        .push(button(start + egui::vec2(150.0, 0.0), false));
    h.step();
    let frames = &h.state().studio.metrics.frame_times[frames_before..];
    let worst = frames.iter().max().copied().unwrap_or_default();
    eprintln!(
        "mask painting on a 1024² picture (debug build): {} frames, worst {:?}",
        frames.len(),
        worst
    );
    let painted = |a: &StudioApp| {
        let m = a
            .studio
            .init
            .as_ref()
            .and_then(|i| i.mask.as_ref())
            .expect("mask");
        m.mask().as_raw().iter().filter(|&&v| v > 127).count()
    };
    let after_stroke = painted(h.state());
    assert!(after_stroke > 1000, "{after_stroke} pixels painted");
    h.get_by_label("Undo").click();
    h.run_steps(2);
    assert_eq!(painted(h.state()), 0);
    h.get_by_label("Invert").click();
    h.run_steps(2);
    assert_eq!(painted(h.state()), 1024 * 1024);
    h.get_by_label("Undo").click();
    h.run_steps(2);
    // Paint again and generate.
    h.input_mut().events.push(egui::Event::PointerMoved(start));
    h.step();
    h.input_mut().events.push(button(start, true));
    h.step();
    h.input_mut().events.push(button(start, false));
    h.step();
    assert!(painted(h.state()) > 0);
    h.state_mut().studio.settings.steps = 4;
    // Only masked: the box around the stroke is generated, the picture keeps its 1024².
    h.state_mut().studio.settings.only_masked = true;
    h.get_by_label("Generate").click();
    drive(&mut h, "inpainted image saved", RUN, |a| {
        let failed = a.studio.notices.iter().find(|(n, _)| n.error);
        assert!(failed.is_none(), "{failed:?}");
        a.studio.history.first().is_some_and(|i| i.path.is_some())
    });
    let saved = h.state().studio.history[0].path.clone().expect("saved");
    let init = read_png_metadata(&saved)
        .expect("png")
        .easel
        .expect("easel")
        .init_image
        .expect("init");
    let mask_path = PathBuf::from(init.mask.expect("mask recorded"));
    assert!(
        mask_path.starts_with(lib.path()) && mask_path.to_string_lossy().ends_with(".mask.png")
    );
    assert_eq!(
        common::read_rgb(&saved).0,
        1024,
        "only masked keeps the picture's size"
    );
    assert_eq!(init.only_masked_padding, Some(32));
    let mask = image::open(&mask_path).expect("mask readable").to_luma8();
    assert_eq!(
        mask.dimensions(),
        (1024, 1024),
        "in the picture's proportions"
    );
    assert!(mask.as_raw().iter().any(|&v| v > 127));
}

/// Textual-inversion embeddings in the studio: the Embeddings tab lists a folder's, with their
/// vector counts, and a job calling one by name records it (A1111's `TI hashes`).
#[test]
fn the_embeddings_tab_lists_them_and_a_job_uses_them() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    h.state_mut().studio.settings.embedding_dirs = vec![common::fixtures().join("embeddings")];
    h.get_by_label("Embeddings").click();
    let start = Instant::now();
    while h.query_by_label("tinyemb2").is_none() {
        assert!(start.elapsed() < LOAD, "embeddings not listed");
        h.step();
    }
    assert!(h.query_by_label("tinyemb").is_some());
    assert!(h.query_all_by_label("3 vectors · 32").count() == 2);
    {
        let s = &mut h.state_mut().studio.settings;
        s.prompt = "a tinyemb red circle".into();
        s.steps = 2;
    }
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    drive(&mut h, "saved", RUN, |a| {
        a.studio.history.first().is_some_and(|i| i.path.is_some())
    });
    let saved = h.state().studio.history[0].path.clone().expect("saved");
    let meta = read_png_metadata(&saved).expect("png");
    let used = meta.easel.expect("easel").embeddings;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].name, "tinyemb");
    assert!(meta.a1111.expect("a1111").get("TI hashes").is_some());
}

/// Hires fix in the studio: switched on in its section, the saved image is the enlarged size
/// and records the second pass; an A1111 PNG with hires fields switches it back on.
#[test]
fn hires_fix_from_the_prompt_panel_and_from_an_a1111_png() {
    let lib = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    h.state_mut().studio.settings.steps = 4;
    h.get_by_label("Hires fix").click();
    h.run_steps(2);
    h.get_by_label("Enlarge and repaint").click();
    h.run_steps(2);
    assert!(h.state().studio.settings.hires_on);
    assert!(h.query_by_label("Final size 64×64").is_some());
    h.get_by_label("Generate").click();
    drive(&mut h, "hires image saved", RUN, |a| {
        a.studio.history.first().is_some_and(|i| i.path.is_some())
    });
    let saved = h.state().studio.history[0].path.clone().expect("saved");
    assert_eq!(common::read_rgb(&saved).0, 64);
    let easel = read_png_metadata(&saved)
        .expect("png")
        .easel
        .expect("easel");
    assert_eq!(easel.hires, Some(easel::diffusion::Hires::default()));

    h.get_by_label("Enlarge and repaint").click();
    h.run_steps(2);
    assert!(!h.state().studio.settings.hires_on);
    let a1111 = dir.path().join("a1111.png");
    write_with_chunks(
        &a1111,
        &[(
            "parameters",
            "a castle\nSteps: 20, Seed: 1, Size: 32x32, Denoising strength: 0.4, \
             Hires upscale: 1.5, Hires steps: 7, Hires upscaler: Lanczos",
        )],
    );
    common::drop_file(&mut h, &a1111);
    drive(&mut h, "restored", LOAD, |a| a.studio.settings.hires_on);
    let hs = h.state().studio.settings.hires;
    assert_eq!((hs.scale, hs.steps, hs.denoise), (1.5, 7, 0.4));
    assert_eq!(hs.upscaler, easel::diffusion::Upscaler::Lanczos);
}

fn write_with_chunks(path: &Path, chunks: &[(&str, &str)]) {
    let file = std::fs::File::create(path).expect("create");
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 8, 8);
    enc.set_color(png::ColorType::Rgb);
    for (k, v) in chunks {
        enc.add_text_chunk(k.to_string(), v.to_string())
            .expect("chunk");
    }
    let mut w = enc.write_header().expect("header");
    w.write_image_data(&[128u8; 8 * 8 * 3]).expect("pixels");
}

#[test]
fn dropping_a1111_comfyui_and_easel_pngs_restores_settings() {
    let lib = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);

    let a1111 = dir.path().join("a1111.png");
    write_with_chunks(
        &a1111,
        &[(
            "parameters",
            "a castle on a hill, golden hour\nNegative prompt: blurry, lowres\n\
             Steps: 28, Sampler: Euler a, CFG scale: 6.5, Seed: 1234567, Size: 64x96, \
             Model hash: abcdef1234, Model: dreamy",
        )],
    );
    common::drop_file(&mut h, &a1111);
    drive(&mut h, "A1111 settings restored", RUN, |a| {
        a.studio.settings.prompt == "a castle on a hill, golden hour"
    });
    let s = h.state().studio.settings.clone();
    assert_eq!(s.negative_prompt, "blurry, lowres");
    assert_eq!((s.steps, s.cfg_scale, s.seed), (28, 6.5, 1234567));
    assert_eq!((s.width, s.height), (64, 96));
    assert_eq!(s.sampler.as_deref(), Some("euler_a"));
    assert!(s.seed_locked, "a restored seed stays");
    h.step();
    assert!(
        h.query_by_label_contains("AUTOMATIC1111 parameters: restored prompt")
            .is_some(),
        "a note says what was found"
    );

    let comfy = dir.path().join("comfy.png");
    let graph = serde_json::json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": 99, "steps": 12, "cfg": 4.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 48, "height": 32, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a comfy fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}}
    });
    write_with_chunks(&comfy, &[("prompt", &graph.to_string())]);
    common::drop_file(&mut h, &comfy);
    drive(&mut h, "ComfyUI settings restored", RUN, |a| {
        a.studio.settings.prompt == "a comfy fox"
    });
    let s = h.state().studio.settings.clone();
    assert_eq!((s.steps, s.cfg_scale, s.seed), (12, 4.0, 99));
    assert_eq!((s.width, s.height), (48, 32));
    assert_eq!(s.sampler.as_deref(), Some("euler"));

    let ours = dir.path().join("easel.png");
    let meta = picture_metadata(5);
    write_png(&ours, 2, 2, &[0u8; 12], &meta).expect("write");
    common::drop_file(&mut h, &ours);
    drive(&mut h, "Easel settings restored", RUN, |a| {
        a.studio.settings.prompt == "an easel picture"
    });
    assert_eq!(h.state().studio.settings.sampler.as_deref(), Some("ddim"));
    // Its spacing comes back too, shown in the sampler's spacing choice, and goes into the
    // next job's recipe.
    assert_eq!(
        h.state().studio.settings.spacing.as_deref(),
        Some("trailing")
    );
    h.step();
    let combo = h.get_by_role_and_label(egui::accesskit::Role::ComboBox, "Spacing");
    let shown = combo.value();
    assert_eq!(
        shown.as_deref(),
        Some("trailing"),
        "the Spacing choice shows it"
    );
    assert_eq!(
        h.state().studio.recipe(1).spacing,
        Some(easel::diffusion::schedulers::Spacing::Trailing)
    );

    // A file without settings is explained, not ignored.
    let plain = dir.path().join("plain.png");
    write_with_chunks(&plain, &[]);
    common::drop_file(&mut h, &plain);
    drive(&mut h, "no-settings note", RUN, |a| {
        a.studio
            .notices
            .iter()
            .any(|(n, _)| n.error && n.text.contains("holds no generation settings"))
    });
}

#[test]
fn dropping_on_the_gallery_area_is_the_search_gesture() {
    let lib = tempfile::tempdir().expect("tempdir");
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let image = elsewhere.path().join("reference.png");
    write_with_chunks(&image, &[]);
    let mut h = harness(None, lib.path());
    h.get_by_label("Gallery").click();
    h.step();
    // Pointer over the right-hand tool area, then the drop.
    h.hover_at(egui::pos2(1200.0, 400.0));
    h.step();
    common::drop_file(&mut h, &image);
    // The gallery searches by the image with the bundled CLIP (the studio's canvas would have
    // restored settings instead, and says so when a PNG holds none): its results replace the
    // grid, with "Show all" to go back.
    let start = Instant::now();
    while h.query_by_label("Show all").is_none() {
        assert!(start.elapsed() < RUN, "no search by image in {RUN:?}");
        h.step();
    }
    let notices: Vec<String> = h
        .state()
        .studio
        .notices
        .iter()
        .map(|n| n.0.text.clone())
        .collect();
    assert!(notices.is_empty(), "{notices:?}");
}

#[test]
fn without_a_model_the_empty_state_offers_a_folder_picker() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(None, lib.path());
    h.run_steps(3);
    assert!(h.query_by_label("Welcome to Easel").is_some());
    assert!(h.query_by_label("Choose model folder…").is_some());
    assert!(h.query_by_label("Choose checkpoint file…").is_some());
    assert!(h.query_by_label_contains("model_index.json").is_some());
    // Generate is there but disabled until a model is loaded.
    h.get_by_label("Generate").click();
    h.run_steps(2);
    assert!(h.state().studio.running.is_none() && h.state().studio.queue.is_empty());

    // A folder that is not a model is refused with a message …
    let not_model = tempfile::tempdir().expect("tempdir");
    open_typed_path(&mut h, not_model.path());
    drive(&mut h, "refusal shown", LOAD, |a| {
        a.studio
            .notices
            .iter()
            .any(|(n, _)| n.error && n.text.contains("not a diffusers model folder"))
    });
    assert!(matches!(
        h.state().studio.model,
        easel::app::ModelState::None
    ));
    // … and the tiny model opens from the empty state, and is remembered.
    open_typed_path(&mut h, &tiny_model());
    ready(&mut h);
    assert_eq!(
        h.state().settings().last_model,
        Some(tiny_model().canonicalize().expect("fixture"))
    );
    h.step();
    assert!(h.query_by_label("Welcome to Easel").is_none());
}

/// Types a folder into the empty state's path field and presses Open.
fn open_typed_path(h: &mut Studio<'_>, dir: &Path) {
    h.state_mut().studio.model_path_input.clear();
    h.step();
    h.get_by_label("Or type its path:").focus();
    h.step();
    h.get_by_label("Or type its path:")
        .type_text(&dir.display().to_string());
    h.step();
    h.get_by_label("Open").click();
    h.step();
}

#[test]
fn a_folder_that_is_not_a_model_shows_the_error_in_the_window() {
    let lib = tempfile::tempdir().expect("tempdir");
    let not_model = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(not_model.path().to_path_buf()), lib.path());
    drive(&mut h, "load failed", LOAD, |a| {
        matches!(a.studio.model, easel::app::ModelState::Failed { .. })
    });
    h.step();
    assert!(h.query_by_label("That model could not be loaded").is_some());
    assert!(h
        .query_all_by_label_contains("model_index.json")
        .next()
        .is_some());
}

/// Settings saved on exit (eframe's autosave calls `save`) come back on the next start, from
/// the settings file; eframe's storage is not used for them any more.
#[test]
fn settings_round_trip_through_the_settings_file() {
    #[derive(Default)]
    struct Memory(std::collections::HashMap<String, String>);
    impl eframe::Storage for Memory {
        fn get_string(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn set_string(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
        fn remove_string(&mut self, key: &str) {
            self.0.remove(key);
        }
        fn flush(&mut self) {}
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config/settings.json");
    let studio = |file: PathBuf| {
        harness_with(StudioOptions {
            settings_file: Some(file),
            ..Default::default()
        })
    };
    let mut h = studio(file.clone());
    {
        let s = &mut h.state_mut().studio.settings;
        s.prompt = "remember me".into();
        s.cfg_scale = 9.5;
        s.tool_tab = "settings".into();
    }
    let mut storage = Memory::default();
    eframe::App::save(h.state_mut(), &mut storage);
    assert!(storage.0.is_empty(), "nothing in eframe's storage");
    let saved = h.state().settings().clone();
    drop(h);
    let h = studio(file);
    assert_eq!(h.state().settings(), &saved);
    assert_eq!(h.state().settings().prompt, "remember me");
}

/// An LCM-distilled model (lcm-tiny's UNet in a copy of sd-tiny-b) loaded with the studio's
/// 20 steps and CFG 7.5: its recipe is offered, and one click takes it.
#[test]
fn a_few_step_model_offers_its_steps_and_cfg() {
    let lib = tempfile::tempdir().expect("tempdir");
    let models = tempfile::tempdir().expect("tempdir");
    let lcm = models.path().join("lcm-tiny");
    common::copy_dir(&common::fixtures().join("sd-tiny-b"), &lcm);
    for part in ["unet", "scheduler"] {
        std::fs::remove_dir_all(lcm.join(part)).unwrap();
        common::copy_dir(
            &common::fixtures().join("lcm-tiny").join(part),
            &lcm.join(part),
        );
    }
    let mut h = harness(Some(lcm), lib.path());
    ready(&mut h);
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("looks like an LCM-distilled model")
            .is_some(),
        "no few-step offer"
    );
    h.get_by_label("Use 4 steps, CFG 8").click();
    h.run_steps(2);
    let s = &h.state().studio.settings;
    assert_eq!((s.steps, s.cfg_scale), (4, 8.0));
    assert!(h.state().studio.few_step_offer.is_none());
    assert!(h.query_by_label_contains("looks like").is_none());

    // An ordinary model offers nothing.
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    h.run_steps(2);
    assert!(h.state().studio.few_step_offer.is_none());
}

/// An SDXL model shows its second prompts and size conditioning (an SD 1.x model does not);
/// what is set there reaches the job, the PNG records it, and dropping that PNG restores it.
#[test]
fn sdxl_second_prompt_and_size_conditioning_reach_the_png_and_come_back() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    h.step();
    assert!(
        h.query_by_label_contains("SDXL: second prompt").is_none(),
        "an SD 1.x model has no SDXL fields"
    );
    drop(h);

    let mut h = harness(Some(common::fixtures().join("sdxl-tiny")), lib.path());
    ready(&mut h);
    {
        let s = &mut h.state_mut().studio.settings;
        (s.steps, s.width, s.height) = (2, 96, 64);
        s.prompt = "a red circle".into();
    }
    h.step();
    h.get_by_label_contains("SDXL: second prompt").click();
    h.run_steps(2);
    h.get_by_label("Prompt 2 (OpenCLIP bigG)").focus();
    h.step();
    h.get_by_label("Prompt 2 (OpenCLIP bigG)")
        .type_text("a watercolor forest");
    h.step();
    h.get_by_label("Original size: the image's").click();
    h.run_steps(2);
    let size = h.state().studio.settings.size_cond;
    assert_eq!(
        size.original,
        Some((96, 64)),
        "unticking starts from the image size"
    );
    h.state_mut().studio.settings.size_cond.crop = (8, 4);
    let recipe = h.state().studio.recipe(5);
    assert_eq!(recipe.sdxl.prompt_2.as_deref(), Some("a watercolor forest"));
    assert_eq!(
        recipe.sdxl.negative_prompt_2, None,
        "empty means the negative"
    );

    h.get_by_label("Generate").click();
    drive(&mut h, "SDXL image saved", RUN, |a| {
        a.studio.history.first().is_some_and(|i| i.path.is_some())
    });
    let path = h.state().studio.history[0].path.clone().unwrap();
    let sdxl = read_png_metadata(&path)
        .unwrap()
        .easel
        .unwrap()
        .sdxl
        .unwrap();
    assert_eq!(sdxl.prompt_2.as_deref(), Some("a watercolor forest"));
    assert_eq!(sdxl.size.original, Some((96, 64)));
    assert_eq!(sdxl.size.crop, (8, 4));

    {
        let s = &mut h.state_mut().studio.settings;
        s.prompt_2.clear();
        s.size_cond = Default::default();
    }
    common::drop_file(&mut h, &path);
    drive(&mut h, "SDXL settings restored", RUN, |a| {
        a.studio.settings.prompt_2 == "a watercolor forest"
    });
    let s = &h.state().studio.settings;
    assert_eq!(
        (s.size_cond.original, s.size_cond.crop),
        (Some((96, 64)), (8, 4))
    );
}

/// Generates one image (the model loaded first) and steps until its save has failed.
fn generate_until_the_save_fails(h: &mut Studio<'_>) {
    ready(h);
    h.state_mut().studio.settings.steps = 3;
    h.get_by_label("Generate").click();
    drive(h, "the save failed", RUN, |a| {
        a.studio
            .history
            .first()
            .is_some_and(|i| i.unsaved.is_some())
    });
    h.step();
}

/// A library folder that cannot be written (here: its parent is a file, which stops root too,
/// unlike permissions): the image stays in the history and on the canvas, the window says why,
/// "Retry save" writes it once the folder is fixed, and "Save as…" can write it from memory.
/// Nothing partial is left under a final name.
#[test]
fn a_failed_save_keeps_the_image_and_retry_or_save_as_writes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let blocker = tmp.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").expect("file");
    let mut h = harness(Some(tiny_model()), &blocker.join("library"));
    generate_until_the_save_fails(&mut h);
    assert!(h
        .query_by_label_contains("The image was not saved")
        .is_some());
    assert!(h.query_by_label("Not saved").is_some());
    let item = &h.state().studio.history[0];
    assert!(item.path.is_none());
    let unsaved = item.unsaved.as_ref().expect("kept");
    assert_eq!((unsaved.image.width, unsaved.image.height), (32, 32));
    assert!(
        !item.metadata.model_hash.is_empty(),
        "the save completed the metadata"
    );

    // "Save as…" from memory (the dialog aside): the PNG with its settings.
    let elsewhere = tmp.path().join("elsewhere.png");
    easel::worker::write_unsaved(&elsewhere, &unsaved.image, &item.metadata).expect("written");
    let meta = read_png_metadata(&elsewhere).expect("readable");
    assert_eq!(meta.easel.expect("settings").seed, item.metadata.seed);

    // The user points the library somewhere writable and retries.
    let lib = tmp.path().join("library");
    h.state_mut().studio.settings.library_dir = Some(lib.clone());
    h.get_by_label("Retry save").click();
    drive(&mut h, "saved on retry", RUN, |a| {
        a.studio.history[0].path.is_some()
    });
    let item = &h.state().studio.history[0];
    assert!(item.unsaved.is_none());
    let path = item.path.clone().expect("saved");
    assert!(path.starts_with(&lib));
    let meta = read_png_metadata(&path).expect("readable");
    assert_eq!(
        meta.easel.expect("settings").model_hash,
        item.metadata.model_hash
    );
    let names: Vec<_> = std::fs::read_dir(&lib)
        .expect("library")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        [path.file_name().expect("name").to_owned()],
        "nothing else"
    );
    h.step();
    assert!(h.query_by_label("Not saved").is_none());
}

/// The disk fills up during a save: the library sits on a 256 KiB tmpfs filled to the last
/// page. This test re-runs the test binary inside its own user and mount namespace
/// (`unshare -rm`, no privileges needed) for [`full_disk_inside_its_own_mount`], which does
/// the studio part there.
#[test]
fn a_full_disk_keeps_the_image_leaves_no_partial_file_and_retry_writes_it() {
    let can_mount = std::process::Command::new("unshare")
        .args(["-rm", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can_mount {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must allow `unshare -rm` (user namespaces) for the full-disk test"
        );
        eprintln!("skipped: `unshare -rm` is not available here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let script = r#"mount -t tmpfs -o size=256k tmpfs "$EASEL_FULL_DISK" &&
        exec "$0" --exact full_disk_inside_its_own_mount --ignored --nocapture"#;
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", script])
        .arg(std::env::current_exe().expect("the test binary"))
        .env("EASEL_FULL_DISK", dir.path())
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by a_full_disk_keeps_the_image_leaves_no_partial_file_and_retry_writes_it"]
fn full_disk_inside_its_own_mount() {
    let disk = PathBuf::from(std::env::var_os("EASEL_FULL_DISK").expect("set by the outer test"));
    let lib = disk.join("library");
    std::fs::create_dir(&lib).expect("library folder");
    // Every page of the tmpfs taken: the write stops short with "No space left on device".
    let filler = disk.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![7u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);

    let mut h = harness(Some(tiny_model()), &lib);
    generate_until_the_save_fails(&mut h);
    let item = &h.state().studio.history[0];
    let error = &item.unsaved.as_ref().expect("kept in memory").error;
    assert!(error.contains("No space left on device"), "{error}");
    assert!(h.query_by_label("Not saved").is_some());
    assert!(h.query_by_label_contains("No space left").is_some());
    let left: Vec<_> = std::fs::read_dir(&lib).expect("library").collect();
    assert!(
        left.is_empty(),
        "nothing partial, not even a temporary file"
    );

    // Space freed: "Retry save" writes the image from memory.
    std::fs::remove_file(&filler).expect("space freed");
    h.get_by_label("Retry save").click();
    drive(&mut h, "saved on retry", RUN, |a| {
        a.studio.history[0].path.is_some()
    });
    let path = h.state().studio.history[0].path.clone().expect("saved");
    let meta = read_png_metadata(&path).expect("a whole PNG");
    assert_eq!(
        meta.easel.expect("settings").seed,
        h.state().studio.history[0].metadata.seed
    );
    assert_eq!(std::fs::read_dir(&lib).expect("library").count(), 1);
}

/// A PNG from a stranger claiming absurd settings restores only what a generation accepts, and
/// says what it changed; nothing it names is opened.
#[test]
fn a_png_claiming_absurd_settings_restores_them_within_limits() {
    let lib = tempfile::tempdir().expect("tempdir");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness(Some(tiny_model()), lib.path());
    ready(&mut h);
    let png = dir.path().join("absurd.png");
    let prompt = format!("a cat\u{1b}[2J{}", "y".repeat(200_000));
    write_with_chunks(
        &png,
        &[(
            "parameters",
            &format!(
                "{prompt}\nSteps: 1000000000, CFG scale: 1e300, Seed: 3, \
                 Size: 1000000x1000000, Model: ../../etc/passwd"
            ),
        )],
    );
    common::drop_file(&mut h, &png);
    drive(&mut h, "restored", LOAD, |a| a.studio.settings.seed == 3);
    let s = &h.state().studio.settings;
    // Within what a generation accepts (the sliders may narrow it further).
    assert!((1..=easel::diffusion::pipeline::MAX_STEPS).contains(&s.steps));
    assert!((0.0..=100.0).contains(&s.cfg_scale));
    assert!(
        s.width <= easel::diffusion::pipeline::MAX_SIDE,
        "{}",
        s.width
    );
    assert!(s.prompt.starts_with("a cat[2J"), "no escape character");
    assert_eq!(
        s.prompt.chars().count(),
        easel::worker::restore::MAX_PROMPT_CHARS
    );
    assert!(
        h.state().studio.switch_offer.is_none(),
        "no model by that name"
    );
    h.step();
    assert!(h
        .query_by_label_contains("steps 1000000000 is outside")
        .is_some());
}

/// A settings file the studio cannot use is moved aside, not lost or overwritten: the studio
/// starts on defaults and says where the old file went.
#[test]
fn a_corrupt_settings_file_is_kept_as_a_backup_and_the_studio_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("settings.json");
    std::fs::write(&file, b"{\"format\": 1, \"settings\": {\"steps\":").expect("write");
    let mut h = harness_with(StudioOptions {
        settings_file: Some(file.clone()),
        ..Default::default()
    });
    h.step();
    assert!(h
        .query_by_label_contains("was not used: it is not a settings file")
        .is_some());
    assert_eq!(
        h.state().studio.settings,
        easel::settings::Settings::default()
    );
    let backup: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(backup.len(), 1);
    assert!(backup[0].to_string_lossy().ends_with(".bak"));
    assert_eq!(
        std::fs::read(&backup[0]).expect("backup"),
        b"{\"format\": 1, \"settings\": {\"steps\":"
    );
}

/// Settings of a small picture, as a PNG of another session would carry them.
fn picture_metadata(seed: u64) -> GenerationMetadata {
    GenerationMetadata {
        prompt: "an easel picture".into(),
        negative_prompt: String::new(),
        steps: 7,
        cfg_scale: 3.0,
        seed,
        width: 32,
        height: 32,
        sampler: "ddim".into(),
        sampler_a1111: "DDIM".into(),
        model_name: "sd-tiny-a".into(),
        model_hash: "0123456789".into(),
        spacing: Some("trailing".into()),
        clip_skip: 1,
        vae: None,
        loras: Vec::new(),
        init_noise: None,
        init_image: None,
        hires: None,
        embeddings: Vec::new(),
        sdxl: None,
        easel_version: "0.1.0".into(),
        extra: Default::default(),
    }
}

#[test]
fn a_long_session_keeps_the_newest_images_every_unsaved_one_and_what_is_shown() {
    use easel::app::{HistoryItem, Showing, Unsaved, HISTORY_LIMIT};
    let ctx = egui::Context::default();
    let worker = easel::worker::Worker::spawn(std::sync::Arc::new(|| {})).unwrap();
    let mut studio = easel::app::Studio::new(Default::default(), worker);
    let item = |job: u64, saved: bool| HistoryItem {
        job,
        number: 0,
        texture: ctx.load_texture(
            format!("history-{job}"),
            egui::ColorImage::filled([2, 2], egui::Color32::RED),
            Default::default(),
        ),
        metadata: picture_metadata(job),
        path: saved.then(|| PathBuf::from(format!("/library/{job}.png"))),
        unsaved: (!saved).then(|| Unsaved {
            error: "the disk is full".into(),
            image: easel::worker::FinishedImage {
                width: 2,
                height: 2,
                rgb: std::sync::Arc::new(vec![0; 12]),
            },
        }),
        elapsed: Duration::ZERO,
    };
    // Image 1 was never saved; image 60 is on the canvas.
    studio.add_to_history(item(1, false));
    for job in 2..=250 {
        studio.add_to_history(item(job, true));
        if job == 160 {
            studio.showing = Showing::History(studio.history.len() - 1);
        }
    }
    assert_eq!(studio.history.len(), HISTORY_LIMIT);
    let jobs: Vec<u64> = studio.history.iter().map(|h| h.job).collect();
    let newest: Vec<u64> = (1..=1).chain(152..=250).collect();
    assert_eq!(jobs, newest, "the unsaved image and the newest saved ones");
    let numbers: Vec<usize> = studio.history.iter().map(|h| h.number).collect();
    assert_eq!(
        numbers,
        newest.iter().map(|&j| j as usize).collect::<Vec<_>>()
    );
    match studio.showing {
        Showing::History(i) => assert_eq!(studio.history[i].job, 160),
        other => panic!("{other:?}"),
    }
    // Once the shown image leaves the history, the canvas goes back to live.
    for job in 251..=350 {
        studio.add_to_history(item(job, true));
    }
    assert_eq!(studio.showing, Showing::Live);
    assert_eq!(studio.history[0].job, 1);
}
