//! Single-file checkpoints against diffusers' `from_single_file`: tiny random SD 1.x and SD 2.x
//! pipelines converted to the original layout by diffusers' own conversion script
//! (tests/fixtures/make_checkpoints.py), per step like the folder fixtures; the `.ckpt` copy;
//! prediction-type detection; other precisions; the malicious pickle; and bad files.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use easel::diffusion::schedulers::PredictionType;
use easel::diffusion::Pipeline;
use easel::models::checkpoint::LoadOptions;

fn ckpt(name: &str) -> PathBuf {
    fixtures().join("checkpoints").join(name)
}

fn refs_dir() -> PathBuf {
    fixtures().join("refs").join("checkpoints")
}

fn load_with(path: &Path, opts: LoadOptions) -> Pipeline {
    Pipeline::load_with(path, &opts, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(path: &Path, opts: LoadOptions) -> String {
    match Pipeline::load_with(path, &opts, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The recorded text states (diffusers' `encode_prompt`, with its clip skip) and the run.
fn check(p: &Pipeline, case: &str, clip_skip: usize) {
    let refs = load(&refs_dir().join(format!("{case}.safetensors")));
    for (text, key) in [
        (
            "a red circle on a blue background, highly detailed",
            "prompt_states",
        ),
        ("blurry, ugly", "negative_states"),
    ] {
        let states = p.encode_prompt_skipping(text, clip_skip).unwrap();
        let d = max_abs_diff(&states, &refs[key]);
        assert!(d < TOL, "{case}: {key} differs by {d}");
    }
    check_recorded_run(p, &refs_dir(), case, refs["init_noise"].clone(), clip_skip);
}

#[test]
fn sd1_single_file_matches_from_single_file() {
    let p = load_with(&ckpt("sd1-tiny.safetensors"), LoadOptions::default());
    assert_eq!(p.model.description, "SD 1.x · fp16 · single file");
    assert_eq!(p.model.scheduler.prediction_type, PredictionType::Epsilon);
    check(&p, "sd1_euler", 1);
}

#[test]
fn clip_skip_2_matches_diffusers() {
    let p = load_with(&ckpt("sd1-tiny.safetensors"), LoadOptions::default());
    check(&p, "sd1_dpmpp_clipskip2", 2);
}

#[test]
fn sd2_v_model_with_its_yaml_matches_from_single_file() {
    let p = load_with(&ckpt("sd2-tiny-v.safetensors"), LoadOptions::default());
    assert_eq!(p.model.description, "SD 2.x · fp16 · single file");
    assert_eq!(
        p.model.scheduler.prediction_type,
        PredictionType::VPrediction
    );
    assert!(p.model.notes[0].contains(".yaml"), "{:?}", p.model.notes);
    // OpenCLIP's penultimate layer: 23 of the 24 stored.
    assert_eq!(p.model.text_encoder.num_layers(), 23);
    // SD 2.x v-models are the 768 px ones.
    assert_eq!(p.model.native_size(), 768);
    check(&p, "sd2v_ddim", 1);
}

#[test]
fn prediction_set_by_the_user_wins() {
    let opts = LoadOptions {
        prediction: Some(PredictionType::Epsilon),
        ..Default::default()
    };
    let p = load_with(&ckpt("sd2-tiny-v.safetensors"), opts);
    assert_eq!(p.model.scheduler.prediction_type, PredictionType::Epsilon);
    assert_eq!(p.model.auto_prediction, PredictionType::VPrediction);
    check(&p, "sd2v_as_epsilon_euler", 1);
}

#[test]
fn ckpt_copy_gives_the_same_images() {
    let p = load_with(&ckpt("sd1-tiny.ckpt"), LoadOptions::default());
    check(&p, "sd1_euler", 1);
}

/// The file's tensors, to write altered copies.
fn tensors_of(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn v_pred_marker_without_yaml_means_v_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors_of(&ckpt("sd2-tiny-v.safetensors"));
    let plain = dir.path().join("plain.safetensors");
    save(&t, &plain);
    // No yaml, no marker, random weights (ComfyUI's weight test reads them as epsilon).
    let p = load_with(&plain, LoadOptions::default());
    assert_eq!(p.model.scheduler.prediction_type, PredictionType::Epsilon);
    assert_eq!(p.model.native_size(), 512);

    t.insert(
        "v_pred".into(),
        Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
    );
    let marked = dir.path().join("marked.safetensors");
    save(&t, &marked);
    let p = load_with(&marked, LoadOptions::default());
    assert_eq!(
        p.model.scheduler.prediction_type,
        PredictionType::VPrediction
    );
    assert!(p.model.notes[0].contains("v_pred"), "{:?}", p.model.notes);
    check(&p, "sd2v_ddim", 1);
}

#[test]
fn trained_sd2_768_weights_read_as_v_prediction() {
    // ComfyUI's test: a trained 768-v model's last up-block norm bias is spread out.
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors_of(&ckpt("sd2-tiny-v.safetensors"));
    let key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias";
    let n = t[key].dims()[0];
    let spread = Tensor::randn(0f32, 0.5, n, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    t.insert(key.into(), spread);
    let path = dir.path().join("v2-1_768-like.safetensors");
    save(&t, &path);
    let p = load_with(&path, LoadOptions::default());
    assert_eq!(
        p.model.scheduler.prediction_type,
        PredictionType::VPrediction
    );
    assert!(p.model.notes[0].contains("weights"), "{:?}", p.model.notes);
}

#[test]
fn ztsnr_marker_rescales_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors_of(&ckpt("sd2-tiny-v.safetensors"));
    t.insert(
        "v_pred".into(),
        Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
    );
    t.insert(
        "ztsnr".into(),
        Tensor::zeros(0, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("zsnr.safetensors");
    save(&t, &path);
    let p = load_with(&path, LoadOptions::default());
    assert!(p.model.scheduler.rescale_betas_zero_snr);
    assert_eq!(
        p.model.scheduler.prediction_type,
        PredictionType::VPrediction
    );
}

#[test]
fn fp32_and_bf16_files_load_too() {
    let dir = tempfile::tempdir().unwrap();
    let t = tensors_of(&ckpt("sd1-tiny.safetensors"));
    for (dtype, label) in [(DType::F32, "fp32"), (DType::BF16, "bf16")] {
        let converted: HashMap<String, Tensor> = t
            .iter()
            .map(|(k, v)| (k.clone(), v.to_dtype(dtype).unwrap()))
            .collect();
        let path = dir.path().join(format!("sd1-{label}.safetensors"));
        save(&converted, &path);
        let p = load_with(&path, LoadOptions::default());
        assert_eq!(
            p.model.description,
            format!("SD 1.x · {label} · single file")
        );
        if dtype == DType::F32 {
            // fp16 values widened to f32 are the same numbers: the same run.
            check(&p, "sd1_euler", 1);
        } else {
            let a = p.encode_prompt("a red circle").unwrap();
            let fp16 = load_with(&ckpt("sd1-tiny.safetensors"), LoadOptions::default());
            let b = fp16.encode_prompt("a red circle").unwrap();
            let d = max_abs_diff(&a, &b);
            assert!(
                d > 0.0 && d < 0.1,
                "bf16 rounding moves the text states by {d}"
            );
        }
    }
}

#[test]
fn malicious_pickle_is_refused_and_nothing_runs() {
    // make_checkpoints.py proved that torch.load runs `touch` on this file.
    let marker = Path::new("/tmp/easel-malicious-pickle-ran");
    let _ = std::fs::remove_file(marker);
    let path = ckpt("malicious.ckpt");
    let err = load_err(&path, LoadOptions::default());
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("posix.system") && err.contains("refused"),
        "{err}"
    );
    assert!(!marker.exists(), "the pickle's payload ran");
}

#[test]
fn bad_files_get_one_line_naming_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(ckpt("sd1-tiny.safetensors")).unwrap();
    let t = tensors_of(&ckpt("sd1-tiny.safetensors"));
    let path = |n: &str| dir.path().join(n);

    std::fs::write(path("truncated.safetensors"), &good[..good.len() / 2]).unwrap();
    std::fs::write(path("empty.safetensors"), b"").unwrap();
    let ckpt_bytes = std::fs::read(ckpt("sd1-tiny.ckpt")).unwrap();
    std::fs::write(path("truncated.ckpt"), &ckpt_bytes[..ckpt_bytes.len() / 2]).unwrap();

    let mut missing = t.clone();
    missing.remove("model.diffusion_model.out.2.weight");
    missing.remove("cond_stage_model.transformer.text_model.final_layer_norm.bias");
    save(&missing, &path("missing.safetensors"));

    let mut extra = t.clone();
    extra.insert(
        "model.diffusion_model.input_blocks.1.1.mystery.weight".into(),
        Tensor::zeros(4, DType::F16, &Device::Cpu).unwrap(),
    );
    save(&extra, &path("extra.safetensors"));

    let mut wrong = t.clone();
    wrong.insert(
        "model.diffusion_model.out.2.weight".into(),
        Tensor::zeros((4, 16, 3, 3), DType::F16, &Device::Cpu).unwrap(),
    );
    save(&wrong, &path("wrong-shape.safetensors"));

    let mut sdxl = t.clone();
    sdxl.insert(
        "conditioner.embedders.1.model.positional_embedding".into(),
        Tensor::zeros((77, 64), DType::F16, &Device::Cpu).unwrap(),
    );
    save(&sdxl, &path("sdxl.safetensors"));

    let mut inpaint = t.clone();
    inpaint.insert(
        "model.diffusion_model.input_blocks.0.0.weight".into(),
        Tensor::zeros((32, 9, 3, 3), DType::F16, &Device::Cpu).unwrap(),
    );
    save(&inpaint, &path("inpaint.safetensors"));

    let vae: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("first_stage_model.")?.to_string(), v.clone())))
        .collect();
    save(&vae, &path("vae-only.safetensors"));

    std::fs::copy(ckpt("sd2-tiny-v.safetensors"), path("badyaml.safetensors")).unwrap();
    std::fs::write(
        path("badyaml.yaml"),
        "model: [params: {parameterization: v\n",
    )
    .unwrap();

    for (name, needles) in [
        ("truncated.safetensors", &["truncated"][..]),
        ("empty.safetensors", &["empty", "0 bytes"][..]),
        ("truncated.ckpt", &["not a readable PyTorch zip"][..]),
        (
            "missing.safetensors",
            &[
                "missing 2 tensors",
                "conv_out.weight",
                "final_layer_norm.bias",
            ][..],
        ),
        (
            "extra.safetensors",
            &["input_blocks.1.1.mystery.weight", "SD 1.x"][..],
        ),
        ("wrong-shape.safetensors", &["out.2.weight", "shape"][..]),
        (
            "sdxl.safetensors",
            &["an SDXL checkpoint without its first text encoder"][..],
        ),
        ("vae-only.safetensors", &["a VAE on its own"][..]),
        (
            "badyaml.safetensors",
            &["badyaml.yaml", "not valid YAML"][..],
        ),
    ] {
        let err = load_err(&path(name), LoadOptions::default());
        assert!(!err.contains('\n'), "{name}: more than one line: {err}");
        if name != "badyaml.safetensors" {
            assert!(
                err.contains(&path(name).display().to_string()),
                "{name}: {err}"
            );
        }
        for n in needles {
            assert!(err.contains(n), "{name}: {err:?} lacks {n:?}");
        }
        eprintln!("{name}: {err}");
    }
    // A 9-channel UNet is an inpainting model, and runs as one.
    let p = load_with(&path("inpaint.safetensors"), LoadOptions::default());
    assert!(p.model.is_inpainting());
    assert_eq!(p.model.latent_channels(), 4);
    // A LoRA is not a model.
    let lora = fixtures().join("loras/tiny-style.safetensors");
    let err = load_err(&lora, LoadOptions::default());
    assert!(err.contains("LoRA adapter"), "{err}");
}

#[test]
fn external_vae_replaces_the_checkpoints_own() {
    let dir = tempfile::tempdir().unwrap();
    let t = tensors_of(&ckpt("sd1-tiny.safetensors"));
    // The checkpoint's own VAE as a file of its own, in LDM names: the same image.
    let vae: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("first_stage_model.")?.to_string(), v.clone())))
        .collect();
    let vae_path = dir.path().join("vae-ft-tiny.safetensors");
    save(&vae, &vae_path);
    let opts = LoadOptions {
        vae: Some(vae_path.clone()),
        ..Default::default()
    };
    let p = load_with(&ckpt("sd1-tiny.safetensors"), opts.clone());
    assert_eq!(p.model.vae_file.as_deref(), Some(vae_path.as_path()));
    check(&p, "sd1_euler", 1);

    // A1111's `<stem>.vae.safetensors` beside the checkpoint is picked up by itself.
    let model = dir.path().join("model.safetensors");
    std::fs::copy(ckpt("sd1-tiny.safetensors"), &model).unwrap();
    std::fs::copy(&vae_path, dir.path().join("model.vae.safetensors")).unwrap();
    let p = load_with(&model, LoadOptions::default());
    assert_eq!(
        p.model.vae_file.as_deref(),
        Some(dir.path().join("model.vae.safetensors").as_path())
    );

    // A VAE for another architecture (16-channel latents, as SD3's and Flux's) is refused.
    let mut other = vae.clone();
    let z = |s: &[usize]| Tensor::zeros(s, DType::F16, &Device::Cpu).unwrap();
    other.insert("encoder.conv_out.weight".into(), z(&[32, 32, 3, 3]));
    other.insert("encoder.conv_out.bias".into(), z(&[32]));
    other.insert("quant_conv.weight".into(), z(&[32, 32, 1, 1]));
    other.insert("quant_conv.bias".into(), z(&[32]));
    other.insert("post_quant_conv.weight".into(), z(&[16, 16, 1, 1]));
    other.insert("post_quant_conv.bias".into(), z(&[16]));
    other.insert("decoder.conv_in.weight".into(), z(&[32, 16, 3, 3]));
    let other_path = dir.path().join("flux-ae.safetensors");
    save(&other, &other_path);
    let err = load_err(
        &ckpt("sd1-tiny.safetensors"),
        LoadOptions {
            vae: Some(other_path.clone()),
            ..Default::default()
        },
    );
    assert!(
        err.contains("flux-ae.safetensors") && err.contains("16-channel latents"),
        "{err}"
    );
}

#[test]
fn diffusers_vae_folders_and_scale_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    // The checkpoint's own VAE written as a diffusers vae/ folder: the same image.
    let t = tensors_of(&ckpt("sd1-tiny.safetensors"));
    let renamed: HashMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| {
            let k = k.strip_prefix("first_stage_model.")?;
            let (name, _) = easel::models::checkpoint::keymap::vae::map(k, 4)?.remove(0);
            Some((name, v.clone()))
        })
        .collect();
    let vae_dir = dir.path().join("vae");
    std::fs::create_dir(&vae_dir).unwrap();
    candle_core::safetensors::save(
        &renamed,
        vae_dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        vae_dir.join("config.json"),
        r#"{"_class_name": "AutoencoderKL", "block_out_channels": [32, 32, 32, 32],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32}"#,
    )
    .unwrap();
    let opts = LoadOptions {
        vae: Some(vae_dir.clone()),
        ..Default::default()
    };
    let p = load_with(&ckpt("sd1-tiny.safetensors"), opts);
    check(&p, "sd1_euler", 1);

    // sd-tiny-a's VAE scales by 2, SD's by 8: refused, for a folder model too.
    let small = fixtures().join("sd-tiny-a/vae");
    let opts = LoadOptions {
        vae: Some(small.clone()),
        ..Default::default()
    };
    let err = load_err(&ckpt("sd1-tiny.safetensors"), opts.clone());
    assert!(
        err.contains("scales images by 2") && err.contains("by 8"),
        "{err}"
    );
    let err = load_err(&fixtures().join("sd-tiny-b"), opts);
    assert!(
        err.contains("scales images by 2") && err.contains("by 4"),
        "{err}"
    );
}

#[test]
fn fp8_weights_are_refused_before_the_model_in_use_is_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors_of(&ckpt("sd1-tiny.safetensors"));
    let key = "model.diffusion_model.out.2.weight";
    t.insert(key.into(), t[key].to_dtype(DType::F8E4M3).unwrap());
    let path = dir.path().join("fp8.safetensors");
    save(&t, &path);
    // The check the studio runs first (no weights read) already says why.
    let err = easel::models::StableDiffusion::validate(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("fp8") && err.contains(key), "{err}");
}

#[test]
fn reconfigure_swaps_the_vae_and_prediction_in_memory() {
    let mut p = load_with(&ckpt("sd2-tiny-v.safetensors"), LoadOptions::default());
    let eps = LoadOptions {
        prediction: Some(PredictionType::Epsilon),
        ..Default::default()
    };
    p.model.reconfigure(&eps).unwrap();
    check(&p, "sd2v_as_epsilon_euler", 1);
    p.model.reconfigure(&LoadOptions::default()).unwrap();
    check(&p, "sd2v_ddim", 1);
    // A bad VAE leaves the model as it was.
    let bad = LoadOptions {
        vae: Some(fixtures().join("loras/tiny-style.safetensors")),
        ..Default::default()
    };
    assert!(p.model.reconfigure(&bad).is_err());
    assert_eq!(p.model.options, LoadOptions::default());
    check(&p, "sd2v_ddim", 1);
}

/// A safetensors file with the names, dtypes and shapes of `layout` (recorded from a full-size
/// checkpoint by make_checkpoints.py) whose data is a hole: gigabytes long, nothing on disk.
fn sparse_checkpoint(layout: &str, dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(fixtures().join("refs/checkpoint-layouts").join(layout)).unwrap();
    let layout: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, v) in layout {
        let dtype = v[0].as_str().unwrap().to_string();
        let shape: Vec<u64> = v[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let size = match dtype.as_str() {
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            "I64" => 8,
            other => panic!("{other}"),
        };
        let bytes = shape.iter().product::<u64>() * size;
        header.insert(
            name,
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let path = dir.join("full-size.safetensors");
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&json);
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + offset).unwrap();
    path
}

fn layout_of(path: &Path) -> easel::models::checkpoint::SingleFile {
    // Every tensor is checked by name and shape against the modules; nothing is read.
    easel::models::checkpoint::load(
        path,
        &LoadOptions::default(),
        &Device::Cpu,
        DType::F32,
        true,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn full_size_sd15_layout_is_detected_and_maps_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_checkpoint("sd15.json", dir.path());
    let f = layout_of(&path);
    let u = &f.layout.unet;
    assert_eq!(u.block_out_channels, [320, 640, 1280, 1280]);
    assert_eq!(f.layout.unet_layers_per_block, 2);
    assert_eq!(u.cross_attention_dim(), Some(768));
    assert!(!u.use_linear_projection);
    assert_eq!(format!("{:?}", u.attention_head_dim), "One(8)");
    assert_eq!(
        u.down_block_types,
        [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D"
        ]
    );
    let t = &f.layout.text_config;
    assert_eq!(
        (
            t.hidden_size,
            t.num_attention_heads,
            t.num_hidden_layers,
            t.intermediate_size
        ),
        (768, 12, 12, 3072)
    );
    assert_eq!(t.hidden_act, "quick_gelu");
    assert_eq!(f.vae.config.block_out_channels, [128, 256, 512, 512]);
    assert_eq!(f.scheduler.prediction_type, PredictionType::Epsilon);
    assert_eq!(f.layout.precision.precision_name(), "fp16");
    // The whole pipeline (folder-style checks included) validates without reading a weight.
    easel::models::StableDiffusion::validate(&path, &LoadOptions::default()).unwrap();
}

#[test]
fn full_size_sd21_layout_is_detected_and_maps_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_checkpoint("sd21.json", dir.path());
    let f = layout_of(&path);
    let u = &f.layout.unet;
    assert_eq!(u.block_out_channels, [320, 640, 1280, 1280]);
    assert_eq!(u.cross_attention_dim(), Some(1024));
    assert!(u.use_linear_projection);
    assert_eq!(
        format!("{:?}", u.attention_head_dim),
        "Each([5, 10, 20, 20])"
    );
    let t = &f.layout.text_config;
    // OpenCLIP ViT-H stores 24 layers; SD 2.x reads the penultimate.
    assert_eq!(
        (
            t.hidden_size,
            t.num_attention_heads,
            t.num_hidden_layers,
            t.intermediate_size
        ),
        (1024, 16, 23, 4096)
    );
    assert_eq!(t.hidden_act, "gelu");
    assert_eq!(f.text_encoder.num_layers(), 23);
    easel::models::StableDiffusion::validate(&path, &LoadOptions::default()).unwrap();
}

/// SDXL 1.0's full-size layout (random weights converted by diffusers' SGM script; 2 515
/// tensors with the position ids and logit scale real files carry), as a sparse file.
#[test]
fn full_size_sdxl_layout_is_detected_and_maps_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = sparse_checkpoint("sdxl.json", dir.path());
    let f = layout_of(&path);
    let u = &f.layout.unet;
    assert_eq!(u.block_out_channels, [320, 640, 1280]);
    assert_eq!(
        u.down_block_types,
        [
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D"
        ]
    );
    assert_eq!(
        format!("{:?}", u.transformer_layers_per_block),
        "Each([1, 2, 10])"
    );
    assert_eq!(format!("{:?}", u.attention_head_dim), "Each([5, 10, 20])");
    assert_eq!(u.cross_attention_dim(), Some(2048));
    assert!(u.use_linear_projection);
    assert_eq!(u.addition_time_embed_dim, Some(256));
    assert_eq!(u.projection_class_embeddings_input_dim, Some(2816));
    let t = &f.layout.text_config;
    assert_eq!(
        (t.hidden_size, t.num_hidden_layers, t.hidden_act.as_str()),
        (768, 12, "quick_gelu")
    );
    let (_, t2) = f.layout.text_2.as_ref().unwrap();
    assert_eq!(
        (
            t2.hidden_size,
            t2.num_attention_heads,
            t2.num_hidden_layers,
            t2.intermediate_size,
            t2.projection_dim
        ),
        (1280, 20, 32, 5120, Some(1280))
    );
    assert_eq!(f.text_encoder_2.as_ref().unwrap().num_layers(), 32);
    assert_eq!(f.vae.config.scaling_factor, 0.13025);
    easel::models::StableDiffusion::validate(&path, &LoadOptions::default()).unwrap();
}
