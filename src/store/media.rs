//! Where inbound media lives once downloaded (provider media links expire within minutes or
//! days). Embedded adapter: one file per media id under `HANDOFF_DATA_DIR/media`.

use std::path::PathBuf;

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
}
