//! `S3Fetcher::fetch_to` against moto's S3: an object bigger than one range is fetched as
//! several ranges in parallel (or in one GET, ranges off) and written back byte for byte; the edges (an exact part, one
//! byte over, a tiny object, an empty one, a missing key) are each what was stored.

use coldpath_aws::S3Fetcher;
use coldpath_io::{FetchError, ObjectFetcher};
use coldpath_test_support::moto::MotoServer;

const BUCKET: &str = "coldpath-models";
/// The ranges' size here: small, so that a few hundred kilobytes make many ranges.
const PART: usize = 64 << 10;

/// Bytes that differ at every offset a misplaced range could land on.
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn objects_are_fetched_whole_in_ranges() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
    let ranged = S3Fetcher::new(client.clone()).with_ranges(Some(PART as u64));
    let whole = S3Fetcher::new(client.clone()).with_ranges(None);
    let dir = tempfile::tempdir().unwrap();
    // One range exactly, one byte over, and twenty ranges and a partial one: more than are in
    // flight at once, so some start only as others finish.
    for len in [0, 10, PART, PART + 1, 20 * PART + 5] {
        let body = pattern(len);
        let key = format!("captioning/v1/model-{len}.onnx");
        client
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(body.clone().into())
            .send()
            .await
            .unwrap();
        for (how, fetcher) in [("ranged", &ranged), ("whole", &whole)] {
            let dest = dir.path().join(format!("{len}.{how}.onnx"));
            let n = fetcher.fetch_to(BUCKET, &key, &dest).await.unwrap();
            assert_eq!(n, len as u64, "{key} {how}");
            let fetched = std::fs::read(&dest).unwrap();
            assert_eq!(fetched.len(), len, "{key} {how}");
            assert!(
                fetched == body,
                "{key} {how}: the fetched bytes differ from the object's"
            );
        }
    }
    let missing = ranged
        .fetch_to(BUCKET, "captioning/v1/none.onnx", &dir.path().join("none"))
        .await
        .unwrap_err();
    assert!(matches!(missing, FetchError::NotFound), "{missing}");
}
