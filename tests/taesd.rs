//! TAESD against diffusers' `AutoencoderTiny` on random weights (`make_fixtures.py taesd`):
//! the diffusers folder, the original single files (fp16, the same numbers), and files that are
//! not a TAESD decoder.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;
use easel::models::taesd::Taesd;

fn refs() -> std::collections::HashMap<String, Tensor> {
    load(&fixtures().join("refs/taesd/taesd.safetensors"))
}

fn check(taesd: &Taesd, what: &str) {
    let refs = refs();
    let decoded = taesd.decode(&refs["latents"]).unwrap();
    let d = max_abs_diff(&decoded, &refs["decoded"]);
    assert!(d < TOL, "{what}: decode differs by {d}");
    let encoded = taesd
        .encode(&refs["image"])
        .expect("the fixture has an encoder")
        .unwrap();
    let e = max_abs_diff(&encoded, &refs["encoded"]);
    assert!(e < TOL, "{what}: encode differs by {e}");
    eprintln!("{what}: decode diff {d:.2e}, encode diff {e:.2e}");
}

#[test]
fn diffusers_folder_matches_autoencoder_tiny() {
    let t = Taesd::load(&fixtures().join("taesd-tiny"), &Device::Cpu).unwrap();
    assert_eq!(t.config.num_decoder_blocks, [3, 3, 3, 1]);
    check(&t, "taesd-tiny/");
}

#[test]
fn original_single_file_matches_autoencoder_tiny() {
    let dir = fixtures().join("taesd-tiny-original");
    let file = Taesd::load(&dir.join("taesd_decoder.safetensors"), &Device::Cpu).unwrap();
    let folder = Taesd::load(&dir, &Device::Cpu).unwrap();
    // The architecture read from names and shapes is the folder's config.
    let diffusers = Taesd::load(&fixtures().join("taesd-tiny"), &Device::Cpu).unwrap();
    let mut want = diffusers.config.clone();
    want.encoder_block_out_channels = want.decoder_block_out_channels.clone();
    assert_eq!(file.config, want);
    check(&file, "taesd_decoder.safetensors");
    check(&folder, "taesd-tiny-original/");
}

#[test]
fn decoder_alone_decodes_without_an_encoder() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("taesd_decoder.safetensors");
    std::fs::copy(
        fixtures().join("taesd-tiny-original/taesd_decoder.safetensors"),
        &f,
    )
    .unwrap();
    let t = Taesd::load(&f, &Device::Cpu).unwrap();
    assert!(t.encoder.is_none());
    let refs = refs();
    let d = max_abs_diff(&t.decode(&refs["latents"]).unwrap(), &refs["decoded"]);
    assert!(d < TOL, "decode differs by {d}");
}

fn load_error(path: &Path) -> String {
    match Taesd::load(path, &Device::Cpu) {
        Ok(_) => panic!("{} loaded as a TAESD", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn files_that_are_not_a_taesd_decoder_are_named() {
    let lora = fixtures().join("loras/tiny-style.safetensors");
    let e = load_error(&lora);
    assert!(e.starts_with(&lora.display().to_string()), "{e}");
    assert!(e.contains("not a TAESD decoder"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let enc = fixtures().join("taesd-tiny-original/taesd_encoder.safetensors");
    let e = load_error(&enc);
    assert!(e.contains("TAESD encoder") && e.contains("decoder"), "{e}");

    let vae = fixtures().join("sd-tiny-a/vae");
    let e = load_error(&vae);
    assert!(e.contains("AutoencoderKL, not a TAESD"), "{e}");
    assert!(!e.contains('\n'), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = load_error(empty.path());
    assert!(e.contains("taesd_decoder.safetensors"), "{e}");
}

/// A random TAESD in the original single-file layout with 2 stages (×2), so that it fits
/// `sd-tiny-a` (VAE factor 2, 4 latent channels): clamp, conv, relu, block, upsample, conv,
/// block, conv.
fn write_factor2_taesd(path: &Path) {
    let mut n = 0usize;
    let mut t = |shape: &[usize]| {
        let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
        let count: usize = shape.iter().product();
        let gain = 1.8 * (2.0 / fan_in as f32).sqrt();
        let v: Vec<f32> = (0..count)
            .map(|i| ((n * 7919 + i) as f32 * 0.618).sin() * gain * 1.7)
            .collect();
        n += 1;
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let c = 8;
    let mut m = std::collections::HashMap::new();
    m.insert("1.weight".to_string(), t(&[c, 4, 3, 3]));
    m.insert("1.bias".to_string(), t(&[c]));
    for block in [3, 6] {
        for k in [0, 2, 4] {
            m.insert(format!("{block}.conv.{k}.weight"), t(&[c, c, 3, 3]));
            m.insert(format!("{block}.conv.{k}.bias"), t(&[c]));
        }
    }
    m.insert("5.weight".to_string(), t(&[c, c, 3, 3]));
    m.insert("7.weight".to_string(), t(&[3, c, 3, 3]));
    m.insert("7.bias".to_string(), t(&[3]));
    candle_core::safetensors::save(&m, path).unwrap();
}

mod pipeline {
    use super::*;
    use easel::diffusion::{GenerateRequest, Outcome, Pipeline, TaesdUse};
    use std::sync::atomic::AtomicBool;

    fn run(
        p: &Pipeline,
    ) -> (
        Vec<(usize, usize)>,
        Tensor,
        easel::diffusion::GeneratedImage,
    ) {
        let mut req = GenerateRequest::new(&p.model, "a red circle", 3);
        req.steps = 3;
        let mut sizes = Vec::new();
        let mut last = None;
        let out = p
            .generate(&req, &AtomicBool::new(false), &mut |s| {
                sizes.push((s.preview.width, s.preview.height));
                last = Some(s.latents.clone());
            })
            .unwrap();
        let Outcome::Finished(image) = out else {
            panic!("cancelled")
        };
        (sizes, last.unwrap(), image)
    }

    #[test]
    fn taesd_previews_every_step_and_decodes_the_final_latents() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("taesd_decoder.safetensors");
        write_factor2_taesd(&file);
        let mut p = Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap();
        let (plain_sizes, plain_latents, plain) = run(&p);
        assert_eq!(plain_sizes, vec![(16, 16); 3], "latent-size projection");

        let model = Taesd::load(&file, &Device::Cpu).unwrap();
        assert_eq!(model.scale(), 2);
        p.set_taesd(TaesdUse {
            model,
            path: file.clone(),
            preview: true,
            final_decode: true,
        })
        .unwrap();
        let (sizes, latents, image) = run(&p);
        assert_eq!(sizes, vec![(32, 32); 3], "TAESD previews at image size");
        assert_eq!(
            max_abs_diff(&latents, &plain_latents),
            0.0,
            "sampling unchanged"
        );
        let want = p.taesd.as_ref().unwrap().model.decode(&latents).unwrap();
        let want = ((want / 2.0).unwrap() + 0.5)
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap();
        assert_eq!(max_abs_diff(&image.pixels, &want), 0.0);
        assert!(
            max_u8_diff(&image.rgb, &plain.rgb) > 0,
            "the VAE decoded instead"
        );
    }

    #[test]
    fn a_taesd_for_other_latents_is_refused() {
        let mut p = Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap();
        let model = Taesd::load(&fixtures().join("taesd-tiny"), &Device::Cpu).unwrap();
        let e = p
            .set_taesd(TaesdUse {
                model,
                path: fixtures().join("taesd-tiny"),
                preview: true,
                final_decode: false,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("8×") && e.contains("2×"), "{e}");
        assert!(p.taesd.is_none());
    }
}

mod cli {
    use super::*;
    use std::process::Command;

    fn easel(args: &[&str], model_dir_env: &Path) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_easel"))
            .args(args)
            .env("EASEL_MODEL_DIR", model_dir_env)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn decoder_taesd_is_found_in_the_library_and_previews_at_image_size() {
        let tmp = tempfile::tempdir().unwrap();
        let models = tmp.path().join("models");
        copy_dir(&fixtures().join("sd-tiny-a"), &models.join("sd-tiny-a"));
        std::fs::create_dir_all(models.join("vae_approx")).unwrap();
        write_factor2_taesd(&models.join("vae_approx/taesd_decoder.safetensors"));
        let model = models.join("sd-tiny-a");
        let previews = tmp.path().join("previews");
        let out = tmp.path().join("out.png");
        let (ok, err) = easel(
            &[
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--prompt",
                "a red circle",
                "--steps",
                "2",
                "--seed",
                "1",
                "--decoder",
                "taesd",
                "--preview",
                "taesd",
                "--preview-dir",
                previews.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
            tmp.path(),
        );
        assert!(ok, "{err}");
        assert!(
            err.contains("TAESD: ") && err.contains("vae_approx"),
            "{err}"
        );
        let (w, h, _) = read_rgb(&previews.join("step_002.png"));
        assert_eq!((w, h), (32, 32));
        assert_eq!(read_rgb(&out).0, 32);
    }

    #[test]
    fn missing_or_wrong_taesd_is_one_line_naming_where() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("sd-tiny-a");
        copy_dir(&fixtures().join("sd-tiny-a"), &model);
        let out = tmp.path().join("out.png");
        let base = [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
        ];
        let o = ["-o", out.to_str().unwrap()];

        let (ok, err) = easel(
            &[&base[..], &["--decoder", "taesd"], &o].concat(),
            tmp.path(),
        );
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("no TAESD found") && err.contains("vae_approx"),
            "{err}"
        );
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");

        let lora = fixtures().join("loras/tiny-style.safetensors");
        let arg = format!("taesd={}", lora.display());
        let (ok, err) = easel(&[&base[..], &["--decoder", &arg], &o].concat(), tmp.path());
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("not a TAESD decoder") && err.contains("tiny-style"),
            "{err}"
        );

        let (ok, err) = easel(
            &[&base[..], &["--decoder", "taesdx"], &o].concat(),
            tmp.path(),
        );
        assert!(!ok);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("use vae, taesd or taesd=PATH"), "{err}");
        assert!(!out.exists());
    }
}
