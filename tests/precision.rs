//! `--dtype f16|bf16`: the weights kept in 16 bits, the arithmetic in f32. On the bundled
//! (trained) model, a folder, the images must stay within a rounding's reach of f32's, and
//! differ from them (else the setting did nothing); LoRA adapters (kept in f32) still apply; a
//! single-file checkpoint loads the same way.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use easel::diffusion::{GenerateRequest, GeneratedImage, Outcome, Pipeline};
use easel::lora::{AdapterSettings, LoraStack};
use easel::models::checkpoint::LoadOptions;
use easel::models::device::Precision;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path, precision: Precision) -> Pipeline {
    let opts = LoadOptions {
        precision,
        ..Default::default()
    };
    Pipeline::load_with(path, &opts, &Device::Cpu).unwrap()
}

fn image(p: &Pipeline, prompt: &str, seed: u64) -> GeneratedImage {
    let mut req = GenerateRequest::new(&p.model, prompt, seed);
    req.steps = 8;
    // The checkpoint fixture's native size is SD 1.5's 512 px; its tiny UNet needs no more.
    let side = req.width.min(128);
    (req.width, req.height) = (side, side);
    match p
        .generate(&req, &AtomicBool::new(false), &mut |_| {})
        .unwrap()
    {
        Outcome::Finished(img) => img,
        Outcome::Cancelled { .. } => panic!("cancelled"),
    }
}

/// Mean and largest absolute difference of two 8-bit images, in 1/255 steps.
fn diff(a: &GeneratedImage, b: &GeneratedImage) -> (f64, u8) {
    assert_eq!(a.rgb.len(), b.rgb.len());
    let d: Vec<u8> = a
        .rgb
        .iter()
        .zip(&b.rgb)
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let mean = d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64;
    (mean, d.iter().copied().max().unwrap_or(0))
}

fn default_model() -> PathBuf {
    root().join("models/default")
}

#[test]
fn half_precision_weights_draw_the_f32_image_up_to_rounding() {
    let f32 = load(&default_model(), Precision::F32);
    for precision in [Precision::Bf16, Precision::F16] {
        let half = load(&default_model(), precision);
        for (prompt, seed) in [
            ("a red circle on a blue background", 7),
            ("a green square", 8),
        ] {
            let (mean, max) = diff(&image(&f32, prompt, seed), &image(&half, prompt, seed));
            eprintln!("{precision:?} {prompt:?}: mean {mean:.3}/255, max {max}/255");
            // Rounded weights must change something, and only a little: bf16 keeps 8 bits of
            // mantissa, f16 11, so f16 lands closer.
            assert!(
                mean > 0.0,
                "{precision:?}: identical to f32, the setting did nothing"
            );
            let (mean_limit, max_limit) = match precision {
                // Measured: bf16 0.56 and 0.92 mean, max 4 (weights widened to f32); 1.05 and
                // 0.99, max 8, where AVX512-BF16 multiplies bf16 inputs too (linear layers and
                // convolutions); f16 0.02, max 1.
                Precision::Bf16 => (2.0, 16),
                _ => (0.2, 4),
            };
            assert!(
                mean <= mean_limit && max <= max_limit,
                "{precision:?} {prompt:?}: mean {mean:.3}/255, max {max}/255"
            );
        }
    }
}

#[test]
fn lora_adapters_apply_to_half_precision_models() {
    let lora = root().join("models/loras/striped.safetensors");
    let prompt = "a blue triangle on a yellow background";
    let run = |precision| {
        let p = load(&default_model(), precision);
        let plain = image(&p, prompt, 3);
        let mut stack = LoraStack::new();
        stack
            .add(&p.model, &lora, AdapterSettings::new(1.0))
            .unwrap();
        stack.apply(&p.model).unwrap();
        (plain, image(&p, prompt, 3))
    };
    let (f32_plain, f32_lora) = run(Precision::F32);
    let (bf16_plain, bf16_lora) = run(Precision::Bf16);
    // The adapter changes the bf16 image as much as the f32 one, and the bf16 image with it is
    // much nearer the f32 image with it than to its own plain version. (Stripes are where the
    // two precisions differ most, a pixel's shift of a stripe edge being a full-contrast
    // difference: 9.7/255 mean measured, against 34/255 for the adapter's own effect.)
    let (effect, _) = diff(&f32_plain, &f32_lora);
    let (effect_bf16, _) = diff(&bf16_plain, &bf16_lora);
    let (rounding, _) = diff(&bf16_lora, &f32_lora);
    eprintln!("LoRA effect f32 {effect:.2}/255, bf16 {effect_bf16:.2}/255; bf16 vs f32 with it {rounding:.2}/255");
    assert!(
        effect > 10.0,
        "the adapter barely changes the image: {effect}"
    );
    assert!(
        (0.7..=1.4).contains(&(effect_bf16 / effect)),
        "f32 {effect}, bf16 {effect_bf16}"
    );
    assert!(rounding < 0.5 * effect, "{rounding} vs {effect}");
}

#[test]
fn single_file_checkpoints_load_in_half_precision() {
    let file = root().join("tests/fixtures/checkpoints/sd1-tiny.safetensors");
    let f32 = load(&file, Precision::F32);
    let bf16 = load(&file, Precision::Bf16);
    let (mean, max) = diff(&image(&f32, "a cat", 1), &image(&bf16, "a cat", 1));
    eprintln!("single file bf16: mean {mean:.3}/255, max {max}/255");
    assert!(mean > 0.0 && mean <= 2.0, "{mean}");
}
