//! The studio's path under churn and under `kill -9`, through `easel bench-soak` (the studio's
//! state machine and the real worker, no window): a short soak passes every check it makes,
//! and a studio killed three times mid-work (generating, saving, writing settings, indexing)
//! loses nothing it reported finished and leaves nothing corrupt for the next start.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::Device;
use easel::gallery::{ClipEmbedder, GalleryIndex};
use easel::settings::store;

fn easel() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_easel"));
    // Keep the user's real folders out of every test.
    c.env("XDG_DATA_HOME", "/nonexistent-easel-test-data")
        .env("XDG_CONFIG_HOME", "/nonexistent-easel-test-config")
        .env("XDG_CACHE_HOME", "/nonexistent-easel-test-cache");
    c
}

fn bundled_clip() -> PathBuf {
    easel::gallery::paths::default_clip_dir().expect("the bundled CLIP model")
}

#[test]
fn a_short_soak_passes_every_check() {
    let work = tempfile::tempdir().unwrap();
    let out = easel()
        .args(["bench-soak", "--jobs", "40", "--steps", "2", "--work-dir"])
        .arg(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let checks = report["checks"].as_object().unwrap();
    assert!(checks.len() >= 10, "{report:#}");
    assert!(checks.values().all(|v| v == true), "{report:#}");
    assert!(report["jobs"]["submitted"].as_u64().unwrap() >= 40);
    assert!(
        report["jobs"]["cancelled"].as_u64().unwrap() >= 5,
        "{report:#}"
    );
    assert!(report["gallery"]["index_runs"].as_u64().unwrap() >= 2);
    assert_eq!(
        report["gallery"]["indexed"], report["jobs"]["saved"],
        "{report:#}"
    );
}

/// Starts a soak in `work`, kills it with SIGKILL once it has reported `after` more saved
/// images, and returns every image it reported saved.
fn soak_then_kill(work: &Path, after: usize) -> Vec<PathBuf> {
    let mut child = easel()
        .args([
            "bench-soak",
            "--jobs",
            "100000",
            "--steps",
            "2",
            "--work-dir",
        ])
        .arg(work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut saved = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while saved.len() < after {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => saved.extend(line.strip_prefix("saved ").map(PathBuf::from)),
            Err(e) => {
                let _ = child.kill();
                panic!("{} images reported saved, then {e:?}", saved.len());
            }
        }
    }
    // SIGKILL: no destructor, no handler, nothing flushed that was not written.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the soak finished before it was killed");
    // Lines already written before the kill.
    reader.join().unwrap();
    saved.extend(
        rx.try_iter()
            .filter_map(|l| l.strip_prefix("saved ").map(PathBuf::from)),
    );
    saved
}

#[test]
fn a_studio_killed_mid_work_loses_nothing_finished_and_restarts_clean() {
    let work = tempfile::tempdir().unwrap();
    let library = work.path().join("library");
    let db = work.path().join("gallery.sqlite");
    let clip = ClipEmbedder::load(&bundled_clip(), &Device::Cpu).unwrap();
    let mut finished = Vec::new();
    // Killed early (first rounds: saves and settings writes), then past the first gallery
    // index runs (every 25 images), three starts in the same folders as a user restarting.
    for after in [4, 13, 31] {
        finished.extend(soak_then_kill(work.path(), after));

        // Nothing reported finished is missing; every PNG under its final name is whole.
        for path in &finished {
            assert!(path.is_file(), "{} was reported saved", path.display());
        }
        let pngs: Vec<PathBuf> = std::fs::read_dir(&library)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        assert!(pngs.len() >= finished.len());
        for png in &pngs {
            let meta = easel::gallery::png_meta::read_png_metadata(png)
                .unwrap_or_else(|e| panic!("{}: {e}", png.display()));
            assert!(meta.easel.is_some(), "{}", png.display());
            image::open(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        }

        // The settings file reads as settings (written whole or not at all).
        match store::load(&work.path().join("settings.json")) {
            store::Loaded::Settings(s) => assert!(s.live && !s.loras.is_empty()),
            other => panic!("settings after the kill: {other:?}"),
        }

        // The index opens and holds no half-written row.
        if db.exists() {
            let index = GalleryIndex::open_existing(&db).unwrap();
            let c = index
                .consistency(clip.model_id(), Some(clip.dim()))
                .unwrap();
            assert_eq!((c.files_without_embedding, c.malformed_vectors), (0, 0));
        }
    }

    // Indexed again, the index holds exactly the folder.
    let out = easel()
        .args(["index", "--clip-model"])
        .arg(bundled_clip())
        .arg("--db")
        .arg(&db)
        .arg(&library)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pngs = std::fs::read_dir(&library)
        .unwrap()
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            p.extension().is_some_and(|e| e == "png")
        })
        .count();
    let index = GalleryIndex::open_existing(&db).unwrap();
    let c = index
        .consistency(clip.model_id(), Some(clip.dim()))
        .unwrap();
    assert_eq!(
        (
            c.files,
            c.files_without_embedding,
            c.orphan_embeddings,
            c.malformed_vectors
        ),
        (pngs, 0, 0, 0)
    );
}
