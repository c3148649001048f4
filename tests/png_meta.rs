//! PNG metadata: A1111 infotext writing/parsing, the PNG round trip, and damaged files.

use std::fs;
use std::path::Path;

use easel::gallery::png_meta::{
    parse_a1111_parameters, read_png_metadata, write_png, GenerationMetadata, LoraUse,
    PngMetaError, EASEL_KEYWORD, PARAMETERS_KEYWORD,
};

fn meta() -> GenerationMetadata {
    GenerationMetadata {
        prompt: "a watercolor painting of a lighthouse at dusk,\nsoft light, (detailed:1.2)"
            .to_string(),
        negative_prompt: "blurry, lowres".to_string(),
        steps: 30,
        cfg_scale: 7.5,
        seed: 1_234_567_890,
        width: 8,
        height: 6,
        sampler: "euler_a".to_string(),
        sampler_a1111: "Euler a".to_string(),
        model_name: "v1-5-pruned-emaonly".to_string(),
        model_hash: "6ce0161689".to_string(),
        spacing: None,
        clip_skip: 1,
        vae: None,
        loras: vec![
            LoraUse {
                name: "detail_tweaker".to_string(),
                hash: "7c6bad76eb".to_string(),
                weight: 0.8,
            },
            LoraUse {
                name: "ink:style, v2".to_string(),
                hash: "d1131f7207".to_string(),
                weight: -0.25,
            },
        ],
        init_noise: Some("noise/start.safetensors".to_string()),
        init_image: Some(easel::gallery::png_meta::InitImageUse {
            path: "pictures/start.png".to_string(),
            strength: 0.6,
            mask: Some("pictures/hands.png".to_string()),
            mask_blur: Some(4),
            only_masked_padding: None,
        }),
        hires: None,
        embeddings: vec![easel::gallery::png_meta::EmbeddingUse {
            name: "easynegative".to_string(),
            hash: "c74b4e810b03".to_string(),
        }],
        sdxl: None,
        easel_version: "0.1.0".to_string(),
        extra: serde_json::Map::new(),
    }
}

fn pixels(width: usize, height: usize) -> Vec<u8> {
    (0..width * height * 3)
        .map(|i| (i * 37 % 251) as u8)
        .collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

type Pairs = Vec<(String, String)>;

/// Text chunks as the `png` crate (an independent reader) sees them: (tEXt, iTXt) keywords.
fn chunk_kinds(path: &Path) -> (Pairs, Pairs) {
    let decoder = png::Decoder::new(std::io::BufReader::new(fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    let latin1 = info
        .uncompressed_latin1_text
        .iter()
        .map(|c| (c.keyword.clone(), c.text.clone()))
        .collect();
    let utf8 = info
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (latin1, utf8)
}

// ---------------------------------------------------------------- A1111 text

#[test]
fn writes_a1111_text_exactly() {
    let expected = "a watercolor painting of a lighthouse at dusk,\n\
        soft light, (detailed:1.2)\n\
        Negative prompt: blurry, lowres\n\
        Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 1234567890, Size: 8x6, \
        Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.6, Mask blur: 4, \
        Lora hashes: \"detail_tweaker: 7c6bad76eb, inkstyle v2: d1131f7207\", \
        TI hashes: \"easynegative: c74b4e810b03\", Version: easel-0.1.0";
    assert_eq!(meta().a1111_parameters(), expected);
}

#[test]
fn writes_no_negative_line_when_negative_is_empty() {
    let m = GenerationMetadata {
        prompt: "a cat".to_string(),
        negative_prompt: String::new(),
        steps: 20,
        cfg_scale: 7.0,
        seed: 0,
        width: 512,
        height: 512,
        sampler: "ddim".to_string(),
        sampler_a1111: "DDIM".to_string(),
        model_name: "sd, v1.5".to_string(),
        model_hash: "0123456789".to_string(),
        spacing: None,
        clip_skip: 1,
        vae: None,
        loras: vec![],
        init_noise: None,
        init_image: None,
        hires: None,
        embeddings: Vec::new(),
        sdxl: None,
        easel_version: "0.1.0".to_string(),
        extra: serde_json::Map::new(),
    };
    assert_eq!(
        m.a1111_parameters(),
        "a cat\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 0, Size: 512x512, \
         Model hash: 0123456789, Model: \"sd, v1.5\", Version: easel-0.1.0"
    );
    let parsed = parse_a1111_parameters(&m.a1111_parameters()).unwrap();
    assert_eq!(parsed.negative_prompt, "");
    assert_eq!(parsed.model_name.as_deref(), Some("sd, v1.5"));
    assert_eq!(parsed.cfg_scale, Some(7.0));
}

#[test]
fn parses_real_world_a1111_text() {
    let text = "masterpiece, best quality, 1girl, solo,\n\
        looking at viewer, (cherry blossoms:1.2), <lora:add_detail:0.8>\n\
        Negative prompt: (worst quality, low quality:1.4), bad hands,\n\
        extra fingers, easynegative\n\
        Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3547204563, Size: 512x768, \
        Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, \
        Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, \
        Lora hashes: \"add_detail: 7c6bad76eb54, epi_noiseoffset2: d1131f7207d6\", \
        TI hashes: \"easynegative: c74b4e810b03\", Version: v1.10.1";
    let p = parse_a1111_parameters(text).unwrap();
    assert_eq!(
        p.prompt,
        "masterpiece, best quality, 1girl, solo,\n\
         looking at viewer, (cherry blossoms:1.2), <lora:add_detail:0.8>"
    );
    assert_eq!(
        p.negative_prompt,
        "(worst quality, low quality:1.4), bad hands,\nextra fingers, easynegative"
    );
    assert_eq!(p.steps, Some(28));
    assert_eq!(p.sampler.as_deref(), Some("DPM++ 2M Karras"));
    assert_eq!(p.cfg_scale, Some(7.0));
    assert_eq!(p.seed, Some(3_547_204_563));
    assert_eq!((p.width, p.height), (Some(512), Some(768)));
    assert_eq!(p.model_hash.as_deref(), Some("6ce0161689"));
    assert_eq!(p.model_name.as_deref(), Some("v1-5-pruned-emaonly"));
    assert_eq!(
        p.get("Lora hashes"),
        Some("add_detail: 7c6bad76eb54, epi_noiseoffset2: d1131f7207d6")
    );
    assert_eq!(p.get("TI hashes"), Some("easynegative: c74b4e810b03"));
    assert_eq!(p.get("Clip skip"), Some("2"));
    assert_eq!(p.get("Version"), Some("v1.10.1"));
    let keys: Vec<&str> = p.other.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "Denoising strength",
            "Clip skip",
            "Hires upscale",
            "Hires upscaler",
            "Lora hashes",
            "TI hashes",
            "Version"
        ]
    );
}

#[test]
fn parses_forge_text_with_extra_keys() {
    let text = "score_9, score_8_up, 1girl, portrait\r\n\
        Negative prompt: score_4, blurry\r\n\
        Steps: 25, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 5.5, Seed: 42, \
        Size: 832x1216, Model hash: 67ab2fd8ec, Model: ponyDiffusionV6XL_v6StartWithThisOne, \
        VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, Hires Module 1: Use same choices, \
        Version: f2.0.1v1.10.1-previous-313-g8a042934, Module 1: sdxl_vae\r\n";
    let p = parse_a1111_parameters(text).unwrap();
    assert_eq!(p.prompt, "score_9, score_8_up, 1girl, portrait");
    assert_eq!(p.negative_prompt, "score_4, blurry");
    assert_eq!(p.sampler.as_deref(), Some("DPM++ 2M SDE"));
    assert_eq!(p.cfg_scale, Some(5.5));
    assert_eq!((p.width, p.height), (Some(832), Some(1216)));
    assert_eq!(p.get("Schedule type"), Some("Karras"));
    assert_eq!(p.get("VAE"), Some("sdxl_vae.safetensors"));
    assert_eq!(p.get("Hires Module 1"), Some("Use same choices"));
    assert_eq!(p.get("Module 1"), Some("sdxl_vae"));
}

#[test]
fn parses_civitai_text_with_bare_json_values() {
    let text = "(masterpiece), a red fox in snow\n\
        Steps: 30, CFG scale: 4, Sampler: Euler a, Seed: 3012345678, Size: 1024x1024, \
        Clip skip: 2, Created Date: 2024-06-01T12:34:56.7890123Z, \
        Civitai resources: [{\"type\":\"checkpoint\",\"modelVersionId\":290640,\"modelName\":\"Pony, V6\"},\
        {\"type\":\"lora\",\"weight\":0.8,\"modelVersionId\":123}], \
        Civitai metadata: {\"remixOfId\":1234}";
    let p = parse_a1111_parameters(text).unwrap();
    assert_eq!(p.prompt, "(masterpiece), a red fox in snow");
    assert_eq!(p.negative_prompt, "");
    assert_eq!(p.seed, Some(3_012_345_678));
    assert_eq!(p.get("Created Date"), Some("2024-06-01T12:34:56.7890123Z"));
    let resources: serde_json::Value =
        serde_json::from_str(p.get("Civitai resources").unwrap()).unwrap();
    assert_eq!(resources[0]["modelName"], "Pony, V6");
    assert_eq!(resources[1]["weight"], 0.8);
    assert_eq!(p.get("Civitai metadata"), Some("{\"remixOfId\":1234}"));
}

#[test]
fn unparsable_known_values_go_to_other() {
    let p = parse_a1111_parameters("x\nSteps: many, Seed: -1, Size: huge, CFG scale: 7").unwrap();
    assert_eq!((p.steps, p.seed, p.width), (None, None, None));
    assert_eq!(p.cfg_scale, Some(7.0));
    assert_eq!(p.get("Seed"), Some("-1"));
    assert_eq!(p.get("Steps"), Some("many"));
    assert_eq!(p.get("Size"), Some("huge"));
}

#[test]
fn own_output_round_trips_through_parse() {
    let mut m = meta();
    m.model_name = "my \"best\" model: v2".to_string();
    let p = parse_a1111_parameters(&m.a1111_parameters()).unwrap();
    assert_eq!(p.prompt, m.prompt);
    assert_eq!(p.negative_prompt, m.negative_prompt);
    assert_eq!(p.steps, Some(m.steps));
    assert_eq!(p.sampler.as_deref(), Some("Euler a"));
    assert_eq!(p.cfg_scale, Some(m.cfg_scale));
    assert_eq!(p.seed, Some(m.seed));
    assert_eq!((p.width, p.height), (Some(m.width), Some(m.height)));
    assert_eq!(p.model_name.as_deref(), Some(m.model_name.as_str()));
    assert_eq!(p.model_hash.as_deref(), Some("6ce0161689"));
    assert_eq!(
        p.other,
        vec![
            ("Denoising strength".to_string(), "0.6".to_string()),
            ("Mask blur".to_string(), "4".to_string()),
            (
                "Lora hashes".to_string(),
                "detail_tweaker: 7c6bad76eb, inkstyle v2: d1131f7207".to_string()
            ),
            (
                "TI hashes".to_string(),
                "easynegative: c74b4e810b03".to_string()
            ),
            ("Version".to_string(), "easel-0.1.0".to_string()),
        ]
    );
}

// ---------------------------------------------------------------- PNG round trip

#[test]
fn png_round_trip_keeps_metadata_and_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let m = meta();
    let rgb = pixels(m.width, m.height);
    write_png(&path, m.width, m.height, &rgb, &m).unwrap();
    assert_eq!(
        dir_entries(dir.path()),
        ["out.png"],
        "no temporary file left"
    );

    let read = read_png_metadata(&path).unwrap();
    assert_eq!(read.easel.as_ref(), Some(&m));
    assert_eq!(
        read.text(PARAMETERS_KEYWORD),
        Some(m.a1111_parameters().as_str())
    );
    let keywords: Vec<&str> = read.text_chunks.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keywords, [PARAMETERS_KEYWORD, EASEL_KEYWORD]);
    let a1111 = read.a1111.unwrap();
    assert_eq!(a1111.prompt, m.prompt);
    assert_eq!(a1111.seed, Some(m.seed));

    // Latin-1 text goes to tEXt (what every reader understands), our JSON to iTXt.
    let (latin1, utf8) = chunk_kinds(&path);
    assert_eq!(
        latin1,
        [(PARAMETERS_KEYWORD.to_string(), m.a1111_parameters())]
    );
    assert_eq!(utf8.len(), 1);
    assert_eq!(utf8[0].0, EASEL_KEYWORD);

    let img = image::open(&path).unwrap();
    assert_eq!((img.width(), img.height()), (8, 6));
    assert_eq!(img.color(), image::ColorType::Rgb8);
    assert_eq!(img.to_rgb8().into_raw(), rgb);
}

#[test]
fn non_latin1_prompt_goes_to_itxt_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("猫.png");
    let mut m = meta();
    m.prompt = "日本の猫, ukiyo-e".to_string();
    m.negative_prompt = "ぼやけ".to_string();
    write_png(&path, m.width, m.height, &pixels(8, 6), &m).unwrap();

    let (latin1, utf8) = chunk_kinds(&path);
    assert!(latin1.is_empty());
    assert_eq!(
        utf8[0],
        (PARAMETERS_KEYWORD.to_string(), m.a1111_parameters())
    );

    let read = read_png_metadata(&path).unwrap();
    assert_eq!(read.easel.as_ref(), Some(&m));
    let a1111 = read.a1111.unwrap();
    assert_eq!(a1111.prompt, "日本の猫, ukiyo-e");
    assert_eq!(a1111.negative_prompt, "ぼやけ");
}

#[test]
fn latin1_accents_stay_in_text_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cafe.png");
    let mut m = meta();
    m.prompt = "café crème, naïve, ½ moon, ÿ".to_string();
    write_png(&path, m.width, m.height, &pixels(8, 6), &m).unwrap();
    let (latin1, _) = chunk_kinds(&path);
    assert_eq!(latin1[0].1, m.a1111_parameters());
    let read = read_png_metadata(&path).unwrap();
    assert_eq!(
        read.text(PARAMETERS_KEYWORD),
        Some(m.a1111_parameters().as_str())
    );
    assert_eq!(read.a1111.unwrap().prompt, m.prompt);
}

#[test]
fn overwrites_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let mut m = meta();
    write_png(&path, 8, 6, &pixels(8, 6), &m).unwrap();
    m.seed = 7;
    write_png(&path, 8, 6, &pixels(8, 6), &m).unwrap();
    assert_eq!(read_png_metadata(&path).unwrap().easel.unwrap().seed, 7);
    assert_eq!(dir_entries(dir.path()), ["out.png"]);
}

#[test]
fn extra_fields_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let mut m = meta();
    m.extra
        .insert("hires".to_string(), serde_json::json!({"scale": 2}));
    write_png(&path, 8, 6, &pixels(8, 6), &m).unwrap();
    assert_eq!(read_png_metadata(&path).unwrap().easel, Some(m));
}

/// ComfyUI / InvokeAI style files: tEXt, zTXt, compressed iTXt, and text after the image data.
#[test]
fn reads_other_tools_chunks_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("comfy.png");
    let workflow = format!(r#"{{"nodes":[{}]}}"#, "{\"id\":1},".repeat(200) + "{}");
    {
        let file = fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(file, 2, 2);
        enc.set_color(png::ColorType::Rgb);
        enc.add_text_chunk("prompt".into(), r#"{"3":{"class_type":"KSampler"}}"#.into())
            .unwrap();
        enc.add_ztxt_chunk("workflow".into(), workflow.clone())
            .unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[9u8; 12]).unwrap();
        let mut itxt =
            png::text_metadata::ITXtChunk::new("invokeai_metadata", r#"{"positive_prompt":"狐"}"#);
        // Compressed, with a language tag and translated keyword, as the spec allows.
        itxt.compressed = true;
        itxt.language_tag = "ja".into();
        itxt.translated_keyword = "メタデータ".into();
        w.write_text_chunk(&itxt).unwrap();
        w.finish().unwrap();
    }
    let bytes = fs::read(&path).unwrap();
    let compressed_itxt = b"iTXtinvokeai_metadata\0\x01\0ja\0";
    assert!(bytes
        .windows(compressed_itxt.len())
        .any(|w| w == compressed_itxt));
    let ztxt = b"zTXtworkflow\0\0";
    assert!(bytes.windows(ztxt.len()).any(|w| w == ztxt));
    let read = read_png_metadata(&path).unwrap();
    assert_eq!(read.easel, None);
    assert_eq!(read.a1111, None);
    assert_eq!(
        read.text_chunks,
        vec![
            (
                "prompt".to_string(),
                r#"{"3":{"class_type":"KSampler"}}"#.to_string()
            ),
            ("workflow".to_string(), workflow),
            (
                "invokeai_metadata".to_string(),
                r#"{"positive_prompt":"狐"}"#.to_string()
            ),
        ]
    );
}

#[test]
fn foreign_parameters_without_settings_line_are_kept_raw() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    {
        let mut enc = png::Encoder::new(fs::File::create(&path).unwrap(), 1, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.add_text_chunk("parameters".into(), "just a prompt".into())
            .unwrap();
        enc.add_text_chunk("easel".into(), "{not json".into())
            .unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 0, 0]).unwrap();
        w.finish().unwrap();
    }
    let read = read_png_metadata(&path).unwrap();
    assert_eq!(read.a1111, None);
    assert_eq!(read.easel, None);
    assert_eq!(read.text("parameters"), Some("just a prompt"));
}

// ---------------------------------------------------------------- damaged files

fn assert_names_file(err: &PngMetaError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error should name {}: {msg}",
        path.display()
    );
}

#[test]
fn empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    fs::write(&path, b"").unwrap();
    let err = read_png_metadata(&path).unwrap_err();
    assert!(matches!(err, PngMetaError::Empty { .. }), "{err}");
    assert_names_file(&err, &path);
}

#[test]
fn text_file_named_png_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.png");
    fs::write(&path, "these are not pixels\n").unwrap();
    let err = read_png_metadata(&path).unwrap_err();
    assert!(matches!(err, PngMetaError::NotPng { .. }), "{err}");
    assert_names_file(&err, &path);
}

#[test]
fn truncated_pngs_are_errors_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    write_png(&good, 8, 6, &pixels(8, 6), &meta()).unwrap();
    let bytes = fs::read(&good).unwrap();
    let cut = dir.path().join("cut.png");
    // Every prefix, from inside the signature to just before IEND's CRC ends.
    for len in 1..bytes.len() {
        fs::write(&cut, &bytes[..len]).unwrap();
        let err = read_png_metadata(&cut).unwrap_err();
        assert!(
            matches!(err, PngMetaError::Truncated { .. }),
            "length {len}: {err}"
        );
        assert_names_file(&err, &cut);
    }
}

#[test]
fn corrupt_text_chunk_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    write_png(&path, 8, 6, &pixels(8, 6), &meta()).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(10).position(|w| w == b"lighthouse").unwrap();
    bytes[at] = b'L';
    fs::write(&path, &bytes).unwrap();
    let err = read_png_metadata(&path).unwrap_err();
    assert!(matches!(err, PngMetaError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("CRC"), "{err}");
}

#[test]
fn missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.png");
    let err = read_png_metadata(&path).unwrap_err();
    assert!(matches!(err, PngMetaError::Io { .. }), "{err}");
    assert_names_file(&err, &path);
}

#[test]
fn wrong_buffer_length_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    for len in [0, 8 * 6 * 3 - 1, 8 * 6 * 3 + 1, 8 * 6 * 4] {
        let err = write_png(&path, 8, 6, &vec![0; len], &meta()).unwrap_err();
        assert!(
            matches!(err, PngMetaError::WrongBufferLength { expected: 144, actual, .. } if actual == len),
            "{err}"
        );
        assert_names_file(&err, &path);
    }
    let err = write_png(&path, 0, 6, &[], &meta()).unwrap_err();
    assert!(matches!(err, PngMetaError::InvalidSize { .. }), "{err}");
    let mut bad = meta();
    bad.cfg_scale = f64::NAN;
    let err = write_png(&path, 8, 6, &pixels(8, 6), &bad).unwrap_err();
    assert!(matches!(err, PngMetaError::InvalidMetadata { .. }), "{err}");
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn failed_write_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    write_png(&path, 8, 6, &pixels(8, 6), &meta()).unwrap();
    let before = fs::read(&path).unwrap();
    assert!(write_png(&path, 8, 6, &[1, 2, 3], &meta()).is_err());
    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(dir_entries(dir.path()), ["out.png"]);
}

#[test]
fn missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let path = missing.join("out.png");
    let err = write_png(&path, 8, 6, &pixels(8, 6), &meta()).unwrap_err();
    assert!(
        matches!(err, PngMetaError::MissingDirectory { .. }),
        "{err}"
    );
    assert_names_file(&err, &path);
    assert!(!missing.exists());
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn destination_that_is_a_directory_is_an_error_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taken.png");
    fs::create_dir(&path).unwrap();
    let err = write_png(&path, 8, 6, &pixels(8, 6), &meta()).unwrap_err();
    assert!(matches!(err, PngMetaError::Io { .. }), "{err}");
    assert_names_file(&err, &path);
    assert_eq!(dir_entries(dir.path()), ["taken.png"]);
}
