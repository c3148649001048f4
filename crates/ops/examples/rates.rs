//! How fast the kernels multiply, in GFLOP/s, against `gemm` (the crate candle uses) on the
//! same shapes in the same run: the UNet's and text encoders' linear layers, its and the VAE's
//! 3×3 convolutions, and its attention. The denominator of "how far from the machine's peak".
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p easel-ops --example rates [-- linear|conv|attention]
//!
//! Convolutions count the direct convolution's 2·co·ci·9 FLOPs per output pixel, also where
//! Winograd does fewer. Each figure is the fastest of 3 calls after a warm-up.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, Linear};

fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn randn(shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
}

fn main() -> candle_core::Result<()> {
    let threads = rayon::current_num_threads();
    println!("{threads} threads; GFLOP/s (Easel's kernel / gemm through candle)");
    // One section when named, else all.
    let only = std::env::args().nth(1);
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    if run("linear") {
        println!(
            "linear rows × in → out          f32      bf16  packed f32  packed bf16  gemm f32"
        );
        for (rows, k, n) in [
            (2048, 320, 320),
            (8192, 640, 640),
            (2048, 1280, 1280),
            (2048, 1280, 10240),
            (2048, 5120, 1280),
            (512, 640, 640),
            (128, 1280, 1280),
            (128, 1280, 10240),
            (128, 5120, 1280),
            (154, 768, 768),
            (154, 768, 3072),
            (154, 3072, 768),
            (2, 1280, 1280),
        ] {
            let x = randn(&[rows, k])?;
            let w = randn(&[n, k])?;
            let f32_layer = Linear::new(w.clone(), None);
            let bf16_layer = Linear::new(w.to_dtype(DType::BF16)?, None);
            let flops = 2.0 * (rows * k * n) as f64;
            let ours = best(|| drop(easel_ops::linear(&x, &f32_layer)));
            let half = best(|| drop(easel_ops::linear(&x, &bf16_layer)));
            let packed = easel_ops::Linear::new(f32_layer.clone())?;
            let packed_half = easel_ops::Linear::new(bf16_layer.clone())?;
            let ours_packed = best(|| drop(packed.forward(&x)));
            let half_packed = best(|| drop(packed_half.forward(&x)));
            let wt = w.t()?;
            let gemm = best(|| drop(x.matmul(&wt)));
            println!(
                "{rows:>5} × {k:>5} → {n:>5}      {:>7.0}  {:>7.0}  {:>10.0}  {:>11.0}  {:>8.0}",
                flops / ours / 1e9,
                flops / half / 1e9,
                flops / ours_packed / 1e9,
                flops / half_packed / 1e9,
                flops / gemm / 1e9
            );
        }
    }
    if run("conv") {
        println!("3×3 conv batch × ci → co, side   f32      bf16    candle f32");
        for (b, ci, co, side) in [
            (2, 320, 320, 64),
            (2, 640, 640, 32),
            (2, 1280, 1280, 16),
            (1, 512, 512, 64),
            (1, 256, 256, 128),
            (1, 128, 128, 256),
            // SDXL at 1024² (batch 2 with CFG).
            (2, 320, 320, 128),
            (2, 640, 640, 64),
            (2, 1280, 1280, 32),
            (2, 1920, 640, 64),
        ] {
            let cfg = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            let w = randn(&[co, ci, 3, 3])?;
            let f32_conv = easel_ops::Conv2d::new(w.clone(), None, cfg)?;
            let bf16_conv = easel_ops::Conv2d::new(w.to_dtype(DType::BF16)?, None, cfg)?;
            let x = randn(&[b, ci, side, side])?;
            let flops = 2.0 * (b * co * side * side * ci * 9) as f64;
            let ours = best(|| drop(f32_conv.forward(&x)));
            let half = best(|| drop(bf16_conv.forward(&x)));
            let candle = best(|| drop(x.conv2d(&w, 1, 1, 1, 1)));
            println!(
                "{b} × {ci:>4} → {co:>4}, {side:>3}²           {:>7.0}  {:>7.0}  {:>9.0}",
                flops / ours / 1e9,
                flops / half / 1e9,
                flops / candle / 1e9
            );
        }
    }
    if run("attention") {
        println!("attention batch 2, tokens × context, heads × width     f32     bf16");
        for (n, m, heads, hd) in [
            (1024, 1024, 8, 40),
            (4096, 4096, 8, 40),
            (4096, 4096, 5, 64),
            (4096, 4096, 10, 64),
            (1024, 1024, 20, 64),
        ] {
            let q = randn(&[2, n, heads * hd])?;
            let k = randn(&[2, m, heads * hd])?;
            let v = randn(&[2, m, heads * hd])?;
            let flops = 4.0 * (2 * heads * n * m * hd) as f64;
            let ours = best(|| drop(easel_ops::attention(&q, &k, &v, heads)));
            let half = best(|| drop(easel_ops::attention_bf16(&q, &k, &v, heads)));
            println!(
                "{n:>5} × {m:>5}, {heads:>2} × {hd}                      {:>7.0}  {:>7.0}",
                flops / ours / 1e9,
                flops / half / 1e9
            );
        }
    }
    Ok(())
}
