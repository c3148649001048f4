//! The LoRA panel in the real studio window (egui_kittest, headless, the tiny fixture model):
//! it lists the fixture adapters with what they are, searches them, a toggle applies one, its
//! trigger words go into the prompt, the saved PNG records it, and with Live on a weight change
//! or a toggle re-renders with the same seed — from memory, the model is never reloaded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use easel::app::{StudioApp, StudioOptions};
use easel::gallery::png_meta::read_png_metadata;
use egui::accesskit::Role;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

mod common;

type Studio<'a> = Harness<'a, StudioApp>;

const LIMIT: Duration = Duration::from_secs(120);

fn harness(library: &Path) -> Studio<'static> {
    let library = library.to_path_buf();
    let model = common::fixtures().join("sd-tiny-a");
    Harness::builder()
        .with_size([1280.0, 800.0])
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

/// Steps frames until `done` holds; fails with `what` after [`LIMIT`].
fn drive(h: &mut Studio<'_>, what: &str, done: impl Fn(&mut Studio<'_>) -> bool) {
    let start = Instant::now();
    loop {
        h.step();
        if done(h) {
            return;
        }
        assert!(start.elapsed() < LIMIT, "{what}: not reached in {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An adapter row is shown (its toggle; the slider carries the same name).
fn listed(h: &Studio<'_>, name: &str) -> bool {
    h.query_by_role_and_label(Role::CheckBox, name).is_some()
}

fn saved(h: &Studio<'_>, n: usize) -> Option<PathBuf> {
    h.state().studio.history.get(n)?.path.clone()
}

/// Waits for the `count`-th image of the session to be written and returns its path.
fn wait_for_image(h: &mut Studio<'_>, count: usize) -> PathBuf {
    drive(h, "image saved", |h| saved(h, count - 1).is_some());
    saved(h, count - 1).expect("saved")
}

#[test]
fn panel_lists_searches_toggles_and_live_rerenders_on_weight_and_toggle() {
    let lib = tempfile::tempdir().expect("tempdir");
    let mut h = harness(lib.path());
    drive(&mut h, "model loaded", |h| {
        h.state().studio.model.is_ready()
    });
    {
        let s = &mut h.state_mut().studio.settings;
        s.lora_dirs = vec![common::fixtures().join("loras")];
        s.prompt = "a red circle".into();
        s.steps = 4;
        s.seed = 5;
        s.seed_locked = true;
    }
    h.get_by_label("LoRA").click();
    drive(&mut h, "adapters listed", |h| listed(h, "tiny-detail"));
    for name in ["tiny-style", "tiny-style-peft", "tiny-style-diffusers-old"] {
        assert!(listed(&h, name), "{name} listed");
    }
    assert!(
        h.query_by_label_contains("SD 1.x · rank 4 · UNet + text · conv")
            .is_some(),
        "what the adapter is, from its header"
    );

    // Search by a trigger word: only the kohya file carries them.
    h.get_by_label("Search").focus();
    h.step();
    h.get_by_label("Search").type_text("blue background");
    h.step();
    h.step();
    assert!(!listed(&h, "tiny-detail"), "filtered out");
    assert!(listed(&h, "tiny-style"));

    // Toggle on, and put the trigger words into the prompt.
    h.get_by_role_and_label(Role::CheckBox, "tiny-style")
        .click();
    h.step();
    h.get_by_label("Trigger words").click();
    h.step();
    {
        let s = &h.state().studio.settings;
        assert_eq!(s.loras.len(), 1);
        assert!(s.loras[0].enabled && s.loras[0].weight == 1.0);
        assert_eq!(
            s.prompt,
            "a red circle, tinystyle, red circle, blue background, highly detailed, 1girl"
        );
    }
    let prompt = h.state().studio.settings.prompt.clone();

    h.get_by_label("Generate").click();
    let first = wait_for_image(&mut h, 1);
    let meta = read_png_metadata(&first)
        .expect("png")
        .easel
        .expect("easel");
    assert_eq!(meta.prompt, format!("{prompt} <lora:tiny-style:1>"));
    assert_eq!(meta.loras.len(), 1);
    assert_eq!(
        (meta.loras[0].name.as_str(), meta.loras[0].weight),
        ("tiny-style", 1.0)
    );
    assert_eq!(meta.loras[0].hash.len(), 12);

    // Live: letting go of the weight slider re-renders with the same seed.
    h.get_by_label("Live").click();
    h.step();
    h.get_by_role_and_label(Role::Slider, "tiny-style")
        .increment_accesskit();
    let second = wait_for_image(&mut h, 2);
    let meta2 = read_png_metadata(&second)
        .expect("png")
        .easel
        .expect("easel");
    assert_eq!(meta2.seed, meta.seed, "same seed");
    assert_eq!(meta2.loras[0].weight, 1.05);
    assert!(meta2.prompt.ends_with("<lora:tiny-style:1.05>"));
    let (a, b) = (common::read_rgb(&first).2, common::read_rgb(&second).2);
    assert_ne!(a, b, "the new weight changes the image");

    // Toggling off re-renders too, now without the adapter.
    h.get_by_role_and_label(Role::CheckBox, "tiny-style")
        .click();
    let third = wait_for_image(&mut h, 3);
    let meta3 = read_png_metadata(&third)
        .expect("png")
        .easel
        .expect("easel");
    assert_eq!(meta3.seed, meta.seed);
    assert!(meta3.loras.is_empty());
    assert_eq!(meta3.prompt, prompt);
    assert_ne!(common::read_rgb(&third).2, a);
    // One model load for all of it: adapters were applied from memory.
    assert!(h.state().studio.model.is_ready());
}
