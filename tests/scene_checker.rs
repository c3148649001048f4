//! The scene checker against ground truth: scenes drawn by training/scenes.py (committed under
//! tests/fixtures/scenes, with their attributes in index.json) must be read back correctly,
//! or the quality numbers of the default model would measure the checker, not the model.

use std::path::Path;

use easel::scenes::{check, read_scene_set};

fn set(name: &str) -> Vec<(easel::scenes::SceneTruth, image::RgbImage)> {
    read_scene_set(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/scenes")
            .join(name),
    )
    .unwrap()
}

#[test]
fn reads_colours_backgrounds_and_shapes_of_drawn_scenes() {
    let set = set("heldout");
    assert_eq!(set.len(), 200);
    let mut wrong = Vec::new();
    for (t, img) in &set {
        let r = check(img);
        let ok = r.background == t.background
            && r.colour.as_deref() == Some(t.colour.as_str())
            && r.shape.as_deref() == Some(t.shape.as_str())
            && !r.striped;
        if !ok {
            wrong.push(format!(
                "{}: {} {} on {} read as {r:?}",
                t.file, t.colour, t.shape, t.background
            ));
        }
    }
    // the drawn scenes are exact; allow one in a hundred for the smallest anti-aliased stars
    assert!(
        wrong.len() <= 2,
        "{} of 200 misread:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn detects_stripes() {
    for (t, img) in set("striped") {
        let r = check(&img);
        assert!(t.striped && r.striped, "{}: {r:?}", t.file);
        assert_eq!(r.colour.as_deref(), Some(t.colour.as_str()), "{}", t.file);
        assert_eq!(r.background, t.background, "{}", t.file);
    }
}

#[test]
fn a_plain_picture_has_no_shape() {
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([40, 70, 210]));
    let r = check(&img);
    assert_eq!(
        (r.background.as_str(), r.colour, r.shape),
        ("blue", None, None)
    );
}
