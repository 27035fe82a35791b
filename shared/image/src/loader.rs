//! Turning an [`ImageRef`] into bytes and pixels, within limits.

use std::path::Path;

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
}

impl<F: ObjectFetcher> ImageLoader<F> {
    pub fn new(fetcher: F, limits: ImageLimits, allow_local_paths: bool) -> Self {
        ImageLoader {
            fetcher,
            limits,
            allow_local_paths,
        }
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
            ImageRef::Path(path) if self.allow_local_paths => read_file(path, max).await,
            ImageRef::Path(path) => Err(ImageError::PathNotAllowed(path.clone())),
        }
    }

    /// Loads and decodes `image` (see [`decode`] for the checks and conversions).
    ///
    /// Decoding is CPU work, so it runs off the async executor: in place with `block_in_place`
    /// on a multi-threaded runtime (the Lambda runtime's), on the blocking pool otherwise.
    pub async fn load(&self, image: &ImageRef) -> Result<DecodedImage, ImageError> {
        let limits = self.limits;
        if let ImageRef::Base64(data) = image {
            // Base64 decoding of a large payload is CPU work too: do it on the same blocking
            // path (the copy costs far less than the decode it precedes).
            let data = data.clone();
            return run_blocking(move || {
                decode_base64(&data, limits.max_bytes).and_then(|bytes| decode(&bytes, &limits))
            })
            .await?;
        }
        let bytes = self.load_bytes(image).await?;
        run_blocking(move || decode(&bytes, &limits)).await?
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

async fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, ImageError> {
    let err = |source| ImageError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(err)?;
    let size = file.metadata().await.map_err(err)?.len();
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
