//! The model's heavy ops, each a function over `Tensor`s that takes Easel's own CPU kernel where
//! it can (f32, on the CPU, not tracking gradients) and candle's op everywhere else (CUDA, Metal,
//! half precision, training), so GPU builds run the same model code.
//!
//! Why own kernels: candle's CPU ops are general and allocate at every step. A UNet step spent
//! most of its time around the matrix products rather than in them: attention that writes the
//! whole tokens × tokens score matrix, 3×3 convolutions that copy every input pixel nine times
//! (im2col) and transpose it twice, and group norms made of eight element-wise passes. The
//! kernels here do the same arithmetic with the same `gemm` candle uses, in fewer passes:
//!
//! - [`attention`]: scores, softmax and values a tile of queries at a time; the T×T matrix never
//!   exists (a 64 MiB buffer per head at 512², 1 GiB at 1024²).
//! - [`conv2d`]: a stride-1 convolution is k² matrix products over shifted views of one padded
//!   copy of the input, accumulated into the output: no im2col buffer, no layout changes.
//! - [`GroupNorm`]: statistics and normalisation in two sweeps, SiLU fused in when asked; or
//!   only the statistics, the normalisation left to the convolution that reads it
//!   ([`Normalised`]), which applies it in its input copy.
//! - [`linear`]: all images' token rows as one product, the bias as its starting value.
//! - [`geglu`]: the feed-forward's gate in one pass.
//! - [`precision`]: weights kept in f16/bf16 (`--dtype`), widened to f32 a layer at a time —
//!   except bf16 weights on CPUs with AVX512-BF16, multiplied as they are.
//! - [`avx512`]: on CPUs with AVX-512, the products of `linear` and `conv2d` themselves, in
//!   f32 and in bf16 (16 accumulator registers per tile, twice what AVX2's `gemm` can hold).
//!
//! Each is checked against the candle op it replaces (unit tests below each kernel) and, through
//! the model, against diffusers (the reference tests). `EASEL_KERNELS=candle` turns them all off,
//! which is how `easel bench` shows what they buy.

mod activation;
mod attention;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
mod conv;
mod linear;
mod norm;
pub mod precision;
pub mod profile;
mod simd;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

pub use activation::{add_in_place, geglu, quick_gelu};
pub use attention::{attention, attention_bf16, causal_attention};
pub use conv::{conv2d, Conv2d};
pub use linear::{linear, Linear};
pub use norm::{group_norm, GroupNorm, GroupStats, GroupSums, Normalised};
pub use profile::Kind;

/// True when `EASEL_KERNELS=candle` asks for candle's ops everywhere (for comparisons).
fn kernels_off() -> bool {
    static OFF: OnceLock<bool> = OnceLock::new();
    *OFF.get_or_init(|| std::env::var("EASEL_KERNELS").is_ok_and(|v| v == "candle"))
}

/// Whether Easel's CPU kernels can take these tensors.
fn own_kernel(ts: &[&Tensor]) -> bool {
    !kernels_off()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// A raw pointer that worker threads may write through, each to its own disjoint part.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every use splits the buffer so that no two threads touch the same element, and the
// buffer outlives the parallel section that uses it.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn parallelism(threads: usize) -> gemm::Parallelism {
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// The contiguous f32 data of a CPU tensor (after `contiguous()` by the caller).
fn cpu_slice<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: expected a contiguous f32 tensor"),
    }
}

/// Helpers for kernel tests here and in Easel's model tests (not part of the kernels' API).
#[doc(hidden)]
pub mod test_util {
    use candle_core::{Device, Tensor};

    pub fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
    }

    /// `t` rounded to bf16 and back: the input a bf16 product multiplies.
    pub fn bf16_rounded(t: &Tensor) -> Tensor {
        t.to_dtype(candle_core::DType::BF16)
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .unwrap()
    }

    /// Largest magnitude.
    pub fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_scalar())
            .unwrap()
    }

    /// Largest absolute difference.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        max_abs(&(a - b).unwrap())
    }

    /// Largest absolute difference, relative to the largest magnitude in `want`.
    pub fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
        max_diff(got, want) / max_abs(want).max(1e-12)
    }
}
