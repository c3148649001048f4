//! Adapters that do not fit: another architecture's keys, wrong shapes, damaged or unsafe files,
//! kinds of adapter Easel does not implement. Each is refused with an error that names the file,
//! says how many keys matched and which did not — and the model keeps producing exactly what it
//! produced before.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use common::*;
use easel::diffusion::{GenerateRequest, Outcome, Pipeline};
use easel::lora::{Adapter, AdapterSettings, LoraError, LoraStack};
use tempfile::TempDir;

fn pipeline() -> Pipeline {
    Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap()
}

fn style() -> PathBuf {
    fixtures().join("loras/tiny-style.safetensors")
}

/// A small 6-step image; the adapters' effect on it is what "the model" means here.
fn image(p: &Pipeline) -> Vec<u8> {
    let mut req = GenerateRequest::new(&p.model, "a red circle on a blue background", 7);
    req.steps = 4;
    match p
        .generate(&req, &AtomicBool::new(false), &mut |_| {})
        .unwrap()
    {
        Outcome::Finished(i) => i.rgb,
        Outcome::Cancelled { .. } => panic!("cancelled"),
    }
}

fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F16, &Device::Cpu).unwrap()
}

/// Writes a safetensors file with these tensors (all zeros, f16).
fn write(dir: &Path, name: &str, tensors: &[(&str, &[usize])]) -> PathBuf {
    let map: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, s)| (k.to_string(), zeros(s)))
        .collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).unwrap();
    path
}

/// Tries to add `path` to a stack that already has tiny-style applied, and checks that the
/// failure left the stack and the model's output exactly as they were.
fn refused(path: &Path) -> LoraError {
    let p = pipeline();
    let mut stack = LoraStack::new();
    stack
        .add(&p.model, &style(), AdapterSettings::new(0.8))
        .unwrap();
    stack.apply(&p.model).unwrap();
    let before = image(&p);
    let err = stack
        .add(&p.model, path, AdapterSettings::new(1.0))
        .err()
        .unwrap_or_else(|| panic!("{} was accepted", path.display()));
    assert_eq!(stack.entries().len(), 1, "the stack changed");
    // Through the all-or-nothing path too: the good adapter is not applied alone either.
    let wanted = [
        (style(), AdapterSettings::new(0.3)),
        (path.to_path_buf(), AdapterSettings::new(1.0)),
    ];
    assert!(stack.sync(&p.model, &wanted).is_err());
    assert_eq!(stack.entries()[0].1, AdapterSettings::new(0.8));
    assert_eq!(
        image(&p),
        before,
        "the model's output changed after a refused adapter"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "the error must name the file: {msg}"
    );
    err
}

#[test]
fn sdxl_adapter_on_an_sd_model_says_what_matched_and_what_did_not() {
    let dir = TempDir::new().unwrap();
    let path = write(
        dir.path(),
        "sdxl-style.safetensors",
        &[
            (
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
                &[4, 640],
            ),
            (
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight",
                &[640, 4],
            ),
            (
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.alpha",
                &[],
            ),
            (
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                &[4, 32],
            ),
            (
                "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
                &[32, 4],
            ),
            (
                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                &[4, 1280],
            ),
            (
                "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
                &[1280, 4],
            ),
        ],
    );
    let err = refused(&path);
    let LoraError::Mismatch {
        matched_keys,
        total_keys,
        ref unmatched,
        ref hint,
        ..
    } = err
    else {
        panic!("{err}")
    };
    // The CLIP-L keys fit by name (SDXL's first text encoder is SD 1.x's), and so does the
    // UNet layer (this model has an `input_blocks.4.1` in LDM's names, though of another
    // width); the second text encoder's do not.
    assert_eq!((matched_keys, total_keys), (5, 7));
    let keys: Vec<&str> = unmatched.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k.contains("lora_te2_")));
    assert!(hint.as_deref().unwrap_or("").contains("SDXL"), "{hint:?}");
    let msg = err.to_string();
    assert!(msg.contains("5 of 7 keys"), "{msg}");
    assert!(
        msg.contains("lora_te2_text_model_encoder_layers_0"),
        "{msg}"
    );
    assert!(msg.contains("Nothing was applied"), "{msg}");
}

#[test]
fn wrong_shapes_are_refused_with_the_layer_named() {
    let dir = TempDir::new().unwrap();
    let layer = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    // The layer takes 32 inputs; this adapter was made for 64.
    let path = write(
        dir.path(),
        "wide.safetensors",
        &[
            (&format!("{layer}.lora_down.weight"), &[4, 64]),
            (&format!("{layer}.lora_up.weight"), &[32, 4]),
        ],
    );
    let err = refused(&path);
    assert!(matches!(err, LoraError::Shape { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("[4, 64]") && msg.contains("32 inputs"),
        "{msg}"
    );
    assert!(
        msg.contains("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
        "{msg}"
    );
    // up with the wrong rank
    let path = write(
        dir.path(),
        "rank.safetensors",
        &[
            (&format!("{layer}.lora_down.weight"), &[4, 32]),
            (&format!("{layer}.lora_up.weight"), &[32, 8]),
        ],
    );
    assert!(refused(&path).to_string().contains("after rank 4"));
}

#[test]
fn partial_matches_are_reported_never_silently_dropped() {
    let dir = TempDir::new().unwrap();
    let good = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q";
    let path = write(
        dir.path(),
        "partial.safetensors",
        &[
            (&format!("{good}.lora_down.weight"), &[4, 32]),
            (&format!("{good}.lora_up.weight"), &[32, 4]),
            // a layer this model does not have, a down without its up, a LoHa tensor
            (
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight",
                &[4, 32],
            ),
            (
                "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight",
                &[32, 4],
            ),
            (
                "lora_unet_mid_block_attentions_0_proj_out.lora_down.weight",
                &[4, 32, 1, 1],
            ),
            ("lora_unet_conv_in.hada_w1_a", &[4, 4]),
        ],
    );
    let err = refused(&path);
    let msg = err.to_string();
    assert!(msg.contains("2 of 6 keys"), "{msg}");
    assert!(
        msg.contains("down_blocks_7") && msg.contains("no such UNet layer"),
        "{msg}"
    );
    assert!(msg.contains("partner is missing"), "{msg}");
    assert!(msg.contains("LoHa"), "{msg}");
}

#[test]
fn damaged_empty_and_pickle_files_are_refused() {
    let dir = TempDir::new().unwrap();
    let bytes = std::fs::read(style()).unwrap();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "truncated.safetensors",
            bytes[..bytes.len() / 2].to_vec(),
            "truncated",
        ),
        ("empty.safetensors", Vec::new(), "too short"),
        (
            "text.safetensors",
            b"this is not a safetensors file at all".to_vec(),
            "safetensors",
        ),
        ("old.pt", bytes.clone(), "pickle"),
    ];
    for (name, data, expect) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let msg = refused(&path).to_string();
        assert!(msg.contains(expect), "{name}: {msg}");
    }
    // A header that promises tensors the data does not hold.
    let path = dir.path().join("liar.safetensors");
    let header = br#"{"lora_unet_conv_in.lora_down.weight":{"dtype":"F16","shape":[4,4,3,3],"data_offsets":[0,288]}}"#;
    let mut data = (header.len() as u64).to_le_bytes().to_vec();
    data.extend_from_slice(header);
    data.extend_from_slice(&[0u8; 16]);
    std::fs::write(&path, data).unwrap();
    assert!(refused(&path).to_string().contains("truncated"));
    // A file that does not exist.
    let missing = dir.path().join("missing.safetensors");
    assert!(matches!(refused(&missing), LoraError::Io { .. }));
}

#[test]
fn an_adapter_matched_to_one_model_is_refused_on_another() {
    let a = pipeline();
    let b = Pipeline::load(&fixtures().join("sd-tiny-b"), &Device::Cpu).unwrap();
    let adapter = Adapter::load(&style(), &a.model).unwrap();
    assert!(adapter.total_keys > 0);
    let mut stack = LoraStack::new();
    stack
        .add(&a.model, &style(), AdapterSettings::new(1.0))
        .unwrap();
    let err = stack.apply(&b.model).unwrap_err();
    assert!(matches!(err, LoraError::StaleModel { .. }), "{err}");
    // and read directly against B it does not match at all
    let err = Adapter::load(&style(), &b.model).err().unwrap();
    assert!(matches!(err, LoraError::Mismatch { .. }), "{err}");
}
