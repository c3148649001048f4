//! The CLIP tokenizer against ids recorded from transformers' `CLIPTokenizer`
//! (tests/fixtures/make_fixtures.py), plus its error and truncation behaviour.

use std::fs;
use std::path::{Path, PathBuf};

use easel::models::tokenizer::{ClipTokenizer, TokenizerError};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `{text, ids}` case of `refs[key]` must come out of `tok` unchanged.
fn assert_cases(tok: &ClipTokenizer, refs: &Value, key: &str) {
    let cases = refs[key].as_array().expect("cases array");
    assert!(!cases.is_empty(), "{key} has no cases");
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = case["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| u32::try_from(id.as_u64().expect("id")).expect("u32 id"))
            .collect();
        let got = tok.encode(text).ids;
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{key}:\n{}", failures.join("\n"));
}

#[test]
fn tiny_tokenizer_matches_transformers() {
    let refs = read_json(&fixtures().join("refs/tokens.json"));
    let dir = fixtures().join(refs["tokenizer"].as_str().expect("tokenizer dir"));
    let tok = ClipTokenizer::from_dir(&dir).expect("tiny tokenizer");
    assert_eq!(tok.max_len(), 77);
    assert_eq!(tok.pad_id(), tok.eos_id());
    assert_cases(&tok, &refs, "cases");
}

#[test]
fn pad_bang_tokenizer_matches_transformers() {
    let refs = read_json(&fixtures().join("refs/tokens.json"));
    let dir = fixtures().join(refs["tokenizer_pad_bang"].as_str().expect("pad-! dir"));
    let tok = ClipTokenizer::from_dir(&dir).expect("pad-! tokenizer");
    assert_eq!(tok.pad_id(), 0, "\"!\" is id 0");
    assert_cases(&tok, &refs, "cases_pad_bang");
}

#[test]
fn bundled_openai_matches_transformers() {
    let refs = read_json(&fixtures().join("refs/tokens_openai.json"));
    let tok = ClipTokenizer::bundled_openai("<|endoftext|>").expect("bundled tokenizer");
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    assert_eq!(tok.max_len(), 77);
    assert_cases(&tok, &refs, "cases");
    // Well-known ids of openai/clip-vit-large-patch14.
    assert_eq!(
        tok.encode("a photo of a cat").ids[..7],
        [49406, 320, 1125, 539, 320, 2368, 49407]
    );
}

#[test]
fn bundled_openai_with_bang_pads_with_zero() {
    let tok = ClipTokenizer::bundled_openai("!").expect("bundled tokenizer");
    let enc = tok.encode("a photo of a cat");
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(enc.ids[..8], [49406, 320, 1125, 539, 320, 2368, 49407, 0]);
    assert!(enc.ids[7..].iter().all(|&id| id == 0));
}

#[test]
fn long_prompt_is_truncated_with_eos_last() {
    let tok = ClipTokenizer::bundled_openai("<|endoftext|>").expect("bundled tokenizer");
    let text = "a beautiful landscape painting of mountains, ".repeat(20);
    let enc = tok.encode(&text);
    assert!(enc.truncated);
    assert!(enc.n_tokens > tok.max_len() - 2, "{}", enc.n_tokens);
    assert_eq!(enc.ids.len(), tok.max_len());
    assert_eq!(enc.ids[0], tok.bos_id());
    assert_eq!(enc.ids[tok.max_len() - 1], tok.eos_id());
    assert!(!enc.ids[1..tok.max_len() - 1].contains(&tok.eos_id()));

    let short = tok.encode("a cat");
    assert!(!short.truncated);
    assert_eq!(short.n_tokens, 2);
    assert_eq!(short.ids.len(), tok.max_len());

    // Exactly max_len - 2 tokens fit without truncation.
    let exact = tok.encode(&"cat ".repeat(tok.max_len() - 2));
    assert_eq!((exact.n_tokens, exact.truncated), (75, false));
    assert_eq!(exact.ids[tok.max_len() - 1], tok.eos_id());
    let over = tok.encode(&"cat ".repeat(tok.max_len() - 1));
    assert_eq!((over.n_tokens, over.truncated), (76, true));
}

#[test]
fn empty_prompt_is_bos_eos_and_padding() {
    let tok = ClipTokenizer::bundled_openai("!").expect("bundled tokenizer");
    let enc = tok.encode("");
    assert_eq!(enc.n_tokens, 0);
    assert_eq!(enc.ids[..3], [49406, 49407, 0]);
}

/// A copy of the tiny tokenizer folder to break.
fn tiny_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    for name in [
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        fs::copy(
            fixtures().join("tokenizer").join(name),
            tmp.path().join(name),
        )
        .expect("copy fixture");
    }
    tmp
}

fn load_error(dir: &Path) -> TokenizerError {
    match ClipTokenizer::from_dir(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_merges_names_the_file() {
    let tmp = tiny_copy();
    fs::remove_file(tmp.path().join("merges.txt")).expect("remove");
    let err = load_error(tmp.path());
    assert!(matches!(err, TokenizerError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("merges.txt"), "{err}");
}

#[test]
fn corrupt_vocab_names_the_file() {
    let tmp = tiny_copy();
    fs::write(tmp.path().join("vocab.json"), "{\"a\": 0, ").expect("write");
    let err = load_error(tmp.path());
    assert!(matches!(err, TokenizerError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("vocab.json"), "{err}");

    fs::write(tmp.path().join("vocab.json"), "{\"a\": -1}").expect("write");
    let err = load_error(tmp.path());
    assert!(err.to_string().contains("vocab.json"), "{err}");
}

#[test]
fn bad_merge_line_names_the_file_and_line() {
    let tmp = tiny_copy();
    fs::write(
        tmp.path().join("merges.txt"),
        "#version: 0.2\ni n\nbroken\n",
    )
    .expect("write");
    let err = load_error(tmp.path());
    let msg = err.to_string();
    assert!(
        msg.contains("merges.txt") && msg.contains("line 3"),
        "{msg}"
    );

    fs::write(tmp.path().join("merges.txt"), "#version: 0.2\nq z\n").expect("write");
    let msg = load_error(tmp.path()).to_string();
    assert!(msg.contains("merges.txt") && msg.contains("qz"), "{msg}");
}

#[test]
fn corrupt_config_names_the_file() {
    let tmp = tiny_copy();
    fs::write(tmp.path().join("tokenizer_config.json"), "not json").expect("write");
    let msg = load_error(tmp.path()).to_string();
    assert!(msg.contains("tokenizer_config.json"), "{msg}");

    let tmp = tiny_copy();
    fs::write(tmp.path().join("special_tokens_map.json"), "[").expect("write");
    let msg = load_error(tmp.path()).to_string();
    assert!(msg.contains("special_tokens_map.json"), "{msg}");
}

#[test]
fn config_files_are_optional() {
    let tmp = tiny_copy();
    fs::remove_file(tmp.path().join("tokenizer_config.json")).expect("remove");
    fs::remove_file(tmp.path().join("special_tokens_map.json")).expect("remove");
    let tok = ClipTokenizer::from_dir(tmp.path()).expect("defaults");
    let reference = ClipTokenizer::from_dir(&fixtures().join("tokenizer")).expect("tiny");
    assert_eq!(tok.max_len(), 77);
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (reference.bos_id(), reference.eos_id(), reference.pad_id())
    );
    let text = "a photo of an astronaut riding a horse";
    assert_eq!(tok.encode(text), reference.encode(text));
}

#[test]
fn special_tokens_map_overrides_config_and_sets_length() {
    let tmp = tiny_copy();
    fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"model_max_length": 8, "pad_token": "<|endoftext|>"}"#,
    )
    .expect("write");
    fs::write(
        tmp.path().join("special_tokens_map.json"),
        r#"{"pad_token": "!"}"#,
    )
    .expect("write");
    let tok = ClipTokenizer::from_dir(tmp.path()).expect("tokenizer");
    assert_eq!((tok.max_len(), tok.pad_id()), (8, 0));
    let enc = tok.encode("a photo");
    assert_eq!(enc.ids.len(), 8);
    assert_eq!(enc.ids[enc.n_tokens + 2..], [0, 0, 0, 0]);
}
