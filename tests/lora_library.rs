//! A folder of adapters described from headers alone: rank, alpha, what they touch, family,
//! kohya metadata and trigger words; search; finding an adapter by name; A1111's hash.

mod common;

use candle_core::Device;
use common::*;
use easel::diffusion::Pipeline;
use easel::lora::library::{find_by_name, inspect, scan, short_hash};
use easel::lora::{Adapter, Family, Format};
use tempfile::TempDir;

#[test]
fn scan_lists_every_adapter_with_what_it_is() {
    let entries = scan(&fixtures().join("loras")).unwrap();
    let infos: Vec<_> = entries.into_iter().map(Result::unwrap).collect();
    let names: Vec<_> = infos.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sdxl-style",
            "sdxl-style-peft",
            "tiny-detail",
            "tiny-style",
            "tiny-style-diffusers-old",
            "tiny-style-peft"
        ]
    );
    // SDXL adapters are told apart from SD 1.x ones: by their second text encoder's keys
    // (the tiny models' widths say nothing), in both formats.
    for sdxl in &infos[..2] {
        assert_eq!(sdxl.family, Family::Sdxl, "{}", sdxl.name);
        assert_eq!(sdxl.touches.text_layers, 42, "{}", sdxl.name);
    }
    let infos = &infos[2..];
    let style = &infos[1];
    assert_eq!(style.format, Format::Kohya);
    assert_eq!(style.rank, Some((4, 4)));
    // kohya keeps alpha per layer; the UNet's 2 is the most common (116 layers vs 30)
    assert_eq!(style.alpha, Some(2.0));
    assert_eq!(style.touches.unet_layers, 116);
    assert_eq!(style.touches.text_layers, 30);
    // resnet conv1/conv2 (3×3) and the two samplers
    assert_eq!(style.touches.conv3x3_layers, 26);
    assert!(style.touches.conv_layers > style.touches.conv3x3_layers);
    assert_eq!(style.family, Family::Sd1, "from ss_base_model_version");
    assert_eq!(style.kohya.output_name.as_deref(), Some("tiny-style"));
    assert_eq!(style.kohya.sd_model_name.as_deref(), Some("sd-tiny-a"));
    assert_eq!(style.kohya.network_dim.as_deref(), Some("4"));
    assert_eq!(style.kohya.network_alpha.as_deref(), Some("2.0"));
    // tag counts summed over the two dataset folders, most frequent first
    let words: Vec<_> = style
        .kohya
        .trigger_words
        .iter()
        .map(|(w, n)| (w.as_str(), *n))
        .collect();
    assert_eq!(words[..2], [("tinystyle", 20), ("red circle", 16)]);
    assert!(style.trigger_text().starts_with("tinystyle, red circle"));

    let peft = &infos[3];
    assert_eq!(peft.format, Format::Diffusers);
    assert_eq!(peft.alpha, Some(2.0), "from lora_adapter_metadata");
    assert_eq!(peft.touches, style.touches);
    assert_eq!(infos[2].format, Format::DiffusersOld);
    assert_eq!(infos[2].alpha, None);
    let detail = &infos[0];
    assert_eq!((detail.rank, detail.touches.text_layers), (Some((2, 2)), 0));
}

#[test]
fn search_matches_names_trigger_words_and_family() {
    let infos: Vec<_> = scan(&fixtures().join("loras"))
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let hits = |q: &str| {
        infos
            .iter()
            .filter(|i| i.matches(q))
            .map(|i| i.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(hits("RED circle"), ["tiny-style"]);
    assert_eq!(hits("sd 1.x"), ["tiny-style"]);
    assert_eq!(hits("detail"), ["tiny-detail", "tiny-style"]);
    assert_eq!(hits("tiny style peft").len(), 1);
    assert_eq!(hits("sdxl"), ["sdxl-style", "sdxl-style-peft"]);
    assert_eq!(hits("").len(), 6);
    assert!(hits("nothing-like-this").is_empty());
}

#[test]
fn scan_reports_unreadable_files_and_descends_into_folders() {
    let dir = TempDir::new().unwrap();
    let sub = dir.path().join("characters");
    std::fs::create_dir(&sub).unwrap();
    std::fs::copy(
        fixtures().join("loras/tiny-detail.safetensors"),
        sub.join("d.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.safetensors"), b"nope").unwrap();
    std::fs::write(dir.path().join("old.pt"), b"pickle").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let entries = scan(dir.path()).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].as_ref().unwrap().name, "d");
    let errors: Vec<_> = entries
        .iter()
        .filter_map(|e| e.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(errors.iter().any(|e| e.contains("broken.safetensors")));
    assert!(errors
        .iter()
        .any(|e| e.contains("old.pt") && e.contains("pickle")));
}

#[test]
fn find_by_file_name_or_kohya_output_name() {
    let dir = TempDir::new().unwrap();
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).unwrap();
    std::fs::copy(
        fixtures().join("loras/tiny-style.safetensors"),
        sub.join("My_Style_v2.safetensors"),
    )
    .unwrap();
    let dirs = vec![dir.path().to_path_buf()];
    let by_stem = find_by_name(&dirs, "My_Style_v2").unwrap();
    assert_eq!(by_stem, sub.join("My_Style_v2.safetensors"));
    assert_eq!(find_by_name(&dirs, "my_style_v2").unwrap(), by_stem);
    // ss_output_name inside the file
    assert_eq!(find_by_name(&dirs, "tiny-style").unwrap(), by_stem);
    let err = find_by_name(&dirs, "nope").unwrap_err().to_string();
    assert!(
        err.contains("\"nope\"") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn short_hash_is_a1111s_and_ignores_metadata() {
    let path = fixtures().join("loras/tiny-style.safetensors");
    let hash = short_hash(&path).unwrap();
    assert_eq!(hash.len(), 12);
    // SHA-256 of everything after the header, as A1111's addnet hash
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    use sha2::Digest;
    let full = format!("{:x}", sha2::Sha256::digest(&bytes[8 + n..]));
    assert_eq!(hash, full[..12]);
    let p = Pipeline::load(&fixtures().join("sd-tiny-a"), &Device::Cpu).unwrap();
    assert_eq!(Adapter::load(&path, &p.model).unwrap().hash, hash);
    // The same tensors under other metadata (a renamed output, say) hash the same.
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"]["ss_output_name"] = "renamed".into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut edited = (header.len() as u64).to_le_bytes().to_vec();
    edited.extend_from_slice(&header);
    edited.extend_from_slice(&bytes[8 + n..]);
    let dir = TempDir::new().unwrap();
    let copy = dir.path().join("renamed.safetensors");
    std::fs::write(&copy, edited).unwrap();
    assert_eq!(
        inspect(&copy).unwrap().kohya.output_name.as_deref(),
        Some("renamed")
    );
    assert_eq!(short_hash(&copy).unwrap(), hash);
}
