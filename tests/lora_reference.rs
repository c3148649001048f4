//! LoRA adapters against diffusers/peft: the same adapter in kohya, diffusers/peft and pre-peft
//! diffusers files, at weights 1.0 and 0.5, and two adapters stacked with separate text-encoder
//! and negative weights, must give diffusers' `load_lora_weights` + `cross_attention_kwargs=
//! {"scale": w}` (or `set_adapters`) results: text states and per-step latents within the
//! engine's tolerances, the image within 2/255. Recorded by tests/fixtures/make_fixtures.py
//! (section 7).

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use common::*;
use easel::diffusion::schedulers::Sampler;
use easel::diffusion::{GenerateRequest, GeneratedImage, Outcome, Pipeline};
use easel::lora::{AdapterSettings, LoraStack};

/// f32 on both sides: 1e-4 absolute, or twice diffusers' own f32-vs-f64 error where that is
/// larger (the rule of tests/reference_pipeline.rs; the LoRA refs keep that error as one number).
const TOL: f32 = 1e-4;

fn pipeline() -> Pipeline {
    Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap()
}

fn lora(file: &str) -> PathBuf {
    fixtures().join("loras").join(file)
}

fn meta(case: &str) -> serde_json::Value {
    let path = fixtures().join("refs/lora").join(format!("{case}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The recorded request (same prompt, sampler and initial noise as diffusers used).
fn request(p: &Pipeline, meta: &serde_json::Value) -> GenerateRequest {
    let mut req = GenerateRequest::new(p.model_ref(), meta["prompt"].as_str().unwrap(), 0);
    req.negative_prompt = meta["negative_prompt"].as_str().unwrap().to_string();
    req.steps = meta["steps"].as_u64().unwrap() as usize;
    req.cfg_scale = meta["guidance_scale"].as_f64().unwrap();
    req.width = meta["width"].as_u64().unwrap() as usize;
    req.height = meta["height"].as_u64().unwrap() as usize;
    req.sampler = meta["sampler"]
        .as_str()
        .unwrap()
        .parse::<Sampler>()
        .unwrap();
    req.init_noise =
        Some(load(&fixtures().join("refs/sd-tiny-a/init_noise.safetensors"))["noise"].clone());
    req
}

trait ModelRef {
    fn model_ref(&self) -> &easel::models::StableDiffusion;
}
impl ModelRef for Pipeline {
    fn model_ref(&self) -> &easel::models::StableDiffusion {
        &self.model
    }
}

/// Runs `req`, returning the per-step latents and the image.
fn run(p: &Pipeline, req: &GenerateRequest) -> (Vec<Tensor>, GeneratedImage) {
    let mut latents = Vec::new();
    let out = p
        .generate(req, &AtomicBool::new(false), &mut |s| {
            latents.push(s.latents.clone())
        })
        .unwrap();
    let Outcome::Finished(image) = out else {
        panic!("cancelled")
    };
    (latents, image)
}

/// Checks text states, every step's latents and the image of `case` with `stack` applied.
fn check(p: &Pipeline, stack: &LoraStack, case: &str, label: &str) {
    let meta = meta(case);
    let refs = load(
        &fixtures()
            .join("refs/lora")
            .join(format!("{case}.safetensors")),
    );
    stack.apply(&p.model).unwrap();
    let req = request(p, &meta);
    for (text, key) in [
        (req.prompt.as_str(), "prompt_states"),
        (req.negative_prompt.as_str(), "negative_states"),
    ] {
        let states = p.encode_prompt(text).unwrap();
        let d = max_abs_diff(&states, &refs[key]);
        assert!(d < TOL, "{label}: {key} differ by {d}");
    }
    let tol = TOL.max(2.0 * meta["f32_vs_f64_max_latent_diff"].as_f64().unwrap() as f32);
    let (latents, image) = run(p, &req);
    assert_eq!(latents.len(), req.steps);
    let mut worst = 0f32;
    for (i, l) in latents.iter().enumerate() {
        let d = max_abs_diff(l, &refs[&format!("latents_{i}")]);
        assert!(
            d < tol,
            "{label}: latents after step {i} differ by {d} (allowed {tol})"
        );
        worst = worst.max(d);
    }
    let d = max_abs_diff(&image.pixels, &refs["image"]);
    assert!(d < 2.0 / 255.0, "{label}: image differs by {d}");
    let (_, _, png) = read_rgb(&fixtures().join("refs/lora").join(format!("{case}.png")));
    let d8 = max_u8_diff(&image.rgb, &png);
    assert!(d8 <= 2, "{label}: 8-bit image differs by {d8}/255");
    eprintln!("{label}: worst latent diff {worst:.2e}, image diff {d:.2e}, 8-bit diff {d8}");
}

/// One adapter, each of its three files, at the recorded weight.
fn check_single(case: &str) {
    let p = pipeline();
    let meta = meta(case);
    assert_eq!(meta["loras_are_alternatives"], true);
    let mut stack = LoraStack::new();
    for l in meta["loras"].as_array().unwrap() {
        let file = l["file"].as_str().unwrap();
        let weight = l["weight"].as_f64().unwrap();
        stack.clear();
        stack
            .add(&p.model, &lora(file), AdapterSettings::new(weight))
            .unwrap();
        check(&p, &stack, case, &format!("{case} from {file}"));
    }
}

#[test]
fn weight_1_matches_diffusers_in_all_three_formats() {
    check_single("style_w1");
}

#[test]
fn weight_0_5_matches_diffusers_in_all_three_formats() {
    check_single("style_w0.5");
}

#[test]
fn two_adapters_with_separate_text_and_negative_weights_match_diffusers() {
    let case = "style_0.7_te0.3_detail_-0.5";
    let p = pipeline();
    let meta = meta(case);
    let mut stack = LoraStack::new();
    for l in meta["loras"].as_array().unwrap() {
        let weight = l["weight"].as_f64().unwrap();
        let te = l["te_weight"].as_f64().unwrap();
        let settings = AdapterSettings {
            enabled: true,
            weight,
            te_weight: Some(te),
        };
        stack
            .add(&p.model, &lora(l["file"].as_str().unwrap()), settings)
            .unwrap();
    }
    check(&p, &stack, case, case);
}

/// Weight 0, a disabled adapter, and an adapter switched on and then off again all give exactly
/// the image of the model without adapters: nothing about the base model changes.
#[test]
fn weight_zero_or_disabled_gives_exactly_the_plain_image() {
    let p = pipeline();
    let req = request(&p, &meta("style_w1"));
    let (plain_latents, plain) = run(&p, &req);
    let mut stack = LoraStack::new();
    let i = stack
        .add(
            &p.model,
            &lora("tiny-style.safetensors"),
            AdapterSettings::new(1.0),
        )
        .unwrap();
    stack.apply(&p.model).unwrap();
    let (_, with) = run(&p, &req);
    assert_ne!(with.rgb, plain.rgb, "the adapter must change the image");

    let off = [
        ("weight 0", AdapterSettings::new(0.0)),
        (
            "disabled",
            AdapterSettings {
                enabled: false,
                ..AdapterSettings::new(1.0)
            },
        ),
    ];
    for (label, settings) in off {
        stack.set(i, settings);
        let report = stack.apply(&p.model).unwrap();
        assert_eq!(report.terms, 0, "{label}");
        let (latents, image) = run(&p, &req);
        assert_eq!(image.rgb, plain.rgb, "{label}: 8-bit image");
        assert_eq!(max_abs_diff(&image.pixels, &plain.pixels), 0.0, "{label}");
        for (a, b) in latents.iter().zip(&plain_latents) {
            assert_eq!(max_abs_diff(a, b), 0.0, "{label}: latents");
        }
        // and back on: the same image as before, from memory
        stack.set(i, AdapterSettings::new(1.0));
        stack.apply(&p.model).unwrap();
        assert_eq!(run(&p, &req).1.rgb, with.rgb, "{label}: re-enabled");
    }
    stack.clear();
    stack.apply(&p.model).unwrap();
    assert_eq!(run(&p, &req).1.rgb, plain.rgb, "empty stack");
}
