//! A1111's prompt language against a Python reproduction of A1111's own code fed to diffusers
//! (tests/fixtures/make_prompts.py): the parsed runs and weights, the 75-token chunks (comma
//! backtrack, BREAK, padding), the weighted text states, and whole generations conditioned on
//! them, for two tiny models (pad with the end token; pad with `!`). No case may be skipped:
//! each holds a weighted chunk whose rescaling the references check.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use easel::diffusion::Pipeline;
use easel::prompt::{chunks, emphasis};

/// The tiny model with the text encoder the references used: its own, with a final-layer-norm
/// bias (the tiny models have none, so their states average 0 and A1111's rescaling to the
/// original mean would divide 0 by 0; real CLIPs have one).
fn pipeline(model: &str) -> (Pipeline, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(model);
    copy_dir(&fixtures().join(model), &dir);
    std::fs::remove_dir_all(dir.join("text_encoder")).unwrap();
    copy_dir(
        &fixtures()
            .join("prompt-tiny")
            .join(model)
            .join("text_encoder"),
        &dir.join("text_encoder"),
    );
    let p = Pipeline::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{model}: {e}"));
    (p, tmp)
}

fn refs_dir() -> std::path::PathBuf {
    fixtures().join("refs/prompts")
}

fn runs_of(v: &serde_json::Value) -> Vec<(String, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_f64().unwrap()))
        .collect()
}

fn rows<T: candle_core::WithDType>(t: &Tensor) -> Vec<Vec<T>> {
    t.to_dtype(T::DTYPE).unwrap().to_vec2().unwrap()
}

#[test]
fn parsing_chunking_and_weighted_states_match_a1111() {
    for model in ["sd-tiny-a", "sd-tiny-b"] {
        let (p, _tmp) = pipeline(model);
        let refs = load(&refs_dir().join(format!("{model}.safetensors")));
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(refs_dir().join(format!("{model}.json"))).unwrap(),
        )
        .unwrap();
        let cases = meta.as_object().unwrap();
        assert!(cases.len() >= 6);
        for (case, m) in cases {
            let prompt = m["prompt"].as_str().unwrap();
            let negative = m["negative_prompt"].as_str().unwrap();
            for (text, runs_key, count_key, key) in [
                (prompt, "runs", "token_count", "prompt"),
                (
                    negative,
                    "negative_runs",
                    "negative_token_count",
                    "negative",
                ),
            ] {
                let ours: Vec<(String, f64)> = emphasis::parse(text)
                    .into_iter()
                    .map(|r| (r.text, r.weight))
                    .collect();
                // Within a unit in the last place: serde_json's default float parsing may be
                // one off (the parser's own unit tests hold A1111's doctests to the bit).
                let want = runs_of(&m[runs_key]);
                let same = ours.len() == want.len()
                    && ours.iter().zip(&want).all(|((t, w), (wt, ww))| {
                        t == wt && (w - ww).abs() <= 2.0 * f64::EPSILON * ww.abs()
                    });
                assert!(
                    same,
                    "{model}/{case}: runs of {text:?}: {ours:?} vs {want:?}"
                );

                let split = chunks::split(&p.model.tokenizer, text);
                assert_eq!(
                    split.token_count as u64,
                    m[count_key].as_u64().unwrap(),
                    "{model}/{case}: token count of {text:?}"
                );
                let want_ids: Vec<Vec<i64>> = rows(&refs[&format!("{case}_{key}_ids")]);
                let want_weights: Vec<Vec<f32>> = rows(&refs[&format!("{case}_{key}_weights")]);
                // The reference is padded to the longer of prompt and negative with empty chunks.
                let empty = chunks::empty(&p.model.tokenizer);
                for (i, (ids, weights)) in want_ids.iter().zip(&want_weights).enumerate() {
                    let chunk = split.chunks.get(i).unwrap_or(&empty);
                    let ours: Vec<i64> = chunk.ids.iter().map(|&t| t as i64).collect();
                    assert_eq!(&ours, ids, "{model}/{case}: {key} chunk {i} ids");
                    assert_eq!(
                        &chunk.weights, weights,
                        "{model}/{case}: {key} chunk {i} weights"
                    );
                }
                assert!(split.chunks.len() <= want_ids.len());
            }
            // Both encoded as one guided run encodes them: negative first, padded to one length.
            let enc = p
                .encode_texts(&[negative, prompt], &[negative, prompt], 1)
                .unwrap();
            for (i, key) in ["negative", "prompt"].into_iter().enumerate() {
                let ours = enc.states.narrow(0, i, 1).unwrap();
                let want = &refs[&format!("{case}_{key}_states")];
                assert_eq!(
                    ours.dims(),
                    want.dims(),
                    "{model}/{case}: {key} states shape"
                );
                let d = max_abs_diff(&ours, want);
                assert!(d < TOL, "{model}/{case}: {key} states differ by {d}");
            }
        }
    }
}

/// The cases the reference covers: a backtrack at a comma and a BREAK really happened.
#[test]
fn the_reference_cases_exercise_backtrack_and_break() {
    let (p, _tmp) = pipeline("sd-tiny-a");
    let tok = &p.model.tokenizer;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs_dir().join("sd-tiny-a.json")).unwrap())
            .unwrap();
    let long = chunks::split(tok, meta["long"]["prompt"].as_str().unwrap());
    assert_eq!(long.chunks.len(), 2);
    let first = &long.chunks[0].ids;
    let end = first.iter().position(|&t| t == tok.eos_id()).unwrap();
    assert!(end < 76, "the first chunk was cut at a comma");
    assert_eq!(first[end - 1], tok.tokenize(",")[0]);
    let broken = chunks::split(tok, meta["break"]["prompt"].as_str().unwrap());
    assert_eq!(broken.chunks.len(), 2);
}

/// Whole runs: diffusers given the reproduction's states through `prompt_embeds`, against
/// Easel given the prompt text.
#[test]
fn generations_from_weighted_chunked_prompts_match_diffusers() {
    for (model, case) in [("sd-tiny-a", "long"), ("sd-tiny-b", "break")] {
        let (p, _tmp) = pipeline(model);
        let init = load(
            &fixtures()
                .join("refs")
                .join(model)
                .join("init_noise.safetensors"),
        )["noise"]
            .clone();
        check_recorded_run(&p, &refs_dir(), &format!("{model}_{case}"), init, 1);
    }
}

/// Textual inversion against diffusers' `load_textual_inversion` (A1111's `.pt` format): the
/// name in the prompt takes the embedding's vectors; the safetensors form loads too; an
/// embedding for another text encoder is never matched (the name stays words).
#[test]
fn textual_inversion_matches_diffusers() {
    let (mut p, _tmp) = pipeline("sd-tiny-a");
    let (found, skipped) = easel::prompt::embeddings::scan(&[fixtures().join("embeddings")]);
    assert!(skipped.is_empty(), "{skipped:?}");
    let names: Vec<&str> = found.iter().map(|e| e.name.as_str()).collect();
    // tinyxl is SDXL's (tests/sdxl.rs); its CLIP-L vectors are this model's width too.
    assert_eq!(names, ["tinyemb", "tinyemb2", "tinyxl"]);
    assert!(found[..2]
        .iter()
        .all(|e| e.len() == 3 && e.hash.len() == 12));
    p.embeddings = found;
    let refs = load(&refs_dir().join("embedding.safetensors"));
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refs_dir().join("embedding.json")).unwrap())
            .unwrap();
    let prompt = meta["prompt"].as_str().unwrap();
    let states = p.encode_prompt(prompt).unwrap();
    let d = max_abs_diff(&states, &refs["states"]);
    assert!(d < TOL, "states with the embedding differ by {d}");
    let used: Vec<&str> = p
        .embeddings_used(&[prompt])
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(used, ["tinyemb"]);
    // The safetensors file holds other vectors under its own name.
    let other = p
        .encode_prompt(&prompt.replace("tinyemb", "tinyemb2"))
        .unwrap();
    assert!(max_abs_diff(&other, &states) > 1e-3);

    // Without embeddings the name is read as words, as diffusers reads it.
    let embeddings = std::mem::take(&mut p.embeddings);
    let words = p.encode_prompt(prompt).unwrap();
    let d = max_abs_diff(&words, &refs["as_words"]);
    assert!(d < TOL, "as words: {d}");

    // An embedding of another width (another model's) is skipped: words again.
    let tmp = tempfile::tempdir().unwrap();
    let wide = tmp.path().join("tinyemb.safetensors");
    let t = candle_core::Tensor::ones((2, 48), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("emb_params", t)]), &wide)
        .unwrap();
    let (wide, _) = easel::prompt::embeddings::scan(&[tmp.path().to_path_buf()]);
    assert_eq!(wide[0].widths(), "48");
    p.embeddings = wide;
    assert!(p.embeddings_used(&[prompt]).is_empty());
    let d = max_abs_diff(&p.encode_prompt(prompt).unwrap(), &refs["as_words"]);
    assert!(d < TOL, "another width: {d}");
    drop(embeddings);
}
