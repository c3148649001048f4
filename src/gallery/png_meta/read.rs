//! Reading the text chunks of a PNG without decoding its pixels.
//!
//! A gallery scan reads thousands of files, and metadata may sit after the image data
//! (the PNG spec allows text anywhere between IHDR and IEND), so we walk the chunk list
//! ourselves and seek past everything that is not text: no inflating of IDAT, but every
//! chunk is found. Structure is checked as we go (signature, IHDR first, chunk lengths
//! against the file size, CRCs of the chunks we read, an IEND at the end) so a damaged file
//! is reported as such instead of yielding half its metadata. Compressed text (zTXt, or iTXt
//! with its flag set) is inflated by the `png` crate.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{parse_a1111_parameters, PngMetaError, PngMetadata, EASEL_KEYWORD, PARAMETERS_KEYWORD};

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Text chunks larger than this are skipped (not read into memory). Real workflows
/// (ComfyUI's `workflow` JSON) are at most a few MiB.
const MAX_TEXT_BYTES: u32 = 64 << 20;

/// Reads Easel's, A1111's and every other text chunk of the PNG at `path`; pixels are not
/// decoded.
///
/// A malformed *content* (our JSON from an incompatible version, a `parameters` chunk that
/// is not A1111 infotext, an undecodable text chunk) only makes that field `None` or that
/// chunk missing; a malformed *file* (empty, not a PNG, truncated, bad CRC) is an error.
pub fn read_png_metadata(path: &Path) -> Result<PngMetadata, PngMetaError> {
    let text_chunks = read_text_chunks(path)?;
    let first = |keyword: &str| {
        text_chunks
            .iter()
            .find(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
    };
    let easel = first(EASEL_KEYWORD).and_then(|v| serde_json::from_str(v).ok());
    let a1111 = first(PARAMETERS_KEYWORD).and_then(|v| parse_a1111_parameters(v).ok());
    Ok(PngMetadata {
        easel,
        a1111,
        text_chunks,
    })
}

fn read_text_chunks(path: &Path) -> Result<Vec<(String, String)>, PngMetaError> {
    let io_err = |action: &'static str| {
        move |source| PngMetaError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let truncated = |detail: String| PngMetaError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let corrupt = |detail: String| PngMetaError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };

    let file = File::open(path).map_err(io_err("open"))?;
    let file_len = file.metadata().map_err(io_err("read the size of"))?.len();
    if file_len == 0 {
        return Err(PngMetaError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut reader = BufReader::new(file);

    let mut signature = [0u8; 8];
    let got = usize::try_from(file_len.min(8)).unwrap_or(8);
    reader
        .read_exact(&mut signature[..got])
        .map_err(io_err("read"))?;
    if signature[..got] != SIGNATURE[..got] {
        return Err(PngMetaError::NotPng {
            path: path.to_path_buf(),
        });
    }
    if got < 8 {
        return Err(truncated(format!(
            "the file ends after {got} bytes, inside the 8-byte PNG signature"
        )));
    }

    let mut pos: u64 = 8;
    let mut ihdr: Option<Vec<u8>> = None;
    let mut texts = Vec::new();
    loop {
        if pos == file_len {
            return Err(truncated(format!(
                "the file ends after {file_len} bytes without an IEND chunk"
            )));
        }
        if file_len - pos < 12 {
            return Err(truncated(format!(
                "the file ends after {file_len} bytes, inside the chunk header at byte {pos}"
            )));
        }
        let mut header = [0u8; 8];
        reader.read_exact(&mut header).map_err(io_err("read"))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let kind = [header[4], header[5], header[6], header[7]];
        let name = String::from_utf8_lossy(&kind).into_owned();
        if !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err(corrupt(format!(
                "invalid chunk type {kind:?} at byte {pos}"
            )));
        }
        if len > i32::MAX as u32 {
            return Err(corrupt(format!(
                "chunk {name} at byte {pos} claims an impossible length of {len} bytes"
            )));
        }
        if file_len - pos < 12 + u64::from(len) {
            return Err(truncated(format!(
                "chunk {name} at byte {pos} needs {len} data bytes, but the file ends after {file_len} bytes"
            )));
        }
        if ihdr.is_none() && &kind != b"IHDR" {
            return Err(corrupt(format!("the first chunk is {name}, not IHDR")));
        }

        let is_text = matches!(&kind, b"tEXt" | b"zTXt" | b"iTXt");
        if &kind == b"IHDR" || (is_text && len <= MAX_TEXT_BYTES) {
            // Whole chunk (length, type, data, CRC): the png crate needs it for inflating.
            let mut chunk = vec![0u8; 12 + len as usize];
            chunk[..8].copy_from_slice(&header);
            reader.read_exact(&mut chunk[8..]).map_err(io_err("read"))?;
            let data_end = 8 + len as usize;
            let stored_crc = u32::from_be_bytes([
                chunk[data_end],
                chunk[data_end + 1],
                chunk[data_end + 2],
                chunk[data_end + 3],
            ]);
            if crc32(&chunk[4..data_end]) != stored_crc {
                return Err(corrupt(format!(
                    "CRC mismatch in chunk {name} at byte {pos}"
                )));
            }
            if &kind == b"IHDR" {
                if ihdr.is_none() {
                    if len != 13 {
                        return Err(corrupt(format!("IHDR has {len} bytes instead of 13")));
                    }
                    ihdr = Some(chunk);
                }
            } else if let Some(pair) =
                decode_text(&kind, &chunk[8..data_end], &chunk, ihdr.as_deref())
            {
                texts.push(pair);
            }
        } else {
            reader
                .seek_relative(i64::from(len) + 4)
                .map_err(io_err("read"))?;
        }
        pos += 12 + u64::from(len);
        if &kind == b"IEND" {
            return Ok(texts);
        }
    }
}

/// (keyword, text) of one text chunk, or `None` if its content is malformed. Lenient where
/// Pillow is (a tEXt without a separator is a keyword with empty text), since Pillow-written
/// and Pillow-read files are the ecosystem's norm.
fn decode_text(
    kind: &[u8; 4],
    data: &[u8],
    chunk: &[u8],
    ihdr: Option<&[u8]>,
) -> Option<(String, String)> {
    let (keyword, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None if kind == b"tEXt" => (data, &[][..]),
        None => return None,
    };
    if keyword.is_empty() {
        return None;
    }
    let keyword = latin1(keyword);
    let text = match kind {
        b"tEXt" => latin1_or_utf8(rest),
        b"zTXt" => {
            let text = inflate_text(ihdr?, chunk)?;
            let bytes: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
            latin1_or_utf8(&bytes)
        }
        _ => {
            // iTXt: flag, method, language\0, translated keyword\0, text.
            let (&flag, rest) = rest.split_first()?;
            let rest = rest.get(1..)?;
            let lang_end = rest.iter().position(|&b| b == 0)?;
            let rest = &rest[lang_end + 1..];
            let translated_end = rest.iter().position(|&b| b == 0)?;
            let text = &rest[translated_end + 1..];
            match flag {
                0 => String::from_utf8(text.to_vec()).ok()?,
                1 => inflate_text(ihdr?, chunk)?,
                _ => return None,
            }
        }
    };
    Some((keyword, text))
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// tEXt is Latin-1 by the spec, but some writers put UTF-8 in it. Non-ASCII bytes that form
/// valid UTF-8 are almost never intended Latin-1 (that would be mojibake like "Ã©"), so we
/// read them as UTF-8 and get the writer's real text.
fn latin1_or_utf8(bytes: &[u8]) -> String {
    if !bytes.is_ascii() {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_string();
        }
    }
    latin1(bytes)
}

/// Inflates one compressed text chunk with the `png` crate (the crate's zlib is not exposed
/// on its own): a fresh streaming decoder is fed the signature, the file's IHDR and this chunk
/// only, so one bad chunk cannot affect the others.
fn inflate_text(ihdr: &[u8], chunk: &[u8]) -> Option<String> {
    let mut decoder = png::StreamingDecoder::new();
    for part in [&SIGNATURE[..], ihdr, chunk] {
        let mut buf = part;
        let mut stalls = 0;
        while !buf.is_empty() {
            let (consumed, _) = decoder.update(buf, None).ok()?;
            buf = &buf[consumed..];
            // A state change may consume nothing; a decoder that never progresses is a bug.
            stalls = if consumed == 0 { stalls + 1 } else { 0 };
            if stalls > 16 {
                return None;
            }
        }
    }
    let info = decoder.info()?;
    if let Some(z) = info.compressed_latin1_text.first() {
        let mut z = z.clone();
        z.decompress_text_with_limit(MAX_TEXT_BYTES as usize).ok()?;
        z.get_text().ok()
    } else {
        let mut i = info.utf8_text.first()?.clone();
        i.decompress_text_with_limit(MAX_TEXT_BYTES as usize).ok()?;
        i.get_text().ok()
    }
}

/// CRC-32 (ISO-HDLC, as PNG uses) over chunk type and data.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut n = 0;
        while n < 256 {
            let mut c = n as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[n] = c;
            n += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn text_decoding() {
        assert_eq!(
            decode_text(b"tEXt", b"Title\0caf\xe9", &[], None),
            Some(("Title".into(), "café".into()))
        );
        assert_eq!(
            decode_text(b"tEXt", "k\0日本".as_bytes(), &[], None),
            Some(("k".into(), "日本".into()))
        );
        assert_eq!(
            decode_text(b"tEXt", b"lonely", &[], None),
            Some(("lonely".into(), String::new()))
        );
        assert_eq!(decode_text(b"tEXt", b"\0text", &[], None), None);
        assert_eq!(
            decode_text(b"iTXt", "k\0\0\0en\0Kw\0猫".as_bytes(), &[], None),
            Some(("k".into(), "猫".into()))
        );
        assert_eq!(decode_text(b"iTXt", b"k\0\0\0en", &[], None), None);
        assert_eq!(decode_text(b"iTXt", b"k\0\x02\0\0\0x", &[], None), None);
        // Compressed text without an IHDR to decode it with.
        assert_eq!(decode_text(b"zTXt", b"k\0\0xx", &[], None), None);
    }
}
