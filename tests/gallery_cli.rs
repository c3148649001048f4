//! `easel index` and `easel search` as scripts use them: exact flags, JSON output, default
//! paths, and an index process killed with SIGKILL mid-run, then run again.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::Device;
use easel::gallery::{ClipEmbedder, GalleryIndex};

fn easel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_easel"));
    // Keep the user's real data folder out of every test.
    c.env("XDG_DATA_HOME", "/nonexistent-easel-test-data");
    c
}

fn clip_dir() -> PathBuf {
    common::fixtures().join("clip-tiny")
}

fn ok(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    (stdout, stderr)
}

fn fixture_folder(tmp: &Path) -> PathBuf {
    let dir = tmp.join("pictures");
    common::copy_dir(
        &common::fixtures().join("refs").join("clip").join("images"),
        &dir,
    );
    dir
}

fn expected_ranking(prompt_index: usize) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("refs/clip/features.json")).unwrap(),
    )
    .unwrap();
    let images: Vec<String> = serde_json::from_value(json["images"].clone()).unwrap();
    let ranking: Vec<Vec<usize>> =
        serde_json::from_value(json["text_to_image_ranking"].clone()).unwrap();
    ranking[prompt_index]
        .iter()
        .map(|&i| images[i].clone())
        .collect()
}

fn search_json(db: &Path, args: &[&str]) -> Vec<(String, f64)> {
    let (stdout, _) = ok(easel()
        .args(["search", "--clip-model"])
        .arg(clip_dir())
        .arg("--db")
        .arg(db)
        .args(args)
        .arg("--json")
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let obj = h.as_object().unwrap();
            assert_eq!(obj.len(), 2, "{h}");
            let name = Path::new(obj["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, obj["score"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn index_then_search_by_text_image_and_combination() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_folder(tmp.path());
    let db = tmp.path().join("lib.sqlite");
    let (_, stderr) = ok(easel()
        .args(["index", "--clip-model"])
        .arg(clip_dir())
        .arg("--db")
        .arg(&db)
        .arg(&dir)
        .output()
        .unwrap());
    assert!(stderr.contains("4 embedded"), "{stderr}");

    // Text: transformers' ranking, best first, scores descending.
    let hits = search_json(&db, &["--top", "4", "a red circle on a blue background"]);
    let names: Vec<String> = hits.iter().map(|h| h.0.clone()).collect();
    assert_eq!(names, expected_ranking(0));
    assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "{hits:?}");
    assert_eq!(
        search_json(&db, &["--top", "2", "a red circle on a blue background"]).len(),
        2
    );

    // An image in the index finds itself first, at cosine 1.
    let exact = dir.join("exact64.png");
    let hits = search_json(&db, &["--image", exact.to_str().unwrap()]);
    assert_eq!(hits[0].0, "exact64.png");
    assert!((hits[0].1 - 1.0).abs() < 1e-4, "{hits:?}");

    // rclip-style combination with a relative image path and a weight.
    let (stdout, _) = ok(easel()
        .current_dir(&dir)
        .args(["search", "--clip-model"])
        .arg(clip_dir())
        .arg("--db")
        .arg(&db)
        .args([
            "--top",
            "1",
            "0.1:a red circle on a blue background + ./down160.png",
        ])
        .output()
        .unwrap());
    assert!(stdout.contains("down160.png"), "{stdout}");
}

#[test]
fn missing_clip_model_and_bad_queries_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_folder(tmp.path());
    let missing = tmp.path().join("no-such-clip");
    let out = easel()
        .args(["index", "--db"])
        .arg(tmp.path().join("x.sqlite"))
        .arg("--clip-model")
        .arg(&missing)
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-clip"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = easel()
        .args(["search", "--clip-model"])
        .arg(clip_dir())
        .arg("--db")
        .arg(tmp.path().join("none.sqlite"))
        .arg("cat")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("easel index"), "{stderr}");
}

#[test]
fn the_default_database_is_in_the_data_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_folder(tmp.path());
    let data = tmp.path().join("data");
    ok(easel()
        .env("XDG_DATA_HOME", &data)
        .args(["index", "--clip-model"])
        .arg(clip_dir())
        .arg(&dir)
        .output()
        .unwrap());
    let db = data.join("easel").join("library.sqlite");
    assert!(db.is_file(), "no {}", db.display());
    let (stdout, _) = ok(easel()
        .env("XDG_DATA_HOME", &data)
        .args(["search", "--clip-model"])
        .arg(clip_dir())
        .args(["--top", "1", "a photo of a cat"])
        .output()
        .unwrap());
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
}

/// Many small distinct images, so the run has many batches to be killed between.
fn many_images(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([
                (x as usize * 5 + i) as u8,
                (y as usize * 6 + i * 7) as u8,
                (i * 31 % 256) as u8,
            ])
        });
        img.save(dir.join(format!("img_{i:04}.png"))).unwrap();
    }
}

#[test]
fn killed_with_sigkill_mid_index_the_next_run_resumes_and_the_index_is_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("many");
    let total = 400;
    many_images(&dir, total);
    let db = tmp.path().join("lib.sqlite");
    let index_cmd = || {
        let mut c = easel();
        c.args(["index", "--batch-size", "1", "--clip-model"])
            .arg(clip_dir())
            .arg("--db")
            .arg(&db)
            .arg(&dir);
        c
    };

    let mut child = index_cmd().stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = 0usize;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("indexed ") {
            seen = rest.split('/').next().unwrap().parse().unwrap();
            if seen >= 5 {
                // SIGKILL: no destructor, no handler, nothing flushed that was not committed.
                child.kill().unwrap();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child finished before it was killed");

    let e = ClipEmbedder::load(&clip_dir(), &Device::Cpu).unwrap();
    let committed = {
        let index = GalleryIndex::open_existing(&db).unwrap();
        let c = index.consistency(e.model_id(), Some(e.dim())).unwrap();
        assert_eq!(c.files_without_embedding, 0, "{c:?}");
        assert_eq!(c.malformed_vectors, 0, "{c:?}");
        assert!(c.files >= seen && c.files < total, "{c:?}, saw {seen}");
        c.files
    };

    let (_, stderr) = ok(index_cmd().output().unwrap());
    assert!(
        stderr.contains(&format!(
            "{committed} unchanged, {} to index",
            total - committed
        )),
        "{stderr}"
    );
    let index = GalleryIndex::open_existing(&db).unwrap();
    let c = index.consistency(e.model_id(), Some(e.dim())).unwrap();
    assert_eq!(
        (
            c.files,
            c.files_without_embedding,
            c.orphan_embeddings,
            c.malformed_vectors
        ),
        (total, 0, 0, 0)
    );
}

#[test]
fn a_corrupt_database_is_rebuilt_by_index_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_folder(tmp.path());
    let db = tmp.path().join("lib.sqlite");
    std::fs::write(
        &db,
        b"this is not a database, just some bytes that got here",
    )
    .unwrap();
    let out = easel()
        .args(["search", "--clip-model"])
        .arg(clip_dir())
        .arg("--db")
        .arg(&db)
        .arg("cat")
        .output()
        .unwrap();
    assert!(!out.status.success(), "search must not silently rebuild");
    let (_, stderr) = ok(easel()
        .args(["index", "--clip-model"])
        .arg(clip_dir())
        .arg("--db")
        .arg(&db)
        .arg(&dir)
        .output()
        .unwrap());
    assert!(
        stderr.contains("rebuilt") && stderr.contains("4 embedded"),
        "{stderr}"
    );
    assert_eq!(
        search_json(&db, &["--top", "4", "a photo of a cat"]).len(),
        4
    );
}
