//! Where and how inference runs: `--device cpu|cuda|metal|auto`, `--dtype f32|f16|bf16`, and
//! the studio's settings for both.
//!
//! `auto` takes a GPU when this build has its backend (cargo features `cuda`, `metal`) and the
//! machine has one, else the CPU. An explicit GPU choice that cannot be met is an error that
//! says why (built without the feature, or no device found), never a silent CPU run.

use candle_core::Device;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
    Metal,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("this Easel was built without {0} support (rebuild with `--features {1}`)")]
    NotBuilt(&'static str, &'static str),
    #[error("no {0} device could be opened: {1}")]
    Unavailable(&'static str, candle_core::Error),
}

impl DeviceChoice {
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda if !cfg!(feature = "cuda") => {
                Err(DeviceError::NotBuilt("CUDA", "cuda"))
            }
            DeviceChoice::Metal if !cfg!(feature = "metal") => {
                Err(DeviceError::NotBuilt("Metal", "metal"))
            }
            DeviceChoice::Cuda => {
                Device::new_cuda(0).map_err(|e| DeviceError::Unavailable("CUDA", e))
            }
            DeviceChoice::Metal => {
                Device::new_metal(0).map_err(|e| DeviceError::Unavailable("Metal", e))
            }
            DeviceChoice::Auto => {
                if candle_core::utils::cuda_is_available() {
                    if let Ok(d) = Device::new_cuda(0) {
                        return Ok(d);
                    }
                }
                if candle_core::utils::metal_is_available() {
                    if let Ok(d) = Device::new_metal(0) {
                        return Ok(d);
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Metal => "metal",
        }
    }
}

/// How a model's weights are kept in memory: `--dtype f32|f16|bf16` and the studio's setting.
///
/// With f16 or bf16 the convolution, linear and embedding weights (nearly all of a model's
/// bytes) stay 16-bit, halving the model's memory, and each layer widens its weights to f32 for
/// its product (`crate::ops::precision`): the arithmetic stays f32, the weights are rounded once
/// at load. bf16 keeps f32's range (no overflow, 8 bits of mantissa); f16 has 11 bits of
/// mantissa but overflows past 65 504, which SD weights never reach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F16 => candle_core::DType::F16,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// A short name for a device, for logs and the bench.
pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_open_here_and_a_missing_backend_says_how_to_get_it() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        // These test machines have no GPU: auto falls back to the CPU.
        assert!(DeviceChoice::Auto.open().is_ok());
        if !cfg!(feature = "cuda") {
            let e = DeviceChoice::Cuda.open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        if !cfg!(feature = "metal") {
            let e = DeviceChoice::Metal.open().unwrap_err().to_string();
            assert!(e.contains("--features metal"), "{e}");
        }
    }

    #[test]
    fn settings_spell_it_in_lowercase() {
        let s = serde_json::to_string(&DeviceChoice::Cuda).unwrap();
        assert_eq!(s, "\"cuda\"");
        let d: DeviceChoice = serde_json::from_str("\"metal\"").unwrap();
        assert_eq!(d, DeviceChoice::Metal);
    }
}
