use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::GetObjectError;
use coldpath_io::{FetchError, ObjectFetcher};
use tokio::io::AsyncWriteExt;

/// Reads objects from Amazon S3 (or an S3-compatible endpoint such as a local moto server).
#[derive(Debug, Clone)]
pub struct S3Fetcher {
    client: Client,
}

impl S3Fetcher {
    pub fn new(client: Client) -> Self {
        S3Fetcher { client }
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

impl ObjectFetcher for S3Fetcher {
    async fn fetch_to(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, FetchError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(classify)?;
        // Stream to disk: model files can be hundreds of megabytes and Lambda memory is billed.
        let mut body = out.body;
        let mut file = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| FetchError::Transient(format!("reading the body: {e}")))?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        file.sync_all().await?;
        Ok(written)
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

/// Sorts SDK failures into what the loader acts on: missing, forbidden, worth retrying, other.
fn classify(err: SdkError<GetObjectError>) -> FetchError {
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match service.err() {
                GetObjectError::NoSuchKey(_) => FetchError::NotFound,
                _ if status == 404 => FetchError::NotFound,
                _ if status == 403 => FetchError::Denied(err_chain(&err)),
                _ if status == 429 || status >= 500 => FetchError::Transient(err_chain(&err)),
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
