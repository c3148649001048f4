//! The studio with real checkpoints: opening a file by drop, a bad file that keeps the model
//! in use, the Models tab (library, click to load, VAE / prediction without a reload), and a
//! dropped image that offers the model it was made with. Driven headless through the real
//! `eframe::App`, like tests/studio_ui.rs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use easel::app::{ModelState, StudioApp, StudioOptions};
use easel::models::device::Precision;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

mod common;

type Studio<'a> = Harness<'a, StudioApp>;

fn ckpt(name: &str) -> PathBuf {
    common::fixtures().join("checkpoints").join(name)
}

fn harness(model: PathBuf, library: &Path) -> Studio<'static> {
    let library = library.to_path_buf();
    Harness::builder()
        .with_size([1400.0, 900.0])
        .build_eframe(move |cc| {
            StudioApp::new(
                cc,
                StudioOptions {
                    model: Some(model),
                    library_dir: Some(library),
                    fresh: true,
                    ..Default::default()
                },
            )
            .expect("the studio starts")
        })
}

fn drive(h: &mut Studio<'_>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let limit = Duration::from_secs(90);
    let start = Instant::now();
    loop {
        h.step();
        if done(h.state()) {
            return;
        }
        assert!(start.elapsed() < limit, "{what}: not reached in {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn loaded(a: &StudioApp, path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap();
    matches!(&a.studio.model, ModelState::Ready(i) if i.path == want)
}

fn notice_contains(a: &StudioApp, text: &str) -> bool {
    a.studio.notices.iter().any(|(n, _)| n.text.contains(text))
}

#[test]
fn dropped_checkpoint_opens_and_bad_files_keep_the_model_in_use() {
    let lib = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(common::fixtures().join("sd-tiny-a"), lib.path());
    drive(&mut h, "folder model loaded", |a| a.studio.model.is_ready());

    common::drop_file(&mut h, &ckpt("sd1-tiny.safetensors"));
    drive(&mut h, "checkpoint loaded", |a| {
        loaded(a, &ckpt("sd1-tiny.safetensors"))
    });
    let ModelState::Ready(info) = &h.state().studio.model else {
        unreachable!()
    };
    assert_eq!(info.description, "SD 1.x · fp16 · single file");
    assert_eq!(info.native_size, 512);

    // Refused from its header, before anything is unloaded.
    common::drop_file(&mut h, &ckpt("malicious.ckpt"));
    drive(&mut h, "malicious pickle refused", |a| {
        notice_contains(a, "posix.system")
    });
    assert!(loaded(h.state(), &ckpt("sd1-tiny.safetensors")));

    // A header that looks right but a model that does not add up: found by the worker's
    // check, and the model in use stays.
    let mut t = common::load(&ckpt("sd1-tiny.safetensors"));
    t.remove("model.diffusion_model.out.2.bias");
    let incomplete = dir.path().join("incomplete.safetensors");
    candle_core::safetensors::save(&t, &incomplete).unwrap();
    common::drop_file(&mut h, &incomplete);
    drive(&mut h, "incomplete file refused", |a| {
        notice_contains(a, "conv_out.bias")
    });
    drive(&mut h, "still the previous model", |a| {
        loaded(a, &ckpt("sd1-tiny.safetensors"))
    });
    assert!(notice_contains(h.state(), "Still using sd1-tiny"));

    // A LoRA is not a model: the notice says what it is and where it goes.
    common::drop_file(
        &mut h,
        &common::fixtures().join("loras/tiny-style.safetensors"),
    );
    drive(&mut h, "LoRA explained", |a| {
        notice_contains(a, "LoRA adapter")
    });
    assert!(loaded(h.state(), &ckpt("sd1-tiny.safetensors")));
}

#[test]
fn models_tab_lists_the_library_switches_models_and_changes_prediction_in_memory() {
    let lib = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let sd1 = models.path().join("sd1-tiny.safetensors");
    let sd2 = models.path().join("sd2-tiny-v.safetensors");
    std::fs::copy(ckpt("sd1-tiny.safetensors"), &sd1).unwrap();
    std::fs::copy(ckpt("sd2-tiny-v.safetensors"), &sd2).unwrap();
    std::fs::copy(
        ckpt("sd2-tiny-v.yaml"),
        models.path().join("sd2-tiny-v.yaml"),
    )
    .unwrap();

    let mut h = harness(sd1.clone(), lib.path());
    h.state_mut().studio.settings.model_dirs = vec![models.path().to_path_buf()];
    drive(&mut h, "sd1 loaded", |a| loaded(a, &sd1));

    h.get_by_label("Models").click();
    drive(&mut h, "library listed", |a| a.studio.library.len() == 2);
    h.step();
    h.get_by_label("sd2-tiny-v").click();
    drive(&mut h, "sd2 loaded from the library", |a| loaded(a, &sd2));
    let ModelState::Ready(info) = &h.state().studio.model else {
        unreachable!()
    };
    assert_eq!(info.description, "SD 2.x · fp16 · single file");
    assert!(
        info.notes[0].starts_with("v-prediction"),
        "{:?}",
        info.notes
    );
    h.step();
    assert!(h
        .query_by_label_contains("SD 2.x · fp16 · single file")
        .is_some());

    // The per-model prediction setting: applied in memory (nothing reloaded) and remembered.
    h.get_by_role_and_label(Role::ComboBox, "Prediction")
        .click();
    h.run_steps(2);
    h.get_by_label("epsilon").click();
    drive(
        &mut h,
        "prediction changed",
        |a| matches!(&a.studio.model, ModelState::Ready(i) if i.notes[0] == "epsilon prediction: your setting"),
    );
    let ModelState::Ready(info) = &h.state().studio.model else {
        unreachable!()
    };
    assert!(
        info.load_duration < Duration::from_millis(200),
        "no reload: {:?}",
        info.load_duration
    );
    let canonical = std::fs::canonicalize(&sd2).unwrap();
    assert_eq!(
        h.state().studio.settings.model_choices[&canonical]
            .prediction
            .as_deref(),
        Some("epsilon")
    );

    // Half-precision weights: a full reload (other weights), and the choice is kept for
    // every model (the switch below loads sd1 in bf16 too).
    h.get_by_role_and_label(Role::ComboBox, "Weights").click();
    h.run_steps(2);
    h.get_by_label("bf16").click();
    drive(
        &mut h,
        "reloaded with bf16 weights",
        |a| matches!(&a.studio.model, ModelState::Ready(i) if i.options.precision == Precision::Bf16),
    );
    assert_eq!(h.state().studio.settings.precision, Precision::Bf16);

    // An A1111 image made with the other model offers it; one click switches.
    let png = models.path().join("made-with-sd1.png");
    let file = std::fs::File::create(&png).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 8, 8);
    enc.set_color(png::ColorType::Rgb);
    enc.add_text_chunk(
        "parameters".into(),
        "a red circle\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, \
         Model hash: 0000000000, Model: sd1-tiny, Clip skip: 2"
            .into(),
    )
    .unwrap();
    enc.write_header()
        .unwrap()
        .write_image_data(&[0u8; 192])
        .unwrap();
    common::drop_file(&mut h, &png);
    drive(&mut h, "switch offered", |a| {
        a.studio
            .switch_offer
            .as_ref()
            .is_some_and(|e| e.name == "sd1-tiny")
    });
    assert_eq!(h.state().studio.settings.clip_skip, 2, "Clip skip restored");
    h.step();
    h.get_by_label("Switch to it").click();
    drive(&mut h, "switched to sd1", |a| loaded(a, &sd1));
    let ModelState::Ready(info) = &h.state().studio.model else {
        unreachable!()
    };
    assert_eq!(info.options.precision, Precision::Bf16);
}

#[test]
fn taesd_toggles_apply_in_memory_with_the_file_from_the_model_folders() {
    let lib = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let sd1 = models.path().join("sd1-tiny.safetensors");
    std::fs::copy(ckpt("sd1-tiny.safetensors"), &sd1).unwrap();
    // ComfyUI's place for it.
    let approx = models.path().join("vae_approx");
    std::fs::create_dir(&approx).unwrap();
    let taesd = approx.join("taesd_decoder.safetensors");
    std::fs::copy(
        common::fixtures().join("taesd-tiny-original/taesd_decoder.safetensors"),
        &taesd,
    )
    .unwrap();

    let mut h = harness(sd1.clone(), lib.path());
    h.state_mut().studio.settings.model_dirs = vec![models.path().to_path_buf()];
    drive(&mut h, "sd1 loaded", |a| loaded(a, &sd1));
    h.get_by_label("Models").click();
    h.run_steps(2);
    h.get_by_label("Real previews (TAESD)").click();
    drive(&mut h, "TAESD previews on", |a| {
        matches!(&a.studio.model, ModelState::Ready(i)
            if i.options.taesd.as_ref().is_some_and(|t| t.preview && !t.final_decode))
    });
    let ModelState::Ready(info) = &h.state().studio.model else {
        unreachable!()
    };
    assert_eq!(info.options.taesd.as_ref().unwrap().path, taesd);
    assert!(
        info.load_duration < Duration::from_millis(500),
        "the base model was reloaded: {:?}",
        info.load_duration
    );
    assert!(h.state().studio.settings.taesd_preview);

    h.run_steps(2);
    h.get_by_label("Real previews (TAESD)").click();
    drive(
        &mut h,
        "TAESD off",
        |a| matches!(&a.studio.model, ModelState::Ready(i) if i.options.taesd.is_none()),
    );
}
