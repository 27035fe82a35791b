use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::spec::s3_key;
use coldpath_io::ObjectFetcher;

use crate::digest::note_digest;
use crate::{ModelError, ModelSource, ModelSpec, sha256_file};

/// Turns model specs into verified local files.
#[derive(Debug, Clone)]
pub struct ModelStore<F> {
    cache_dir: PathBuf,
    fetcher: F,
}

/// A model whose files are all present locally and verified where a digest was given.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub spec: ModelSpec,
    /// The directory holding every file of the model under its spec name.
    pub dir: PathBuf,
    /// Bytes downloaded by this resolve; 0 for a local bundle or a warm cache.
    pub fetched_bytes: u64,
    pub elapsed: Duration,
}

impl ResolvedModel {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

/// Where remote (`s3://`) models are cached when `COLDPATH_CACHE_DIR` is unset: under `/tmp`,
/// the only place Lambda lets a function write.
pub const DEFAULT_CACHE_DIR: &str = "/tmp/coldpath";

/// `COLDPATH_CACHE_DIR`, or [`DEFAULT_CACHE_DIR`]: every engine's model cache, read one way.
pub fn cache_dir_from_env(env: &impl coldpath_core::config::EnvSource) -> PathBuf {
    coldpath_core::config::get(env, "COLDPATH_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR))
}

impl<F: ObjectFetcher> ModelStore<F> {
    /// `cache_dir` receives remote models (in Lambda only `/tmp` is writable).
    pub fn new(cache_dir: impl Into<PathBuf>, fetcher: F) -> Self {
        ModelStore {
            cache_dir: cache_dir.into(),
            fetcher,
        }
    }

    pub async fn resolve(&self, spec: &ModelSpec) -> Result<ResolvedModel, ModelError> {
        let started = Instant::now();
        let (dir, fetched_bytes) = match &spec.source {
            ModelSource::Local(dir) => {
                verify_local(spec, dir)?;
                (dir.clone(), 0)
            }
            ModelSource::S3 { bucket, prefix } => self.fetch_remote(spec, bucket, prefix).await?,
        };
        let resolved = ResolvedModel {
            spec: spec.clone(),
            dir,
            fetched_bytes,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            model = %spec.name,
            kind = %spec.kind,
            source = %spec.source,
            dir = %resolved.dir.display(),
            fetched_bytes,
            elapsed_ms = resolved.elapsed.as_secs_f64() * 1e3,
            "model resolved"
        );
        Ok(resolved)
    }

    /// Downloads each missing file into the cache, verifies it, then renames it into place.
    ///
    /// The cache directory is named after the digests, and a file only ever appears there through
    /// an atomic rename after its digest matched; so a file found there on a later cold start is
    /// the verified one and is reused without another download.
    async fn fetch_remote(
        &self,
        spec: &ModelSpec,
        bucket: &str,
        prefix: &str,
    ) -> Result<(PathBuf, u64), ModelError> {
        let mut digests = Vec::with_capacity(spec.files.len());
        for f in &spec.files {
            let digest = f.sha256.ok_or_else(|| ModelError::UnpinnedRemote {
                model: spec.name.clone(),
                file: f.name.clone(),
                source_uri: spec.source.uri_of(&f.name),
            })?;
            digests.push(digest);
        }
        let dir = self.cache_dir.join(cache_dir_name(spec));
        let mut fetched = 0;
        for (f, expected) in spec.files.iter().zip(digests) {
            let target = dir.join(&f.name);
            if target.is_file() {
                tracing::debug!(model = %spec.name, file = %f.name, "model cache hit");
                // A file appears here only by a rename after its digest matched.
                note_digest(&target, expected);
                continue;
            }
            let io = |path: &Path| {
                let path = path.to_path_buf();
                let model = spec.name.clone();
                move |source| ModelError::Io {
                    model,
                    path,
                    source,
                }
            };
            let parent = target.parent().unwrap_or(&dir);
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io(parent))?;
            let tmp = parent.join(format!(
                ".{}.partial-{}",
                target.file_name().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            let uri = spec.source.uri_of(&f.name);
            let result = self
                .fetcher
                .fetch_to(bucket, &s3_key(prefix, &f.name), &tmp)
                .await;
            let bytes = match result {
                Ok(n) => n,
                Err(source) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(ModelError::Fetch {
                        model: spec.name.clone(),
                        uri,
                        source,
                    });
                }
            };
            let found = sha256_file(&tmp).map_err(io(&tmp))?;
            if found != expected {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(ModelError::Checksum {
                    model: spec.name.clone(),
                    file: f.name.clone(),
                    expected,
                    found,
                });
            }
            tokio::fs::rename(&tmp, &target)
                .await
                .map_err(io(&target))?;
            note_digest(&target, expected);
            tracing::info!(model = %spec.name, file = %f.name, bytes, %uri, "model file fetched");
            fetched += bytes;
        }
        Ok((dir, fetched))
    }
}

/// Checks a bundled model: every file present, and digests equal where the spec gives them.
fn verify_local(spec: &ModelSpec, dir: &Path) -> Result<(), ModelError> {
    for f in &spec.files {
        let path = dir.join(&f.name);
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                model: spec.name.clone(),
                file: f.name.clone(),
                path,
            });
        }
        if let Some(expected) = f.sha256 {
            let found = sha256_file(&path).map_err(|source| ModelError::Io {
                model: spec.name.clone(),
                path: path.clone(),
                source,
            })?;
            if found != expected {
                return Err(ModelError::Checksum {
                    model: spec.name.clone(),
                    file: f.name.clone(),
                    expected,
                    found,
                });
            }
            note_digest(&path, found);
        }
    }
    Ok(())
}

/// `<name>-<16 hex digits over the file names and digests>`: a new model version gets a new
/// directory, so an old cached file can never stand in for a new one.
fn cache_dir_name(spec: &ModelSpec) -> String {
    let mut h = Sha256::new();
    for f in &spec.files {
        h.update(f.name.as_bytes());
        h.update(b"=");
        if let Some(d) = f.sha256 {
            h.update(d.as_bytes());
        }
        h.update(b"\n");
    }
    let id = hex::encode(&h.finalize()[..8]);
    let safe: String = spec
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelFile, ModelKind, Sha256Digest};
    use coldpath_io::{FetchError, LocalObjectDir};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn spec(source: ModelSource, files: &[(&str, Option<Sha256Digest>)]) -> ModelSpec {
        ModelSpec {
            name: "tiny model".into(),
            kind: ModelKind::TextEmbedding,
            source,
            files: files
                .iter()
                .map(|(n, d)| ModelFile {
                    name: n.to_string(),
                    sha256: *d,
                })
                .collect(),
        }
    }

    /// Counts fetches so tests can tell a cache hit from a download.
    struct Counting {
        inner: LocalObjectDir,
        calls: AtomicUsize,
    }

    impl ObjectFetcher for Counting {
        async fn fetch_to(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, FetchError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.fetch_to(bucket, key, dest).await
        }

        async fn fetch_bytes(
            &self,
            bucket: &str,
            key: &str,
            max: u64,
        ) -> Result<Vec<u8>, FetchError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.fetch_bytes(bucket, key, max).await
        }
    }

    #[tokio::test]
    async fn local_bundle_is_checked_for_presence_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"weights").unwrap();
        let store = ModelStore::new(dir.path().join("cache"), coldpath_io::NoObjectStore);
        let good = Sha256Digest::of_bytes(b"weights");
        let ok = spec(
            ModelSource::Local(dir.path().into()),
            &[("model.onnx", Some(good))],
        );
        let resolved = store.resolve(&ok).await.unwrap();
        assert_eq!(resolved.path("model.onnx"), dir.path().join("model.onnx"));
        assert_eq!(resolved.fetched_bytes, 0);

        let wrong = Sha256Digest::of_bytes(b"other");
        let bad = spec(
            ModelSource::Local(dir.path().into()),
            &[("model.onnx", Some(wrong))],
        );
        let err = store.resolve(&bad).await.unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");

        let missing = spec(
            ModelSource::Local(dir.path().into()),
            &[("tokenizer.json", None)],
        );
        let err = store.resolve(&missing).await.unwrap_err();
        assert!(
            err.to_string().contains("tokenizer.json not found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn remote_model_is_fetched_once_verified_and_reused() {
        let objects = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(objects.path().join("bucket/models/m1")).unwrap();
        std::fs::write(
            objects.path().join("bucket/models/m1/model.onnx"),
            b"weights",
        )
        .unwrap();
        let cache = tempfile::tempdir().unwrap();
        let fetcher = Counting {
            inner: LocalObjectDir::new(objects.path()),
            calls: AtomicUsize::new(0),
        };
        let store = ModelStore::new(cache.path(), fetcher);
        let source: ModelSource = "s3://bucket/models/m1".parse().unwrap();
        let s = spec(
            source,
            &[("model.onnx", Some(Sha256Digest::of_bytes(b"weights")))],
        );

        let first = store.resolve(&s).await.unwrap();
        assert_eq!(first.fetched_bytes, 7);
        assert_eq!(std::fs::read(first.path("model.onnx")).unwrap(), b"weights");
        assert!(first.dir.starts_with(cache.path()));
        // A second cold start on the same sandbox finds the verified file and downloads nothing.
        let second = store.resolve(&s).await.unwrap();
        assert_eq!(second.fetched_bytes, 0);
        assert_eq!(second.dir, first.dir);
        assert_eq!(store.fetcher.calls.load(Ordering::SeqCst), 1);
        // No partial files are left behind.
        let names: Vec<_> = std::fs::read_dir(&first.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.onnx")]);
    }

    #[tokio::test]
    async fn remote_checksum_mismatch_is_an_error_and_leaves_nothing() {
        let objects = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(objects.path().join("b")).unwrap();
        std::fs::write(objects.path().join("b/model.onnx"), b"tampered").unwrap();
        let cache = tempfile::tempdir().unwrap();
        let store = ModelStore::new(cache.path(), LocalObjectDir::new(objects.path()));
        let s = spec(
            "s3://b".parse().unwrap(),
            &[("model.onnx", Some(Sha256Digest::of_bytes(b"weights")))],
        );
        let err = store.resolve(&s).await.unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
        let dir = cache.path().join(cache_dir_name(&s));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no file may stay after a mismatch"
        );
        // Retrying does not load the bad file either.
        assert!(store.resolve(&s).await.is_err());
    }

    #[tokio::test]
    async fn remote_needs_digests_and_reports_missing_objects() {
        let objects = tempfile::tempdir().unwrap();
        let store = ModelStore::new(
            objects.path().join("cache"),
            LocalObjectDir::new(objects.path()),
        );
        let unpinned = spec("s3://b/p".parse().unwrap(), &[("model.onnx", None)]);
        let err = store.resolve(&unpinned).await.unwrap_err();
        assert!(matches!(err, ModelError::UnpinnedRemote { .. }), "{err}");

        let absent = spec(
            "s3://b/p".parse().unwrap(),
            &[("model.onnx", Some(Sha256Digest::of_bytes(b"x")))],
        );
        let err = store.resolve(&absent).await.unwrap_err();
        assert!(err.to_string().contains("s3://b/p/model.onnx"), "{err}");
        assert!(err.to_string().contains("no such object"), "{err}");
    }

    #[test]
    fn cache_dir_changes_with_digests() {
        let a = spec(
            "s3://b".parse().unwrap(),
            &[("m", Some(Sha256Digest::of_bytes(b"1")))],
        );
        let b = spec(
            "s3://b".parse().unwrap(),
            &[("m", Some(Sha256Digest::of_bytes(b"2")))],
        );
        assert_ne!(cache_dir_name(&a), cache_dir_name(&b));
        assert!(cache_dir_name(&a).starts_with("tiny_model-"));
    }
}
