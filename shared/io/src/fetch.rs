//! Remote objects behind one small trait, so that model loading and image input never link an
//! object store's SDK: [`ObjectFetcher`] with a local directory and a "none" implementation here,
//! S3 in `coldpath-aws`.

use std::future::Future;
use std::path::{Component, Path, PathBuf};

/// Why a remote object could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no such object")]
    NotFound,
    #[error("access denied: {0}")]
    Denied(String),
    /// Throttling, timeouts, connection resets: the same fetch may work later.
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("{0}")]
    Other(String),
    #[error("writing the download: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "no object store is configured for s3:// sources (set COLDPATH_OBJECT_STORE to s3 or local:<dir>)"
    )]
    NotConfigured,
    /// The object is larger than the caller allows in memory. `size` is the object's declared
    /// size, or the bytes seen so far when a body ran past the limit mid-stream.
    #[error("object is too large: {size} bytes, the limit is {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
}

impl FetchError {
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Transient(_))
    }
}

/// Fetches objects by bucket and key. `coldpath-aws` implements it for S3; the local implementation
/// below maps `s3://bucket/key` onto a directory so that sample events and tests need no cloud.
pub trait ObjectFetcher: Send + Sync {
    /// Writes the whole object to `dest` (a new file) and returns its size in bytes.
    fn fetch_to(
        &self,
        bucket: &str,
        key: &str,
        dest: &Path,
    ) -> impl Future<Output = Result<u64, FetchError>> + Send;

    /// Reads the whole object into memory, refusing objects larger than `max_bytes` before
    /// reading them where the size is known up front, and stopping as soon as a body runs past
    /// the limit otherwise, so that a large or lying object cannot exhaust memory.
    fn fetch_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

/// A fetcher for deployments whose models are all local; any `s3://` source is a clear error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObjectStore;

impl ObjectFetcher for NoObjectStore {
    async fn fetch_to(&self, _: &str, _: &str, _: &Path) -> Result<u64, FetchError> {
        Err(FetchError::NotConfigured)
    }

    async fn fetch_bytes(&self, _: &str, _: &str, _: u64) -> Result<Vec<u8>, FetchError> {
        Err(FetchError::NotConfigured)
    }
}

/// Serves `s3://bucket/key` from `<root>/<bucket>/<key>`: the embedded default for local runs.
#[derive(Debug, Clone)]
pub struct LocalObjectDir {
    root: PathBuf,
}

impl LocalObjectDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalObjectDir { root: root.into() }
    }

    /// The file behind an object, refusing keys that would climb out of the root.
    pub fn path_of(&self, bucket: &str, key: &str) -> Result<PathBuf, FetchError> {
        let rel = Path::new(bucket).join(key);
        let inside = !bucket.is_empty()
            && !key.is_empty()
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(FetchError::Other(format!(
                "bucket {bucket:?} and key {key:?} do not name a file under {}",
                self.root.display()
            )));
        }
        Ok(self.root.join(rel))
    }
}

impl ObjectFetcher for LocalObjectDir {
    async fn fetch_to(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, FetchError> {
        let src = self.path_of(bucket, key)?;
        match tokio::fs::copy(&src, dest).await {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FetchError::NotFound),
            Err(e) => Err(FetchError::Io(e)),
        }
    }

    async fn fetch_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, FetchError> {
        use tokio::io::AsyncReadExt;
        let src = self.path_of(bucket, key)?;
        let not_found = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                FetchError::NotFound
            } else {
                FetchError::Io(e)
            }
        };
        let file = tokio::fs::File::open(&src).await.map_err(not_found)?;
        let meta = file.metadata().await?;
        if !meta.is_file() {
            // A "key" that names a directory is no object, as it would be on S3.
            return Err(FetchError::NotFound);
        }
        if meta.len() > max_bytes {
            return Err(FetchError::TooLarge {
                size: meta.len(),
                limit: max_bytes,
            });
        }
        // The file may grow between the size check and the read; read one byte past the limit
        // at most so that growth is caught instead of trusted.
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .await?;
        let size = bytes.len() as u64;
        if size > max_bytes {
            return Err(FetchError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_dir_serves_objects_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/p")).unwrap();
        std::fs::write(dir.path().join("b/p/x.bin"), b"hello").unwrap();
        let store = LocalObjectDir::new(dir.path());
        let dest = dir.path().join("out");
        assert_eq!(store.fetch_to("b", "p/x.bin", &dest).await.unwrap(), 5);
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert!(matches!(
            store.fetch_to("b", "p/missing", &dest).await,
            Err(FetchError::NotFound)
        ));
        assert!(store.path_of("b", "../../etc/passwd").is_err());
        assert!(store.path_of("", "k").is_err());
    }

    #[tokio::test]
    async fn local_dir_fetch_bytes_reads_within_the_limit_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/p")).unwrap();
        std::fs::write(dir.path().join("b/p/x.bin"), b"hello").unwrap();
        let store = LocalObjectDir::new(dir.path());
        assert_eq!(
            store.fetch_bytes("b", "p/x.bin", 5).await.unwrap(),
            b"hello"
        );
        let err = store.fetch_bytes("b", "p/x.bin", 4).await.unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { size: 5, limit: 4 }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "object is too large: 5 bytes, the limit is 4 bytes"
        );
        assert!(matches!(
            store.fetch_bytes("b", "p/missing", 10).await,
            Err(FetchError::NotFound)
        ));
        // A directory is not an object.
        assert!(matches!(
            store.fetch_bytes("b", "p", 10).await,
            Err(FetchError::NotFound)
        ));
        assert!(matches!(
            store.fetch_bytes("b", "../../etc/passwd", 10).await,
            Err(FetchError::Other(_))
        ));
    }

    #[tokio::test]
    async fn no_store_says_how_to_configure_one() {
        let err = NoObjectStore
            .fetch_to("b", "k", Path::new("/nonexistent"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("COLDPATH_OBJECT_STORE"));
        assert!(!err.is_transient());
        let err = NoObjectStore.fetch_bytes("b", "k", 10).await.unwrap_err();
        assert!(matches!(err, FetchError::NotConfigured), "{err}");
    }
}
