//! `easel bench --img2img 0.5,0.8`: what img2img costs against txt2img (issue 13's target:
//! at strength F, ≤ F × the txt2img time + one VAE encode).
//!
//! As a user iterates: one pipeline, the same prompt throughout, and each img2img varies the
//! picture the txt2img before it just made. Per repetition and strength: txt2img (time T), a
//! VAE encode of another picture of the same size (time E: the encode's cost without handing
//! img2img a kept result), then img2img of the new picture (time I, its own encode included).
//! Times run from the call to the last step; the final decode, the same in both modes, is
//! reported beside them.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use candle_core::Device;

use super::bench::{ms, BenchArgs};
use crate::diffusion::{GenerateRequest, InitImage, Outcome, Pipeline};

const PROMPT: &str = "a photograph of an astronaut riding a horse on the moon, highly detailed";

struct Timed {
    /// To the last step.
    steps: Duration,
    /// To the finished image (the decode included).
    total: Duration,
    picture: image::RgbImage,
}

fn timed(pipeline: &Pipeline, req: &GenerateRequest) -> Result<Timed> {
    let start = Instant::now();
    let mut last = Duration::ZERO;
    let out = pipeline.generate(req, &AtomicBool::new(false), &mut |_| {
        last = start.elapsed()
    })?;
    let total = start.elapsed();
    let Outcome::Finished(image) = out else {
        bail!("the bench run was cancelled");
    };
    let picture = image::RgbImage::from_raw(image.width as u32, image.height as u32, image.rgb)
        .ok_or_else(|| anyhow::anyhow!("the generated image has the wrong size"))?;
    Ok(Timed {
        steps: last,
        total,
        picture,
    })
}

pub fn run(args: &BenchArgs, dir: &Path, device: &Device) -> Result<()> {
    if let Some(f) = args.img2img.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        bail!("--img2img: strength {f} is not in (0, 1]");
    }
    let options = crate::models::checkpoint::LoadOptions {
        device: args.device,
        precision: args.dtype,
        ..Default::default()
    };
    let pipeline = Pipeline::load_with(dir, &options, device)?;
    let mut txt = GenerateRequest::new(&pipeline.model, PROMPT, 0);
    (txt.width, txt.height, txt.cfg_scale, txt.steps) =
        (args.size, args.size, args.cfg, args.steps);
    // Warm-up: weights faulted in, the prompt encoded (and kept, as in a session).
    timed(&pipeline, &txt)?;
    let mut rows = Vec::new();
    for _ in 0..args.reps.max(1) {
        for &strength in &args.img2img {
            // A new picture each time: nothing of it kept yet.
            txt.seed = 1 + rows.len() as u64;
            let t = timed(&pipeline, &txt)?;
            let other = image::imageops::flip_horizontal(&t.picture);
            let e = Instant::now();
            pipeline.encode_image(&other, false)?;
            let encode_ms = ms(e);
            let mut img = txt.clone();
            img.init_image = Some(InitImage {
                image: t.picture.clone(),
                strength,
            });
            let i = timed(&pipeline, &img)?;
            let secs = |d: Duration| d.as_secs_f64() * 1e3;
            let target = strength * secs(t.steps) + encode_ms;
            rows.push(serde_json::json!({
                "strength": strength,
                "txt2img_ms": secs(t.steps),
                "vae_encode_ms": encode_ms,
                "img2img_ms": secs(i.steps),
                "target_ms": target,
                "ratio": secs(i.steps) / target,
                "txt2img_decode_ms": secs(t.total - t.steps),
                "img2img_decode_ms": secs(i.total - i.steps),
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::json!({ "img2img": rows }));
        return Ok(());
    }
    println!(
        "img2img vs txt2img, {}², {} steps, CFG {}, {:?}, load {:.2}",
        args.size,
        args.steps,
        args.cfg,
        args.dtype,
        load_average()
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>12} {:>7} {:>10}",
        "strength", "txt2img", "encode", "img2img", "F·T+E", "ratio", "decode"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>8.2} {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>10.0}ms {:>7.3} {:>8.0}ms",
            f("strength"),
            f("txt2img_ms"),
            f("vae_encode_ms"),
            f("img2img_ms"),
            f("target_ms"),
            f("ratio"),
            f("img2img_decode_ms"),
        );
    }
    for &strength in &args.img2img {
        let of = |k: &str| -> f64 {
            (rows.iter())
                .filter(|r| r["strength"].as_f64() == Some(strength))
                .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                .sum()
        };
        println!(
            "strength {strength:.2}, all repetitions: img2img ÷ (F·T+E) = {:.3}",
            of("img2img_ms") / of("target_ms")
        );
    }
    println!("times to the last step; the decode after it is the same in both modes");
    Ok(())
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
