//! Every fuzz target's corpus (`fuzz/corpus/<target>/`: the seeds made from the fixtures by
//! `fuzz/make_seeds.py`, what fuzzing added, and every input that once crashed) replayed
//! through the same harness the fuzzer runs (`easel::fuzzing`): none may panic.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_runs_through_its_target_without_a_panic() {
    for (target, run) in easel::fuzzing::TARGETS {
        let files = corpus(target);
        assert!(
            files.iter().any(|f| f
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")),
            "{target}: no seeds (run fuzz/make_seeds.py)"
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panics", file.display());
        }
    }
    easel::fuzzing::clean_up();
}
