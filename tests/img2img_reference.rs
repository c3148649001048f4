//! img2img against diffusers' `StableDiffusionImg2ImgPipeline` (tests/fixtures/make_img2img.py):
//! the picture's latents (the VAE mean), the noise mixed in at the strength's first step, and
//! every step after it, for two samplers and two strengths on each tiny model.

mod common;

use candle_core::Device;
use common::*;
use easel::diffusion::schedulers::Sampler;
use easel::diffusion::{GenerateRequest, InitImage, Pipeline};

fn refs_dir() -> std::path::PathBuf {
    fixtures().join("refs/img2img")
}

#[test]
fn img2img_matches_diffusers_at_two_strengths_and_samplers() {
    let mut cases: Vec<String> = std::fs::read_dir(refs_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 4, "{cases:?}");
    for case in cases {
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(refs_dir().join(format!("{case}.json"))).unwrap(),
        )
        .unwrap();
        let model = case.split('_').next().unwrap();
        let p = Pipeline::load(&fixtures().join(model), &Device::Cpu).unwrap();
        let refs = load(&refs_dir().join(format!("{case}.safetensors")));
        let picture = image::open(refs_dir().join(meta["init_image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();

        // The picture's latents: the mean of the VAE's distribution, scaled.
        let x0 = p.encode_image(&picture, false).unwrap();
        let d = max_abs_diff(&x0, &refs["init_latents"]);
        assert!(d < TOL, "{case}: init latents differ by {d}");

        let mut req = GenerateRequest::new(&p.model, meta["prompt"].as_str().unwrap(), 0);
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
        req.init_noise = Some(refs["noise"].clone());
        req.init_image = Some(InitImage {
            image: picture,
            strength: meta["strength"].as_f64().unwrap(),
        });
        check_request(&p, &refs_dir(), &case, &req);
    }
}

/// Bad requests are refused before any work, naming the setting.
#[test]
fn strength_and_size_are_checked() {
    let p = Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap();
    let mut req = GenerateRequest::new(&p.model, "x", 1);
    req.steps = 10;
    let picture = image::RgbImage::new(req.width as u32, req.height as u32);
    for (strength, want) in [
        (0.0, "outside"),
        (1.5, "outside"),
        (f64::NAN, "outside"),
        (0.05, "runs no step"),
    ] {
        req.init_image = Some(InitImage {
            image: picture.clone(),
            strength,
        });
        let err = p.validate(&req).unwrap_err().to_string();
        assert!(
            err.contains("strength") && err.contains(want),
            "{strength}: {err}"
        );
    }
    req.init_image = Some(InitImage {
        image: image::RgbImage::new(8, 8),
        strength: 0.5,
    });
    let err = p.validate(&req).unwrap_err().to_string();
    assert!(err.contains("8×8"), "{err}");
}
