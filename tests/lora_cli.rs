//! `easel generate --lora …`, `<lora:…>` prompt tags, `easel lora list|info`, driven through the
//! real binary: adapters reproduce diffusers' image, the PNG records them so the image can be
//! made again (here or in A1111), and bad adapters end in one `error:` line with nothing written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use easel::gallery::png_meta::read_png_metadata;
use tempfile::TempDir;

const PROMPT: &str = "a red circle on a blue background, highly detailed";

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

fn easel(args: &[&str], env_dir: Option<&Path>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_easel"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("EASEL_LORA_DIR");
    if let Some(d) = env_dir {
        cmd.env("EASEL_LORA_DIR", d);
    }
    let out = cmd.output().expect("the easel binary runs");
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn loras() -> PathBuf {
    fixtures().join("loras")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A 4-step seeded generation with extra arguments.
fn generate(out: &Path, prompt: &str, extra: &[&str]) -> Run {
    let model = s(&fixtures().join("sd-tiny-a"));
    let out = s(out);
    let mut args = vec![
        "generate",
        "--model",
        &model,
        "--prompt",
        prompt,
        "--seed",
        "11",
        "--steps",
        "4",
        "--sampler",
        "euler",
        "-o",
        &out,
    ];
    args.extend_from_slice(extra);
    easel(&args, None)
}

fn assert_ok(run: &Run, what: &str) {
    assert!(run.success, "{what} failed: {}", run.stderr);
}

#[test]
fn lora_flag_and_prompt_tag_give_the_same_image_and_both_are_recorded() {
    let dir = TempDir::new().unwrap();
    let (flag, tag, plain) = (
        dir.path().join("flag.png"),
        dir.path().join("tag.png"),
        dir.path().join("plain.png"),
    );
    let lora_dir = s(&loras());
    let run = generate(
        &flag,
        PROMPT,
        &["--lora", "tiny-style:0.5", "--lora-dir", &lora_dir],
    );
    assert_ok(&run, "--lora");
    assert!(run.stderr.contains("lora: tiny-style ("), "{}", run.stderr);
    let tagged = format!("{PROMPT} <lora:tiny-style:0.5>");
    assert_ok(&generate(&tag, &tagged, &["--lora-dir", &lora_dir]), "tag");
    assert_ok(&generate(&plain, PROMPT, &[]), "plain");
    let (a, b, c) = (read_rgb(&flag).2, read_rgb(&tag).2, read_rgb(&plain).2);
    assert_eq!(a, b, "--lora and <lora:…> must give the same image");
    assert_ne!(a, c, "the adapter must change the image");

    let hash = easel::lora::library::short_hash(&loras().join("tiny-style.safetensors")).unwrap();
    for path in [&flag, &tag] {
        let meta = read_png_metadata(path).unwrap();
        let easel = meta.easel.clone().unwrap();
        // The tag ends up in the prompt either way: that is what A1111 reads.
        assert_eq!(easel.prompt, tagged, "{}", path.display());
        assert_eq!(easel.loras.len(), 1);
        assert_eq!(
            (
                easel.loras[0].name.as_str(),
                easel.loras[0].hash.as_str(),
                easel.loras[0].weight
            ),
            ("tiny-style", hash.as_str(), 0.5)
        );
        let params = meta.text("parameters").unwrap();
        assert!(params.starts_with(&tagged), "{params}");
        assert!(
            params.contains(&format!("Lora hashes: \"tiny-style: {hash}\"")),
            "{params}"
        );
    }
    // The recorded prompt alone reproduces the image.
    let again = dir.path().join("again.png");
    let recorded = read_png_metadata(&flag).unwrap().easel.unwrap().prompt;
    assert_ok(
        &generate(&again, &recorded, &["--lora-dir", &lora_dir]),
        "reproduce",
    );
    assert_eq!(read_rgb(&again).2, a);
}

#[test]
fn cli_with_a_lora_file_reproduces_diffusers() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("w1.png");
    let model = s(&fixtures().join("sd-tiny-a"));
    let noise = s(&fixtures().join("refs/sd-tiny-a/init_noise.safetensors"));
    let lora = format!("{}:1", s(&loras().join("tiny-style-peft.safetensors")));
    let out_s = s(&out);
    let run = easel(
        &[
            "generate",
            "--model",
            &model,
            "--prompt",
            PROMPT,
            "--negative",
            "blurry, ugly",
            "--steps",
            "6",
            "--cfg",
            "7.5",
            "--sampler",
            "ddim",
            "--init-noise",
            &noise,
            "--lora",
            &lora,
            "-o",
            &out_s,
        ],
        None,
    );
    assert_ok(&run, "generate");
    let (_, _, ours) = read_rgb(&out);
    let (_, _, theirs) = read_rgb(&fixtures().join("refs/lora/style_w1.png"));
    let d = max_u8_diff(&ours, &theirs);
    assert!(d <= 2, "differs from diffusers by {d}/255");
}

#[test]
fn separate_text_encoder_weight_and_several_adapters() {
    let dir = TempDir::new().unwrap();
    let lora_dir = s(&loras());
    let a = dir.path().join("a.png");
    let run = generate(
        &a,
        PROMPT,
        &[
            "--lora",
            "tiny-style:te=0.3:unet=0.7",
            "--lora",
            "tiny-detail:-0.5",
            "--lora-dir",
            &lora_dir,
        ],
    );
    assert_ok(&run, "two adapters");
    let meta = read_png_metadata(&a).unwrap().easel.unwrap();
    // A1111's positional order: text encoder, then UNet.
    assert_eq!(
        meta.prompt,
        format!("{PROMPT} <lora:tiny-style:0.3:0.7> <lora:tiny-detail:-0.5>")
    );
    let weights: Vec<_> = meta
        .loras
        .iter()
        .map(|l| (l.name.as_str(), l.weight))
        .collect();
    assert_eq!(weights, [("tiny-style", 0.7), ("tiny-detail", -0.5)]);
    // weight 0 everywhere = the plain image
    let zero = dir.path().join("zero.png");
    let plain = dir.path().join("plain.png");
    assert_ok(
        &generate(
            &zero,
            PROMPT,
            &["--lora", "tiny-style:0", "--lora-dir", &lora_dir],
        ),
        "0",
    );
    assert_ok(&generate(&plain, PROMPT, &[]), "plain");
    assert_eq!(read_rgb(&zero).2, read_rgb(&plain).2);
    assert!(read_png_metadata(&zero)
        .unwrap()
        .easel
        .unwrap()
        .loras
        .is_empty());
}

#[test]
fn bad_adapters_end_in_one_error_line_and_no_file() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("out.png");
    let lora_dir = s(&loras());
    let other_model = s(&fixtures().join("loras/tiny-style.safetensors"));
    let broken = dir.path().join("broken.safetensors");
    std::fs::write(&broken, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let broken = s(&broken);
    let tagged = format!("{PROMPT} <lora:tiny-style:0.5>");
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["--lora", "nonexistent"],
            PROMPT,
            "no LoRA named \"nonexistent\"",
        ),
        (
            vec!["--lora", "missing/x.safetensors"],
            PROMPT,
            "no such file",
        ),
        (vec!["--lora", &broken], PROMPT, "broken.safetensors"),
        (
            vec!["--lora-dir", &lora_dir],
            "x <lora:tiny-style:te=oops>",
            "<lora:tiny-style:te=oops>",
        ),
        (
            vec!["--lora", "tiny-style", "--lora-dir", &lora_dir],
            &tagged,
            "named twice",
        ),
        (vec![], &tagged, "no LoRA named \"tiny-style\""),
    ];
    for (extra, prompt, expect) in cases {
        let run = generate(&out, prompt, &extra);
        assert!(!run.success, "{extra:?} succeeded");
        let lines: Vec<_> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(lines.len(), 1, "{extra:?}: {}", run.stderr);
        assert!(lines[0].contains(expect), "{extra:?}: {}", lines[0]);
        assert!(!run.stderr.contains("panicked") && !run.stderr.contains("stack backtrace"));
        assert!(!out.exists(), "{extra:?} wrote a file");
    }
    // An adapter for another model (sd-tiny-b) names the count of matching keys.
    let model_b = s(&fixtures().join("sd-tiny-b"));
    let out_s = s(&out);
    let run = easel(
        &[
            "generate",
            "--model",
            &model_b,
            "--prompt",
            "x",
            "--steps",
            "1",
            "--lora",
            &other_model,
            "-o",
            &out_s,
        ],
        None,
    );
    assert!(!run.success);
    assert!(run.stderr.contains("of 438 keys match"), "{}", run.stderr);
    assert!(!out.exists());
}

#[test]
fn lora_list_and_info() {
    let run = easel(&["lora", "list", &s(&loras())], None);
    assert_ok(&run, "list");
    let rows: Vec<_> = run.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{}", run.stdout);
    let sdxl = rows.iter().find(|r| r.starts_with("sdxl-style ")).unwrap();
    assert!(sdxl.contains("SDXL"), "{sdxl}");
    let style = rows.iter().find(|r| r.starts_with("tiny-style ")).unwrap();
    for part in [
        "4",
        "SD 1.x",
        "UNet 116",
        "text 30",
        "conv3x3 26",
        "tinystyle, red circle",
    ] {
        assert!(style.contains(part), "{part}: {style}");
    }
    // from $EASEL_LORA_DIR, filtered, as JSON
    let run = easel(
        &["lora", "list", "--filter", "red circle", "--json"],
        Some(&loras()),
    );
    assert_ok(&run, "list --json");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<_> = v["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny-style"]);
    assert_eq!(
        v["adapters"][0]["kohya"]["trigger_words"][0][0],
        "tinystyle"
    );

    let file = s(&loras().join("tiny-style.safetensors"));
    let model = s(&fixtures().join("sd-tiny-a"));
    let run = easel(&["lora", "info", &file, "--model", &model], None);
    assert_ok(&run, "info");
    for part in [
        "kohya",
        "alpha         2",
        "hash",
        "sd_v1",
        "all 438 keys match",
    ] {
        assert!(run.stdout.contains(part), "{part}: {}", run.stdout);
    }
    let model_b = s(&fixtures().join("sd-tiny-b"));
    let run = easel(&["lora", "info", &file, "--model", &model_b], None);
    assert!(!run.success && run.stderr.contains("keys match this model's layers"));
    // With no folder named, the bundled demo adapter (models/loras) is listed.
    let run = easel(&["lora", "list"], None);
    assert_ok(&run, "list with no folder");
    assert!(
        run.stdout.lines().any(|l| l.starts_with("striped ")),
        "{}",
        run.stdout
    );
}
