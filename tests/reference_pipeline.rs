//! The pipeline against diffusers: token ids, text-encoder states, per-step latents and the final
//! image of two tiny random SD models (different shapes, one non-square, one v-prediction),
//! recorded by tests/fixtures/make_fixtures.py.

mod common;

use candle_core::Device;
use common::*;
use easel::diffusion::Pipeline;

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
            let states = p.encode_prompt(text).unwrap();
            let d = max_abs_diff(&states, &refs[states_key]);
            assert!(d < TOL, "{model}: {states_key} differs by {d}");
        }
    }
}

/// Runs one recorded case and checks every step's latents and the final image.
fn check_case(model: &str, case: &str) {
    let p = pipeline(model);
    let dir = fixtures().join("refs").join(model);
    let init = load(&dir.join("init_noise.safetensors"))["noise"].clone();
    check_recorded_run(&p, &dir, case, init, 1);
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

/// An LCM-distilled UNet (the guidance scale as an embedding, no unconditional pass) with the
/// LCM sampler, against diffusers' `LatentConsistencyModelPipeline`: sd-tiny-b (v-prediction)
/// with lcm-tiny's UNet (sd-tiny-b's plus `time_embedding.cond_proj`) and LCMScheduler config.
#[test]
fn lcm_distilled_unet_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("lcm-tiny");
    copy_dir(&fixtures().join("sd-tiny-b"), &model);
    for part in ["unet", "scheduler"] {
        std::fs::remove_dir_all(model.join(part)).unwrap();
        copy_dir(&fixtures().join("lcm-tiny").join(part), &model.join(part));
    }
    let p = Pipeline::load(&model, &Device::Cpu).unwrap();
    assert_eq!(p.model.unet.config.time_cond_proj_dim, Some(16));
    assert_eq!(
        easel::diffusion::pipeline::default_sampler(&p.model),
        easel::diffusion::schedulers::Sampler::Lcm,
        "an LCMScheduler config picks the LCM sampler"
    );
    let init = load(&fixtures().join("refs/sd-tiny-b/init_noise.safetensors"))["noise"].clone();
    check_recorded_run(&p, &fixtures().join("refs/lcm-tiny"), "lcm", init, 1);
}
