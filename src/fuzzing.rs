//! The entry points the fuzz targets (`fuzz/`, cargo-fuzz) and the corpus replay test
//! (`tests/fuzz_corpus.rs`) share: every parser that reads bytes from outside, fed arbitrary
//! input. Each returns nothing: the only finding is a panic, a hang or a runaway allocation.
//!
//! Parsers that take a path get the input written to a file of the right extension first,
//! under a per-process folder (in `/dev/shm` where there is one, so the disk is not worn).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::models::tensor_file::TensorFile;
use crate::models::tokenizer::ClipTokenizer;

/// A target: arbitrary bytes in, nothing out.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call them.
pub const TARGETS: [(&str, Target); 9] = [
    ("safetensors", safetensors),
    ("config", config),
    ("pickle", pickle),
    ("png", png),
    ("infotext", infotext),
    ("prompt", prompt),
    ("tokenizer", tokenizer),
    ("query", query),
    ("settings", settings),
];

fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("easel-fuzz-{}", std::process::id()))
}

/// Removes the files the path-taking targets wrote (the replay test's last step).
pub fn clean_up() {
    let _ = std::fs::remove_dir_all(scratch_dir());
}

/// Names a scratch file or folder after the calling thread, so concurrent callers never share.
fn per_thread(prefix: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let number: String = thread.chars().filter(char::is_ascii_digit).collect();
    scratch_dir().join(format!("{prefix}-{number}"))
}

fn scratch(extension: &str, data: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(scratch_dir());
    let path = per_thread("input").with_extension(extension);
    let _ = std::fs::write(&path, data);
    path
}

fn bundled_tokenizer() -> Option<&'static ClipTokenizer> {
    static TOKENIZER: OnceLock<Option<ClipTokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| ClipTokenizer::bundled_openai("<|endoftext|>").ok())
        .as_ref()
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A weight file as every reader of `.safetensors` sees it: the header and tensor index,
/// reading each small tensor, architecture detection and the single-file key mapping, the
/// LoRA header scan and key parser, a textual-inversion embedding.
pub fn safetensors(data: &[u8]) {
    let path = scratch("safetensors", data);
    weight_file(&path);
    if let Ok(header) = crate::lora::header::read_header(&path) {
        let parsed = crate::lora::keys::parse_keys(header.tensors.keys().map(String::as_str));
        let _ = parsed.layers.iter().flat_map(|l| l.keys()).count();
    }
    let _ = crate::prompt::embeddings::load(&path);
}

/// The JSON files of a diffusers folder, as loading and vetting a model reads them.
const FOLDER_FILES: [&str; 7] = [
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
];

/// One JSON file of a diffusers model folder (the first byte picks which, the rest is its
/// text), the others as the tiny fixture model has them: the folder is vetted as loading
/// does (configs, every tensor's name and shape, no weights read) and its tokenizer read.
pub fn config(data: &[u8]) {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd-tiny-a");
    let dir = per_thread("model");
    if !dir.join("unet").is_dir() && copy_dir(&fixture, &dir).is_err() {
        return;
    }
    let file = FOLDER_FILES[usize::from(pick) % FOLDER_FILES.len()];
    let _ = std::fs::write(dir.join(file), json);
    let options = crate::models::checkpoint::LoadOptions::default();
    let _ = crate::models::stable_diffusion::StableDiffusion::validate(&dir, &options);
    let _ = ClipTokenizer::from_dir(&dir.join("tokenizer"));
    // The next input starts from the fixture again.
    let _ = std::fs::copy(fixture.join(file), dir.join(file));
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A pickle checkpoint (`.ckpt`, a torch zip) and a `.pt` embedding, through the reader that
/// only reads tensors.
pub fn pickle(data: &[u8]) {
    weight_file(&scratch("ckpt", data));
    let _ = crate::prompt::embeddings::load(&scratch("pt", data));
}

fn weight_file(path: &Path) {
    let Ok(file) = TensorFile::open(path) else {
        return;
    };
    for (name, info) in &file.tensors {
        // Small tensors only: a file may claim any size, the reader checks it against the
        // file before allocating, and that check is what a small read exercises.
        if info.numel() <= 1 << 16 {
            let _ = file.read(
                name,
                info,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            );
        }
    }
    if let Ok(found) = crate::models::checkpoint::detect::identify(&file.tensors) {
        let _ = format!("{found:?}");
    }
    for key in file.tensors.keys() {
        let _ = crate::models::checkpoint::keymap::unet::map(key, 2);
        let _ = crate::models::checkpoint::keymap::vae::map(key, 4);
        let _ = crate::models::checkpoint::keymap::clip::map_clip(key);
        let _ = crate::models::checkpoint::keymap::clip::map_open_clip(key);
    }
}

/// A PNG as dropping it on the studio reads it: the text chunks, then the settings restored
/// from them (Easel JSON, A1111 `parameters`, ComfyUI graph); and as img2img reads a picture.
pub fn png(data: &[u8]) {
    let path = scratch("png", data);
    if let Ok(meta) = crate::gallery::png_meta::read_png_metadata(&path) {
        if let Some(r) = crate::worker::restore::from_metadata(&meta) {
            let _ = r.summary();
        }
    }
    let _ = crate::diffusion::init_image::read(&path);
}

/// Metadata text as a PNG may hold it: A1111 infotext, a ComfyUI graph, Easel's JSON.
pub fn infotext(data: &[u8]) {
    use crate::gallery::png_meta::{parse_a1111_parameters, PngMetadata};
    let t = text(data);
    let meta = PngMetadata {
        easel: serde_json::from_str(&t).ok(),
        a1111: parse_a1111_parameters(&t).ok(),
        text_chunks: vec![("prompt".into(), t.to_string())],
    };
    if let Some(r) = crate::worker::restore::from_metadata(&meta) {
        let _ = r.summary();
    }
    let comfy_only = PngMetadata {
        text_chunks: meta.text_chunks,
        ..Default::default()
    };
    let _ = crate::worker::restore::from_metadata(&comfy_only);
}

/// A1111's prompt language: emphasis, `BREAK`, `<lora:…>` tags, and the 75-token chunking.
pub fn prompt(data: &[u8]) {
    let t = text(data);
    let _ = crate::prompt::emphasis::parse(&t);
    let _ = crate::prompt::lora_tags::prompt_loras(&t);
    let stripped = crate::prompt::lora_tags::strip_tags(&t);
    if let Some(tokenizer) = bundled_tokenizer() {
        let _ = crate::prompt::chunks::split(tokenizer, &stripped);
    }
}

/// The CLIP tokenizer on any text.
pub fn tokenizer(data: &[u8]) {
    if let Some(tokenizer) = bundled_tokenizer() {
        let t = text(data);
        let _ = tokenizer.encode(&t);
        let _ = tokenizer.tokenize(&t);
    }
}

/// The gallery's query language (`2:sunset + ./ref.png - night`).
pub fn query(data: &[u8]) {
    let _ = crate::gallery::query::parse_query(&text(data), Path::new("/nonexistent-easel-base"));
}

/// The studio's settings file.
pub fn settings(data: &[u8]) {
    let _ = crate::settings::store::parse(data);
}
