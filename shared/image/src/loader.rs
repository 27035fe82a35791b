//! Turning an [`ImageRef`] into bytes and pixels, within limits.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use coldpath_io::{ObjectFetcher, run_blocking};
use tokio::io::AsyncReadExt;

use crate::{DecodedImage, ImageError, ImageLimits, ImageRef, decode};

/// Loads the images that requests refer to.
///
/// Build one at init and share it (it is `Sync` when the fetcher is): `s3` references go through
/// the fetcher (on AWS `coldpath_aws::ObjectStore::S3`; locally `LocalObjectDir`, which maps
/// `s3://bucket/key` to `events/data/bucket/key`), `base64` is decoded in memory, and `path` is
/// read from the local disk only when `allow_local_paths` is set (the `invoke <EVENT_FILE>` mode),
/// so a deployed function never reads its own file system on a caller's behalf.
#[derive(Debug, Clone)]
pub struct ImageLoader<F> {
    fetcher: F,
    limits: ImageLimits,
    allow_local_paths: bool,
    /// When set, `path` references must resolve (symlinks followed) to a regular file inside
    /// this directory: a server that accepts paths from the network must not let callers probe
    /// the rest of its file system.
    path_root: Option<PathBuf>,
}

impl<F: ObjectFetcher> ImageLoader<F> {
    pub fn new(fetcher: F, limits: ImageLimits, allow_local_paths: bool) -> Self {
        ImageLoader {
            fetcher,
            limits,
            allow_local_paths,
            path_root: None,
        }
    }

    /// Accepts `path` references, but only to regular files under `root` (relative paths are
    /// taken from `root`). `root` is resolved once here, so a later rename of a link above it
    /// cannot widen what is readable.
    pub fn confine_paths_to(mut self, root: &Path) -> Result<Self, ImageError> {
        let root = std::fs::canonicalize(root).map_err(|source| ImageError::Read {
            path: root.to_path_buf(),
            source,
        })?;
        self.allow_local_paths = true;
        self.path_root = Some(root);
        Ok(self)
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    pub fn fetcher(&self) -> &F {
        &self.fetcher
    }

    /// The encoded bytes behind `image`, never more than `limits.max_bytes` of them: S3 and
    /// local objects are refused by their size before they are read, base64 by its length
    /// before it is decoded.
    pub async fn load_bytes(&self, image: &ImageRef) -> Result<Vec<u8>, ImageError> {
        let max = self.limits.max_bytes;
        match image {
            ImageRef::S3 { bucket, key } => self
                .fetcher
                .fetch_bytes(bucket, key, max)
                .await
                .map_err(|source| match source {
                    coldpath_io::FetchError::TooLarge { size, limit } => {
                        ImageError::TooManyBytes { size, limit }
                    }
                    source => ImageError::Fetch {
                        uri: image.describe(),
                        source,
                    },
                }),
            ImageRef::Base64(data) => decode_base64(data, max),
            ImageRef::Path(path) if self.allow_local_paths => {
                read_file(path, self.path_root.as_deref(), max).await
            }
            ImageRef::Path(path) => Err(ImageError::PathNotAllowed(path.clone())),
        }
    }

    /// Loads and decodes `image` (see [`decode`] for the checks and conversions).
    ///
    /// Decoding is CPU work, so it runs off the async executor: in place with `block_in_place`
    /// on a multi-threaded runtime (the Lambda runtime's), on the blocking pool otherwise.
    pub async fn load(&self, image: &ImageRef) -> Result<DecodedImage, ImageError> {
        if let ImageRef::Base64(data) = image {
            // The reference stays the caller's: decode a copy (a server holding big photos
            // uses `load_owned`, which does not copy).
            return self.load_owned(ImageRef::Base64(data.clone())).await;
        }
        let limits = self.limits;
        let from_file = matches!(image, ImageRef::Path(_));
        let bytes = self.load_bytes(image).await?;
        run_blocking(move || decode_bytes(&bytes, &limits, from_file)).await?
    }

    /// [`ImageLoader::load`] for a reference the caller no longer needs: inline base64 is
    /// decoded from the request's own string and each form is freed as soon as the next
    /// exists (the text, then the encoded bytes, then the pixels), so a large photo is held
    /// once at a time, never copied.
    pub async fn load_owned(&self, image: ImageRef) -> Result<DecodedImage, ImageError> {
        let limits = self.limits;
        if let ImageRef::Base64(data) = image {
            // Base64 decoding of a large payload is CPU work too: do it on the same blocking
            // path as the decode it precedes.
            return run_blocking(move || {
                let bytes = decode_base64(&data, limits.max_bytes)?;
                drop(data);
                decode(&bytes, &limits)
            })
            .await?;
        }
        let from_file = matches!(image, ImageRef::Path(_));
        let bytes = self.load_bytes(&image).await?;
        drop(image);
        run_blocking(move || decode_bytes(&bytes, &limits, from_file)).await?
    }
}

/// Decodes fetched bytes; for a local file, an unrecognised format is reported without the
/// file's leading bytes (which, for a file that is not an image, are its contents).
fn decode_bytes(
    bytes: &[u8],
    limits: &ImageLimits,
    from_file: bool,
) -> Result<DecodedImage, ImageError> {
    match decode(bytes, limits) {
        Err(ImageError::UnsupportedFormat { .. }) if from_file => {
            Err(ImageError::UnsupportedFormat {
                found: "a file with no known image signature".to_string(),
            })
        }
        result => result,
    }
}

/// Standard base64, ASCII whitespace ignored (some clients wrap lines at 76 characters).
fn decode_base64(data: &str, max: u64) -> Result<Vec<u8>, ImageError> {
    // Every 4 characters carry 3 bytes: refuse oversized payloads before decoding them.
    let decoded_at_least = (data.len() as u64 / 4 * 3).saturating_sub(2);
    if decoded_at_least > max {
        return Err(ImageError::TooManyBytes {
            size: decoded_at_least,
            limit: max,
        });
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let result = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        engine.decode(compact)
    } else {
        engine.decode(data)
    };
    let bytes = result.map_err(|e| ImageError::Base64(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(ImageError::TooManyBytes {
            size: bytes.len() as u64,
            limit: max,
        });
    }
    Ok(bytes)
}

/// Reads a local image file. Under a `root`, the path must resolve inside it; in every case it
/// must be a regular file, opened without blocking, so a FIFO or a device cannot hold a thread.
async fn read_file(path: &Path, root: Option<&Path>, max: u64) -> Result<Vec<u8>, ImageError> {
    let err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let resolved = match root {
        None => path.to_path_buf(),
        Some(root) => {
            // Resolve symlinks and `..` first, then compare: a textual prefix check would let
            // `root/../etc/passwd` or a link out of the root through. Every refusal reads the
            // same whether or not the file exists, so the root cannot be used to probe.
            let outside = || ImageError::PathOutsideRoot(path.to_path_buf());
            let joined = root.join(path);
            match tokio::fs::canonicalize(&joined).await {
                Ok(p) if p.starts_with(root) => p,
                _ => return Err(outside()),
            }
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO for reading otherwise waits for a writer; a regular file ignores it.
        .custom_flags(libc::O_NONBLOCK)
        .open(&resolved)
        .map_err(err)?;
    let meta = file.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    let file = tokio::fs::File::from_std(file);
    let size = meta.len();
    if size > max {
        return Err(ImageError::TooManyBytes { size, limit: max });
    }
    // Read one byte past the limit at most, so a file that grew since the check is caught.
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(err)?;
    if bytes.len() as u64 > max {
        return Err(ImageError::TooManyBytes {
            size: bytes.len() as u64,
            limit: max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{png_bytes, quadrants};
    use coldpath_core::{Classify, ErrorType};
    use coldpath_io::{LocalObjectDir, NoObjectStore};
    use image::DynamicImage;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[tokio::test]
    async fn loads_base64_with_and_without_data_prefix() {
        let img = quadrants(6, 4);
        let png = png_bytes(&DynamicImage::ImageRgb8(img.clone()));
        let loader = ImageLoader::new(NoObjectStore, ImageLimits::default(), false);
        for json in [
            format!(r#"{{"base64":"{}"}}"#, b64(&png)),
            format!(r#"{{"base64":"data:image/png;base64,{}"}}"#, b64(&png)),
        ] {
            let r: ImageRef = serde_json::from_str(&json).unwrap();
            let out = loader.load(&r).await.unwrap();
            assert_eq!(out.image, img);
        }
        // Wrapped at 76 characters, as MIME encoders do.
        let wrapped: String = b64(&png)
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap().to_string() + "\n")
            .collect();
        assert_eq!(
            loader.load_bytes(&ImageRef::Base64(wrapped)).await.unwrap(),
            png
        );
    }

    #[tokio::test]
    async fn base64_garbage_and_oversize_are_invalid_input() {
        let loader = ImageLoader::new(NoObjectStore, ImageLimits::default(), false);
        let err = loader
            .load(&ImageRef::Base64("not base64 at all!!".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Base64(_)), "{err}");
        assert_eq!(err.error_type(), ErrorType::InvalidInput);
        // Valid base64 of something that is not an image.
        let err = loader
            .load(&ImageRef::Base64(b64(b"just some text")))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat { .. }), "{err}");

        let small = ImageLimits {
            max_bytes: 100,
            ..ImageLimits::default()
        };
        let loader = ImageLoader::new(NoObjectStore, small, false);
        let err = loader
            .load_bytes(&ImageRef::Base64(b64(&[0u8; 300])))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyBytes { limit: 100, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn paths_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.png");
        let img = quadrants(4, 4);
        std::fs::write(&file, png_bytes(&DynamicImage::ImageRgb8(img.clone()))).unwrap();
        let r = ImageRef::Path(file.clone());

        let deployed = ImageLoader::new(NoObjectStore, ImageLimits::default(), false);
        let err = deployed.load(&r).await.unwrap_err();
        assert!(
            matches!(err, ImageError::PathNotAllowed(ref p) if *p == file),
            "{err}"
        );
        assert_eq!(err.error_type(), ErrorType::InvalidInput);

        let local = ImageLoader::new(NoObjectStore, ImageLimits::default(), true);
        assert_eq!(local.load(&r).await.unwrap().image, img);
        let err = local
            .load(&ImageRef::Path(dir.path().join("missing.png")))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Read { .. }), "{err}");
        assert_eq!(err.error_type(), ErrorType::InvalidInput);

        let tiny = ImageLimits {
            max_bytes: 10,
            ..ImageLimits::default()
        };
        let err = ImageLoader::new(NoObjectStore, tiny, true)
            .load(&r)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyBytes { limit: 10, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn confined_paths_read_only_regular_files_inside_the_root_and_never_echo_bytes() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.txt");
        std::fs::write(&secret, b"password=hunter2").unwrap();
        let root = tempfile::tempdir().unwrap();
        let img = quadrants(4, 4);
        std::fs::create_dir(root.path().join("photos")).unwrap();
        std::fs::write(
            root.path().join("photos/x.png"),
            png_bytes(&DynamicImage::ImageRgb8(img.clone())),
        )
        .unwrap();
        std::fs::write(root.path().join("notes.txt"), b"password=hunter2").unwrap();
        std::os::unix::fs::symlink(&secret, root.path().join("link.png")).unwrap();
        let fifo = root.path().join("pipe.png");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);

        let loader = ImageLoader::new(NoObjectStore, ImageLimits::default(), false)
            .confine_paths_to(root.path())
            .unwrap();
        // Relative to the root, and absolute inside it.
        for p in [
            PathBuf::from("photos/x.png"),
            root.path().join("photos/x.png"),
        ] {
            assert_eq!(loader.load(&ImageRef::Path(p)).await.unwrap().image, img);
        }
        // Outside, by absolute path, by `..`, through a link, or missing: one refusal for all,
        // so the answer says nothing about what exists out there.
        for p in [
            secret.clone(),
            PathBuf::from("../").join(secret.strip_prefix("/").unwrap()),
            PathBuf::from("photos/../../x.png"),
            PathBuf::from("link.png"),
            PathBuf::from("missing.png"),
            outside.path().join("missing.png"),
        ] {
            let err = loader.load(&ImageRef::Path(p.clone())).await.unwrap_err();
            assert!(
                matches!(err, ImageError::PathOutsideRoot(_)),
                "{p:?}: {err}"
            );
            assert_eq!(err.error_type(), ErrorType::InvalidInput);
        }
        // A FIFO is refused at once instead of blocking on a writer that never comes.
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            loader.load(&ImageRef::Path("pipe.png".into())),
        )
        .await
        .expect("a FIFO must not block the loader")
        .unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(err.error_type(), ErrorType::InvalidInput);
        // A file that is not an image: the error never carries its bytes.
        let err = loader
            .load(&ImageRef::Path("notes.txt".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFormat { .. }), "{err}");
        let text = err.to_string();
        for leak in ["hunter2", "70 61 73 73"] {
            assert!(!text.contains(leak), "{text}");
        }
    }

    #[tokio::test]
    async fn load_owned_answers_as_load_does() {
        let img = quadrants(6, 4);
        let png = png_bytes(&DynamicImage::ImageRgb8(img.clone()));
        let loader = ImageLoader::new(NoObjectStore, ImageLimits::default(), false);
        let out = loader
            .load_owned(ImageRef::Base64(b64(&png)))
            .await
            .unwrap();
        assert_eq!(out.image, img);
        let err = loader
            .load_owned(ImageRef::Base64("not base64 at all!!".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Base64(_)), "{err}");
    }

    #[tokio::test]
    async fn s3_refs_go_through_the_fetcher() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("photos/2024")).unwrap();
        let img = quadrants(4, 2);
        let png = png_bytes(&DynamicImage::ImageRgb8(img.clone()));
        std::fs::write(dir.path().join("photos/2024/a.png"), &png).unwrap();
        let loader = ImageLoader::new(
            LocalObjectDir::new(dir.path()),
            ImageLimits::default(),
            false,
        );
        let out = loader
            .load(&ImageRef::s3("s3://photos/2024/a.png").unwrap())
            .await
            .unwrap();
        assert_eq!(out.image, img);
        assert_eq!(out.bytes, png.len());

        let err = loader
            .load(&ImageRef::s3("s3://photos/2024/missing.png").unwrap())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "image s3://photos/2024/missing.png: no such object"
        );
        assert_eq!(err.error_type(), ErrorType::InvalidInput);

        let small = ImageLimits {
            max_bytes: 16,
            ..ImageLimits::default()
        };
        let err = ImageLoader::new(LocalObjectDir::new(dir.path()), small, false)
            .load(&ImageRef::s3("s3://photos/2024/a.png").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyBytes { limit: 16, .. }),
            "{err}"
        );

        let err = ImageLoader::new(NoObjectStore, ImageLimits::default(), true)
            .load(&ImageRef::s3("s3://photos/2024/a.png").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), ErrorType::Config);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn load_works_on_a_multi_threaded_runtime() {
        let img = quadrants(6, 6);
        let png = png_bytes(&DynamicImage::ImageRgb8(img.clone()));
        let loader = ImageLoader::new(NoObjectStore, ImageLimits::default(), false);
        let out = loader.load(&ImageRef::Base64(b64(&png))).await.unwrap();
        assert_eq!(out.image, img);
    }
}
