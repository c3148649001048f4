//! The tensors of one weight file, located from its header and read one at a time.
//!
//! Loading never maps or reads a whole file: each tensor is read with one positioned read into
//! a buffer of its own type and converted to the compute dtype straight away, so a 2 GB fp16
//! checkpoint becomes 4 GB of f32 weights with at most one tensor's bytes in flight, and no
//! memory-mapped file is left behind that could vanish under a running model.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

/// The element types weight files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    F8E4M3,
    F8E5M2,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F64 | ElemType::I64 => 8,
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F16 | ElemType::BF16 | ElemType::I16 => 2,
            ElemType::I8 | ElemType::U8 | ElemType::Bool | ElemType::F8E4M3 | ElemType::F8E5M2 => 1,
        }
    }

    /// The name safetensors headers use.
    pub fn from_safetensors(name: &str) -> Option<Self> {
        Some(match name {
            "F64" => ElemType::F64,
            "F32" => ElemType::F32,
            "F16" => ElemType::F16,
            "BF16" => ElemType::BF16,
            "I64" => ElemType::I64,
            "I32" => ElemType::I32,
            "I16" => ElemType::I16,
            "I8" => ElemType::I8,
            "U8" => ElemType::U8,
            "BOOL" => ElemType::Bool,
            "F8_E4M3" => ElemType::F8E4M3,
            "F8_E5M2" => ElemType::F8E5M2,
            _ => return None,
        })
    }

    /// How users name the precision ("fp16", "bf16", …).
    pub fn precision_name(self) -> &'static str {
        match self {
            ElemType::F64 => "fp64",
            ElemType::F32 => "fp32",
            ElemType::F16 => "fp16",
            ElemType::BF16 => "bf16",
            ElemType::F8E4M3 => "fp8 (e4m3)",
            ElemType::F8E5M2 => "fp8 (e5m2)",
            ElemType::I64 | ElemType::I32 | ElemType::I16 | ElemType::I8 => "int",
            ElemType::U8 | ElemType::Bool => "u8",
        }
    }

    /// Whether [`TensorFile::read`] can read this type (fp8 and 8/16-bit integers it cannot).
    pub fn is_readable(self) -> bool {
        !matches!(
            self,
            ElemType::I16 | ElemType::I8 | ElemType::F8E4M3 | ElemType::F8E5M2
        )
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElemType::F64
                | ElemType::F32
                | ElemType::F16
                | ElemType::BF16
                | ElemType::F8E4M3
                | ElemType::F8E5M2
        )
    }
}

/// Where one tensor's elements are in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: ElemType,
    pub shape: Vec<usize>,
    /// Byte offset of element 0 in the file.
    pub offset: u64,
    /// Element strides; `None` when the tensor is stored contiguously (always for safetensors).
    pub strides: Option<Vec<usize>>,
    /// Bytes available from `offset` to the end of the tensor's storage: reads stay inside.
    pub span: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Rows `start..start + len` along the first axis, as a tensor of its own: how a fused
    /// q/k/v projection is split without reading the other two thirds.
    pub fn rows(&self, start: usize, len: usize) -> Option<TensorInfo> {
        let first = *self.shape.first()?;
        if start + len > first || self.strides.is_some() {
            return None;
        }
        let row_elems: usize = self.shape[1..].iter().product();
        let skip = (start * row_elems * self.dtype.size()) as u64;
        let mut shape = self.shape.clone();
        shape[0] = len;
        Some(TensorInfo {
            dtype: self.dtype,
            offset: self.offset + skip,
            span: self.span.saturating_sub(skip),
            strides: None,
            shape,
        })
    }
}

impl TensorInfo {
    /// A stored matrix read as its transpose (through strides: nothing is copied until read).
    pub fn transposed(&self) -> Option<TensorInfo> {
        let [rows, cols] = self.shape[..] else {
            return None;
        };
        let [row_stride, col_stride] = match &self.strides {
            Some(s) => <[usize; 2]>::try_from(s.as_slice()).ok()?,
            None => [cols, 1],
        };
        Some(TensorInfo {
            shape: vec![cols, rows],
            strides: Some(vec![col_stride, row_stride]),
            ..self.clone()
        })
    }
}

/// What can be wrong with a weight file or one of its tensors.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error("{source}")]
    Io {
        #[source]
        source: std::io::Error,
    },
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("not a readable safetensors file: {0}")]
    BadHeader(String),
    #[error("{0}")]
    Pickle(#[from] super::checkpoint::pickle::PickleError),
    #[error("tensor {name}: {msg}")]
    BadTensor { name: String, msg: String },
}

impl From<std::io::Error> for TensorFileError {
    fn from(source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            TensorFileError::Truncated("the file ends inside a tensor".into())
        } else {
            TensorFileError::Io { source }
        }
    }
}

/// The on-disk format of a weight file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Safetensors,
    /// A zip-format `torch.save` file (`.ckpt`, `.pt`, `.pth`), read by the inert pickle reader.
    TorchZip,
}

/// An open weight file: its tensors by name, and the safetensors `__metadata__` if any.
pub struct TensorFile {
    pub path: PathBuf,
    pub format: FileFormat,
    pub len: u64,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub metadata: BTreeMap<String, String>,
    file: File,
}

/// File names Easel reads as pickles (zip-format `torch.save` files).
pub fn is_pickle_name(path: &Path) -> bool {
    matches!(
        extension(path).as_deref(),
        Some("ckpt" | "pt" | "pth" | "bin")
    )
}

/// The lower-case extension of `path`.
pub fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
}

impl TensorFile {
    /// Opens `path` and indexes its tensors from the header (safetensors) or the pickle
    /// (`.ckpt`/`.pt`/`.pth`/`.bin`); no tensor data is read.
    pub fn open(path: &Path) -> Result<Self, TensorFileError> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(TensorFileError::Empty);
        }
        let mut magic = [0u8; 4];
        let got = read_up_to(&mut file, &mut magic)?;
        file.seek(SeekFrom::Start(0))?;
        let zip = got == 4 && magic == *b"PK\x03\x04";
        let (format, tensors, metadata) = if zip {
            let tensors = super::checkpoint::pickle::read_torch_zip(&mut file, len)?;
            (FileFormat::TorchZip, tensors, BTreeMap::new())
        } else if is_pickle_name(path) && got >= 1 && magic[0] == 0x80 {
            return Err(super::checkpoint::pickle::PickleError::LegacyFormat.into());
        } else {
            let (tensors, metadata) = read_safetensors_header(&mut file, len)?;
            (FileFormat::Safetensors, tensors, metadata)
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            len,
            tensors,
            metadata,
            file,
        })
    }

    /// Reads one tensor and converts it to `dtype` on `device`.
    pub fn read(
        &self,
        name: &str,
        info: &TensorInfo,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, TensorFileError> {
        let bad = |msg: String| TensorFileError::BadTensor {
            name: name.to_string(),
            msg,
        };
        let numel = info.numel();
        let elem = info.dtype.size();
        let extent = match &info.strides {
            None => numel,
            Some(strides) => {
                if numel == 0 {
                    0
                } else {
                    1 + info
                        .shape
                        .iter()
                        .zip(strides)
                        .map(|(d, s)| (d - 1) * s)
                        .sum::<usize>()
                }
            }
        };
        let bytes = (extent * elem) as u64;
        if bytes > info.span {
            return Err(bad(format!(
                "needs {bytes} bytes but its storage holds {}",
                info.span
            )));
        }
        if info.offset + bytes > self.len {
            return Err(TensorFileError::Truncated(format!(
                "tensor {name} ends at byte {} of a {}-byte file",
                info.offset + bytes,
                self.len
            )));
        }
        let shape = info.shape.clone();
        let tensor = match info.dtype {
            // The common cases go straight to f32 with one buffer of the stored type.
            ElemType::F32 => {
                let v: Vec<f32> = self.read_elems(info.offset, extent)?;
                Tensor::from_vec(v, extent, device)
            }
            ElemType::F16 => {
                let v: Vec<u16> = self.read_elems(info.offset, extent)?;
                half_tensor(v.reinterpret_cast::<f16>(), dtype, device)
            }
            ElemType::BF16 => {
                let v: Vec<u16> = self.read_elems(info.offset, extent)?;
                half_tensor(v.reinterpret_cast::<bf16>(), dtype, device)
            }
            ElemType::F64 => {
                let v: Vec<f64> = self.read_elems(info.offset, extent)?;
                Tensor::from_vec(v, extent, device)
            }
            ElemType::I64 => {
                let v: Vec<i64> = self.read_elems(info.offset, extent)?;
                Tensor::from_vec(v, extent, device)
            }
            ElemType::I32 => {
                let v: Vec<i32> = self.read_elems(info.offset, extent)?;
                Tensor::from_vec(v, extent, device)
            }
            ElemType::U8 | ElemType::Bool => {
                let v: Vec<u8> = self.read_elems(info.offset, extent)?;
                Tensor::from_vec(v, extent, device)
            }
            other => return Err(bad(unreadable(other))),
        }
        .and_then(|t| match &info.strides {
            None => t.reshape(shape.as_slice()),
            Some(strides) => gather(&t, &shape, strides),
        })
        .and_then(|t| t.to_dtype(dtype))
        .map_err(|e| bad(crate::models::error::without_backtrace(e).to_string()))?;
        Ok(tensor)
    }

    /// `count` elements of type `T` from byte `offset`, as stored (little-endian).
    fn read_elems<T: bytemuck::Pod + Default>(
        &self,
        offset: u64,
        count: usize,
    ) -> Result<Vec<T>, TensorFileError> {
        let mut v = vec![T::default(); count];
        let mut f = &self.file;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }
}

/// A 16-bit float slice as a tensor: widened to f32 in one pass when that is the target (the
/// usual case), else kept in its own type for `to_dtype`.
fn half_tensor<H>(v: &[H], dtype: DType, device: &Device) -> candle_core::Result<Tensor>
where
    H: candle_core::WithDType,
    [H]: HalfFloatSliceExt,
{
    if dtype == DType::F32 {
        let mut out = vec![0f32; v.len()];
        v.convert_to_f32_slice(&mut out);
        Tensor::from_vec(out, v.len(), device)
    } else {
        Tensor::from_vec(v.to_vec(), v.len(), device)
    }
}

pub fn unreadable(t: ElemType) -> String {
    format!(
        "stored as {}, which Easel does not read",
        t.precision_name()
    )
}

/// A strided view (as a pickle may store it) copied into a contiguous tensor.
fn gather(flat: &Tensor, shape: &[usize], strides: &[usize]) -> candle_core::Result<Tensor> {
    let numel: usize = shape.iter().product();
    let mut index = Vec::with_capacity(numel);
    let mut pos = vec![0usize; shape.len()];
    for _ in 0..numel {
        index.push(pos.iter().zip(strides).map(|(p, s)| p * s).sum::<usize>() as u32);
        for axis in (0..shape.len()).rev() {
            pos[axis] += 1;
            if pos[axis] < shape[axis] {
                break;
            }
            pos[axis] = 0;
        }
    }
    let index = Tensor::from_vec(index, numel, flat.device())?;
    flat.index_select(&index, 0)?.reshape(shape)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// safetensors headers above this are refused unread (real ones are well under 1 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

type Header = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

/// Reads and checks a safetensors header: every tensor's extent lies inside the file and
/// matches its shape, so a truncated download is caught here, before any tensor is read.
fn read_safetensors_header(file: &mut File, len: u64) -> Result<Header, TensorFileError> {
    let bad = |m: String| TensorFileError::BadHeader(m);
    if len < 8 {
        return Err(bad(format!(
            "{len} bytes is too short for a header (truncated, or another format under this name)"
        )));
    }
    let mut n = [0u8; 8];
    file.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "header length {n} is implausible (damaged, or another format under this name)"
        )));
    }
    if 8 + n > len {
        return Err(TensorFileError::Truncated(format!(
            "the header needs {} bytes, the file has {len}",
            8 + n
        )));
    }
    let mut text = vec![0u8; n as usize];
    file.read_exact(&mut text)?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("header is not valid JSON ({e})")))?;
    let data_start = 8 + n;
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    let mut data_end = 0u64;
    for (name, v) in json {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    if let Some(s) = v.as_str() {
                        metadata.insert(k.clone(), s.to_string());
                    }
                }
            }
            continue;
        }
        let entry = |m: &str| bad(format!("tensor {name}: {m}"));
        let dtype_name = v["dtype"].as_str().ok_or_else(|| entry("no dtype"))?;
        let dtype = ElemType::from_safetensors(dtype_name)
            .ok_or_else(|| entry(&format!("unknown dtype {dtype_name}")))?;
        let shape = v["shape"]
            .as_array()
            .ok_or_else(|| entry("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| entry("shape is not a list of sizes"))?;
        let offsets = v["data_offsets"]
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
            .ok_or_else(|| entry("no data_offsets"))?;
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| entry("shape overflows"))?;
        let bytes = numel
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| entry("shape overflows"))?;
        if offsets.1 < offsets.0 || offsets.1 - offsets.0 != bytes {
            return Err(entry(&format!(
                "data_offsets {:?} do not fit shape {shape:?} of {dtype_name}",
                offsets
            )));
        }
        data_end = data_end.max(offsets.1);
        tensors.insert(
            name,
            TensorInfo {
                dtype,
                shape,
                offset: data_start + offsets.0,
                strides: None,
                span: bytes,
            },
        );
    }
    if data_start + data_end > len {
        return Err(TensorFileError::Truncated(format!(
            "the header promises {} bytes, the file has {len}",
            data_start + data_end
        )));
    }
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_safetensors(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn reads_every_float_type_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let base = Tensor::new(&[[1.5f32, -2.25, 0.125], [4.0, 5.5, -6.0]], &Device::Cpu).unwrap();
        write_safetensors(
            &path,
            &[
                ("f32", base.clone()),
                ("f16", base.to_dtype(DType::F16).unwrap()),
                ("bf16", base.to_dtype(DType::BF16).unwrap()),
                ("f64", base.to_dtype(DType::F64).unwrap()),
            ],
        );
        let f = TensorFile::open(&path).unwrap();
        assert_eq!(f.format, FileFormat::Safetensors);
        for name in ["f32", "f16", "bf16", "f64"] {
            let info = &f.tensors[name];
            assert_eq!(info.shape, vec![2, 3]);
            let t = f.read(name, info, DType::F32, &Device::Cpu).unwrap();
            let v: Vec<Vec<f32>> = t.to_vec2().unwrap();
            assert_eq!(
                v,
                vec![vec![1.5, -2.25, 0.125], vec![4.0, 5.5, -6.0]],
                "{name}"
            );
        }
        let rows = f.tensors["f16"].rows(1, 1).unwrap();
        let t = f.read("f16", &rows, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![4.0, 5.5, -6.0]]);
    }

    #[test]
    fn truncated_and_empty_files_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap();
        write_safetensors(&path, &[("a", t)]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = TensorFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = TensorFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&path, b"").unwrap();
        let err = TensorFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::write(&path, b"this is a text file, not weights").unwrap();
        let err = TensorFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("not a readable safetensors"), "{err}");
    }

    #[test]
    fn strided_views_are_gathered() {
        let flat = Tensor::arange(0f32, 6., &Device::Cpu).unwrap();
        // A 3×2 transpose of a row-major 2×3 storage.
        let t = gather(&flat, &[3, 2], &[1, 3]).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![0., 3.], vec![1., 4.], vec![2., 5.]]
        );
    }
}
