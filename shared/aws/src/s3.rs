use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use coldpath_io::{FetchError, ObjectFetcher};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Reads objects from Amazon S3 (or an S3-compatible endpoint such as a local moto server).
#[derive(Debug, Clone)]
pub struct S3Fetcher {
    client: Client,
    /// `None`: one GET for the whole object.
    part_bytes: Option<u64>,
}

impl S3Fetcher {
    pub fn new(client: Client) -> Self {
        S3Fetcher {
            client,
            part_bytes: Some(PART_BYTES),
        }
    }

    /// Fetches objects in ranges of `bytes` (at least 1) instead of the default 16 MiB, or with
    /// `None` in one GET each (a server that reads a whole object to answer each range, as moto
    /// does, is faster that way).
    pub fn with_ranges(mut self, bytes: Option<u64>) -> Self {
        self.part_bytes = bytes.map(|b| b.max(1));
        self
    }

    /// A client from the standard AWS configuration chain (region, credentials, and endpoint
    /// overrides such as `AWS_ENDPOINT_URL_S3`). `force_path_style` is for S3-compatible servers
    /// that do not serve virtual-hosted bucket names.
    pub async fn from_env(force_path_style: bool) -> Self {
        let conf = aws_sdk_s3::config::Builder::from(crate::sdk::shared_config().await)
            .force_path_style(force_path_style)
            .build();
        S3Fetcher::new(Client::from_conf(conf))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Objects larger than this are fetched as byte ranges of this size, several at a time: one
/// S3 connection delivers well under a Lambda's network share (AWS's performance guidance is
/// ranged GETs of 8-16 MB in parallel), and a 1 GB captioning model fetched in one stream is
/// most of that function's cold start.
const PART_BYTES: u64 = 16 << 20;
/// Ranges in flight at once for one object.
const PARTS_IN_FLIGHT: usize = 8;

impl ObjectFetcher for S3Fetcher {
    /// The first range's answer says the object's size (`Content-Range`) and version (`ETag`);
    /// the other ranges are asked for only if that version is still the one stored
    /// (`If-Match`), so an object replaced mid-download fails the fetch instead of mixing two
    /// versions. Each range is written at its offset as its chunks arrive: memory holds a few
    /// chunks per range, never the object.
    async fn fetch_to(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, FetchError> {
        let mut first = self.client.get_object().bucket(bucket).key(key);
        if let Some(part) = self.part_bytes {
            first = first.range(format!("bytes=0-{}", part - 1));
        }
        let first = first.send().await;
        let first = match first {
            Ok(out) => out,
            // S3 answers a range of an empty object with 416: there is nothing to fetch.
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 416 => {
                tokio::fs::File::create(dest).await?.sync_all().await?;
                return Ok(0);
            }
            Err(e) => return Err(classify(e)),
        };
        let part = self.part_bytes.unwrap_or(u64::MAX);
        // The object's size, and how much of it the first answer carries: its range, or all of
        // it when the request asked for no range or the server ignored `Range` (200).
        let (total, first_len) = match first.content_range() {
            Some(range) => {
                let total = object_size(range).ok_or_else(|| {
                    FetchError::Other(format!("unreadable Content-Range {range:?}"))
                })?;
                (total, total.min(part))
            }
            None => {
                let total = first
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| FetchError::Other("no Content-Length".to_string()))?;
                (total, total)
            }
        };
        let etag = first.e_tag().map(str::to_owned);
        let file = tokio::fs::File::create(dest).await?;
        file.set_len(total).await?;
        drop(file);
        write_range(first.body, dest, 0, first_len).await?;

        let mut parts = (first_len..total)
            .step_by(usize::try_from(part).unwrap_or(usize::MAX))
            .map(|start| (start, start.saturating_add(part).min(total)));
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < PARTS_IN_FLIGHT {
                let Some((start, end)) = parts.next() else {
                    break;
                };
                let mut request = self
                    .client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .range(format!("bytes={start}-{}", end - 1));
                if let Some(etag) = &etag {
                    request = request.if_match(etag);
                }
                let dest = dest.to_path_buf();
                running.spawn(async move {
                    let out = request.send().await.map_err(classify)?;
                    write_range(out.body, &dest, start, end - start).await
                });
            }
            match running.join_next().await {
                Some(Ok(Ok(()))) => {}
                // Dropping the set aborts the other ranges.
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(FetchError::Other(format!("a range task failed: {e}"))),
                None => break,
            }
        }
        tokio::fs::File::options()
            .write(true)
            .open(dest)
            .await?
            .sync_all()
            .await?;
        Ok(total)
    }

    async fn fetch_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        // Refuse before reading when the declared size is already over the limit...
        let declared = out.content_length().and_then(|n| u64::try_from(n).ok());
        if let Some(size) = declared.filter(|&n| n > max_bytes) {
            return Err(FetchError::TooLarge {
                size,
                limit: max_bytes,
            });
        }
        // ...and keep counting while reading, so that a missing or lying Content-Length cannot
        // make us buffer more than the limit (plus one chunk).
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
        let mut body = out.body;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| FetchError::Transient(format!("reading the body: {e}")))?;
            let size = (bytes.len() + chunk.len()) as u64;
            if size > max_bytes {
                return Err(FetchError::TooLarge {
                    size,
                    limit: max_bytes,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// The object's size from a `Content-Range: bytes <first>-<last>/<size>` answer.
fn object_size(content_range: &str) -> Option<u64> {
    content_range
        .strip_prefix("bytes ")?
        .rsplit_once('/')?
        .1
        .parse()
        .ok()
}

/// Writes the `len` bytes of `body` at `offset` of `dest` (already sized). A body that ends
/// early or runs long is a transient failure: the connection was cut, or the object changed.
async fn write_range(
    mut body: aws_sdk_s3::primitives::ByteStream,
    dest: &Path,
    offset: u64,
    len: u64,
) -> Result<(), FetchError> {
    let mut file = tokio::fs::File::options().write(true).open(dest).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut written = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| FetchError::Transient(format!("reading the body: {e}")))?;
        written += chunk.len() as u64;
        if written > len {
            return Err(FetchError::Transient(format!(
                "bytes {offset}+{len}: the body ran past the range"
            )));
        }
        file.write_all(&chunk).await?;
    }
    if written != len {
        return Err(FetchError::Transient(format!(
            "bytes {offset}+{len}: the body ended after {written} bytes"
        )));
    }
    file.flush().await?;
    Ok(())
}

/// Sorts SDK failures into what the loader acts on: missing, forbidden, worth retrying, other.
fn classify(err: SdkError<GetObjectError>) -> FetchError {
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err() {
                GetObjectError::NoSuchKey(_) => FetchError::NotFound,
                _ if status == 404 => FetchError::NotFound,
                _ if status == 403 => FetchError::Denied(err_chain(&err)),
                // 412: the object changed between two ranges (`If-Match`); fetching again reads
                // the new version whole, and the caller's digest check judges it.
                _ if status == 412 || status == 429 || status >= 500 => {
                    FetchError::Transient(err_chain(&err))
                }
                _ => FetchError::Other(err_chain(&err)),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            FetchError::Transient(err_chain(&err))
        }
        _ => FetchError::Other(err_chain(&err)),
    }
}

/// The SDK's top-level message is terse ("service error"); the sources say what happened.
fn err_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_size_is_read_from_content_range() {
        assert_eq!(
            object_size("bytes 0-16777215/1109588992"),
            Some(1_109_588_992)
        );
        assert_eq!(object_size("bytes 0-9/10"), Some(10));
        assert_eq!(object_size("bytes 0-9/*"), None);
        assert_eq!(object_size("0-9/10"), None);
        assert_eq!(object_size(""), None);
    }
}
