//! Where inbound media lives once downloaded (provider media links expire within minutes or
//! days). Embedded adapter: one file per media id under `HANDOFF_DATA_DIR/media`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use super::StoreError;

#[async_trait]
pub trait MediaStore: Send + Sync + 'static {
    /// Stores the bytes of a media item; returns where it is kept.
    async fn put(
        &self,
        media_id: &str,
        mime_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<String, StoreError>;
    async fn get(&self, media_id: &str) -> Result<Option<Bytes>, StoreError>;
    /// Deletes what was stored before `cutoff`; returns how many items.
    async fn purge_before(&self, cutoff: SystemTime) -> Result<usize, StoreError>;
}

pub struct FileMediaStore {
    dir: PathBuf,
}

impl FileMediaStore {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Media ids come from outside: keep only characters that cannot escape the directory.
    fn path(&self, media_id: &str) -> PathBuf {
        let safe: String = media_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        self.dir
            .join(if safe.is_empty() { "_".into() } else { safe })
    }
}

#[async_trait]
impl MediaStore for FileMediaStore {
    async fn put(
        &self,
        media_id: &str,
        _mime_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<String, StoreError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| StoreError::unavailable("media", e))?;
        let path = self.path(media_id);
        tokio::fs::write(&path, &bytes)
            .await
            .map_err(|e| StoreError::unavailable("media", e))?;
        Ok(path.display().to_string())
    }

    async fn get(&self, media_id: &str) -> Result<Option<Bytes>, StoreError> {
        match tokio::fs::read(self.path(media_id)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::unavailable("media", e)),
        }
    }

    async fn purge_before(&self, cutoff: SystemTime) -> Result<usize, StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || purge_files(&dir, cutoff))
            .await
            .map_err(|e| StoreError::unavailable("media", e))?
            .map_err(|e| StoreError::unavailable("media", e))
    }
}

/// Removes the files under `dir` last written before `cutoff`. A file that disappears meanwhile
/// (another replica sharing the volume purged it) is not an error.
fn purge_files(dir: &Path, cutoff: SystemTime) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut purged = 0;
    for entry in entries {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_file() || meta.modified()? >= cutoff {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => purged += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn media_written_before_the_cutoff_is_purged_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMediaStore::new(dir.path().join("media"));
        // Nothing stored yet: nothing to purge, and no error for the missing directory.
        assert_eq!(store.purge_before(SystemTime::now()).await.unwrap(), 0);
        let old = store
            .put("old-media", Some("image/jpeg"), Bytes::from_static(b"old"))
            .await
            .unwrap();
        store
            .put("new-media", Some("image/jpeg"), Bytes::from_static(b"new"))
            .await
            .unwrap();
        let forty_days = Duration::from_secs(40 * 24 * 60 * 60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - forty_days)
            .unwrap();
        let thirty_days_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 60 * 60);
        assert_eq!(store.purge_before(thirty_days_ago).await.unwrap(), 1);
        assert_eq!(store.get("old-media").await.unwrap(), None);
        assert_eq!(
            store.get("new-media").await.unwrap(),
            Some(Bytes::from_static(b"new"))
        );
        assert_eq!(store.purge_before(thirty_days_ago).await.unwrap(), 0);
    }
}
