//! Reading and writing rows: file states, embeddings, batches, garbage, checks.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, OptionalExtension};

use super::{Consistency, FileRow, FileState, GalleryIndex};
use crate::gallery::GalleryError;

impl GalleryIndex {
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
        self.count_without_embedding(model_id)
    }

    fn count_without_embedding(&self, model_id: &str) -> Result<usize, GalleryError> {
        self.conn
            .query_row(
                "SELECT count(*) FROM files f WHERE NOT EXISTS
                 (SELECT 1 FROM embeddings e WHERE e.hash = f.hash AND e.model_id = ?1)",
                [model_id],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(self.err())
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
            files_without_embedding: self.count_without_embedding(model_id)?,
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

fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn vector_from_bytes(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
