//! What the studio and scripts rely on beyond numerical agreement: seeds reproduce bit for bit,
//! every step reports a preview, and cancelling ends the job within one step.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use common::fixtures;
use easel::diffusion::schedulers::Sampler;
use easel::diffusion::{GenerateRequest, Outcome, Pipeline};

fn tiny() -> Pipeline {
    Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap()
}

fn request(p: &Pipeline, seed: u64, sampler: Sampler) -> GenerateRequest {
    let mut req = GenerateRequest::new(&p.model, "a red circle on a blue background", seed);
    req.steps = 5;
    req.sampler = sampler;
    req.negative_prompt = "blurry".into();
    req
}

fn finish(p: &Pipeline, req: &GenerateRequest) -> easel::diffusion::GeneratedImage {
    match p
        .generate(req, &AtomicBool::new(false), &mut |_| {})
        .unwrap()
    {
        Outcome::Finished(img) => img,
        Outcome::Cancelled { .. } => panic!("cancelled"),
    }
}

#[test]
fn the_same_seed_gives_the_same_image_bit_for_bit() {
    let p = tiny();
    for sampler in [Sampler::EulerAncestral, Sampler::DpmPp2mKarras] {
        let a = finish(&p, &request(&p, 7, sampler));
        let b = finish(&p, &request(&p, 7, sampler));
        assert_eq!(a.rgb, b.rgb, "{sampler}: same seed, different pixels");
        let fa: Vec<f32> = a.pixels.flatten_all().unwrap().to_vec1().unwrap();
        let fb: Vec<f32> = b.pixels.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            fa.iter().zip(&fb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{sampler}: not bit-identical"
        );
        let c = finish(&p, &request(&p, 8, sampler));
        assert_ne!(
            a.rgb, c.rgb,
            "{sampler}: different seeds gave the same image"
        );
    }
}

#[test]
fn every_step_reports_progress_and_a_latent_sized_preview() {
    let p = tiny();
    let req = request(&p, 1, Sampler::Euler);
    let mut seen = Vec::new();
    let mut last_elapsed = std::time::Duration::ZERO;
    let out = p
        .generate(&req, &AtomicBool::new(false), &mut |s| {
            assert_eq!(s.total, req.steps);
            assert!(s.elapsed >= last_elapsed);
            last_elapsed = s.elapsed;
            // 32×32 image, VAE factor 2 → 16×16 latents.
            assert_eq!((s.preview.width, s.preview.height), (16, 16));
            assert_eq!(s.preview.rgb.len(), 16 * 16 * 3);
            seen.push((s.step, s.preview.rgb.clone()));
        })
        .unwrap();
    assert!(matches!(out, Outcome::Finished(_)));
    assert_eq!(
        seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // The preview follows the denoising: it changes from step to step.
    assert_ne!(seen[0].1, seen[4].1);
}

#[test]
fn cancelling_ends_the_job_within_one_step() {
    let p = tiny();
    let req = request(&p, 3, Sampler::DpmPp2mKarras);
    let cancel = AtomicBool::new(false);
    let mut steps_run = 0;
    let out = p
        .generate(&req, &cancel, &mut |s| {
            steps_run = s.step;
            if s.step == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    match out {
        Outcome::Cancelled { completed_steps } => assert_eq!(completed_steps, 2),
        Outcome::Finished(_) => panic!("finished despite cancel"),
    }
    assert_eq!(steps_run, 2, "a step ran after the cancel flag was set");

    // Cancelled before the first step: no UNet work at all.
    let cancel = AtomicBool::new(true);
    let out = p
        .generate(&req, &cancel, &mut |_| panic!("a step ran"))
        .unwrap();
    assert!(matches!(out, Outcome::Cancelled { completed_steps: 0 }));
}

#[test]
fn the_models_own_scheduler_is_the_default_sampler() {
    // sd-tiny-a ships SD 1.5's PNDM config (not implemented) → DPM++ 2M Karras;
    // sd-tiny-b ships DDIMScheduler → DDIM.
    let a = tiny();
    assert_eq!(
        GenerateRequest::new(&a.model, "x", 0).sampler,
        Sampler::DpmPp2mKarras
    );
    let b = Pipeline::load(&fixtures().join("sd-tiny-b"), &Device::Cpu).unwrap();
    let req = GenerateRequest::new(&b.model, "x", 0);
    assert_eq!(req.sampler, Sampler::Ddim);
    // Native size from the configs: UNet sample_size × VAE factor.
    assert_eq!(
        (req.width, req.height),
        (b.model.native_size(), b.model.native_size())
    );
    assert_eq!(a.model.native_size(), 32);
}

/// `vae_tiling` reaches the decode: on, a 320² image (80² latents: 2×2 tiles of the default
/// 64) decodes in tiles, close to the untiled decode but not bit-identical; auto decodes it
/// untiled when memory allows, and says nothing.
#[test]
fn vae_tiling_on_decodes_in_tiles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let p = Pipeline::load(&dir, &Device::Cpu).unwrap();
    let mut req = GenerateRequest::new(&p.model, "a large red circle on a blue background", 3);
    req.steps = 2;
    (req.width, req.height) = (320, 320);
    let untiled = finish(&p, &req);
    assert!(untiled.warnings.is_empty(), "{:?}", untiled.warnings);
    req.vae_tiling = easel::diffusion::VaeTiling::On;
    let tiled = finish(&p, &req);
    assert_ne!(tiled.rgb, untiled.rgb, "not decoded in tiles");
    let diffs: Vec<u8> = tiled
        .rgb
        .iter()
        .zip(&untiled.rgb)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
    let max = diffs.iter().copied().max().unwrap_or(0);
    eprintln!("tiled vs untiled: mean {mean:.2}/255, max {max}/255");
    assert!(mean <= 2.0 && max <= 8, "mean {mean}, max {max}");
}

/// A Live re-render repeats the last job's text encode and VAE encode: the pipeline keeps
/// both (the very same tensors come back), and computes afresh as soon as anything they
/// depend on changes — here a text-encoder adapter's weight, clip skip, and the picture.
#[test]
fn repeated_encodings_are_kept_until_what_they_depend_on_changes() {
    use easel::lora::{AdapterSettings, LoraStack};
    let p = tiny();
    let texts = ["blurry", "a red circle"];
    let encode = |clip_skip| p.encode_texts(&texts, &texts, clip_skip).unwrap().states;
    let plain = encode(1);
    assert_eq!(
        encode(1).id(),
        plain.id(),
        "the same prompts are encoded again"
    );

    let mut stack = LoraStack::new();
    let settings = |te_weight| AdapterSettings {
        enabled: true,
        weight: 1.0,
        te_weight: Some(te_weight),
    };
    let style = fixtures().join("loras/tiny-style.safetensors");
    let i = stack.add(&p.model, &style, settings(1.0)).unwrap();
    stack.apply(&p.model).unwrap();
    let adapted = encode(1);
    assert!(
        common::max_abs_diff(&adapted, &plain) > 1e-4,
        "the adapter is ignored"
    );
    stack.set(i, settings(0.5));
    stack.apply(&p.model).unwrap();
    let half = encode(1);
    assert!(
        common::max_abs_diff(&half, &adapted) > 1e-5,
        "the new weight is ignored"
    );
    stack.set(i, settings(0.0));
    stack.apply(&p.model).unwrap();
    assert_eq!(common::max_abs_diff(&encode(1), &plain), 0.0);
    assert!(
        common::max_abs_diff(&encode(2), &plain) > 1e-4,
        "clip skip is ignored"
    );

    let picture =
        |v: u8| image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([v, x as u8 * 8, y as u8 * 8]));
    let a = p.encode_image(&picture(10), false).unwrap();
    let b = p.encode_image(&picture(200), false).unwrap();
    assert!(common::max_abs_diff(&a, &b) > 1e-3);
    // Both stay kept (an inpainting job encodes two pictures).
    assert_eq!(p.encode_image(&picture(10), false).unwrap().id(), a.id());
    assert_eq!(p.encode_image(&picture(200), false).unwrap().id(), b.id());
    let tiled = p.encode_image(&picture(10), true).unwrap();
    assert_ne!(tiled.id(), a.id(), "tiling is part of the key");
}

/// A model file truncated, replaced or deleted while the model is loaded: nothing still maps
/// it (weights are read into memory, never memory-mapped, so a shrinking file cannot raise
/// SIGBUS), and the next job runs from memory, giving the image it gave before.
#[test]
fn model_files_changed_on_disk_after_loading_do_not_affect_the_loaded_model() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("sd-tiny-a");
    common::copy_dir(&fixtures().join("sd-tiny-a"), &folder);
    let single = tmp.path().join("sd1-tiny.safetensors");
    std::fs::copy(fixtures().join("checkpoints/sd1-tiny.safetensors"), &single).unwrap();
    for path in [folder.clone(), single.clone()] {
        let p = Pipeline::load(&path, &Device::Cpu).unwrap();
        let req = request(&p, 3, Sampler::Euler);
        let before = finish(&p, &req);
        let files: Vec<std::path::PathBuf> = if path.is_dir() {
            ["unet", "vae", "text_encoder"]
                .iter()
                .flat_map(|d| std::fs::read_dir(path.join(d)).unwrap())
                .map(|e| e.unwrap().path())
                .filter(|f| f.extension().is_some_and(|e| e == "safetensors"))
                .collect()
        } else {
            vec![path.clone()]
        };
        assert!(!files.is_empty());
        for (i, f) in files.iter().enumerate() {
            match i % 3 {
                // Truncated in place (what makes a mapped file raise SIGBUS) …
                0 => std::fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .unwrap()
                    .set_len(100)
                    .unwrap(),
                // … replaced by other bytes …
                1 => std::fs::write(f, b"not a model any more").unwrap(),
                // … or deleted.
                _ => std::fs::remove_file(f).unwrap(),
            }
        }
        let after = finish(&p, &request(&p, 3, Sampler::Euler));
        assert_eq!(before.rgb, after.rgb, "{}", path.display());
        // Loading it again says what is wrong with the file, in words.
        let err = Pipeline::load(&path, &Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains(&*path.to_string_lossy())
                || files.iter().any(|f| err.contains(&*f.to_string_lossy())),
            "{err}"
        );
    }
}
