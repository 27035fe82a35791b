//! Image input end to end: `fetch_bytes` on a real S3 wire protocol (moto on 127.0.0.1) and on the
//! local object directory, and `coldpath_image::ImageLoader` decoding the committed sample photos
//! (`events/data/photos/`, made by `tests/fixtures/faces/gen_photos.py`).

use aws_sdk_s3::primitives::ByteStream;
use coldpath_aws::{ObjectStore, S3Fetcher};
use coldpath_core::{Classify, ErrorType, MapEnv};
use coldpath_image::{DecodedImage, Format, ImageError, ImageLimits, ImageLoader, ImageRef};
use coldpath_models::{FetchError, ObjectFetcher};
use coldpath_tests::moto::MotoServer;
use coldpath_tests::repo_root;

const BUCKET: &str = "coldpath-photos";

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("events/data/photos").join(name)).unwrap()
}

async fn upload(client: &aws_sdk_s3::Client, names: &[&str]) {
    client
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
        .expect("create bucket");
    for name in names {
        client
            .put_object()
            .bucket(BUCKET)
            .key(format!("photos/{name}"))
            .body(ByteStream::from(photo(name)))
            .send()
            .await
            .expect("put object");
    }
}

/// Mean absolute difference per channel value between two same-sized images.
fn mean_abs_diff(a: &DecodedImage, b: &DecodedImage) -> f64 {
    assert_eq!(a.image.dimensions(), b.image.dimensions());
    let sum: u64 = a
        .image
        .as_raw()
        .iter()
        .zip(b.image.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.image.as_raw().len() as f64
}

#[tokio::test]
async fn s3_fetch_bytes_reads_whole_objects_and_refuses_larger_ones() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    upload(&client, &["kafka.jpg"]).await;
    let s3 = S3Fetcher::new(client);
    let want = photo("kafka.jpg");
    let size = want.len() as u64;

    let got = s3
        .fetch_bytes(BUCKET, "photos/kafka.jpg", size)
        .await
        .unwrap();
    assert_eq!(got, want);

    // Over the limit by one byte: refused from the declared Content-Length.
    let err = s3
        .fetch_bytes(BUCKET, "photos/kafka.jpg", size - 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { size: s, limit } if s == size && limit == size - 1),
        "{err}"
    );

    let err = s3
        .fetch_bytes(BUCKET, "photos/missing.jpg", size)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound), "{err}");
    let err = s3
        .fetch_bytes("no-such-bucket", "photos/kafka.jpg", size)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::NotFound), "{err}");
}

#[tokio::test]
async fn loader_over_s3_decodes_photos_upright_and_classifies_failures() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    upload(
        &client,
        &[
            "group.jpg",
            "group-exif6.jpg",
            "grey.png",
            "not-a-photo.txt",
        ],
    )
    .await;
    let loader = ImageLoader::new(
        ObjectStore::S3(S3Fetcher::new(client)),
        ImageLimits::default(),
        false,
    );
    let load = |key: &str| {
        let r = ImageRef::s3(&format!("s3://{BUCKET}/photos/{key}")).unwrap();
        let loader = &loader;
        async move { loader.load(&r).await }
    };

    let group = load("group.jpg").await.unwrap();
    assert_eq!(
        (group.width(), group.height(), group.orientation),
        (1600, 1000, 1)
    );
    assert_eq!(group.format, Format::Jpeg);

    // The twin stores the pixels rotated 90° counter-clockwise with EXIF Orientation=6; applied,
    // it is the same upright picture. Both are separate JPEG encodes of the same pixels, so the
    // stated tolerance is a mean difference of 2 grey levels (different 8x8 block grids).
    let twin = load("group-exif6.jpg").await.unwrap();
    assert_eq!(
        (twin.width(), twin.height(), twin.orientation),
        (1600, 1000, 6)
    );
    let diff = mean_abs_diff(&group, &twin);
    assert!(diff < 2.0, "mean abs diff {diff}");

    let grey = load("grey.png").await.unwrap();
    assert_eq!(
        (grey.width(), grey.height(), grey.format),
        (512, 512, Format::Png)
    );
    assert!(grey.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));

    let err = load("not-a-photo.txt").await.unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedFormat { .. }), "{err}");
    assert_eq!(err.error_type(), ErrorType::InvalidInput);

    let err = load("missing.jpg").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("image s3://{BUCKET}/photos/missing.jpg: no such object")
    );
    assert_eq!(err.error_type(), ErrorType::InvalidInput);

    let small = ImageLoader::new(
        ObjectStore::S3(S3Fetcher::new(moto.s3_client().await)),
        ImageLimits {
            max_bytes: 1000,
            ..ImageLimits::default()
        },
        false,
    );
    let err = small
        .load(&ImageRef::s3(&format!("s3://{BUCKET}/photos/group.jpg")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::TooManyBytes { limit: 1000, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn local_object_store_serves_the_sample_event_photos() {
    // What `invoke` does with the sample events: COLDPATH_OBJECT_STORE=local:<dir> maps
    // s3://photos/<key> onto <dir>/photos/<key>.
    let data = repo_root().join("events/data");
    let env = MapEnv::new([("COLDPATH_OBJECT_STORE", format!("local:{}", data.display()))]);
    let store = ObjectStore::from_env(&env).await.unwrap();
    assert_eq!(store.kind(), "local");
    let loader = ImageLoader::new(store, ImageLimits::default(), true);

    let kafka = loader
        .load(&ImageRef::s3("s3://photos/kafka.jpg").unwrap())
        .await
        .unwrap();
    assert_eq!((kafka.width(), kafka.height()), (450, 655));
    assert_eq!(kafka.bytes, photo("kafka.jpg").len());

    // The same file by path decodes to the same pixels.
    let by_path = loader
        .load(&ImageRef::Path(data.join("photos/kafka.jpg")))
        .await
        .unwrap();
    assert_eq!(by_path.image, kafka.image);

    let err = loader
        .load(&ImageRef::s3("s3://photos/nope.jpg").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::InvalidInput);
}
