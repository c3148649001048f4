//! Single-file checkpoints through the real binary: `easel generate --model FILE` with a VAE,
//! a prediction type and a clip skip, recorded in the PNG as A1111 writes them; bad files end
//! in one `error:` line; `easel models list` describes a library in A1111, ComfyUI, diffusers
//! and Hugging Face-cache layouts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use easel::gallery::png_meta::read_png_metadata;
use sha2::{Digest, Sha256};

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

fn easel(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("EASEL_MODEL_DIR")
        .output()
        .expect("the easel binary runs");
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ckpt(name: &str) -> PathBuf {
    fixtures().join("checkpoints").join(name)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A1111's AutoV2 hash: the first 10 hex digits of the file's SHA-256.
fn autov2(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

fn run_ok(args: &[&str]) -> Run {
    let run = easel(args);
    assert!(
        run.success && !run.stderr.contains("panicked"),
        "{args:?}\n{}",
        run.stderr
    );
    run
}

/// A small, quick `easel generate` of `model` (64×64, one step unless `extra` says otherwise)
/// that must succeed.
fn generate_ok(model: &Path, extra: &[&str], out: &Path) -> Run {
    let (model, out) = (s(model), s(out));
    let mut args = vec!["generate", "--model", &model, "--prompt", "a red circle"];
    args.extend(["--width", "64", "--height", "64", "-o", &out]);
    if !extra.contains(&"--steps") {
        args.extend(["--steps", "1"]);
    }
    args.extend_from_slice(extra);
    run_ok(&args)
}

#[test]
fn generate_from_a_checkpoint_file_records_model_vae_and_clip_skip() {
    let dir = tempfile::tempdir().unwrap();
    // A1111's per-checkpoint VAE: the model's own VAE as a file of its own.
    let tensors = load(&ckpt("sd1-tiny.safetensors"));
    let vae: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("first_stage_model.")?.to_string(), v.clone())))
        .collect();
    let vae_path = dir.path().join("vae-ft-tiny.safetensors");
    candle_core::safetensors::save(&vae, &vae_path).unwrap();

    let out = dir.path().join("out.png");
    let vae_arg = s(&vae_path);
    let extra = [
        "--vae",
        &vae_arg,
        "--clip-skip",
        "2",
        "--steps",
        "2",
        "--seed",
        "7",
    ];
    let run = generate_ok(&ckpt("sd1-tiny.safetensors"), &extra, &out);
    assert!(
        run.stderr.contains("SD 1.x · fp16 · single file"),
        "{}",
        run.stderr
    );
    let meta = read_png_metadata(&out).unwrap();
    let params = meta.text("parameters").unwrap().to_string();
    let model_hash = autov2(&ckpt("sd1-tiny.safetensors"));
    for needle in [
        format!("Model hash: {model_hash}"),
        "Model: sd1-tiny".to_string(),
        format!("VAE hash: {}", autov2(&vae_path)),
        "VAE: vae-ft-tiny.safetensors".to_string(),
        "Clip skip: 2".to_string(),
    ] {
        assert!(params.contains(&needle), "{params:?} lacks {needle:?}");
    }
    let easel_meta = meta.easel.unwrap();
    assert_eq!(easel_meta.clip_skip, 2);
    assert_eq!(easel_meta.model_hash, model_hash);

    // The default clip skip is not written (A1111 leaves it out too); no VAE line without one.
    let plain = dir.path().join("plain.png");
    generate_ok(&ckpt("sd1-tiny.ckpt"), &[], &plain);
    let params = read_png_metadata(&plain)
        .unwrap()
        .text("parameters")
        .unwrap()
        .to_string();
    assert!(
        !params.contains("Clip skip") && !params.contains("VAE"),
        "{params}"
    );
    assert!(params.contains(&format!("Model hash: {}", autov2(&ckpt("sd1-tiny.ckpt")))));
}

#[test]
fn prediction_flag_overrides_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let sd2 = ckpt("sd2-tiny-v.safetensors");
    let run = generate_ok(&sd2, &["--prediction", "epsilon"], &out);
    assert!(
        run.stderr.contains("epsilon prediction: your setting"),
        "{}",
        run.stderr
    );
    let run = generate_ok(&sd2, &[], &out);
    assert!(
        run.stderr.contains("v-prediction: the .yaml beside it"),
        "{}",
        run.stderr
    );
    let bad = easel(&[
        "generate",
        "--prediction",
        "x0",
        "--prompt",
        "x",
        "-o",
        &s(&out),
    ]);
    assert!(
        !bad.success && bad.stderr.contains("epsilon or v"),
        "{}",
        bad.stderr
    );
    let bad = easel(&[
        "generate",
        "--model",
        &s(&ckpt("sd1-tiny.safetensors")),
        "--clip-skip",
        "3",
        "--prompt",
        "x",
        "-o",
        &s(&out),
    ]);
    assert!(
        !bad.success && bad.stderr.contains("--clip-skip: 3 is outside 1..=2"),
        "{}",
        bad.stderr
    );
}

#[test]
fn bad_model_files_end_in_one_error_line_and_no_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let zero = dir.path().join("zero.ckpt");
    std::fs::write(&zero, b"").unwrap();
    for (model, needle) in [
        (ckpt("malicious.ckpt"), "posix.system"),
        (
            fixtures().join("loras/tiny-style.safetensors"),
            "LoRA adapter",
        ),
        (zero.clone(), "empty"),
        (
            dir.path().join("absent.safetensors"),
            "no model folder or checkpoint file",
        ),
    ] {
        let run = easel(&[
            "generate",
            "--model",
            &s(&model),
            "--prompt",
            "x",
            "-o",
            &s(&out),
        ]);
        assert!(!run.success, "{}", model.display());
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{:?}", run.stderr);
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(&s(&model)), "{}", lines[0]);
        assert!(!out.exists());
    }
}

#[test]
fn models_list_describes_a1111_comfyui_diffusers_and_hub_layouts() {
    let root = tempfile::tempdir().unwrap();
    let a1111 = root.path().join("webui/models");
    std::fs::create_dir_all(a1111.join("Stable-diffusion/anime")).unwrap();
    std::fs::create_dir_all(a1111.join("VAE")).unwrap();
    std::fs::copy(
        ckpt("sd1-tiny.safetensors"),
        a1111.join("Stable-diffusion/sd1-tiny.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        ckpt("sd1-tiny.ckpt"),
        a1111.join("Stable-diffusion/anime/old.ckpt"),
    )
    .unwrap();
    std::fs::copy(
        ckpt("sd2-tiny-v.safetensors"),
        a1111.join("Stable-diffusion/v2.safetensors"),
    )
    .unwrap();
    // Not models: a LoRA and a stray text file are not listed.
    std::fs::copy(
        fixtures().join("loras/tiny-style.safetensors"),
        a1111.join("Stable-diffusion/style.safetensors"),
    )
    .unwrap();
    std::fs::write(a1111.join("Stable-diffusion/notes.txt"), "hi").unwrap();
    let vae: std::collections::HashMap<String, candle_core::Tensor> =
        load(&ckpt("sd1-tiny.safetensors"))
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("first_stage_model.")?.to_string(), v)))
            .collect();
    candle_core::safetensors::save(&vae, a1111.join("VAE/tiny.vae.safetensors")).unwrap();
    let comfy = root.path().join("ComfyUI/models/checkpoints");
    std::fs::create_dir_all(&comfy).unwrap();
    let truncated = std::fs::read(ckpt("sd1-tiny.safetensors")).unwrap();
    std::fs::write(comfy.join("broken.safetensors"), &truncated[..1000]).unwrap();
    copy_dir(
        &fixtures().join("sd-tiny-a"),
        &root.path().join("diffusers/sd-tiny-a"),
    );
    let hub = root
        .path()
        .join("hub/models--easel--tiny-b/snapshots/0123abcd");
    copy_dir(&fixtures().join("sd-tiny-b"), &hub);

    let dirs = [
        a1111.clone(),
        comfy.clone(),
        root.path().join("diffusers"),
        root.path().join("hub"),
    ];
    let mut args = vec!["models", "list", "--json", "--hash"];
    let dir_strings: Vec<String> = dirs.iter().map(|d| s(d)).collect();
    args.extend(dir_strings.iter().map(String::as_str));
    let run = run_ok(&args);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let by_name = |n: &str| {
        entries
            .iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {}", run.stdout))
    };
    let names: Vec<&str> = entries
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "broken",
            "easel/tiny-b",
            "old",
            "sd-tiny-a",
            "sd1-tiny",
            "v2",
            "tiny.vae"
        ],
        "models first, by name, then VAEs"
    );
    let sd1 = by_name("sd1-tiny");
    assert_eq!(sd1["architecture"], "SD 1.x");
    assert_eq!(sd1["kind"], "checkpoint");
    assert_eq!(sd1["precision"], "fp16");
    assert_eq!(sd1["runnable"], true);
    assert_eq!(
        sd1["size_bytes"],
        std::fs::metadata(ckpt("sd1-tiny.safetensors"))
            .unwrap()
            .len()
    );
    assert_eq!(sd1["hash"], autov2(&ckpt("sd1-tiny.safetensors")));
    assert_eq!(by_name("old")["architecture"], "SD 1.x");
    assert_eq!(by_name("v2")["architecture"], "SD 2.x");
    assert_eq!(by_name("sd-tiny-a")["kind"], "folder");
    assert_eq!(by_name("sd-tiny-a")["precision"], "fp32");
    assert_eq!(by_name("easel/tiny-b")["kind"], "folder");
    assert_eq!(by_name("tiny.vae")["kind"], "vae");
    let broken = by_name("broken");
    assert_eq!(broken["runnable"], false);
    assert!(
        broken["error"].as_str().unwrap().contains("truncated"),
        "{broken}"
    );

    // The table, with hashes from the cache now.
    let run = run_ok(&["models", "list", &s(&a1111)]);
    assert!(
        run.stdout.contains(&autov2(&ckpt("sd1-tiny.safetensors"))),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("v2") && l.contains("SD 2.x")),
        "{}",
        run.stdout
    );
}
