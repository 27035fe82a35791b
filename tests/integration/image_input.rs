//! Image input end to end: `fetch_bytes` on a real S3 wire protocol (moto on 127.0.0.1) and on the
//! local object directory, and `coldpath_image::ImageLoader` decoding the committed sample photos
//! (`events/data/photos/`, made by `tests/fixtures/faces/gen_photos.py`).

use aws_sdk_s3::primitives::ByteStream;
use coldpath_aws::{ObjectStore, S3Fetcher};
use coldpath_core::{Classify, ErrorType, MapEnv};
use coldpath_image::{DecodedImage, Format, ImageError, ImageLimits, ImageLoader, ImageRef};
use coldpath_io::{FetchError, ObjectFetcher};
use coldpath_test_support::moto::MotoServer;
use coldpath_test_support::repo_root;

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

/// An HTTP server on 127.0.0.1 that answers each of `requests` connections with a 200 and a
/// chunked body of `body_len` bytes and no Content-Length: what a misbehaving S3-compatible server
/// (or a proxy) may send. It serves exactly `requests` connections and then stops.
fn chunked_server(requests: usize, body_len: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream);
            // A GET has no body: read up to the blank line after the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let mut stream = reader.into_inner();
            let head = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            // Write errors are expected: the client hangs up once it has seen enough.
            let _ = stream.write_all(head.as_bytes());
            let chunk = vec![0xabu8; 4096];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                let framed = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
                if stream.write_all(&framed).is_err() {
                    break;
                }
                left -= n;
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
    });
    endpoint
}

#[tokio::test]
async fn s3_fetch_bytes_stops_reading_a_body_without_length_at_the_limit() {
    const BODY: usize = 256 * 1024;
    let endpoint = chunked_server(2, BODY);
    let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    let s3 = S3Fetcher::new(aws_sdk_s3::Client::from_conf(conf));

    // No Content-Length to refuse up front: the running count stops the read past 10 KiB,
    // long before the 256 KiB body ends.
    let err = s3.fetch_bytes(BUCKET, "big.jpg", 10_240).await.unwrap_err();
    match err {
        FetchError::TooLarge { size, limit } => {
            assert_eq!(limit, 10_240);
            assert!(size > 10_240 && size < BODY as u64, "stopped at {size}");
        }
        other => panic!("expected TooLarge, found {other}"),
    }
    // Within the limit, the same kind of body is read whole.
    let bytes = s3
        .fetch_bytes(BUCKET, "big.jpg", BODY as u64)
        .await
        .unwrap();
    assert_eq!(bytes.len(), BODY);
    assert!(bytes.iter().all(|&b| b == 0xab));
}
