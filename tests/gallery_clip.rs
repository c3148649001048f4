//! Easel's CLIP embeddings against transformers' `CLIPModel` (tests/fixtures/clip-tiny, made by
//! make_fixtures.py section 6): features from the same ids / pixels within 1e-4, features from
//! the raw image files through Easel's own preprocessing within 1e-2 cosine, same rankings.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use easel::gallery::embedder::unit;
use easel::gallery::preprocess::decode_rgb;
use easel::gallery::query::embed_image_file;
use easel::gallery::{ClipEmbedder, GalleryError};

struct Refs {
    prompts: Vec<String>,
    prompt_ids: Vec<Vec<u32>>,
    images: Vec<String>,
    text_to_image: Vec<Vec<usize>>,
    image_to_image: Vec<Vec<usize>>,
    tensors: std::collections::HashMap<String, Tensor>,
}

fn clip_dir() -> PathBuf {
    common::fixtures().join("clip-tiny")
}

fn refs_dir() -> PathBuf {
    common::fixtures().join("refs").join("clip")
}

fn refs() -> Refs {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs_dir().join("features.json")).unwrap())
            .unwrap();
    let strings = |k: &str| -> Vec<String> {
        json[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let matrix = |k: &str| -> Vec<Vec<usize>> { serde_json::from_value(json[k].clone()).unwrap() };
    Refs {
        prompts: strings("prompts"),
        prompt_ids: serde_json::from_value(json["prompt_ids"].clone()).unwrap(),
        images: strings("images"),
        text_to_image: matrix("text_to_image_ranking"),
        image_to_image: matrix("image_to_image_ranking"),
        tensors: common::load(&refs_dir().join("features.safetensors")),
    }
}

fn embedder() -> ClipEmbedder {
    ClipEmbedder::load(&clip_dir(), &Device::Cpu).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let a = unit(a.to_vec());
    let b = unit(b.to_vec());
    a.iter().zip(&b).map(|(x, y)| x * y).sum()
}

fn ranking(query: &[f32], items: &[Vec<f32>]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    let score = |i: usize| cosine(query, &items[i]);
    idx.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
    idx
}

#[test]
fn text_features_equal_get_text_features_from_the_same_ids() {
    let r = refs();
    let e = embedder();
    let ids = r.tensors["input_ids"].to_dtype(DType::U32).unwrap();
    let padded: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    let ours = e.text_features(&padded).unwrap();
    let diff = common::max_abs_diff(&ours, &r.tensors["text_features"]);
    println!("text features, padded ids: max |diff| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
    // Without the padding (what Easel feeds its own queries) the features are the same.
    let ours = e.text_features(&r.prompt_ids).unwrap();
    let diff = common::max_abs_diff(&ours, &r.tensors["text_features"]);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn text_embeddings_from_our_tokenizer_equal_transformers() {
    let r = refs();
    let e = embedder();
    let theirs = rows(&r.tensors["text_features"]);
    for (prompt, t) in r.prompts.iter().zip(&theirs) {
        let ours = e.embed_text(prompt).unwrap();
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "not unit length: {norm}");
        let t = unit(t.clone());
        let diff = ours
            .iter()
            .zip(&t)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{prompt:?}: {diff}");
    }
}

#[test]
fn image_features_equal_get_image_features_from_the_same_pixels() {
    let r = refs();
    let e = embedder();
    let ours = e.image_features(&r.tensors["pixel_values"]).unwrap();
    let diff = common::max_abs_diff(&ours, &r.tensors["image_features"]);
    println!("image features, same pixels: max |diff| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
}

/// Easel's preprocessing reproduces transformers' (Pillow) bicubic resize byte for byte on
/// PNGs. A JPEG differs by the decoders alone: Pillow's libjpeg-turbo and the `image` crate
/// upsample chroma differently, a few levels at sharp colour edges.
#[test]
fn preprocessing_gives_transformers_pixels() {
    let r = refs();
    let e = embedder();
    let theirs = &r.tensors["pixel_values"];
    for (i, name) in r.images.iter().enumerate() {
        let bytes = std::fs::read(refs_dir().join("images").join(name)).unwrap();
        let img = decode_rgb(&bytes).unwrap();
        let ours = e.preprocess().pixels(&img);
        let t = theirs
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diffs: Vec<f32> = ours.iter().zip(&t).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        println!("{name}: pixel diff max {max:.2e}, mean {mean:.2e}");
        // One 8-bit level is 1/255/std ≈ 0.0146 after normalising.
        if name.ends_with(".png") {
            assert!(max < 1e-5, "{name}: {max}");
        } else {
            assert!(max < 0.2 && mean < 0.01, "{name}: max {max}, mean {mean}");
        }
    }
}

#[test]
fn raw_files_embed_within_1e_2_cosine_and_rank_the_same() {
    let r = refs();
    let e = embedder();
    let theirs = rows(&r.tensors["image_features"]);
    let ours: Vec<Vec<f32>> = r
        .images
        .iter()
        .map(|n| embed_image_file(&e, &refs_dir().join("images").join(n)).unwrap())
        .collect();
    for ((name, o), t) in r.images.iter().zip(&ours).zip(&theirs) {
        let c = cosine(o, t);
        println!("{name}: 1 - cosine = {:.2e}", 1.0 - c);
        assert!(1.0 - c < 1e-2, "{name}: cosine {c}");
    }
    for (p, prompt) in r.prompts.iter().enumerate() {
        let q = e.embed_text(prompt).unwrap();
        assert_eq!(ranking(&q, &ours), r.text_to_image[p], "{prompt:?}");
    }
    for (i, name) in r.images.iter().enumerate() {
        assert_eq!(ranking(&ours[i], &ours), r.image_to_image[i], "{name}");
    }
}

fn with_config_edit(edit: impl Fn(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clip");
    common::copy_dir(&clip_dir(), &dir);
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    (tmp, dir)
}

#[test]
fn a_config_candle_cannot_run_is_refused_naming_the_file() {
    let (_tmp, dir) = with_config_edit(|c| c["vision_config"]["hidden_act"] = "gelu".into());
    let err = ClipEmbedder::load(&dir, &Device::Cpu)
        .err()
        .expect("gelu must be refused");
    let msg = err.to_string();
    assert!(matches!(err, GalleryError::Model(_)), "{msg}");
    assert!(msg.contains("config.json") && msg.contains("gelu"), "{msg}");
}

#[test]
fn weights_that_do_not_fit_the_config_name_both_files() {
    let (_tmp, dir) = with_config_edit(|c| c["projection_dim"] = 16.into());
    let msg = ClipEmbedder::load(&dir, &Device::Cpu)
        .err()
        .expect("wrong projection_dim must fail")
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn the_model_id_follows_the_files() {
    let a = embedder();
    assert_eq!(a.model_id(), embedder().model_id());
    let (_tmp, dir) = with_config_edit(|c| c["logit_scale_init_value"] = 1.0.into());
    let b = ClipEmbedder::load(&dir, &Device::Cpu).unwrap();
    assert_ne!(a.model_id(), b.model_id());
    assert_eq!(a.dim(), 24);
}
