//! The real `easel` binary, driven as a user or a script would: `easel generate` reproduces
//! diffusers' images and records how it made them; seeds reproduce; and every kind of bad input
//! (broken model folders, impossible settings, unwritable outputs) ends in one helpful
//! `error: …` line, a non-zero exit, no panic and no file written.
//!
//! Every run sets `RUST_BACKTRACE=1`, as many users' shells do: candle then attaches a
//! backtrace to its errors, which must not leak into the one-line message.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use easel::gallery::png_meta::read_png_metadata;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The fixture prompts (tests/fixtures/make_fixtures.py).
const PROMPT: &str = "a red circle on a blue background, highly detailed";
const NEGATIVE: &str = "blurry, ugly";

/// CLI output against diffusers' PNG, per 8-bit channel. The latents agree to ~1e-4
/// (tests/reference_pipeline.rs); the only freedom left is a rounding flip at a .5 boundary,
/// so anything beyond 2 is a real difference.
const REF_TOL: u8 = 2;

/// The fp16 variant against the fp32 reference image. Its weights are the fp32 ones rounded
/// to half precision (relative error ≤ 2^-11 each) and computed in f32, so only the weight
/// rounding differs; measured: 1/255 (euler and dpmpp_2m_karras). 3 leaves room for
/// other CPUs' summation order while still failing if fp16 files were mis-read (wrong byte
/// order or a missing conversion gives noise, tens of levels off).
const FP16_TOL: u8 = 3;

struct Run {
    success: bool,
    code: Option<i32>,
    stderr: String,
}

fn easel(args: &[OsString]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_easel"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the easel binary runs");
    Run {
        success: out.status.success(),
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `easel generate` with these arguments.
fn generate<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut all: Vec<OsString> = vec!["generate".into()];
    all.extend(args.into_iter().map(Into::into));
    easel(&all)
}

fn assert_ok(run: &Run, what: &str) {
    assert!(
        run.success && !run.stderr.contains("panicked"),
        "{what}: exit {:?}\n{}",
        run.code,
        run.stderr
    );
}

fn fixture_model(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn ref_dir(model: &str) -> PathBuf {
    fixtures().join("refs").join(model)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A1111's short model hash computed here, independently: SHA-256 of the UNet weights.
fn unet_short_hash(model: &Path) -> String {
    let bytes = std::fs::read(model.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `--steps 6 --cfg 7.5 … --init-noise` for one recorded reference case.
fn reference_args(model: &str, case: &serde_json::Value, out: &Path) -> Vec<OsString> {
    let s = |k: &str| case[k].to_string().trim_matches('"').to_string();
    vec![
        "--model".into(),
        fixture_model(model).into(),
        "--prompt".into(),
        s("prompt").into(),
        "--negative".into(),
        s("negative_prompt").into(),
        "--steps".into(),
        s("steps").into(),
        "--cfg".into(),
        s("guidance_scale").into(),
        "--width".into(),
        s("width").into(),
        "--height".into(),
        s("height").into(),
        "--sampler".into(),
        s("sampler").into(),
        "--seed".into(),
        "1234".into(),
        "--init-noise".into(),
        ref_dir(model).join("init_noise.safetensors").into(),
        "-o".into(),
        out.into(),
    ]
}

fn check_reference(model: &str) {
    let tmp = TempDir::new().unwrap();
    let expected_hash = unet_short_hash(&fixture_model(model));
    for (sampler, a1111_name) in [
        ("ddim", "DDIM"),
        ("euler", "Euler"),
        ("dpmpp_2m_karras", "DPM++ 2M Karras"),
    ] {
        let what = format!("{model}/{sampler}");
        let case = read_json(&ref_dir(model).join(format!("{sampler}.json")));
        assert_eq!(case["sampler"], sampler, "{what}: fixture json");
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let out = tmp.path().join(format!("{sampler}.png"));
        let run = generate(reference_args(model, &case, &out));
        assert_ok(&run, &what);

        // Pixels.
        let (ow, oh, ours) = read_rgb(&out);
        let (rw, rh, theirs) = read_rgb(&ref_dir(model).join(format!("{sampler}.png")));
        assert_eq!((ow, oh), (rw, rh), "{what}: size");
        assert_eq!((ow as usize, oh as usize), (w, h), "{what}: size");
        let d = max_u8_diff(&ours, &theirs);
        assert!(
            d <= REF_TOL,
            "{what}: pixels differ from diffusers by {d}/255"
        );

        // Easel's own JSON chunk.
        let meta = read_png_metadata(&out).unwrap();
        let e = meta
            .easel
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no easel chunk"));
        assert_eq!(e.prompt, PROMPT, "{what}");
        assert_eq!(e.negative_prompt, NEGATIVE, "{what}");
        assert_eq!(e.steps, 6, "{what}");
        assert_eq!(e.cfg_scale, 7.5, "{what}");
        assert_eq!(e.seed, 1234, "{what}");
        assert_eq!((e.width, e.height), (w, h), "{what}");
        assert_eq!(e.sampler, sampler, "{what}");
        assert_eq!(e.sampler_a1111, a1111_name, "{what}");
        assert_eq!(e.model_name, model, "{what}");
        assert_eq!(e.model_hash, expected_hash, "{what}");
        let noise = e.init_noise.as_deref().unwrap_or("");
        assert!(
            noise.ends_with("init_noise.safetensors"),
            "{what}: init_noise {noise:?}"
        );

        // A1111's `parameters`, parsed…
        let a = meta
            .a1111
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no parameters chunk"));
        assert_eq!(a.prompt, PROMPT, "{what}");
        assert_eq!(a.negative_prompt, NEGATIVE, "{what}");
        assert_eq!(a.steps, Some(6), "{what}");
        assert_eq!(a.sampler.as_deref(), Some(a1111_name), "{what}");
        assert_eq!(a.cfg_scale, Some(7.5), "{what}");
        assert_eq!(a.seed, Some(1234), "{what}");
        assert_eq!((a.width, a.height), (Some(w), Some(h)), "{what}");
        assert_eq!(a.model_name.as_deref(), Some(model), "{what}");
        assert_eq!(a.model_hash.as_deref(), Some(expected_hash.as_str()));

        // …and its exact text: prompt, negative, then the settings line in A1111's order.
        let text = meta.text("parameters").unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{what}: {text:?}");
        assert_eq!(lines[0], PROMPT);
        assert_eq!(lines[1], format!("Negative prompt: {NEGATIVE}"));
        let settings = format!(
            "Steps: 6, Sampler: {a1111_name}, CFG scale: 7.5, Seed: 1234, Size: {w}x{h}, \
             Model hash: {expected_hash}, Model: {model}, Version: easel-{}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(lines[2], settings, "{what}");
    }
}

#[test]
fn cli_reproduces_diffusers_sd_tiny_a() {
    check_reference("sd-tiny-a");
}

/// Non-square, VAE factor 4, three UNet levels.
#[test]
fn cli_reproduces_diffusers_sd_tiny_b() {
    check_reference("sd-tiny-b");
}

/// A quick sd-tiny-a run (4 steps, ancestral so every step draws from the seed).
fn seeded_args(out: &Path, seed: Option<u64>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--model".into(),
        fixture_model("sd-tiny-a").into(),
        "--prompt".into(),
        PROMPT.into(),
        "--steps".into(),
        "4".into(),
        "--sampler".into(),
        "euler_a".into(),
        "-o".into(),
        out.into(),
    ];
    if let Some(seed) = seed {
        args.extend(["--seed".into(), seed.to_string().into()]);
    }
    args
}

#[test]
fn same_seed_same_pixels_different_seed_different_pixels() {
    let tmp = TempDir::new().unwrap();
    let paths: Vec<PathBuf> = ["a.png", "b.png", "c.png"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    for (path, seed) in paths.iter().zip([42, 42, 43]) {
        assert_ok(&generate(seeded_args(path, Some(seed))), "seeded run");
    }
    let [a, b, c] = [0, 1, 2].map(|i| read_rgb(&paths[i]).2);
    assert!(a == b, "seed 42 twice gave different pixels");
    assert!(a != c, "seeds 42 and 43 gave the same pixels");
}

#[test]
fn dtype_bf16_keeps_the_picture_and_a_bad_dtype_is_refused() {
    let tmp = TempDir::new().unwrap();
    let (f32, bf16) = (tmp.path().join("f32.png"), tmp.path().join("bf16.png"));
    assert_ok(&generate(seeded_args(&f32, Some(5))), "f32 run");
    let mut args = seeded_args(&bf16, Some(5));
    args.extend(["--dtype".into(), "bf16".into()]);
    assert_ok(&generate(args), "bf16 run");
    let (a, b) = (read_rgb(&f32).2, read_rgb(&bf16).2);
    let mean = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.len() as f64;
    assert!(
        mean > 0.0 && mean < 3.0,
        "bf16 vs f32: mean difference {mean}/255"
    );
    let mut args = seeded_args(&tmp.path().join("x.png"), Some(5));
    args.extend(["--dtype".into(), "f8".into()]);
    let run = generate(args);
    assert!(!run.success, "--dtype f8 was accepted");
    assert!(
        run.stderr.contains("f8") && run.stderr.contains("bf16"),
        "{}",
        run.stderr
    );
}

#[test]
fn trailing_spacing_changes_the_picture_and_is_recorded() {
    // SD-Turbo's recipe on the tiny model: Euler a, trailing, 4 steps, no guidance.
    let tmp = TempDir::new().unwrap();
    let run_with = |name: &str, spacing: Option<&str>| {
        let out = tmp.path().join(name);
        let mut args = seeded_args(&out, Some(3));
        args.extend(["--cfg", "0"].map(OsString::from));
        if let Some(s) = spacing {
            args.extend(["--spacing".into(), s.into()]);
        }
        assert_ok(&generate(args), name);
        out
    };
    let (default, trailing) = (run_with("d.png", None), run_with("t.png", Some("trailing")));
    // Both start at t = 999; linspace then visits 666, 333, 0 and trailing 749, 499, 249.
    assert_ne!(read_rgb(&default).2, read_rgb(&trailing).2);
    let spacing = |p: &Path| read_png_metadata(p).unwrap().easel.unwrap().spacing;
    assert_eq!(spacing(&trailing).as_deref(), Some("trailing"));
    assert_eq!(spacing(&default), None);

    let mut args = seeded_args(&tmp.path().join("x.png"), Some(3));
    args.extend(["--spacing", "uniform"].map(OsString::from));
    let run = generate(args);
    assert!(!run.success, "--spacing uniform was accepted");
    assert!(
        run.stderr.contains("leading, linspace, trailing"),
        "{}",
        run.stderr
    );
    let mut args = seeded_args(&tmp.path().join("y.png"), Some(3));
    let sampler = args.iter().position(|a| a == "--sampler").unwrap() + 1;
    args[sampler] = "dpmpp_2m_karras".into();
    args.extend(["--spacing", "trailing"].map(OsString::from));
    let run = generate(args);
    assert!(!run.success, "DPM++ Karras with trailing was accepted");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("--spacing") && errors[0].contains("sets its own steps"),
        "{}",
        run.stderr
    );
}

/// SD-Turbo's scheduler file says Euler with "trailing": its own sampler runs so, and says so
/// in the PNG; another sampler keeps its default.
#[test]
fn the_model_files_spacing_applies_to_its_own_sampler() {
    let tmp = TempDir::new().unwrap();
    let turbo = tmp.path().join("turbo");
    copy_dir(&fixture_model("sd-tiny-a"), &turbo);
    let config_path = turbo.join("scheduler/scheduler_config.json");
    let mut config = read_json(&config_path);
    config["_class_name"] = "EulerDiscreteScheduler".into();
    config["timestep_spacing"] = "trailing".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let run = |model: &Path, name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        let mut args: Vec<OsString> = ["--prompt", PROMPT, "--steps", "3", "--seed", "4"]
            .map(OsString::from)
            .to_vec();
        args.extend([
            "--model".into(),
            model.into(),
            "-o".into(),
            out.clone().into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        assert_ok(&generate(args), name);
        let spacing = read_png_metadata(&out).unwrap().easel.unwrap().spacing;
        (read_rgb(&out).2, spacing)
    };
    let (auto, auto_spacing) = run(&turbo, "auto.png", &[]);
    let (explicit, _) = run(
        &fixture_model("sd-tiny-a"),
        "explicit.png",
        &["--sampler", "euler", "--spacing", "trailing"],
    );
    assert_eq!(auto_spacing.as_deref(), Some("trailing"));
    assert!(auto == explicit, "the file's trailing spacing was not used");
    let (_, other) = run(&turbo, "other.png", &["--sampler", "euler_a"]);
    assert_eq!(
        other, None,
        "a sampler of another class took the file's spacing"
    );
    // The studio offers such a model its recipe: 4 steps, no guidance.
    let load =
        |dir: &Path| easel::diffusion::Pipeline::load(dir, &candle_core::Device::Cpu).unwrap();
    let few = easel::diffusion::pipeline::few_step_defaults(&load(&turbo).model).unwrap();
    assert_eq!((few.steps, few.cfg_scale), (4, 0.0));
    let plain = load(&fixture_model("sd-tiny-a"));
    assert_eq!(
        easel::diffusion::pipeline::few_step_defaults(&plain.model),
        None
    );
}

#[test]
fn lcm_runs_four_unguided_steps() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("lcm.png");
    let mut args = seeded_args(&out, Some(8));
    let sampler = args.iter().position(|a| a == "--sampler").unwrap() + 1;
    args[sampler] = "lcm".into();
    args.extend(["--cfg", "1"].map(OsString::from));
    let run = generate(args);
    assert_ok(&run, "lcm");
    let e = read_png_metadata(&out).unwrap().easel.unwrap();
    assert_eq!((e.sampler.as_str(), e.steps), ("lcm", 4));
    // A1111's name for it, which other tools read back.
    let a1111 = read_png_metadata(&out).unwrap().a1111.unwrap();
    assert_eq!(a1111.sampler.as_deref(), Some("LCM"));
    let (_, _, rgb) = read_rgb(&out);
    assert!(rgb.iter().any(|&v| v != rgb[0]));
}

#[test]
fn unseeded_run_prints_a_seed_that_reproduces_it() {
    let tmp = TempDir::new().unwrap();
    let first = tmp.path().join("first.png");
    let run = generate(seeded_args(&first, None));
    assert_ok(&run, "unseeded run");
    let seed: u64 = regex::Regex::new(r"(?m)^seed: (\d+)\b")
        .unwrap()
        .captures(&run.stderr)
        .unwrap_or_else(|| panic!("no `seed: N` on stderr:\n{}", run.stderr))[1]
        .parse()
        .unwrap();
    let meta = read_png_metadata(&first).unwrap();
    assert_eq!(meta.easel.unwrap().seed, seed, "seed in the PNG");
    assert_eq!(meta.a1111.unwrap().seed, Some(seed), "seed in parameters");

    let again = tmp.path().join("again.png");
    assert_ok(&generate(seeded_args(&again, Some(seed))), "rerun");
    assert!(
        read_rgb(&first).2 == read_rgb(&again).2,
        "--seed {seed} did not reproduce the unseeded run"
    );
}

#[test]
fn preview_dir_gets_one_latent_sized_png_per_step() {
    let tmp = TempDir::new().unwrap();
    // A folder that does not exist yet (created on demand), and the non-square model, so a
    // swapped width/height shows.
    let previews = tmp.path().join("previews").join("run1");
    let out = tmp.path().join("out.png");
    let run = generate([
        OsString::from("--model"),
        fixture_model("sd-tiny-b").into(),
        "--prompt".into(),
        PROMPT.into(),
        "--steps".into(),
        "5".into(),
        "--width".into(),
        "64".into(),
        "--height".into(),
        "48".into(),
        "--seed".into(),
        "7".into(),
        "--preview-dir".into(),
        previews.clone().into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert_ok(&run, "preview run");
    let names: BTreeSet<String> = std::fs::read_dir(&previews)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = (1..=5).map(|i| format!("step_{i:03}.png")).collect();
    assert_eq!(names, expected);
    for name in &names {
        let (w, h, _) = read_rgb(&previews.join(name));
        assert_eq!((w, h), (16, 12), "{name}: latent size of 64x48 at factor 4");
    }
    assert!(
        read_rgb(&previews.join("step_001.png")).2 != read_rgb(&previews.join("step_005.png")).2,
        "the previews do not change from step to step"
    );
    assert_eq!(read_rgb(&out).0, 64);
}

/// A prompt past CLIP's 75 tokens is not cut (as diffusers would) but read in 75-token chunks,
/// as A1111 does (tests/prompt_reference.rs proves the numbers): no warning, and its tail counts.
#[test]
fn long_prompt_is_read_in_chunks_not_cut() {
    let tmp = TempDir::new().unwrap();
    let base = "a red circle on a blue background, ".repeat(20);
    let mut images = Vec::new();
    for (name, tail) in [("a", "green"), ("b", "yellow stripes")] {
        let out = tmp.path().join(format!("{name}.png"));
        let prompt = format!("{base}{tail}");
        let run = generate([
            OsString::from("--model"),
            fixture_model("sd-tiny-a").into(),
            "--prompt".into(),
            prompt.clone().into(),
            "--steps".into(),
            "2".into(),
            "--seed".into(),
            "1".into(),
            "-o".into(),
            out.clone().into(),
        ]);
        assert_ok(&run, "long prompt");
        assert!(!run.stderr.contains("warning:"), "{}", run.stderr);
        // The file keeps the prompt as given: that is what reproduces the image.
        let meta = read_png_metadata(&out).unwrap();
        assert_eq!(meta.easel.unwrap().prompt, prompt);
        images.push(read_rgb(&out).2);
    }
    assert_ne!(images[0], images[1], "words past token 75 changed nothing");
}

/// fp16 variant files (`*.fp16.safetensors`) load and give sd-tiny-a's image.
#[test]
fn fp16_variant_matches_the_fp32_reference() {
    let dir = fixture_model("sd-tiny-a-fp16");
    let p = easel::diffusion::Pipeline::load(&dir, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.model.name, "sd-tiny-a-fp16");
    assert!(p.model.hash_files[0].ends_with("unet/diffusion_pytorch_model.fp16.safetensors"));
    drop(p);

    let tmp = TempDir::new().unwrap();
    for sampler in ["euler", "dpmpp_2m_karras"] {
        let case = read_json(&ref_dir("sd-tiny-a").join(format!("{sampler}.json")));
        let out = tmp.path().join(format!("{sampler}.png"));
        let mut args = reference_args("sd-tiny-a", &case, &out);
        args[1] = dir.clone().into();
        let run = generate(args);
        assert_ok(&run, "fp16");
        let ours = read_rgb(&out).2;
        let theirs = read_rgb(&ref_dir("sd-tiny-a").join(format!("{sampler}.png"))).2;
        let d = max_u8_diff(&ours, &theirs);
        eprintln!("fp16 {sampler}: max diff {d}/255");
        assert!(
            d <= FP16_TOL,
            "fp16 {sampler}: {d}/255 from the fp32 reference"
        );
        let meta = read_png_metadata(&out).unwrap().easel.unwrap();
        assert_eq!(meta.model_name, "sd-tiny-a-fp16");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// A scratch folder for one refused run: `out/` must stay empty, `previews/` must not appear.
struct Scratch {
    tmp: TempDir,
}

impl Scratch {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        std::fs::create_dir(tmp.path().join("out")).unwrap();
        Self { tmp }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn out(&self) -> PathBuf {
        self.path().join("out").join("image.png")
    }

    /// A copy of a fixture model to break.
    fn model(&self, fixture: &str) -> PathBuf {
        let dst = self.path().join(fixture);
        copy_dir(&fixture_model(fixture), &dst);
        dst
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

/// Runs `generate` with `model`, a short valid request and `extra` (which replaces a base flag
/// it repeats), and checks it is refused cleanly: non-zero exit, no panic, exactly one `error:`
/// line, last on stderr, short, containing every `needles` string; no output and no preview
/// folder written.
/// Returns the error line.
fn refused(
    s: &Scratch,
    model: &Path,
    extra: &[&str],
    out: Option<&Path>,
    needles: &[&str],
) -> String {
    let default_out = s.out();
    let out = out.unwrap_or(&default_out);
    let previews = s.path().join("previews");
    let base: [(&str, OsString); 6] = [
        ("--model", model.into()),
        ("--prompt", "a red circle".into()),
        ("--steps", "2".into()),
        ("--seed", "1".into()),
        ("--preview-dir", previews.clone().into()),
        ("-o", out.into()),
    ];
    let mut args: Vec<OsString> = Vec::new();
    for (flag, value) in base {
        // clap refuses a repeated flag, so `extra` replaces the base value.
        if !extra.contains(&flag) {
            args.extend([flag.into(), value]);
        }
    }
    args.extend(extra.iter().map(OsString::from));
    let run = generate(args);
    let ctx = format!(
        "easel generate … {}\n--- stderr:\n{}",
        extra.join(" "),
        run.stderr
    );
    assert!(!run.success && run.code.is_some(), "not refused: {ctx}");
    assert!(!run.stderr.contains("panicked"), "panicked: {ctx}");
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "want one error line: {ctx}");
    let line = errors[0];
    assert_eq!(
        run.stderr.trim_end().lines().last(),
        Some(line),
        "the error is not the last thing on stderr: {ctx}"
    );
    assert!(
        line.len() < 400 && !line.contains("backtrace") && !line.contains(".rs:"),
        "error line is not a short message (backtrace?): {ctx}"
    );
    for needle in needles {
        assert!(line.contains(needle), "error lacks {needle:?}: {ctx}");
    }
    assert!(!out.exists(), "{} written: {ctx}", out.display());
    if let Some(dir) = out.parent().filter(|d| d.is_dir()) {
        let left: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "files left in the output folder {left:?}: {ctx}"
        );
    }
    assert!(
        !previews.exists(),
        "--preview-dir created for a refused run: {ctx}"
    );
    line.to_string()
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn refuses_incomplete_model_folders() {
    let s = Scratch::new();
    let m = s.model("sd-tiny-a");
    std::fs::remove_dir_all(m.join("vae")).unwrap();
    refused(&s, &m, &[], None, &[&show(&m.join("vae")), "missing"]);

    let s = Scratch::new();
    let m = s.model("sd-tiny-a");
    std::fs::remove_file(m.join("model_index.json")).unwrap();
    refused(
        &s,
        &m,
        &[],
        None,
        &[&show(&m.join("model_index.json")), "missing"],
    );

    let s = Scratch::new();
    let m = s.path().join("no-such-model");
    refused(&s, &m, &[], None, &[&show(&m), "missing"]);
}

/// Edits one key of a component's config.json.
fn set_config(model: &Path, component: &str, key: &str, value: serde_json::Value) {
    let path = model.join(component).join("config.json");
    let mut cfg = read_json(&path);
    cfg[key] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

#[test]
fn refuses_a_config_that_contradicts_its_weights() {
    let cases: [(&str, &str, serde_json::Value, &str); 3] = [
        (
            "unet",
            "block_out_channels",
            serde_json::json!([32, 64]),
            "diffusion_pytorch_model.safetensors",
        ),
        (
            "unet",
            "cross_attention_dim",
            serde_json::json!(48),
            "diffusion_pytorch_model.safetensors",
        ),
        (
            "text_encoder",
            "hidden_size",
            serde_json::json!(64),
            "model.safetensors",
        ),
    ];
    for (component, key, value, weights) in cases {
        let s = Scratch::new();
        let m = s.model("sd-tiny-a");
        set_config(&m, component, key, value);
        let line = refused(
            &s,
            &m,
            &[],
            None,
            &[
                &show(&m.join(component).join(weights)),
                &show(&m.join(component).join("config.json")),
                "does not match",
                "shape",
            ],
        );
        eprintln!("{component}.{key}: {line}");
    }
}

#[test]
fn refuses_broken_weight_files() {
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let full = std::fs::read(fixture_model("sd-tiny-a").join(unet)).unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        ("truncated", full[..full.len() / 2].to_vec(), &["truncated"]),
        ("empty", Vec::new(), &["empty", "0 bytes"]),
        (
            "random",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            &[],
        ),
        (
            "text",
            b"version https://git-lfs.github.com/spec/v1\n".to_vec(),
            &[],
        ),
    ];
    for (name, bytes, needles) in cases {
        let s = Scratch::new();
        let m = s.model("sd-tiny-a");
        std::fs::write(m.join(unet), bytes).unwrap();
        let path = show(&m.join(unet));
        let mut all = vec![path.as_str(), "not a readable safetensors file"];
        all.extend_from_slice(needles);
        let line = refused(&s, &m, &[], None, &all);
        eprintln!("{name}: {line}");
    }
}

#[test]
fn refuses_pickle_weights() {
    let s = Scratch::new();
    let m = s.model("sd-tiny-a");
    std::fs::rename(
        m.join("unet/diffusion_pytorch_model.safetensors"),
        m.join("unet/diffusion_pytorch_model.bin"),
    )
    .unwrap();
    refused(
        &s,
        &m,
        &[],
        None,
        &[
            &show(&m.join("unet/diffusion_pytorch_model.bin")),
            "pickle",
            ".safetensors",
        ],
    );
}

#[test]
fn refuses_impossible_sizes_steps_and_cfg() {
    let a = fixture_model("sd-tiny-a");
    let b = fixture_model("sd-tiny-b");
    let cases: [(&Path, &[&str], &[&str]); 9] = [
        (&a, &["--width", "30"], &["--width", "30", "multiple of 4"]),
        (
            &b,
            &["--width", "64", "--height", "40"],
            &["--height", "40", "multiple of 16"],
        ),
        (&a, &["--width", "0"], &["--width", "0", "outside"]),
        (
            &a,
            &["--width", "100000"],
            &["--width", "100000", "outside"],
        ),
        (&a, &["--steps", "0"], &["--steps", "0", "outside"]),
        (
            &a,
            &["--steps", "100000"],
            &["--steps", "100000", "outside"],
        ),
        (&a, &["--cfg", "-1"], &["--cfg", "-1", "outside"]),
        (&a, &["--cfg", "nan"], &["--cfg", "NaN", "finite"]),
        (
            &a,
            &["--sampler", "plms"],
            &["--sampler", "plms", "dpmpp_2m_karras"],
        ),
    ];
    for (model, extra, needles) in cases {
        let s = Scratch::new();
        let line = refused(&s, model, extra, None, needles);
        eprintln!("{}: {line}", extra.join(" "));
    }
}

#[test]
fn refuses_unusable_init_noise() {
    let a = fixture_model("sd-tiny-a");
    // sd-tiny-b's noise is [1, 4, 12, 16]; sd-tiny-a at 32x32 needs [1, 4, 16, 16].
    let wrong_shape = show(&ref_dir("sd-tiny-b").join("init_noise.safetensors"));
    let two = Scratch::new();
    let two_path = two.path().join("two.safetensors");
    let t = candle_core::Tensor::zeros(
        (1, 4, 16, 16),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            ("noise".to_string(), t.clone()),
            ("extra".to_string(), t),
        ]),
        &two_path,
    )
    .unwrap();
    let two_path = show(&two_path);
    let missing = show(&two.path().join("missing.safetensors"));
    let not_st = show(&two.file("noise.txt", b"0.1 0.2 0.3\n"));
    let cases: [(&str, &[&str]); 4] = [
        (
            &wrong_shape,
            &["--init-noise", "[1, 4, 12, 16]", "[1, 4, 16, 16]"],
        ),
        (
            &two_path,
            &["--init-noise", &two_path, "2 tensors", "exactly one"],
        ),
        (&missing, &["--init-noise", &missing, "No such file"]),
        (
            &not_st,
            &["--init-noise", &not_st, "not a readable safetensors file"],
        ),
    ];
    for (noise, needles) in cases {
        let s = Scratch::new();
        let line = refused(&s, &a, &["--init-noise", noise], None, needles);
        eprintln!("{noise}: {line}");
    }
}

/// img2img from the command line: the picture (any size: covered and centre-cropped), the
/// strength's share of the steps, and both recorded in the PNG for A1111 and for Easel.
/// (tests/img2img_reference.rs holds the numbers to diffusers.)
#[test]
fn init_image_and_strength_run_the_last_steps_and_are_recorded() {
    let tmp = TempDir::new().unwrap();
    // A 96×64 picture for a 32×32 model: scaled to 48×32, cropped to 32×32.
    let picture = tmp.path().join("start.png");
    image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    })
    .save(&picture)
    .unwrap();
    let mut images = Vec::new();
    for strength in ["0.5", "1"] {
        let out = tmp.path().join(format!("out{strength}.png"));
        let run = generate([
            OsString::from("--model"),
            fixture_model("sd-tiny-a").into(),
            "--prompt".into(),
            "a red circle".into(),
            "--steps".into(),
            "6".into(),
            "--seed".into(),
            "3".into(),
            "--width".into(),
            "32".into(),
            "--height".into(),
            "32".into(),
            "--init-image".into(),
            picture.clone().into(),
            "--strength".into(),
            strength.into(),
            "-o".into(),
            out.clone().into(),
        ]);
        assert_ok(&run, "img2img");
        let ran = if strength == "1" { 6 } else { 3 };
        assert!(
            run.stderr.contains(&format!("step {ran}/{ran}")),
            "{}",
            run.stderr
        );
        assert!(
            !run.stderr.contains(&format!("step {}/", ran + 1)),
            "{}",
            run.stderr
        );
        let meta = read_png_metadata(&out).unwrap();
        let init = meta.easel.unwrap().init_image.unwrap();
        assert_eq!(init.path, picture.display().to_string());
        assert_eq!(init.strength, strength.parse::<f64>().unwrap());
        let a1111 = meta.a1111.unwrap();
        assert_eq!(a1111.get("Denoising strength"), Some(strength));
        images.push(read_rgb(&out).2);
    }
    assert_ne!(images[0], images[1]);
}

/// Hires fix from the command line: the image is the enlarged size, the PNG keeps the first
/// pass's size and the second pass as A1111 writes it (and in Easel's JSON).
#[test]
fn hires_fix_enlarges_and_records_a1111_fields() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("hires.png");
    let run = generate([
        OsString::from("--model"),
        fixture_model("sd-tiny-a").into(),
        "--prompt".into(),
        "a red circle".into(),
        "--steps".into(),
        "4".into(),
        "--seed".into(),
        "3".into(),
        "--hires-scale".into(),
        "2".into(),
        "--hires-denoise".into(),
        "0.5".into(),
        "--hires-upscaler".into(),
        "lanczos".into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert_ok(&run, "hires");
    assert!(
        run.stderr.contains("step 6/6"),
        "4 + 2 steps: {}",
        run.stderr
    );
    assert_eq!(read_rgb(&out).0, 64);
    let meta = read_png_metadata(&out).unwrap();
    let easel = meta.easel.unwrap();
    assert_eq!(
        (easel.width, easel.height),
        (32, 32),
        "the first pass's size"
    );
    let h = easel.hires.unwrap();
    assert_eq!((h.scale, h.steps, h.denoise), (2.0, 0, 0.5));
    let a = meta.a1111.unwrap();
    assert_eq!(a.get("Hires upscale"), Some("2"));
    assert_eq!(a.get("Hires upscaler"), Some("Lanczos"));
    assert_eq!(a.get("Denoising strength"), Some("0.5"));
    assert_eq!(
        a.get("Hires steps"),
        None,
        "0 = the first pass's, unwritten as in A1111"
    );
}

/// Inpainting from the command line: only the white part of the mask changes (on an ordinary
/// model the black part is blended back from the picture's own latents at every step), a mask
/// of another size is resized with a note, and the PNG records the mask.
#[test]
fn mask_repaints_the_white_part_and_is_recorded() {
    let tmp = TempDir::new().unwrap();
    let picture = tmp.path().join("start.png");
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    })
    .save(&picture)
    .unwrap();
    // White right half, at twice the size: resized.
    let mask = tmp.path().join("mask.png");
    image::GrayImage::from_fn(64, 64, |x, _| image::Luma([if x >= 32 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let out = tmp.path().join("out.png");
    let run = generate([
        OsString::from("--model"),
        fixture_model("sd-tiny-a").into(),
        "--prompt".into(),
        "a red circle".into(),
        "--steps".into(),
        "4".into(),
        "--seed".into(),
        "3".into(),
        "--init-image".into(),
        picture.clone().into(),
        "--mask".into(),
        mask.clone().into(),
        "--strength".into(),
        "1".into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert_ok(&run, "inpaint");
    assert!(
        run.stderr.contains("resized to the picture's 32x32"),
        "{}",
        run.stderr
    );
    let meta = read_png_metadata(&out).unwrap().easel.unwrap();
    assert_eq!(
        meta.init_image.unwrap().mask,
        Some(mask.display().to_string())
    );
    // The kept (left) half stays nearer the picture than the repainted one.
    let (_, _, rgb) = read_rgb(&out);
    let (_, _, original) = read_rgb(&picture);
    let diff = |left: bool| -> f64 {
        let mut sum = 0.0;
        for y in 0..32 {
            for x in 0..32 {
                if (x < 16) == left {
                    for c in 0..3 {
                        let i = (y * 32 + x) * 3 + c;
                        sum += (f64::from(rgb[i]) - f64::from(original[i])).abs();
                    }
                }
            }
        }
        sum
    };
    assert!(
        diff(true) < diff(false),
        "kept {} vs repainted {}",
        diff(true),
        diff(false)
    );
    // Mask blur 4 (A1111's default): far from the edge the kept part is the picture itself.
    for y in 0..32 {
        for x in 0..4 {
            let i = (y * 32 + x) * 3;
            assert_eq!(&rgb[i..i + 3], &original[i..i + 3], "pixel {x},{y}");
        }
    }
    let meta = read_png_metadata(&out).unwrap().a1111.unwrap();
    assert_eq!(meta.get("Mask blur"), Some("4"));
}

/// A1111's "Only masked": the box around a small mask is generated at the model's size and put
/// back; the picture keeps its own size, and outside the mask (no blur) every pixel is its own.
#[test]
fn only_masked_inpaints_a_box_and_keeps_the_picture_size() {
    let tmp = TempDir::new().unwrap();
    let picture = tmp.path().join("big.png");
    let original = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 77])
    });
    original.save(&picture).unwrap();
    let mask = tmp.path().join("mask.png");
    image::GrayImage::from_fn(96, 64, |x, y| {
        image::Luma([if (60..70).contains(&x) && (20..28).contains(&y) {
            255
        } else {
            0
        }])
    })
    .save(&mask)
    .unwrap();
    let out = tmp.path().join("out.png");
    let run = generate([
        OsString::from("--model"),
        fixture_model("sd-tiny-a").into(),
        "--prompt".into(),
        "a red circle".into(),
        "--steps".into(),
        "4".into(),
        "--seed".into(),
        "3".into(),
        "--init-image".into(),
        picture.clone().into(),
        "--mask".into(),
        mask.into(),
        "--mask-blur".into(),
        "0".into(),
        "--strength".into(),
        "1".into(),
        "--inpaint-area".into(),
        "masked".into(),
        "--masked-padding".into(),
        "4".into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert_ok(&run, "only masked");
    let (w, h, rgb) = read_rgb(&out);
    assert_eq!((w, h), (96, 64), "the picture's size");
    let mut changed = 0;
    for y in 0..64u32 {
        for x in 0..96u32 {
            let i = ((y * 96 + x) * 3) as usize;
            let inside = (60..70).contains(&x) && (20..28).contains(&y);
            let same = rgb[i..i + 3] == original.get_pixel(x, y).0;
            assert!(inside || same, "pixel {x},{y} outside the mask changed");
            changed += usize::from(inside && !same);
        }
    }
    assert!(changed > 40, "{changed} of 80 masked pixels changed");
    let meta = read_png_metadata(&out).unwrap().a1111.unwrap();
    assert_eq!(meta.get("Inpaint area"), Some("Only masked"));
    assert_eq!(meta.get("Masked area padding"), Some("4"));
}

/// Textual-inversion embeddings from the command line: called by name, recorded as A1111's
/// `TI hashes`; one for another model is named in a warning when the prompt calls it.
#[test]
fn embeddings_are_called_by_name_and_recorded() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("embeddings");
    copy_dir(&common::fixtures().join("embeddings"), &dir);
    // A 48-wide embedding: SD 2.x-like, not for sd-tiny-a's 32-wide text encoder.
    let t = candle_core::Tensor::ones((2, 48), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("emb_params", t)]),
        dir.join("widething.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.join("notes.pt"), b"not a torch file").unwrap();
    let run_with = |prompt: &str, out: &Path| {
        generate([
            OsString::from("--model"),
            fixture_model("sd-tiny-a").into(),
            "--prompt".into(),
            prompt.into(),
            "--steps".into(),
            "2".into(),
            "--seed".into(),
            "3".into(),
            "--embeddings".into(),
            dir.clone().into(),
            "-o".into(),
            out.into(),
        ])
    };
    let out = tmp.path().join("emb.png");
    let run = run_with("a tinyemb red circle, widething", &out);
    assert_ok(&run, "embeddings");
    assert!(run.stderr.contains("notes.pt"), "{}", run.stderr);
    let warning = run
        .stderr
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(
        warning.contains("widething") && warning.contains("48"),
        "{warning}"
    );
    let meta = read_png_metadata(&out).unwrap();
    let used = meta.easel.unwrap().embeddings;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].name, "tinyemb");
    let ti = meta.a1111.unwrap();
    assert_eq!(
        ti.get("TI hashes"),
        Some(format!("tinyemb: {}", used[0].hash).as_str())
    );
    // The embedding changes the picture.
    let words = tmp.path().join("words.png");
    assert_ok(
        &run_with("a tinyemb2x red circle, widething", &words),
        "words",
    );
    assert_ne!(read_rgb(&out).2, read_rgb(&words).2);
}

#[test]
fn refuses_unusable_init_images_and_strengths() {
    let a = fixture_model("sd-tiny-a");
    let files = Scratch::new();
    let picture = files.path().join("ok.png");
    image::RgbImage::new(32, 32).save(&picture).unwrap();
    let picture = show(&picture);
    let empty = show(&files.file("empty.png", b""));
    let text = show(&files.file("notes.png", b"not a picture at all"));
    let mut corrupt = std::fs::read(&picture).unwrap();
    corrupt.truncate(corrupt.len() / 2);
    let corrupt = show(&files.file("half.png", &corrupt));
    let missing = show(&files.path().join("missing.png"));
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--init-image", &empty],
            vec!["--init-image", &empty, "empty (0 bytes)"],
        ),
        (
            vec!["--init-image", &text],
            vec!["--init-image", &text, "not a readable image"],
        ),
        (
            vec!["--init-image", &corrupt],
            vec!["--init-image", &corrupt, "not a readable image"],
        ),
        (
            vec!["--init-image", &missing],
            vec!["--init-image", &missing, "No such file"],
        ),
        (
            vec!["--strength", "0.5"],
            vec!["--strength", "only with --init-image"],
        ),
        (
            vec!["--init-image", &picture, "--strength", "0"],
            vec!["strength", "0 is outside"],
        ),
        (
            vec!["--init-image", &picture, "--strength", "1.5"],
            vec!["strength", "1.5 is outside"],
        ),
        (
            vec!["--init-image", &picture, "--strength", "0.1"],
            vec!["strength", "runs no step", "0.500"],
        ),
        (
            vec!["--hires-denoise", "0.5"],
            vec!["--hires-denoise", "only with --hires-scale"],
        ),
        (
            vec!["--init-image", &picture, "--hires-scale", "2"],
            vec!["--hires-scale", "text to image"],
        ),
        (
            vec!["--hires-scale", "9"],
            vec!["--hires-scale", "9 is outside"],
        ),
        (vec!["--mask", &picture], vec!["--mask", "--init-image"]),
        (
            vec!["--mask-blur", "4"],
            vec!["--mask-blur", "only with --mask"],
        ),
        (
            vec!["--inpaint-area", "masked"],
            vec!["--inpaint-area", "only with --mask"],
        ),
        (
            vec!["--masked-padding", "8"],
            vec!["--masked-padding", "--inpaint-area masked"],
        ),
        (
            vec!["--embeddings", &picture],
            vec!["--embeddings", "not a folder"],
        ),
        (
            vec!["--init-image", &picture, "--mask", &picture],
            vec!["mask", "all black", "nothing to repaint"],
        ),
        (
            vec!["--init-image", &picture, "--mask", &text],
            vec!["--mask", &text, "not a readable image"],
        ),
        (
            vec!["--hires-scale", "2", "--hires-upscaler", "esrgan"],
            vec!["--hires-upscaler", "latent or lanczos"],
        ),
    ];
    for (extra, needles) in cases {
        let s = Scratch::new();
        let line = refused(&s, &a, &extra, None, &needles);
        eprintln!("{}: {line}", extra.join(" "));
    }
}

#[test]
fn refuses_unwritable_outputs() {
    let a = fixture_model("sd-tiny-a");
    let s = Scratch::new();
    let missing_dir = s.path().join("no-such-folder");
    let out = missing_dir.join("image.png");
    refused(
        &s,
        &a,
        &[],
        Some(&out),
        &["--output", &show(&out), "does not exist"],
    );
    assert!(!missing_dir.exists());

    for name in ["image.jpg", "image"] {
        let s = Scratch::new();
        let out = s.path().join("out").join(name);
        refused(&s, &a, &[], Some(&out), &["--output", &show(&out), ".png"]);
    }

    // An existing folder under the output name: refused, and the folder left as it was.
    let s = Scratch::new();
    let out = s.path().join("folder.png");
    std::fs::create_dir(&out).unwrap();
    let run = generate([
        OsString::from("--model"),
        a.into(),
        "--prompt".into(),
        "x".into(),
        "-o".into(),
        out.clone().into(),
    ]);
    assert!(
        !run.success && !run.stderr.contains("panicked"),
        "{}",
        run.stderr
    );
    let line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("error: --output") && line.contains("is a folder"),
        "{line}"
    );
    assert!(std::fs::read_dir(&out).unwrap().next().is_none());
}

/// Usage errors clap reports (missing flag, unknown flag) are one line too.
#[test]
fn usage_errors_are_one_line() {
    let s = Scratch::new();
    let run = generate(["-o".into(), OsString::from(s.out())]);
    assert!(!run.success && !run.stderr.contains("panicked"));
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with("error:") && lines[0].contains("--prompt"),
        "{}",
        lines[0]
    );
    assert!(!s.out().exists());

    let a = fixture_model("sd-tiny-a");
    refused(&s, &a, &["--bogus"], None, &["--bogus"]);
}
