//! The procedural scenes the bundled default model was trained on, and a checker that reads
//! a picture back into (shape, colour, background, striped) from its pixels.
//!
//! The vocabulary is `training/scenes.json`, shared with the Python scene generator
//! (`training/scenes.py`), so the names and colours the checker knows are exactly the ones the
//! model saw. The checker is what the quality tests and `easel bench-model` use to score
//! generated images without anyone looking at them.

mod checker;
pub mod quality;

pub use checker::{check, Reading};
pub use quality::{measure, QualityReport};

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context;
use image::RgbImage;
use serde::Deserialize;

use crate::gallery::embedder::ClipEmbedder;

/// `training/scenes.json`.
#[derive(Debug, Deserialize)]
pub struct SceneSpec {
    pub image_size: u32,
    /// Named colours in file order (the order the generator draws them in).
    #[serde(deserialize_with = "ordered_colours")]
    pub colours: Vec<(String, [u8; 3])>,
    pub stripe_colour: [u8; 3],
    pub stripe_period: u32,
    pub shapes: Vec<String>,
    pub sizes: std::collections::BTreeMap<String, f32>,
    pub square_side: f32,
    pub ring_inner: f32,
    pub star_inner: f32,
}

fn ordered_colours<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, [u8; 3])>, D::Error> {
    // serde_json's Map keeps insertion order only with a feature; a visitor keeps it always
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, [u8; 3])>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of colour name to [r, g, b]")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// The scene vocabulary, parsed once. The file is compiled in, and a test parses it, so this
/// cannot fail at run time.
pub fn spec() -> &'static SceneSpec {
    static SPEC: OnceLock<SceneSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        #[allow(clippy::expect_used)] // compiled-in file, parsed by a unit test
        serde_json::from_str(include_str!("../../training/scenes.json"))
            .expect("training/scenes.json is valid (checked by scenes::tests)")
    })
}

/// What a scene prompt asks for: the attributes the checker can verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneAsk {
    pub shape: String,
    pub colour: String,
    pub background: String,
    pub size: String,
    pub striped: bool,
}

impl SceneAsk {
    /// The prompt in the training captions' main phrasing.
    pub fn prompt(&self) -> String {
        let striped = if self.striped { ", striped" } else { "" };
        format!(
            "a {} {} {} on a {} background{striped}",
            self.size, self.colour, self.shape, self.background
        )
        .replace(" a orange", " an orange")
    }

    /// `n` asks that cycle through every shape, colour, background and size, deterministically
    /// (shape colour and background always differ).
    pub fn spread(n: usize, striped: bool) -> Vec<SceneAsk> {
        let s = spec();
        let nc = s.colours.len();
        let sizes: Vec<&String> = s.sizes.keys().collect();
        (0..n)
            .map(|i| {
                let colour = i % nc;
                // a background offset that walks through all the other colours
                let background = (colour + 1 + (i / nc) % (nc - 1)) % nc;
                SceneAsk {
                    shape: s.shapes[i % s.shapes.len()].clone(),
                    colour: s.colours[colour].0.clone(),
                    background: s.colours[background].0.clone(),
                    size: sizes[(i / s.shapes.len()) % sizes.len()].clone(),
                    striped,
                }
            })
            .collect()
    }
}

/// One scene of a set written by `training/scenes.py OUT` (its `index.json` entry).
#[derive(Debug, Clone, Deserialize)]
pub struct SceneTruth {
    pub file: String,
    pub caption: String,
    pub shape: String,
    pub colour: String,
    pub background: String,
    pub striped: bool,
}

/// Reads a scene set: `index.json` and the images it lists.
pub fn read_scene_set(dir: &Path) -> anyhow::Result<Vec<(SceneTruth, RgbImage)>> {
    let index = dir.join("index.json");
    let text = std::fs::read_to_string(&index).with_context(|| index.display().to_string())?;
    let truths: Vec<SceneTruth> =
        serde_json::from_str(&text).with_context(|| index.display().to_string())?;
    truths
        .into_iter()
        .map(|t| {
            let path = dir.join(&t.file);
            let img = image::open(&path)
                .with_context(|| path.display().to_string())?
                .to_rgb8();
            Ok((t, img))
        })
        .collect()
}

/// CLIP text→image retrieval over a scene set: for each scene, the query "a {colour} {shape}"
/// is scored against every image, and it counts as a hit when the best image has that colour
/// and shape (other scenes may share them). Returns (hits, queries).
pub fn clip_top1(
    embedder: &ClipEmbedder,
    set: &[(SceneTruth, RgbImage)],
) -> anyhow::Result<(usize, usize)> {
    let pixels: Vec<Vec<f32>> = set
        .iter()
        .map(|(_, img)| embedder.preprocess().pixels(img))
        .collect();
    let images = embedder.embed_pixels(&pixels)?;
    let mut hits = 0;
    for (t, _) in set {
        let q = embedder.embed_text(&format!("a {} {}", t.colour, t.shape))?;
        let score = |e: &Vec<f32>| e.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>();
        let best = images
            .iter()
            .enumerate()
            .max_by(|a, b| score(a.1).total_cmp(&score(b.1)))
            .map(|(i, _)| &set[i].0);
        hits += best.is_some_and(|b| b.colour == t.colour && b.shape == t.shape) as usize;
    }
    Ok((hits, set.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_parses_and_keeps_its_order() {
        let s = spec();
        assert!(s.colours.len() >= 8 && s.shapes.len() >= 5, "{s:?}");
        assert_eq!(s.colours[0].0, "red");
        assert_eq!(s.shapes, ["circle", "square", "triangle", "star", "ring"]);
    }

    #[test]
    fn spread_covers_every_attribute_and_never_matches_colours() {
        let asks = SceneAsk::spread(48, false);
        let s = spec();
        for (name, _) in &s.colours {
            assert!(
                asks.iter().any(|a| &a.colour == name)
                    && asks.iter().any(|a| &a.background == name)
            );
        }
        for shape in &s.shapes {
            assert!(asks.iter().any(|a| &a.shape == shape));
        }
        assert!(asks.iter().all(|a| a.colour != a.background));
        assert!(asks.iter().any(|a| a.size == "small") && asks.iter().any(|a| a.size == "large"));
        assert_eq!(
            asks[0].prompt(),
            "a large red circle on an orange background"
        );
    }
}
