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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

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
        // WAL: a reader (the studio's search) never blocks the indexer, and a commit survives
        // the process being killed. NORMAL sync loses at most the last commit on power loss.
        index
            .conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| e.to_string())?;
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
                index
                    .conn
                    .execute_batch(SCHEMA)
                    .and_then(|()| {
                        index.conn.execute(
                            "INSERT INTO meta(key, value) VALUES('schema_version', ?1)",
                            [SCHEMA_VERSION],
                        )
                    })
                    .map_err(|e| e.to_string())?;
            }
        }
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

    /// Remembers a folder the user added (the studio lists and re-scans these).
    pub fn add_folder(&self, folder: &str) -> Result<(), GalleryError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO folders(path, added_unix) VALUES(?1, strftime('%s','now'))",
                [folder],
            )
            .map(|_| ())
            .map_err(self.err())
    }

    pub fn folders(&self) -> Result<Vec<String>, GalleryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path FROM folders ORDER BY path")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Every file row's change-detection state, by path.
    pub fn file_states(&self) -> Result<HashMap<String, FileState>, GalleryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT path, size, mtime_ns, hash FROM files")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    FileState {
                        size: r.get(1)?,
                        mtime_ns: r.get(2)?,
                        hash: r.get(3)?,
                    },
                ))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<HashMap<_, _>>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Content hashes that already have an embedding for `model_id`.
    pub fn embedded_hashes(&self, model_id: &str) -> Result<HashSet<String>, GalleryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT hash FROM embeddings WHERE model_id = ?1")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([model_id], |r| r.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<HashSet<String>>>())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Writes one batch in one transaction: new embeddings, file rows (inserted or replaced)
    /// and removed paths. Either all of it is in the index afterwards or none of it.
    pub fn commit_batch(
        &mut self,
        model_id: &str,
        embeddings: &[(String, Vec<f32>)],
        files: &[FileRow],
        removed: &[String],
    ) -> Result<(), GalleryError> {
        let path = self.path.clone();
        let err = |e| GalleryError::db(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO embeddings(hash, model_id, vector) VALUES(?1, ?2, ?3)",
                )
                .map_err(err)?;
            for (hash, v) in embeddings {
                put.execute(params![hash, model_id, vector_bytes(v)])
                    .map_err(err)?;
            }
            let mut file = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO files(path, size, mtime_ns, hash, width, height, gen_model, prompt)
                     VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(err)?;
            for f in files {
                file.execute(params![
                    f.path,
                    f.size,
                    f.mtime_ns,
                    f.hash,
                    f.width,
                    f.height,
                    f.gen_model,
                    f.prompt
                ])
                .map_err(err)?;
            }
            let mut del = tx
                .prepare_cached("DELETE FROM files WHERE path = ?1")
                .map_err(err)?;
            for p in removed {
                del.execute([p]).map_err(err)?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES('clip_model', ?1)",
                [model_id],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Drops embeddings of other CLIP models and of content no file has any more. Run after a
    /// complete pass, so a rename found later in the same pass could still reuse its vector.
    pub fn collect_garbage(&self, model_id: &str) -> Result<usize, GalleryError> {
        self.conn
            .execute(
                "DELETE FROM embeddings WHERE model_id != ?1
                 OR NOT EXISTS (SELECT 1 FROM files WHERE files.hash = embeddings.hash)",
                [model_id],
            )
            .map_err(self.err())
    }

    /// The stored embedding of the image at `path` for `model_id` ("find similar").
    pub fn embedding_for_path(
        &self,
        path: &str,
        model_id: &str,
    ) -> Result<Option<Vec<f32>>, GalleryError> {
        self.conn
            .query_row(
                "SELECT e.vector FROM files f JOIN embeddings e ON e.hash = f.hash
                 WHERE f.path = ?1 AND e.model_id = ?2",
                [path, model_id],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map(|v| v.map(|b| vector_from_bytes(&b)))
            .map_err(self.err())
    }

    /// Every file with an embedding for `model_id`, in path order, with its vector
    /// (`visit(row, vector)`), and how many files have none.
    pub fn for_each_embedded(
        &self,
        model_id: &str,
        mut visit: impl FnMut(FileRow, &[f32]),
    ) -> Result<usize, GalleryError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT f.path, f.size, f.mtime_ns, f.hash, f.width, f.height, f.gen_model, f.prompt, e.vector
                 FROM files f JOIN embeddings e ON e.hash = f.hash AND e.model_id = ?1
                 ORDER BY f.path",
            )
            .map_err(self.err())?;
        let mut rows = stmt.query([model_id]).map_err(self.err())?;
        let mut vector = Vec::new();
        while let Some(r) = rows.next().map_err(self.err())? {
            let row = (|| {
                Ok::<_, rusqlite::Error>(FileRow {
                    path: r.get(0)?,
                    size: r.get(1)?,
                    mtime_ns: r.get(2)?,
                    hash: r.get(3)?,
                    width: r.get(4)?,
                    height: r.get(5)?,
                    gen_model: r.get(6)?,
                    prompt: r.get(7)?,
                })
            })()
            .map_err(self.err())?;
            let bytes = r
                .get_ref(8)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(self.err())?;
            vector.clear();
            vector.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            visit(row, &vector);
        }
        let c = self.consistency(model_id, None)?;
        Ok(c.files_without_embedding)
    }

    /// Counts for checking the index (tests, `easel index` summary); `dim` checks vector sizes.
    pub fn consistency(
        &self,
        model_id: &str,
        dim: Option<usize>,
    ) -> Result<Consistency, GalleryError> {
        let count = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<usize, GalleryError> {
            self.conn
                .query_row(sql, p, |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
                .map_err(self.err())
        };
        let bytes = dim.map_or(-1, |d| (d * 4) as i64);
        Ok(Consistency {
            files: count("SELECT count(*) FROM files", &[])?,
            files_without_embedding: count(
                "SELECT count(*) FROM files f WHERE NOT EXISTS
                 (SELECT 1 FROM embeddings e WHERE e.hash = f.hash AND e.model_id = ?1)",
                &[&model_id],
            )?,
            orphan_embeddings: count(
                "SELECT count(*) FROM embeddings e WHERE NOT EXISTS
                 (SELECT 1 FROM files f WHERE f.hash = e.hash)",
                &[],
            )?,
            malformed_vectors: if bytes < 0 {
                0
            } else {
                count(
                    "SELECT count(*) FROM embeddings WHERE model_id = ?1 AND length(vector) != ?2",
                    &[&model_id, &bytes],
                )?
            },
        })
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

fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
