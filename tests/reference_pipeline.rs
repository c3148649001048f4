//! The pipeline against diffusers: token ids, text-encoder states, per-step latents and the final
//! image of two tiny random SD models (different shapes, one non-square, one v-prediction),
//! recorded by tests/fixtures/make_fixtures.py.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use easel::diffusion::noise::NoiseSource;
use easel::diffusion::schedulers::Sampler;
use easel::diffusion::{GenerateRequest, Outcome, Pipeline};

/// Text states and latents: f32 on both sides, so 1e-4 absolute…
const TOL: f32 = 1e-4;

/// …except where diffusers' own f32 result is further than that from its f64 run (sigma-space
/// samplers carry latents of magnitude ~50, where one f32 ulp is ~4e-6): there two correct f32
/// implementations may each be that far from the exact value, so allow twice diffusers' own error.
fn step_tolerance(refs: &std::collections::HashMap<String, Tensor>, i: usize) -> f32 {
    let own = max_abs_diff(
        &refs[&format!("latents_{i}")],
        &refs[&format!("latents64_{i}")],
    );
    TOL.max(2.0 * own)
}

/// Replays the noise diffusers drew, in order.
struct Replay(VecDeque<Tensor>);

impl NoiseSource for Replay {
    fn randn(&mut self, shape: &[usize], _device: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .0
            .pop_front()
            .expect("the sampler drew more noise than diffusers did");
        assert_eq!(t.dims(), shape, "noise shape");
        Ok(t)
    }
}

fn pipeline(model: &str) -> Pipeline {
    Pipeline::load(&fixtures().join(model), &Device::Cpu).unwrap_or_else(|e| panic!("{model}: {e}"))
}

#[test]
fn text_encoder_matches_transformers() {
    for model in ["sd-tiny-a", "sd-tiny-b"] {
        let p = pipeline(model);
        let refs = load(&fixtures().join("refs").join(model).join("text.safetensors"));
        for (text, ids_key, states_key) in [
            (
                "a red circle on a blue background, highly detailed",
                "prompt_ids",
                "prompt_states",
            ),
            ("blurry, ugly", "negative_ids", "negative_states"),
        ] {
            let ids: Vec<i64> = refs[ids_key].flatten_all().unwrap().to_vec1().unwrap();
            let ours: Vec<i64> = p
                .model
                .tokenizer
                .encode(text)
                .ids
                .iter()
                .map(|&i| i as i64)
                .collect();
            assert_eq!(ours, ids, "{model}: token ids of {text:?}");
            let (states, warning) = p.encode_prompt(text).unwrap();
            assert!(warning.is_none());
            let d = max_abs_diff(&states, &refs[states_key]);
            assert!(d < TOL, "{model}: {states_key} differs by {d}");
        }
    }
}

/// Runs one recorded case and checks every step's latents and the final image.
fn check_case(model: &str, case: &str) {
    let p = pipeline(model);
    let dir = fixtures().join("refs").join(model);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap())
            .unwrap();
    let refs = load(&dir.join(format!("{case}.safetensors")));
    let init = load(&dir.join("init_noise.safetensors"))["noise"].clone();
    let sampler: Sampler = meta["sampler"].as_str().unwrap().parse().unwrap();

    let mut req = GenerateRequest::new(&p.model, meta["prompt"].as_str().unwrap(), 0);
    req.negative_prompt = meta["negative_prompt"].as_str().unwrap().to_string();
    req.steps = meta["steps"].as_u64().unwrap() as usize;
    req.cfg_scale = meta["guidance_scale"].as_f64().unwrap();
    req.width = meta["width"].as_u64().unwrap() as usize;
    req.height = meta["height"].as_u64().unwrap() as usize;
    req.sampler = sampler;
    req.init_noise = Some(init);

    let mut noise = Replay(
        (0..req.steps)
            .filter_map(|i| refs.get(&format!("noise_{i}")).cloned())
            .collect(),
    );
    let mut worst = 0f32;
    let mut steps_seen = 0;
    let outcome = p
        .generate_with_noise(&req, &mut noise, &AtomicBool::new(false), &mut |s| {
            let i = s.step - 1;
            let d = max_abs_diff(s.latents, &refs[&format!("latents_{i}")]);
            let tol = step_tolerance(&refs, i);
            assert!(
                d < tol,
                "{model}/{case}: latents after step {i} differ by {d} (allowed {tol})"
            );
            worst = worst.max(d);
            steps_seen += 1;
        })
        .unwrap();
    assert_eq!(steps_seen, req.steps);
    assert!(
        noise.0.is_empty(),
        "{model}/{case}: diffusers drew {} more noise tensors",
        noise.0.len()
    );
    let Outcome::Finished(image) = outcome else {
        panic!("not finished")
    };
    let d = max_abs_diff(&image.pixels, &refs["image"]);
    assert!(
        d < 2.0 / 255.0,
        "{model}/{case}: decoded image differs by {d}"
    );
    let (w, h, png) = read_rgb(&dir.join(format!("{case}.png")));
    assert_eq!((w as usize, h as usize), (image.width, image.height));
    let d8 = max_u8_diff(&image.rgb, &png);
    assert!(d8 <= 2, "{model}/{case}: 8-bit image differs by {d8}/255");
    eprintln!("{model}/{case}: worst latent diff {worst:.2e}, image diff {d:.2e}, 8-bit diff {d8}");
}

#[test]
fn ddim_matches_diffusers() {
    check_case("sd-tiny-a", "ddim");
    check_case("sd-tiny-b", "ddim");
}

#[test]
fn euler_matches_diffusers() {
    check_case("sd-tiny-a", "euler");
    check_case("sd-tiny-b", "euler");
}

#[test]
fn euler_ancestral_matches_diffusers_with_its_noise() {
    check_case("sd-tiny-a", "euler_a");
    check_case("sd-tiny-b", "euler_a");
}

#[test]
fn dpmpp_2m_karras_matches_diffusers() {
    check_case("sd-tiny-a", "dpmpp_2m_karras");
    check_case("sd-tiny-b", "dpmpp_2m_karras");
}

#[test]
fn guidance_one_skips_the_unconditional_pass_like_diffusers() {
    check_case("sd-tiny-a", "euler_cfg1");
}
