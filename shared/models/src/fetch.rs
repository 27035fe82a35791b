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
}

/// A fetcher for deployments whose models are all local; any `s3://` source is a clear error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObjectStore;

impl ObjectFetcher for NoObjectStore {
    async fn fetch_to(&self, _: &str, _: &str, _: &Path) -> Result<u64, FetchError> {
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
    async fn no_store_says_how_to_configure_one() {
        let err = NoObjectStore
            .fetch_to("b", "k", Path::new("/nonexistent"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("COLDPATH_OBJECT_STORE"));
        assert!(!err.is_transient());
    }
}
