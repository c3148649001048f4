//! The gallery panel, headless through egui_kittest: it indexes the studio's library folder in
//! the background, shows thumbnails (cached on disk), searches by typed text and by a dropped
//! image, opens the full view, restores settings in one click and deletes only after asking.
//! Frames are stepped until a condition holds, with a bound on time; nothing sleeps and hopes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use easel::app::{Action, GalleryPanel, Panel, Studio};
use easel::settings::Settings;
use easel::worker::Worker;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;

type State = (GalleryPanel, Studio);

const LIMIT: Duration = Duration::from_secs(60);

fn drive(h: &mut Harness<'_, State>, what: &str, done: impl Fn(&State) -> bool) {
    let start = Instant::now();
    loop {
        h.step();
        if done(h.state()) {
            return;
        }
        assert!(start.elapsed() < LIMIT, "{what}: not reached in {LIMIT:?}");
        // Give the gallery's threads the CPU between frames, as an idle UI would.
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn file_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn expected_first(prompt_index: usize) -> String {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("refs/clip/features.json")).unwrap(),
    )
    .unwrap();
    let images: Vec<String> = serde_json::from_value(json["images"].clone()).unwrap();
    let ranking: Vec<Vec<usize>> =
        serde_json::from_value(json["text_to_image_ranking"].clone()).unwrap();
    images[ranking[prompt_index][0]].clone()
}

#[test]
fn index_search_drop_view_restore_and_delete_with_confirmation() {
    let tmp = tempfile::tempdir().unwrap();
    let library: PathBuf = tmp.path().join("library");
    common::copy_dir(&common::fixtures().join("refs/clip/images"), &library);
    let thumbs = tmp.path().join("thumbs");
    let panel = GalleryPanel::with_paths(
        Some(tmp.path().join("index.sqlite")),
        Some(common::fixtures().join("clip-tiny")),
        Some(thumbs.clone()),
    );
    let worker = Worker::spawn(Arc::new(|| {})).unwrap();
    let settings = Settings {
        library_dir: Some(library.clone()),
        ..Settings::default()
    };
    let studio = Studio::new(settings, worker);
    let mut h = Harness::builder().with_size([700.0, 900.0]).build_ui_state(
        |ui, (panel, studio): &mut State| panel.ui(ui, studio),
        (panel, studio),
    );

    // The library folder is indexed in the background and its thumbnails appear.
    drive(&mut h, "library indexed", |(p, _)| p.entries().len() == 4);
    drive(&mut h, "thumbnails shown", |(p, _)| {
        p.thumbnails_loaded() == 4
    });
    let cached = std::fs::read_dir(&thumbs).unwrap().count();
    assert_eq!(cached, 4, "one cached thumbnail per image");

    // An image the studio saves into its library shows up without a Rescan.
    std::fs::copy(
        library.join("down160.png"),
        library.join("just-generated.png"),
    )
    .unwrap();
    h.step();
    assert_eq!(h.state().0.entries().len(), 4, "not indexed before a save");
    h.state_mut().1.images_saved += 1;
    drive(&mut h, "the saved image indexed", |(p, _)| {
        p.entries().len() == 5
    });
    // Deleted outside Easel: gone after a Rescan.
    std::fs::remove_file(library.join("just-generated.png")).unwrap();
    h.get_by_label("Rescan").click();
    drive(&mut h, "the removed image gone", |(p, _)| {
        p.entries().len() == 4
    });

    // Typed text search: transformers' best match comes first.
    h.get_by_label("Search images").focus();
    h.get_by_label("Search images")
        .type_text("a red circle on a blue background");
    h.get_by_label("Search").click();
    drive(&mut h, "text results", |(p, _)| p.results().is_some());
    let first = h.state().0.results().unwrap().1[0].0.clone();
    assert_eq!(file_name(&first), expected_first(0));

    // The drop gesture: the dropped image finds itself first.
    let dropped = library.join("down160.png");
    let (panel, studio) = h.state_mut();
    assert!(panel.on_drop(studio, std::slice::from_ref(&dropped)));
    drive(&mut h, "image results", |(p, _)| {
        p.results().is_some_and(|(q, hits)| {
            q.ends_with("down160.png")
                && hits
                    .first()
                    .is_some_and(|(f, _)| f.ends_with("down160.png"))
        })
    });

    // Full view from a thumbnail; one click restores its settings.
    h.get_by_label("wide120x90.png").click();
    h.run_steps(2);
    h.get_by_label("Restore settings").click();
    h.step();
    let restored = h
        .state()
        .1
        .actions
        .iter()
        .any(|a| matches!(a, Action::RestoreFromFile(p) if p.ends_with("wide120x90.png")));
    assert!(restored, "{:?}", h.state().1.actions);

    // Delete asks first; "Keep" keeps the file, "Delete" removes it from disk and the grid.
    h.get_by_label("Delete…").click();
    h.run_steps(2);
    h.get_by_label("Keep").click();
    h.run_steps(2);
    assert!(library.join("wide120x90.png").is_file());
    h.get_by_label("Delete…").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains("cannot be undone").is_some());
    h.get_by_label("Delete").click();
    drive(&mut h, "deleted", |(p, _)| p.entries().len() == 3);
    assert!(!library.join("wide120x90.png").exists());
    let rest: Vec<PathBuf> = std::fs::read_dir(&library)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(rest.len(), 3, "{rest:?}");
}

/// The grid is virtualised: with far more images than fit, only the visible cells exist and
/// ask for thumbnails.
#[test]
fn only_visible_cells_request_thumbnails() {
    let tmp = tempfile::tempdir().unwrap();
    let library = tmp.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    let n = 600;
    for i in 0..n {
        let img = image::RgbImage::from_fn(24, 24, |x, y| {
            image::Rgb([(x * 9 + i) as u8, (y * 7 + i * 3) as u8, (i * 5) as u8])
        });
        img.save(library.join(format!("img_{i:04}.png"))).unwrap();
    }
    let panel = GalleryPanel::with_paths(
        Some(tmp.path().join("index.sqlite")),
        Some(common::fixtures().join("clip-tiny")),
        Some(tmp.path().join("thumbs")),
    );
    let worker = Worker::spawn(Arc::new(|| {})).unwrap();
    let settings = Settings {
        library_dir: Some(library.clone()),
        ..Settings::default()
    };
    let mut h = Harness::builder().with_size([500.0, 400.0]).build_ui_state(
        |ui, (panel, studio): &mut State| panel.ui(ui, studio),
        (panel, Studio::new(settings, worker)),
    );
    drive(&mut h, "library indexed", |(p, _)| {
        p.entries().len() == n as usize
    });
    h.run_steps(3);
    let asked = h.state().0.thumbnails_requested();
    // 500×400 px holds about 5 columns × 4 rows of 96 px cells (plus a partial row).
    assert!(
        asked > 0 && asked <= 40,
        "{asked} of {n} thumbnails requested"
    );
}

#[test]
fn a_typed_folder_is_added_and_indexed_and_a_wrong_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let library = tmp.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    let mine = tmp.path().join("my pictures");
    common::copy_dir(&common::fixtures().join("refs/clip/images"), &mine);
    let n_mine = std::fs::read_dir(&mine).unwrap().count();
    let panel = GalleryPanel::with_paths(
        Some(tmp.path().join("index.sqlite")),
        Some(common::fixtures().join("clip-tiny")),
        Some(tmp.path().join("thumbs")),
    );
    let worker = Worker::spawn(Arc::new(|| {})).unwrap();
    let settings = Settings {
        library_dir: Some(library),
        ..Settings::default()
    };
    let mut h = Harness::builder().with_size([700.0, 900.0]).build_ui_state(
        |ui, (panel, studio): &mut State| panel.ui(ui, studio),
        (panel, Studio::new(settings, worker)),
    );
    h.step();

    // A folder of the user's own images, typed: indexed beside the (empty) library.
    h.get_by_label("Folder to add").focus();
    h.get_by_label("Folder to add")
        .type_text(&mine.display().to_string());
    h.get_by_label("Add folder").click();
    // The library list can arrive before the "indexed" status (and the progress bar's
    // removal), which moves the row below: wait for both, or the next click lands on the
    // old position.
    drive(&mut h, "added folder indexed", |(p, _)| {
        p.entries().len() == n_mine && p.status().starts_with(&format!("{n_mine} images;"))
    });

    // A path that is not a folder is refused in the panel, and nothing changes.
    h.get_by_label("Folder to add").focus();
    h.get_by_label("Folder to add")
        .type_text(&tmp.path().join("no such folder").display().to_string());
    h.get_by_label("Add folder").click();
    // Step, not run: thumbnails and index events may still be arriving and each one asks
    // for a repaint, so the UI need not settle within kittest's few frames.
    let start = Instant::now();
    while h.query_by_label_contains("not a folder").is_none() {
        assert!(
            start.elapsed() < LIMIT,
            "the refusal was not shown in {LIMIT:?}"
        );
        h.step();
    }
    assert_eq!(h.state().0.entries().len(), n_mine);
}

/// 10k images cost what one screenful does: at the top, mid-way through a wheel scroll and at
/// the very end, each frame lays out only the rows in view (egui adds one beyond each edge) and
/// touches only their cells, whatever the library's size.
#[test]
fn a_10k_grid_lays_out_only_the_rows_in_view() {
    let n = 10_000;
    let entries = (0..n)
        .map(|i| easel::gallery::search::Entry {
            path: format!("/nowhere/img_{i:05}.png"),
            width: 64,
            height: 64,
            mtime_ns: i as i64,
            gen_model: None,
            prompt: None,
        })
        .collect();
    let worker = Worker::spawn(Arc::new(|| {})).unwrap();
    let (width, height) = (500.0, 400.0);
    let mut h = Harness::builder()
        .with_size([width, height])
        .build_ui_state(
            |ui, (panel, studio): &mut State| panel.ui(ui, studio),
            (
                GalleryPanel::showing(entries),
                Studio::new(Settings::default(), worker),
            ),
        );
    h.run_steps(2);
    let top = h.state().0.last_frame();
    assert_eq!(top.items, n);
    assert_eq!(top.rows, n.div_ceil(top.columns));
    // 96 px cells: a 400 px window shows at most 5 rows (fewer under the search header), and
    // egui lays out one more beyond each edge.
    let in_view = (height / 96.0_f32).ceil() as usize + 2;
    assert_eq!(top.first_row, 0);
    assert!(top.rows_shown > 0 && top.rows_shown <= in_view, "{top:?}");
    assert!(top.cells_waiting <= in_view * top.columns, "{top:?}");

    // The mouse wheel, over the grid: rows further down are laid out instead, never more.
    h.hover_at(egui::pos2(width / 2.0, height - 60.0));
    let mut most = 0;
    let mut seen_first_rows = std::collections::BTreeSet::new();
    for _ in 0..40 {
        wheel(&mut h, egui::MouseWheelUnit::Point, -2_000.0);
        h.step();
        let f = h.state().0.last_frame();
        most = most.max(f.rows_shown);
        assert!(f.cells_waiting <= in_view * f.columns, "{f:?}");
        seen_first_rows.insert(f.first_row);
    }
    let mid = h.state().0.last_frame();
    assert!(mid.first_row > 100, "the wheel scrolled: {mid:?}");
    assert!(seen_first_rows.len() > 10, "it moved frame by frame");
    assert!(most <= in_view, "{most} rows laid out in one frame");

    // The end of the library: the last row is laid out, and still only a screenful.
    for _ in 0..200 {
        wheel(&mut h, egui::MouseWheelUnit::Page, -1_000.0);
        h.step();
        if h.state().0.last_frame().first_row + h.state().0.last_frame().rows_shown == top.rows {
            break;
        }
    }
    let end = h.state().0.last_frame();
    assert_eq!(end.first_row + end.rows_shown, end.rows, "{end:?}");
    assert!(end.rows_shown <= in_view, "{end:?}");
    // Every cell is a placeholder here (no decoder): the cells touched are the cells laid out.
    assert!(end.cells_waiting <= in_view * end.columns, "{end:?}");
}

/// One mouse-wheel step down by `dy` (negative) in `unit`s, where the pointer is.
fn wheel(h: &mut Harness<'_, State>, unit: egui::MouseWheelUnit, dy: f32) {
    h.event(egui::Event::MouseWheel {
        unit,
        delta: egui::vec2(0.0, dy),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Unknown,
        modifiers: egui::Modifiers::NONE,
    });
}
