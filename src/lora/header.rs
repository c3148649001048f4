//! A safetensors file's header, read without touching the tensor data.
//!
//! Listing a folder of hundreds of adapters must not read gigabytes: rank, alpha, what an
//! adapter touches and kohya's training metadata are all in the header (a few hundred KB at
//! most). The header is also checked against the file length, so a truncated download is caught
//! here, not half-way through applying it.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::LoraError;

/// Headers beyond this are refused rather than allocated (safetensors' own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// safetensors' dtype name: "F16", "F32", "BF16" …
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub offsets: (u64, u64),
}

/// The parsed header of one safetensors file.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Tensors by name, in name order (safetensors stores them sorted anyway).
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The `__metadata__` strings (kohya's `ss_*`, diffusers' `lora_adapter_metadata` …).
    pub metadata: BTreeMap<String, String>,
    /// Bytes of the JSON header; the tensor data starts at `8 + header_len`.
    pub header_len: u64,
    pub file_len: u64,
}

/// Reads and checks the header of `path`.
pub fn read_header(path: &Path) -> Result<Header, LoraError> {
    if path.extension().and_then(|e| e.to_str()).map(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "pt" | "ckpt" | "bin" | "pth"
        )
    }) == Some(true)
    {
        return Err(LoraError::unsupported(
            path,
            "pickle files (.pt/.ckpt/.bin) can execute code when read; convert the adapter to safetensors",
        ));
    }
    let mut file = std::fs::File::open(path).map_err(|e| LoraError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| LoraError::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    if file_len < 8 || file.read_exact(&mut len_bytes).is_err() {
        return Err(LoraError::corrupt(
            path,
            format!("{file_len} bytes: too short to be a safetensors file"),
        ));
    }
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(LoraError::corrupt(
            path,
            format!(
                "not a safetensors file, or a truncated one (header claims {header_len} bytes of a {file_len}-byte file)"
            ),
        ));
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json)
        .map_err(|e| LoraError::io(path, e))?;
    parse_header(&json, header_len, file_len).map_err(|msg| LoraError::corrupt(path, msg))
}

/// Parses the JSON header; Err = what is wrong, for the caller to pin on the file.
pub fn parse_header(json: &[u8], header_len: u64, file_len: u64) -> Result<Header, String> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| format!("damaged safetensors header (not JSON: {e})"))?;
    let serde_json::Value::Object(map) = value else {
        return Err("damaged safetensors header (not a JSON object)".into());
    };
    let data_len = file_len - 8 - header_len;
    let mut header = Header {
        header_len,
        file_len,
        ..Default::default()
    };
    for (name, entry) in map {
        if name == "__metadata__" {
            if let serde_json::Value::Object(meta) = entry {
                for (k, v) in meta {
                    let text = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    header.metadata.insert(k, text);
                }
            }
            continue;
        }
        let bad = |what: &str| format!("damaged safetensors header: tensor {name}: {what}");
        let dtype = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
            .ok_or_else(|| bad("no data_offsets"))?;
        if offsets.0 > offsets.1 || offsets.1 > data_len {
            return Err(format!(
                "truncated: tensor {name} ends at byte {} of the data but the file holds {data_len}",
                offsets.1
            ));
        }
        header.tensors.insert(
            name,
            TensorEntry {
                dtype,
                shape,
                offsets,
            },
        );
    }
    Ok(header)
}

/// Reads one single-element tensor (an adapter's `alpha`) without reading the rest of the file.
pub fn read_scalar(path: &Path, header: &Header, key: &str) -> Option<f64> {
    use std::io::{Seek, SeekFrom};
    let entry = header.tensors.get(key)?;
    let (start, end) = entry.offsets;
    if end - start > 8 {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(8 + header.header_len + start))
        .ok()?;
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact(&mut buf).ok()?;
    let dtype = match entry.dtype.as_str() {
        "F16" => candle_core::DType::F16,
        "BF16" => candle_core::DType::BF16,
        "F32" => candle_core::DType::F32,
        "F64" => candle_core::DType::F64,
        _ => return None,
    };
    let v = candle_core::Tensor::from_raw_buffer(&buf, dtype, &[], &candle_core::Device::Cpu)
        .and_then(|t| t.to_dtype(candle_core::DType::F64))
        .and_then(|t| t.to_scalar::<f64>())
        .ok()?;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tensors_and_metadata() {
        let json = br#"{"__metadata__":{"ss_network_dim":"4"},"a.lora_down.weight":{"dtype":"F16","shape":[4,8],"data_offsets":[0,64]}}"#;
        let h = parse_header(json, json.len() as u64, 8 + json.len() as u64 + 64).unwrap();
        assert_eq!(h.metadata["ss_network_dim"], "4");
        assert_eq!(h.tensors["a.lora_down.weight"].shape, vec![4, 8]);
    }

    #[test]
    fn truncated_data_is_an_error() {
        let json = br#"{"a":{"dtype":"F16","shape":[4,8],"data_offsets":[0,64]}}"#;
        let e = parse_header(json, json.len() as u64, 8 + json.len() as u64 + 10).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
