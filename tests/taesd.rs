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

    let empty = tempfile::tempdir().unwrap();
    let e = load_error(empty.path());
    assert!(e.contains("taesd_decoder.safetensors"), "{e}");
}
