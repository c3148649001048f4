//! The studio's settings file: `<config dir>/settings.json`, `{"format": N, "settings": …}`.
//!
//! Written to a temporary file that is flushed to disk and then renamed over the old one, so
//! the file under its name is always whole: a crash or `kill -9` mid-write leaves the previous
//! settings (eframe's own storage truncates its file first, which is why the settings left
//! it). A file that cannot be read as settings, or that a newer Easel wrote in a format this
//! one does not know, is never overwritten: it is renamed to a backup beside it, the studio
//! starts from defaults and says so.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Settings;

/// The file format this Easel writes; a larger number comes from a newer Easel.
pub const FORMAT: u32 = 1;

#[derive(Serialize)]
struct Written<'a> {
    format: u32,
    settings: &'a Settings,
}

#[derive(Deserialize)]
struct Read {
    format: u32,
    settings: serde_json::Value,
}

/// Where the settings file lives; `None` on a system with no home directory.
pub fn default_path() -> Option<PathBuf> {
    super::project_dirs().map(|d| d.config_dir().join("settings.json"))
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No settings file yet.
    Missing,
    Settings(Box<Settings>),
    /// The file was unusable and has been moved aside; the sentence says why and where to.
    SetAside(String),
}

/// Reads the settings at `path`. An unusable file (unreadable, not settings, a newer format)
/// is renamed to `<name>.<unix ms>.bak` and reported, never lost.
pub fn load(path: &Path) -> Loaded {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return set_aside(path, &format!("it could not be read ({e})")),
    };
    match parse(&bytes) {
        Ok(s) => Loaded::Settings(Box::new(s)),
        Err(why) => set_aside(path, &why),
    }
}

/// A settings file's contents; the error completes "… was not used: ".
pub fn parse(bytes: &[u8]) -> Result<Settings, String> {
    let read: Read =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not a settings file ({e})"))?;
    if read.format > FORMAT {
        return Err(format!(
            "a newer Easel wrote it (format {}, this one reads {FORMAT})",
            read.format
        ));
    }
    serde_json::from_value(read.settings).map_err(|e| format!("its settings do not read ({e})"))
}

fn set_aside(path: &Path, why: &str) -> Loaded {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let backup = path.with_file_name(format!("{name}.{millis}.bak"));
    let kept = match std::fs::rename(path, &backup) {
        Ok(()) => format!("it is kept as {}", backup.display()),
        // Not movable (a read-only folder): it is then also not overwritable, so it stays.
        Err(e) => format!("it stays where it is ({e})"),
    };
    Loaded::SetAside(format!(
        "Your settings file {} was not used: {why}. Easel started with default settings; {kept}.",
        path.display()
    ))
}

/// Writes `settings` to `path` whole or not at all (temporary file, flushed, renamed).
pub fn save(path: &Path, settings: &Settings) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!("{name}.part"));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        let json = serde_json::to_vec_pretty(&Written {
            format: FORMAT,
            settings,
        })
        .map_err(std::io::Error::other)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backups(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "bak"))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn settings_come_back_as_saved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/settings.json");
        assert!(matches!(load(&path), Loaded::Missing));
        let s = Settings {
            prompt: "a lighthouse".into(),
            steps: 33,
            ..Default::default()
        };
        save(&path, &s).expect("saved");
        match load(&path) {
            Loaded::Settings(read) => assert_eq!(*read, s),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_dir(path.parent().expect("dir"))
                .expect("dir")
                .count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn corrupt_or_newer_files_are_set_aside_with_a_sentence_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.json");
        let cases: [(&[u8], &str); 4] = [
            (
                b"{\"format\": 1, \"settings\": {\"steps\": 2",
                "not a settings file",
            ),
            (b"", "not a settings file"),
            (
                b"{\"format\": 99, \"settings\": {}}",
                "newer Easel wrote it (format 99",
            ),
            (
                b"{\"format\": 1, \"settings\": {\"steps\": \"many\"}}",
                "do not read",
            ),
        ];
        for (i, (bytes, why)) in cases.iter().enumerate() {
            std::fs::write(&path, bytes).expect("write");
            let Loaded::SetAside(notice) = load(&path) else {
                panic!("case {i} was used");
            };
            assert!(notice.contains(why), "{notice}");
            assert!(notice.contains("default settings"), "{notice}");
            assert!(!path.exists(), "moved aside");
            let kept = backups(dir.path());
            let last = kept.last().expect("a backup");
            assert!(notice.contains(&last.display().to_string()), "{notice}");
            assert_eq!(std::fs::read(last).expect("backup"), *bytes);
            // Distinct names: no backup overwrites an earlier one.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(backups(dir.path()).len(), cases.len());
        // Unknown fields from a newer Easel of the same format are read, not refused.
        std::fs::write(
            &path,
            br#"{"format": 1, "settings": {"steps": 12, "from_the_future": true}}"#,
        )
        .expect("write");
        assert!(matches!(load(&path), Loaded::Settings(s) if s.steps == 12));
    }

    /// What `kill -9` mid-write relies on: the file under its name is always a whole one. A
    /// reader polls it while a writer saves large settings many times; every read parses.
    #[test]
    fn a_reader_never_sees_a_partly_written_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("settings.json");
        let mut s = Settings::default();
        save(&path, &s).expect("first");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match load(&path) {
                        Loaded::Settings(_) => reads += 1,
                        other => panic!("read {other:?}"),
                    }
                }
                reads
            })
        };
        for i in 0..200 {
            s.prompt = format!("{i} {}", "a long prompt, ".repeat(2000));
            save(&path, &s).expect("save");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("reader");
        assert!(reads > 0);
    }
}
