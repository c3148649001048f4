//! The gallery index: one SQLite file (DESIGN.md, "Gallery index").
//!
//! Two tables do the work. `files` has one row per image path with what tells a change
//! (size, mtime) and what the image is (content hash, size in pixels, the generating model and
//! prompt from its PNG metadata). `embeddings` is keyed by (content hash, CLIP model id), so a
//! renamed or duplicated file finds its embedding by hash and is never embedded twice, and a
//! different CLIP model simply finds no rows and re-embeds. Searching joins the two.
//!
//! Crash safety comes from SQLite: every batch is one transaction in WAL mode, so a process
//! killed mid-index leaves the last committed batch and nothing half-written; the next run
//! compares files against what is there and carries on. A file that is not a database, or fails
//! `PRAGMA quick_check`, is moved aside and a fresh index is built; the image folders are only
//! ever read.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

mod rows;

use super::GalleryError;

/// Bumped when the tables change; an index with another version is rebuilt.
const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders(path TEXT PRIMARY KEY, added_unix INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    gen_model TEXT,
    prompt TEXT
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files(hash);
CREATE TABLE IF NOT EXISTS embeddings(
    hash TEXT NOT NULL,
    model_id TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY(hash, model_id)
);
";

/// What the index knows about one file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub size: i64,
    pub mtime_ns: i64,
    pub hash: String,
}

/// One image's row, written by the indexer.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub path: String,
    pub size: i64,
    pub mtime_ns: i64,
    pub hash: String,
    pub width: u32,
    pub height: u32,
    /// The model that generated it, from its PNG metadata (Easel's or A1111's).
    pub gen_model: Option<String>,
    pub prompt: Option<String>,
}

/// Counts that say whether the index is consistent for one CLIP model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consistency {
    pub files: usize,
    /// Files whose content hash has no embedding for the model.
    pub files_without_embedding: usize,
    /// Embeddings no file refers to (harmless, collected at the end of each full run).
    pub orphan_embeddings: usize,
    /// Embeddings of the model whose byte length is not `4 * dim`.
    pub malformed_vectors: usize,
}

pub struct GalleryIndex {
    conn: Connection,
    path: PathBuf,
}

/// How [`GalleryIndex::open`] found the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Existing,
    Created,
    /// The file was damaged or not an index: it was moved to this path and a new one made.
    Rebuilt {
        moved_to: PathBuf,
        reason: String,
    },
}

impl GalleryIndex {
    /// Opens (or creates) the index at `path`, checking it with `PRAGMA quick_check`; a damaged
    /// file is moved aside and replaced by an empty index (see [`Opened::Rebuilt`]).
    pub fn open(path: &Path) -> Result<(Self, Opened), GalleryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| GalleryError::io(dir, e))?;
        }
        let existed = path.is_file();
        match Self::try_open(path) {
            Ok(index) => Ok((
                index,
                if existed {
                    Opened::Existing
                } else {
                    Opened::Created
                },
            )),
            Err(reason) => {
                let moved_to = move_aside(path)?;
                let index = Self::try_open(path).map_err(|msg| GalleryError::BadDb {
                    path: path.to_path_buf(),
                    msg,
                })?;
                Ok((index, Opened::Rebuilt { moved_to, reason }))
            }
        }
    }

    /// Opens without creating or repairing (for searching: a search never rewrites the
    /// user's index behind their back). A damaged file is an error that says to re-index.
    pub fn open_existing(path: &Path) -> Result<Self, GalleryError> {
        if !path.is_file() {
            return Err(GalleryError::BadDb {
                path: path.to_path_buf(),
                msg: "no index here yet: run `easel index DIR` first".into(),
            });
        }
        let conn = Connection::open(path).map_err(|e| GalleryError::db(path, e))?;
        let index = Self {
            conn,
            path: path.to_path_buf(),
        };
        match index.schema_version() {
            Ok(Some(v)) if v == SCHEMA_VERSION => Ok(index),
            Ok(_) => Err(GalleryError::BadDb {
                path: path.to_path_buf(),
                msg: "not an Easel index of this version: run `easel index` to rebuild it".into(),
            }),
            Err(e) => Err(GalleryError::BadDb {
                path: path.to_path_buf(),
                msg: format!("{e}; run `easel index` to rebuild it"),
            }),
        }
    }

    fn try_open(path: &Path) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(|e| e.to_string())?;
        let index = Self {
            conn,
            path: path.to_path_buf(),
        };
        let check: String = index
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if check != "ok" {
            return Err(format!("quick_check: {check}"));
        }
        match index.schema_version().map_err(|e| e.to_string())? {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(format!(
                    "schema version {v}, this Easel writes {SCHEMA_VERSION}"
                ))
            }
            None => {
                let has_tables: i64 = index
                    .conn
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE type='table'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| e.to_string())?;
                if has_tables > 0 {
                    return Err("a SQLite database, but not an Easel index".into());
                }
                // An embedding row is ~2.2 KB: with SQLite's default 4 KB pages only one fits
                // per page and half the file is slack. 16 KB pages hold seven (~10% slack).
                // The page size can only be chosen before the first write.
                index
                    .conn
                    .execute_batch("PRAGMA page_size=16384;")
                    .and_then(|()| index.conn.execute_batch(SCHEMA))
                    .and_then(|()| {
                        index.conn.execute(
                            "INSERT INTO meta(key, value) VALUES('schema_version', ?1)",
                            [SCHEMA_VERSION],
                        )
                    })
                    .map_err(|e| e.to_string())?;
            }
        }
        // WAL: a reader (the studio's search) never blocks the indexer, and a commit survives
        // the process being killed. NORMAL sync loses at most the last commit on power loss.
        index
            .conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| e.to_string())?;
        Ok(index)
    }

    fn schema_version(&self) -> rusqlite::Result<Option<String>> {
        let has_meta: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
            [],
            |r| r.get(0),
        )?;
        if has_meta == 0 {
            return Ok(None);
        }
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key='schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> GalleryError + '_ {
        move |e| GalleryError::db(&self.path, e)
    }
}

/// Moves a damaged index (and its WAL files) to `<name>.corrupt-<unix seconds>`.
fn move_aside(path: &Path) -> Result<PathBuf, GalleryError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{secs}"));
    let moved_to = path.with_file_name(name);
    std::fs::rename(path, &moved_to).map_err(|e| GalleryError::io(path, e))?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            std::fs::remove_file(&side).map_err(|e| GalleryError::io(&side, e))?;
        }
    }
    Ok(moved_to)
}

/// Bytes SQLite has allocated in this process (page caches of every open index, statements).
pub fn sqlite_memory_used() -> i64 {
    // SAFETY: takes no arguments and only reads SQLite's own allocation counter, which is
    // thread-safe in the bundled (serialized) build.
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}
