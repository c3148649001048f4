//! img2img against diffusers' `StableDiffusionImg2ImgPipeline` (tests/fixtures/make_img2img.py):
//! the picture's latents (the VAE mean), the noise mixed in at the strength's first step, and
//! every step after it, for two samplers and two strengths on each tiny model.

mod common;

use candle_core::Device;
use common::*;
use easel::diffusion::{GenerateRequest, InitImage, Pipeline};

fn refs_dir() -> std::path::PathBuf {
    fixtures().join("refs/img2img")
}

/// The recorded cases in `dir` (one `.json` each), sorted.
fn cases_in(dir: &std::path::Path) -> Vec<String> {
    let mut cases: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    cases.sort();
    cases
}

#[test]
fn img2img_matches_diffusers_at_two_strengths_and_samplers() {
    let cases = cases_in(&refs_dir());
    assert_eq!(cases.len(), 4, "{cases:?}");
    for case in cases {
        let meta = read_case(&refs_dir(), &case);
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

        let mut req = recorded_request(&p, &meta);
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

/// Hires fix's latent upscaler is torch's bilinear interpolate (A1111's "Latent").
#[test]
fn latent_upscale_matches_torch_bilinear() {
    let refs = load(&refs_dir().join("latent_upscale.safetensors"));
    for key in ["x2", "x1_6"] {
        let (_, _, h, w) = refs[key].dims4().unwrap();
        let ours = easel::diffusion::hires::upscale_latents(&refs["input"], h, w).unwrap();
        let d = max_abs_diff(&ours, &refs[key]);
        assert!(d < 1e-6, "{key}: differs by {d}");
    }
}

/// Hires fix is its parts: the Lanczos-upscaled hires image equals the first pass's image,
/// enlarged and put through img2img by hand with the same seed (bit for bit); the latent one
/// runs both passes' steps and ends at the larger size.
#[test]
fn hires_fix_is_a_first_pass_enlarged_and_repainted() {
    use easel::diffusion::{Hires, Outcome, Upscaler};
    use std::sync::atomic::AtomicBool;
    let p = Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap();
    let mut base = GenerateRequest::new(&p.model, "a red circle", 7);
    base.steps = 4;
    let run = |req: &GenerateRequest| -> (Vec<usize>, easel::diffusion::GeneratedImage) {
        let mut steps = Vec::new();
        let mut totals = Vec::new();
        let out = p
            .generate(req, &AtomicBool::new(false), &mut |s| {
                steps.push(s.step);
                totals.push(s.total);
            })
            .unwrap();
        let Outcome::Finished(image) = out else {
            panic!("cancelled")
        };
        // Progress counts both passes against one total.
        assert!(totals.iter().all(|&t| t == steps.len()), "{totals:?}");
        (steps, image)
    };
    let hires = Hires {
        scale: 2.0,
        steps: 6,
        denoise: 0.5,
        upscaler: Upscaler::Lanczos,
    };
    let mut req = base.clone();
    req.hires = Some(hires);
    let (steps, fixed) = run(&req);
    assert_eq!(
        steps,
        (1..=4 + 3).collect::<Vec<_>>(),
        "4 steps, then 3 of 6"
    );
    assert_eq!((fixed.width, fixed.height), (64, 64));

    let (_, first) = run(&base);
    let picture = image::RgbImage::from_raw(32, 32, first.rgb).unwrap();
    let mut by_hand = base.clone();
    by_hand.width = 64;
    by_hand.height = 64;
    by_hand.steps = 6;
    by_hand.init_image = Some(InitImage {
        image: easel::diffusion::init_image::fit(&picture, 64, 64),
        strength: 0.5,
    });
    let (_, manual) = run(&by_hand);
    assert_eq!(
        fixed.rgb, manual.rgb,
        "hires = first pass + Lanczos + img2img"
    );

    req.hires = Some(Hires {
        upscaler: Upscaler::Latent,
        steps: 0,
        ..hires
    });
    let (steps, latent) = run(&req);
    assert_eq!(
        steps.len(),
        4 + 2,
        "4 steps, then 2 of 4 (steps 0 = the first pass's)"
    );
    assert_eq!((latent.width, latent.height), (64, 64));
    assert_ne!(latent.rgb, fixed.rgb);

    // Bad second passes are refused up front, named as hires settings.
    for (h, want) in [
        (
            Hires {
                scale: 1.0,
                ..hires
            },
            "hires-scale",
        ),
        (
            Hires {
                scale: 200.0,
                ..hires
            },
            "hires-scale",
        ),
        (
            Hires {
                denoise: 0.0,
                ..hires
            },
            "hires-denoise",
        ),
        (
            Hires {
                denoise: 0.1,
                ..hires
            },
            "runs no step",
        ),
        (
            Hires {
                steps: 5000,
                ..hires
            },
            "hires-steps",
        ),
    ] {
        req.hires = Some(h);
        let err = p.validate(&req).unwrap_err().to_string();
        assert!(err.contains(want), "{h:?}: {err}");
    }
}

/// Inpainting against diffusers' `StableDiffusionInpaintPipeline` (VAE means, recorded noise):
/// an ordinary UNet (the kept part blended back at every step) and a 9-channel inpainting UNet
/// (mask and masked picture as input), each from pure noise at strength 1 and part-way.
#[test]
fn inpainting_matches_diffusers_for_4_and_9_channel_unets() {
    let dir = fixtures().join("refs/inpaint");
    let cases = cases_in(&dir);
    assert_eq!(cases.len(), 4, "{cases:?}");
    for case in cases {
        let meta = read_case(&dir, &case);
        let model = case.split('_').next().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let folder = tmp.path().join(model);
        copy_dir(&fixtures().join(model), &folder);
        if meta["unet"] == "inpaint-tiny" {
            std::fs::remove_dir_all(folder.join("unet")).unwrap();
            copy_dir(&fixtures().join("inpaint-tiny/unet"), &folder.join("unet"));
        }
        let p = Pipeline::load(&folder, &Device::Cpu).unwrap();
        assert_eq!(p.model.is_inpainting(), meta["unet"] == "inpaint-tiny");
        let refs = load(&dir.join(format!("{case}.safetensors")));
        let picture = image::open(dir.join(meta["init_image"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        let mask = image::open(dir.join(meta["mask"].as_str().unwrap()))
            .unwrap()
            .to_luma8();

        let mut req = recorded_request(&p, &meta);
        req.init_noise = Some(refs["noise"].clone());
        req.init_image = Some(InitImage {
            image: picture,
            strength: meta["strength"].as_f64().unwrap(),
        });
        // No blur: the image as decoded, as diffusers returns it.
        req.mask = Some(easel::diffusion::Mask {
            image: mask,
            blur: 0,
        });
        check_request(&p, &dir, &case, &req);
    }
}
