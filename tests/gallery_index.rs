//! The gallery index through the library API: incremental updates, reuse by content hash,
//! model changes, cancellation and resume, bad files, a corrupt database, metadata filters.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;
use easel::gallery::index::Opened;
use easel::gallery::indexer::SkipCounts;
use easel::gallery::png_meta::{write_png, GenerationMetadata};
use easel::gallery::{
    index_folders, ClipEmbedder, Filter, GalleryIndex, IndexEvent, IndexOptions, IndexSummary,
    Library, SkipReason,
};
use sha2::{Digest, Sha256};

fn clip_dir() -> PathBuf {
    common::fixtures().join("clip-tiny")
}

fn images_dir() -> PathBuf {
    common::fixtures().join("refs").join("clip").join("images")
}

fn embedder() -> ClipEmbedder {
    ClipEmbedder::load(&clip_dir(), &Device::Cpu).unwrap()
}

/// A temp folder holding copies of the four fixture images.
fn folder_with_fixture_images() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pictures");
    common::copy_dir(&images_dir(), &dir);
    (tmp, dir)
}

fn run(db: &Path, e: &ClipEmbedder, roots: &[PathBuf]) -> (IndexSummary, Vec<IndexEvent>) {
    let (mut index, _) = GalleryIndex::open(db).unwrap();
    let mut events = Vec::new();
    let s = index_folders(
        &mut index,
        e,
        roots,
        &IndexOptions { batch_size: 2 },
        &AtomicBool::new(false),
        &mut |ev| events.push(ev),
    )
    .unwrap();
    (s, events)
}

fn assert_consistent(db: &Path, e: &ClipEmbedder, files: usize) {
    let index = GalleryIndex::open_existing(db).unwrap();
    let c = index.consistency(e.model_id(), Some(e.dim())).unwrap();
    assert_eq!(c.files, files, "{c:?}");
    assert_eq!(c.files_without_embedding, 0, "{c:?}");
    assert_eq!(c.orphan_embeddings, 0, "{c:?}");
    assert_eq!(c.malformed_vectors, 0, "{c:?}");
    // Every row's hash is its file's content now.
    for (path, state) in index.file_states().unwrap() {
        let bytes = std::fs::read(&path).unwrap();
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(state.hash, hash, "{path}");
    }
}

#[test]
fn a_second_run_embeds_only_what_changed() {
    let (tmp, dir) = folder_with_fixture_images();
    let db = tmp.path().join("index.sqlite");
    let e = embedder();
    let (s, _) = run(&db, &e, std::slice::from_ref(&dir));
    assert_eq!((s.images, s.embedded, s.unchanged), (4, 4, 0), "{s:?}");
    assert_consistent(&db, &e, 4);

    let (s, _) = run(&db, &e, std::slice::from_ref(&dir));
    assert_eq!((s.embedded, s.reused, s.unchanged), (0, 0, 4), "{s:?}");

    // Renamed, duplicated, changed, deleted and new, all at once.
    std::fs::rename(dir.join("exact64.png"), dir.join("renamed.png")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::copy(dir.join("down160.png"), dir.join("sub/copy.png")).unwrap();
    let img = image::RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 8, y as u8 * 12, 90]));
    img.save(dir.join("wide120x90.png")).unwrap();
    std::fs::remove_file(dir.join("tall70x150.jpg")).unwrap();
    let img = image::RgbImage::from_fn(50, 50, |x, _| image::Rgb([x as u8 * 5, 10, 200]));
    img.save(dir.join("new.png")).unwrap();

    let (s, _) = run(&db, &e, std::slice::from_ref(&dir));
    // renamed.png and sub/copy.png reuse by hash; wide (changed) and new.png are embedded.
    assert_eq!(
        (s.images, s.embedded, s.reused, s.unchanged, s.removed),
        (5, 2, 2, 1, 2),
        "{s:?}"
    );
    assert_consistent(&db, &e, 5);
}

#[test]
fn a_different_clip_model_re_embeds_everything() {
    let (tmp, dir) = folder_with_fixture_images();
    let db = tmp.path().join("index.sqlite");
    let a = embedder();
    run(&db, &a, std::slice::from_ref(&dir));

    // The same weights with another normalisation are another model: ids differ.
    let other = tmp.path().join("clip-b");
    common::copy_dir(&clip_dir(), &other);
    let pp = other.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&pp)
        .unwrap()
        .replace("0.48145466", "0.5");
    std::fs::write(&pp, text).unwrap();
    let b = ClipEmbedder::load(&other, &Device::Cpu).unwrap();
    assert_ne!(a.model_id(), b.model_id());

    let (s, _) = run(&db, &b, std::slice::from_ref(&dir));
    assert_eq!((s.embedded, s.unchanged), (4, 0), "{s:?}");
    // The old model's vectors are gone; only b's remain, one per file.
    assert_consistent(&db, &b, 4);
    let index = GalleryIndex::open_existing(&db).unwrap();
    assert!(index.embedded_hashes(a.model_id()).unwrap().is_empty());
}

#[test]
fn cancelling_keeps_committed_batches_and_the_next_run_finishes() {
    let (tmp, dir) = folder_with_fixture_images();
    let db = tmp.path().join("index.sqlite");
    let e = embedder();
    let cancel = AtomicBool::new(false);
    let (mut index, _) = GalleryIndex::open(&db).unwrap();
    let s = index_folders(
        &mut index,
        &e,
        std::slice::from_ref(&dir),
        &IndexOptions { batch_size: 1 },
        &cancel,
        &mut |ev| {
            if matches!(ev, IndexEvent::Progress { done: 1, .. }) {
                cancel.store(true, Ordering::Relaxed);
            }
        },
    )
    .unwrap();
    drop(index);
    assert!(s.cancelled);
    assert_eq!(s.embedded, 1, "{s:?}");
    assert_consistent(&db, &e, 1);

    let (s, _) = run(&db, &e, std::slice::from_ref(&dir));
    assert_eq!(
        (s.unchanged, s.embedded, s.cancelled),
        (1, 3, false),
        "{s:?}"
    );
    assert_consistent(&db, &e, 4);
}

/// A PNG whose header claims 20000×20000 (valid chunks with their CRCs, a few bytes of pixel
/// data): what a decompression bomb looks like before it is inflated.
fn huge_png_header() -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream of one stored empty block: header, final stored block, adler32 of nothing
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 1],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_files_are_skipped_counted_and_reported_while_indexing_goes_on() {
    let (tmp, dir) = folder_with_fixture_images();
    let db = tmp.path().join("index.sqlite");
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("fake.png"), "a text file with a png name").unwrap();
    let good = std::fs::read(dir.join("down160.png")).unwrap();
    std::fs::write(dir.join("truncated.png"), &good[..good.len() / 2]).unwrap();
    let jpeg = std::fs::read(dir.join("tall70x150.jpg")).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(dir.join("huge.png"), huge_png_header()).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere.png"), dir.join("dangling.png")).unwrap();

    let e = embedder();
    let (s, events) = run(&db, &e, std::slice::from_ref(&dir));
    assert_eq!(
        s.skipped,
        SkipCounts {
            not_image: 2,
            corrupt: 2,
            too_large: 1,
            unreadable: 1,
            bad_path: 0
        },
        "{s:?}"
    );
    assert_eq!(s.embedded, 4, "the good images are all indexed: {s:?}");
    let warned: BTreeMap<String, SkipReason> = events
        .iter()
        .filter_map(|ev| match ev {
            IndexEvent::Skipped { path, reason, .. } => Some((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                *reason,
            )),
            _ => None,
        })
        .collect();
    // Files without an image extension are only counted; the rest are named.
    assert_eq!(
        warned,
        BTreeMap::from([
            ("dangling.png".to_string(), SkipReason::Unreadable),
            ("fake.png".to_string(), SkipReason::NotImage),
            ("huge.png".to_string(), SkipReason::TooLarge),
            ("truncated.jpg".to_string(), SkipReason::Corrupt),
            ("truncated.png".to_string(), SkipReason::Corrupt),
        ])
    );
    let tail = events.iter().rev().find_map(|ev| match ev {
        IndexEvent::Skipped { path, detail, .. } if path.ends_with("huge.png") => Some(detail),
        _ => None,
    });
    assert!(tail.is_some_and(|d| d.contains("20000x20000")), "{tail:?}");
    assert_consistent(&db, &e, 4);
}

/// Every file under `dir` with its bytes, to prove a folder was not touched.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn a_corrupt_database_is_moved_aside_and_rebuilt_without_touching_the_images() {
    let (tmp, dir) = folder_with_fixture_images();
    let db = tmp.path().join("index.sqlite");
    let e = embedder();
    let before = snapshot(&dir);

    // Garbage where the index should be.
    std::fs::write(&db, vec![0x5au8; 10_000]).unwrap();
    let (_, opened) = GalleryIndex::open(&db).unwrap();
    let Opened::Rebuilt { moved_to, .. } = opened else {
        panic!("expected a rebuild, got {opened:?}")
    };
    assert_eq!(std::fs::read(&moved_to).unwrap(), vec![0x5au8; 10_000]);
    let (s, _) = run(&db, &e, std::slice::from_ref(&dir));
    assert_eq!(s.embedded, 4);

    // A real index with its pages damaged past the header.
    drop(GalleryIndex::open(&db).unwrap());
    let mut bytes = std::fs::read(&db).unwrap();
    // Every page after the first (which holds the schema) overwritten: the tables' b-trees.
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    assert!(
        bytes.len() > page,
        "index too small to damage: {}",
        bytes.len()
    );
    for b in &mut bytes[page..] {
        *b = 0xff;
    }
    std::fs::write(&db, &bytes).unwrap();
    let _ = std::fs::remove_file(tmp.path().join("index.sqlite-wal"));
    let (_, opened) = GalleryIndex::open(&db).unwrap();
    assert!(matches!(opened, Opened::Rebuilt { .. }), "{opened:?}");
    let (s, _) = run(&db, &e, std::slice::from_ref(&dir));
    assert_eq!(s.embedded, 4);
    assert_consistent(&db, &e, 4);
    assert_eq!(snapshot(&dir), before, "the image folder changed");
}

fn meta(model: &str, prompt: &str) -> GenerationMetadata {
    GenerationMetadata {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        steps: 20,
        cfg_scale: 7.0,
        seed: 1,
        width: 32,
        height: 32,
        sampler: "euler".into(),
        sampler_a1111: "Euler".into(),
        model_name: model.into(),
        model_hash: "0123456789".into(),
        spacing: None,
        clip_skip: 1,
        vae: None,
        loras: Vec::new(),
        init_noise: None,
        init_image: None,
        hires: None,
        embeddings: Vec::new(),
        sdxl: None,
        easel_version: "test".into(),
        extra: Default::default(),
    }
}

#[test]
fn metadata_filters_narrow_the_search() {
    let (tmp, dir) = folder_with_fixture_images();
    let db = tmp.path().join("index.sqlite");
    let rgb: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 7 % 256) as u8).collect();
    write_png(
        &dir.join("gen_a.png"),
        32,
        32,
        &rgb,
        &meta("sd-tiny-a", "a red castle at night"),
    )
    .unwrap();
    let rgb: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 13 % 256) as u8).collect();
    write_png(
        &dir.join("gen_b.png"),
        32,
        32,
        &rgb,
        &meta("sdxl-base", "a blue castle"),
    )
    .unwrap();
    let e = embedder();
    run(&db, &e, std::slice::from_ref(&dir));

    let index = GalleryIndex::open_existing(&db).unwrap();
    let lib = Library::load(&index, e.model_id(), e.dim()).unwrap();
    assert_eq!(lib.len(), 6);
    let q = e.embed_text("a castle").unwrap();
    let names = |f: &Filter| -> Vec<String> {
        lib.top_k(&q, 10, f)
            .into_iter()
            .map(|h| {
                Path::new(&h.path)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    assert_eq!(names(&Filter::default()).len(), 6);
    let by_model = Filter {
        model: Some("TINY".into()),
        ..Filter::default()
    };
    assert_eq!(names(&by_model), ["gen_a.png"]);
    let by_words = Filter {
        prompt_words: vec!["castle".into()],
        ..Filter::default()
    };
    let mut both = names(&by_words);
    both.sort();
    assert_eq!(both, ["gen_a.png", "gen_b.png"]);
    let by_date = Filter {
        before_unix: Some(0),
        ..Filter::default()
    };
    assert!(names(&by_date).is_empty());
    // "Find similar" uses the stored vector: the image itself comes first, at cosine 1.
    let path = std::fs::canonicalize(dir.join("gen_b.png")).unwrap();
    let v = index
        .embedding_for_path(path.to_str().unwrap(), e.model_id())
        .unwrap()
        .unwrap();
    let hits = lib.top_k(&v, 1, &Filter::default());
    assert_eq!(hits[0].path, path.to_str().unwrap());
    assert!((hits[0].score - 1.0).abs() < 1e-5);
}
