//! Where a function's results go: one JSON document per id, chosen by `COLDPATH_RESULT_SINK`.
//!
//! Faces writes one result per photo and captioning one per SQS message. Both can see the same
//! input twice (S3 and SQS deliver at least once), so every result is keyed by an id and a second
//! put with the same id replaces the first instead of adding a duplicate: a local file or an S3
//! object is overwritten; SQS cannot overwrite, so a FIFO queue drops the repeat within its
//! five-minute deduplication window and consumers of a standard queue must dedupe by id.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

#[cfg(all(feature = "s3", not(feature = "sqs")))]
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
#[cfg(feature = "s3")]
use aws_sdk_s3::primitives::ByteStream;
#[cfg(feature = "sqs")]
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
#[cfg(feature = "sqs")]
use aws_sdk_sqs::types::MessageAttributeValue;
use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;
use coldpath_core::{Classify, ErrorType};
#[cfg(feature = "sqs")]
use sha2::{Digest, Sha256};

#[cfg(feature = "sqs")]
use crate::queue_url::is_fifo;
use crate::queue_url::is_queue_url;
#[cfg(any(feature = "s3", feature = "sqs"))]
use crate::sdk::{sdk_is_transient, sdk_message};

/// The AWS configuration a client is built from; with neither SDK feature there is none (and
/// `Option<&SdkConfig>` is always `None`).
#[cfg(any(feature = "s3", feature = "sqs"))]
type SdkConfig = aws_config::SdkConfig;
#[cfg(not(any(feature = "s3", feature = "sqs")))]
type SdkConfig = std::convert::Infallible;

/// The setting that picks the sink.
pub const RESULT_SINK_VAR: &str = "COLDPATH_RESULT_SINK";

/// Where results go outside Lambda when `COLDPATH_RESULT_SINK` is unset (relative to the working
/// directory, beside the setup's other caches).
pub const DEFAULT_LOCAL_DIR: &str = ".cache/results";

const EXPECTED: &str = "local:<dir>, s3://<bucket>/<prefix> or sqs:<queue-url>";

/// A file name may be 255 bytes on the filesystems we run on; the last segment gets `.json`.
const MAX_SEGMENT_BYTES: usize = 250;

/// S3's limit on the length of an object key.
#[cfg(feature = "s3")]
const MAX_S3_KEY_BYTES: usize = 1024;

/// Writes one JSON result per id for one function (the function's name is a path segment, so
/// several functions can share a directory, a prefix or a queue).
#[derive(Debug, Clone)]
pub struct ResultSink {
    function: String,
    target: SinkTarget,
}

/// A destination with its client, for callers that build the client themselves (tests, tools).
#[derive(Debug, Clone)]
pub enum SinkTarget {
    /// `<dir>/<function>/<id>.json`, written to a temporary file and renamed into place.
    Local(PathBuf),
    /// `s3://<bucket>/<prefix>/<function>/<id>.json`; an empty prefix puts `<function>` at the
    /// top of the bucket. Needs the `s3` feature.
    #[cfg(feature = "s3")]
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
    /// One message per result with body `{"function", "id", "result"}` and string message
    /// attributes `id` and `function`. A queue URL ending in `.fifo` gets
    /// `MessageGroupId = function` and `MessageDeduplicationId = hex(sha256("<function>/<id>"))`,
    /// so a repeat within five minutes is dropped (one group per function keeps results of one
    /// function in order, at FIFO throughput). A standard queue cannot deduplicate: its consumers
    /// must dedupe by the `id` attribute. Needs the `sqs` feature.
    #[cfg(feature = "sqs")]
    Sqs {
        client: aws_sdk_sqs::Client,
        queue_url: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("result id {id:?} is not usable: {reason}")]
    InvalidId { id: String, reason: &'static str },
    #[error("encoding result {id:?} as JSON: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Throttling, a 5xx, a timeout or a dropped connection: the same put may succeed later.
    #[error("{action} failed, worth retrying: {message}")]
    Transient { action: String, message: String },
    /// The service refused the request (permissions, a missing bucket or queue, a message too
    /// large): retrying it unchanged fails again.
    #[error("{action} was refused: {message}")]
    Rejected { action: String, message: String },
}

impl Classify for SinkError {
    fn error_type(&self) -> ErrorType {
        match self {
            SinkError::InvalidId { .. } => ErrorType::InvalidInput,
            SinkError::Transient { .. } => ErrorType::Retryable,
            SinkError::Encode { .. } | SinkError::Io { .. } | SinkError::Rejected { .. } => {
                ErrorType::Internal
            }
        }
    }
}

/// The parsed setting, before any client is built.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Setting {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Sqs(String),
}

fn parse_setting(raw: Option<&str>, in_lambda: bool) -> Result<Setting, ConfigError> {
    let Some(raw) = raw else {
        if in_lambda {
            // A sandbox's disk vanishes with it, so a silent local default would lose results.
            return Err(ConfigError::Missing {
                name: RESULT_SINK_VAR.to_string(),
                hint: format!("inside Lambda results must leave the sandbox: set it to {EXPECTED}"),
            });
        }
        return Ok(Setting::Local(PathBuf::from(DEFAULT_LOCAL_DIR)));
    };
    let invalid = || ConfigError::invalid(RESULT_SINK_VAR, EXPECTED, raw);
    if let Some(dir) = raw.strip_prefix("local:") {
        if dir.is_empty() {
            return Err(invalid());
        }
        Ok(Setting::Local(PathBuf::from(dir)))
    } else if let Some(rest) = raw.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        Ok(Setting::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    } else if let Some(url) = raw.strip_prefix("sqs:") {
        if !is_queue_url(url) {
            return Err(invalid());
        }
        Ok(Setting::Sqs(url.to_string()))
    } else {
        Err(invalid())
    }
}

impl ResultSink {
    /// A sink for `function`'s results. The function name becomes a path segment, so it follows
    /// the same rules as an id segment (no `/`, not `.` or `..`, no control characters).
    pub fn new(function: &str, target: SinkTarget) -> Result<ResultSink, SinkError> {
        if function.contains('/') {
            return Err(SinkError::InvalidId {
                id: function.to_string(),
                reason: "a function name is one path segment and may not contain '/'",
            });
        }
        validate_id(function)?;
        Ok(ResultSink {
            function: function.to_string(),
            target,
        })
    }

    /// The variables [`ResultSink::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional(
            RESULT_SINK_VAR,
            "local:<dir>, s3://<bucket>/<prefix> or sqs:<queue-url>; required inside Lambda",
        ),
        EnvVar::optional(
            "COLDPATH_S3_FORCE_PATH_STYLE",
            "path-style S3 URLs (S3-compatible servers)",
        ),
        EnvVar::platform(
            "AWS_LAMBDA_FUNCTION_NAME",
            "set by Lambda: the sink must be set there",
        ),
    ];

    /// Reads `COLDPATH_RESULT_SINK` (`local:<dir>`, `s3://bucket/prefix` or `sqs:<queue-url>`).
    /// Unset, results go to `local:.cache/results` outside Lambda; inside Lambda (told by
    /// `AWS_LAMBDA_FUNCTION_NAME`) unset is an error. S3 honours `COLDPATH_S3_FORCE_PATH_STYLE`.
    /// For S3 and SQS the client comes from the standard AWS configuration chain, loaded here, so
    /// endpoint overrides such as `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL_SQS` apply.
    pub async fn from_env(env: &impl EnvSource, function: &str) -> Result<ResultSink, ConfigError> {
        let setting = read_setting(env, function)?;
        let sdk = match setting {
            Setting::Local(_) => None,
            #[cfg(any(feature = "s3", feature = "sqs"))]
            Setting::S3 { .. } | Setting::Sqs(_) => Some(crate::sdk::shared_config().await),
            // `build` refuses them: this build has neither client.
            #[cfg(not(any(feature = "s3", feature = "sqs")))]
            Setting::S3 { .. } | Setting::Sqs(_) => None,
        };
        build(env, function, setting, sdk)
    }

    /// [`ResultSink::from_env`] with an AWS configuration the caller already loaded (a function
    /// that also reads from S3 loads it once; tests point it at a local server).
    #[cfg(any(feature = "s3", feature = "sqs"))]
    pub fn from_env_with_sdk_config(
        env: &impl EnvSource,
        function: &str,
        sdk: &aws_config::SdkConfig,
    ) -> Result<ResultSink, ConfigError> {
        let setting = read_setting(env, function)?;
        build(env, function, setting, Some(sdk))
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    /// `local`, `s3` or `sqs`, for logs.
    pub fn kind(&self) -> &'static str {
        match self.target {
            SinkTarget::Local(_) => "local",
            #[cfg(feature = "s3")]
            SinkTarget::S3 { .. } => "s3",
            #[cfg(feature = "sqs")]
            SinkTarget::Sqs { .. } => "sqs",
        }
    }

    /// Writes `result` under `id` and says where it went: a file path, an `s3://` URI or
    /// `sqs:<message id>`. Ids may contain `/` (faces uses `<bucket>/<key>`); an empty id, an
    /// empty, `.` or `..` segment, a leading `/` or a control character is `InvalidId`.
    pub async fn put(&self, id: &str, result: &serde_json::Value) -> Result<String, SinkError> {
        validate_id(id)?;
        match &self.target {
            SinkTarget::Local(dir) => {
                let path = dir.join(&self.function).join(format!("{id}.json"));
                let bytes = encode(id, result)?;
                write_atomic(path.clone(), bytes).await?;
                Ok(path.display().to_string())
            }
            #[cfg(feature = "s3")]
            SinkTarget::S3 {
                client,
                bucket,
                prefix,
            } => {
                let key = object_key(prefix, &self.function, id);
                if key.len() > MAX_S3_KEY_BYTES {
                    return Err(SinkError::InvalidId {
                        id: id.to_string(),
                        reason: "the object key would be longer than S3's 1024 bytes",
                    });
                }
                let uri = format!("s3://{bucket}/{key}");
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .content_type("application/json")
                    .body(ByteStream::from(encode(id, result)?))
                    .send()
                    .await
                    .map_err(|e| sdk_error(format!("putting {uri}"), e))?;
                Ok(uri)
            }
            #[cfg(feature = "sqs")]
            SinkTarget::Sqs { client, queue_url } => {
                let body = serde_json::json!({
                    "function": self.function,
                    "id": id,
                    "result": result,
                });
                let mut request = client
                    .send_message()
                    .queue_url(queue_url)
                    .message_body(body.to_string())
                    .message_attributes("id", string_attribute(id)?)
                    .message_attributes("function", string_attribute(&self.function)?);
                if is_fifo(queue_url) {
                    request = request
                        .message_group_id(&self.function)
                        .message_deduplication_id(dedup_id(&self.function, id));
                }
                let out = request
                    .send()
                    .await
                    .map_err(|e| sdk_error(format!("sending result {id:?} to {queue_url}"), e))?;
                Ok(format!("sqs:{}", out.message_id().unwrap_or_default()))
            }
        }
    }
}

impl coldpath_io::ResultWriter for ResultSink {
    type Error = SinkError;

    async fn put(&self, id: &str, result: &serde_json::Value) -> Result<String, SinkError> {
        ResultSink::put(self, id, result).await
    }
}

impl fmt::Display for ResultSink {
    /// The destination as it would be written in `COLDPATH_RESULT_SINK`, for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            SinkTarget::Local(dir) => write!(f, "local:{}", dir.display()),
            #[cfg(feature = "s3")]
            SinkTarget::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
            #[cfg(feature = "sqs")]
            SinkTarget::Sqs { queue_url, .. } => write!(f, "sqs:{queue_url}"),
        }
    }
}

/// The parsed setting, after checking the function name: it comes from code, but a bad one must
/// still be an error, not a panic, and must fail before any client is built.
fn read_setting(env: &impl EnvSource, function: &str) -> Result<Setting, ConfigError> {
    let raw = config::get(env, RESULT_SINK_VAR);
    let in_lambda = config::get(env, "AWS_LAMBDA_FUNCTION_NAME").is_some();
    let setting = parse_setting(raw.as_deref(), in_lambda)?;
    ResultSink::new(function, SinkTarget::Local(PathBuf::new())).map_err(|_| {
        ConfigError::invalid(
            "the function name given to ResultSink",
            "one path segment (no '/', '.', '..' or control characters)",
            function,
        )
    })?;
    Ok(setting)
}

/// Builds the sink's client; `sdk` is present whenever the setting needs one.
fn build(
    env: &impl EnvSource,
    function: &str,
    setting: Setting,
    sdk: Option<&SdkConfig>,
) -> Result<ResultSink, ConfigError> {
    #[cfg(any(feature = "s3", feature = "sqs"))]
    let no_sdk = || ConfigError::Missing {
        name: RESULT_SINK_VAR.to_string(),
        hint: "an AWS configuration to build the client from".to_string(),
    };
    let target = match setting {
        Setting::Local(dir) => SinkTarget::Local(dir),
        #[cfg(feature = "s3")]
        Setting::S3 { bucket, prefix } => {
            let path_style = config::bool_or(env, "COLDPATH_S3_FORCE_PATH_STYLE", false)?;
            let conf = aws_sdk_s3::config::Builder::from(sdk.ok_or_else(no_sdk)?)
                .force_path_style(path_style)
                .build();
            SinkTarget::S3 {
                client: aws_sdk_s3::Client::from_conf(conf),
                bucket,
                prefix,
            }
        }
        #[cfg(feature = "sqs")]
        Setting::Sqs(queue_url) => SinkTarget::Sqs {
            client: aws_sdk_sqs::Client::new(sdk.ok_or_else(no_sdk)?),
            queue_url,
        },
        #[cfg(not(feature = "s3"))]
        Setting::S3 { bucket, prefix } => {
            // Read only to build an S3 client (`env` for the path style).
            let _ = (env, sdk);
            return Err(not_in_this_build("s3", format!("s3://{bucket}/{prefix}")));
        }
        #[cfg(not(feature = "sqs"))]
        Setting::Sqs(queue_url) => {
            return Err(not_in_this_build("sqs", format!("sqs:{queue_url}")));
        }
    };
    // The name was checked by `read_setting`.
    ResultSink::new(function, target)
        .map_err(|e| ConfigError::invalid(RESULT_SINK_VAR, "a usable function name", e.to_string()))
}

/// Checks that `id` is a relative path of ordinary segments, so it can name a file under the
/// sink's directory and an S3 key without escaping either.
pub fn validate_id(id: &str) -> Result<(), SinkError> {
    let bad = |reason| {
        Err(SinkError::InvalidId {
            id: id.to_string(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.starts_with('/') {
        return bad("it is an absolute path");
    }
    // SQS message attributes also refuse U+FFFE and U+FFFF.
    if id
        .chars()
        .any(|c| c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}')
    {
        return bad("it contains a control character");
    }
    for segment in id.split('/') {
        match segment {
            "" => return bad("it has an empty path segment"),
            "." | ".." => return bad("it has a '.' or '..' path segment"),
            s if s.len() > MAX_SEGMENT_BYTES => {
                return bad("a path segment is longer than 250 bytes");
            }
            _ => {}
        }
    }
    Ok(())
}

/// A valid setting for a target this build has no client for: a deployment mistake, named.
#[cfg(not(all(feature = "s3", feature = "sqs")))]
fn not_in_this_build(feature: &str, found: String) -> ConfigError {
    ConfigError::invalid(
        RESULT_SINK_VAR,
        format!("a sink this binary was built with (its coldpath-aws has no `{feature}` feature)"),
        found,
    )
}

#[cfg(feature = "s3")]
fn object_key(prefix: &str, function: &str, id: &str) -> String {
    if prefix.is_empty() {
        format!("{function}/{id}.json")
    } else {
        format!("{prefix}/{function}/{id}.json")
    }
}

/// FIFO deduplication ids may be 128 characters; a hex sha256 is 64 whatever the id's length.
#[cfg(feature = "sqs")]
fn dedup_id(function: &str, id: &str) -> String {
    hex::encode(Sha256::digest(format!("{function}/{id}")))
}

fn encode(id: &str, result: &serde_json::Value) -> Result<Vec<u8>, SinkError> {
    serde_json::to_vec(result).map_err(|source| SinkError::Encode {
        id: id.to_string(),
        source,
    })
}

#[cfg(feature = "sqs")]
fn string_attribute(value: &str) -> Result<MessageAttributeValue, SinkError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| SinkError::Rejected {
            action: "building a message attribute".to_string(),
            message: e.to_string(),
        })
}

/// Writes `bytes` to a hidden temporary file beside `path` and renames it over `path`, so a
/// reader sees the old result or the new one, never a partial file, and a failed write leaves the
/// old one in place. The temporary name starts with `.` and ends in `.tmp`, so readers that list
/// `*.json` never pick one up.
async fn write_atomic(path: PathBuf, bytes: Vec<u8>) -> Result<(), SinkError> {
    let target = path.clone();
    tokio::task::spawn_blocking(move || write_atomic_blocking(&target, &bytes))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| SinkError::Io { path, source })
}

fn write_atomic_blocking(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(any(feature = "s3", feature = "sqs"))]
fn sdk_error<E>(action: String, err: SdkError<E>) -> SinkError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = sdk_message(&err);
    if sdk_is_transient(&err) {
        SinkError::Transient { action, message }
    } else {
        SinkError::Rejected { action, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;
    use serde_json::json;

    fn local_sink(dir: &Path) -> ResultSink {
        ResultSink::new("faces", SinkTarget::Local(dir.to_path_buf())).unwrap()
    }

    /// Every file under `dir`, relative to it, sorted.
    fn files_under(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(root, &path, out);
                } else {
                    let rel = path.strip_prefix(root).unwrap();
                    out.push(rel.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        if dir.exists() {
            walk(dir, dir, &mut out);
        }
        out.sort();
        out
    }

    #[test]
    fn parses_settings() {
        assert_eq!(
            parse_setting(None, false),
            Ok(Setting::Local(".cache/results".into()))
        );
        assert_eq!(
            parse_setting(Some("local:/tmp/out"), true),
            Ok(Setting::Local("/tmp/out".into()))
        );
        assert_eq!(
            parse_setting(Some("s3://results/coldpath/v1/"), true),
            Ok(Setting::S3 {
                bucket: "results".into(),
                prefix: "coldpath/v1".into()
            })
        );
        assert_eq!(
            parse_setting(Some("s3://results"), true),
            Ok(Setting::S3 {
                bucket: "results".into(),
                prefix: String::new()
            })
        );
        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/results.fifo";
        assert_eq!(
            parse_setting(Some(&format!("sqs:{url}")), true),
            Ok(Setting::Sqs(url.into()))
        );
        for bad in [
            "local:",
            "s3://",
            "s3:///prefix",
            "sqs:results",
            "sqs:https://sqs.eu-west-1.amazonaws.com/",
            "gcs://bucket",
            "/tmp/out",
        ] {
            let err = parse_setting(Some(bad), false).unwrap_err();
            assert_eq!(
                err,
                ConfigError::invalid(RESULT_SINK_VAR, EXPECTED, bad),
                "{bad}"
            );
        }
    }

    /// Built without a feature, its target is a configuration error that names the feature.
    #[test]
    #[cfg(not(all(feature = "s3", feature = "sqs")))]
    fn a_target_this_build_lacks_is_a_config_error_naming_the_feature() {
        let url = "https://sqs.eu-west-1.amazonaws.com/1/results";
        for (setting, feature) in [("s3://results/p", "s3"), (&format!("sqs:{url}"), "sqs")] {
            if (feature == "s3" && cfg!(feature = "s3"))
                || (feature == "sqs" && cfg!(feature = "sqs"))
            {
                continue;
            }
            let env = MapEnv::new([(RESULT_SINK_VAR, setting)]);
            let parsed = parse_setting(Some(setting), false).unwrap();
            let err = build(&env, "faces", parsed, None).unwrap_err();
            assert!(
                err.to_string().contains(&format!("no `{feature}` feature")),
                "{err}"
            );
            assert!(err.to_string().contains(setting), "{err}");
        }
    }

    #[test]
    fn unset_inside_lambda_is_an_error_naming_the_variable() {
        let err = parse_setting(None, true).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with("COLDPATH_RESULT_SINK: required but not set"),
            "{msg}"
        );
        assert!(msg.contains("s3://<bucket>/<prefix>"), "{msg}");
        assert_eq!(err.error_type(), ErrorType::Config);
    }

    /// The deploy contract: the sink is read from exactly [`ResultSink::ENV`].
    #[test]
    fn the_sink_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([(
            RESULT_SINK_VAR,
            "s3://results/faces",
        )]));
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let sink = ResultSink::from_env_with_sdk_config(&env, "faces", &sdk).unwrap();
        assert_eq!(sink.kind(), "s3");
        let difference = env.difference(&[ResultSink::ENV]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[tokio::test]
    async fn from_env_reads_the_setting_and_the_lambda_marker() {
        let dir = tempfile::tempdir().unwrap();
        let setting = format!("local:{}", dir.path().display());
        let env = MapEnv::new([
            (RESULT_SINK_VAR, setting.as_str()),
            ("AWS_LAMBDA_FUNCTION_NAME", "faces"),
        ]);
        let sink = ResultSink::from_env(&env, "faces").await.unwrap();
        assert_eq!(sink.kind(), "local");
        assert_eq!(sink.to_string(), setting);

        let env = MapEnv::new([("AWS_LAMBDA_FUNCTION_NAME", "faces")]);
        let err = ResultSink::from_env(&env, "faces").await.unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }), "{err}");

        let env = MapEnv::new([(RESULT_SINK_VAR, "  ")]);
        let sink = ResultSink::from_env(&env, "captioning").await.unwrap();
        assert_eq!(sink.to_string(), "local:.cache/results");

        let err = ResultSink::from_env(&env, "../up").await.unwrap_err();
        assert!(
            err.to_string().contains("one path segment (no '/'"),
            "{err}"
        );
    }

    #[test]
    fn ids_must_be_relative_paths_of_ordinary_segments() {
        for good in [
            "photo-1",
            "uploads/2026/11/a b.jpg",
            "bucket/key.with.dots",
            "é/ü",
        ] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        let long = "x".repeat(251);
        for (bad, reason) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty path segment"),
            ("a/", "empty path segment"),
            ("./a", "'.' or '..'"),
            ("a/../../b", "'.' or '..'"),
            ("..", "'.' or '..'"),
            ("a\nb", "control character"),
            ("a\u{0}b", "control character"),
            ("a\u{7f}", "control character"),
            ("a\u{FFFF}", "control character"),
            (long.as_str(), "longer than 250 bytes"),
        ] {
            let err = validate_id(bad).unwrap_err();
            assert!(err.to_string().contains(reason), "{bad:?}: {err}");
            assert_eq!(err.error_type(), ErrorType::InvalidInput);
        }
    }

    #[test]
    fn function_names_are_one_segment() {
        for bad in ["", "a/b", "..", "a\tb"] {
            let err = ResultSink::new(bad, SinkTarget::Local(PathBuf::new())).unwrap_err();
            assert!(matches!(err, SinkError::InvalidId { .. }), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn local_put_writes_the_json_and_overwrites_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local_sink(dir.path());
        let id = "photos/2026/kafka.jpg";

        let first = sink.put(id, &json!({"faces": 1})).await.unwrap();
        let want = dir.path().join("faces/photos/2026/kafka.jpg.json");
        assert_eq!(first, want.display().to_string());
        let read: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&want).unwrap()).unwrap();
        assert_eq!(read, json!({"faces": 1}));

        // A redelivered photo replaces its result: still one file, holding the newer value.
        let second = sink.put(id, &json!({"faces": 2})).await.unwrap();
        assert_eq!(second, first);
        let read: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&want).unwrap()).unwrap();
        assert_eq!(read, json!({"faces": 2}));
        assert_eq!(
            files_under(dir.path()),
            vec!["faces/photos/2026/kafka.jpg.json"]
        );
    }

    #[tokio::test]
    async fn local_put_refuses_bad_ids_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local_sink(&dir.path().join("out"));
        for bad in ["../escape", "/abs", "a//b", "a/./b", "", "x\ry"] {
            let err = sink.put(bad, &json!(1)).await.unwrap_err();
            assert!(matches!(err, SinkError::InvalidId { .. }), "{bad:?}: {err}");
            assert_eq!(err.error_type(), ErrorType::InvalidInput);
        }
        assert_eq!(files_under(dir.path()), Vec::<String>::new());
    }

    /// A reader polling the file while it is rewritten must only ever see a whole result: with a
    /// plain truncate-and-write it would catch partial files of this size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_put_is_atomic_for_a_concurrent_reader() {
        let dir = tempfile::tempdir().unwrap();
        let sink = local_sink(dir.path());
        let big = |n: u64| json!({"n": n, "pad": "x".repeat(512 * 1024)});
        let path = PathBuf::from(sink.put("same", &big(0)).await.unwrap());

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = std::fs::read(&path).expect("the file always exists");
                    let value: serde_json::Value = serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("partial file of {} bytes: {e}", bytes.len()));
                    assert_eq!(value["pad"].as_str().map(str::len), Some(512 * 1024));
                    reads += 1;
                }
                reads
            })
        };
        for n in 1..=20 {
            sink.put("same", &big(n)).await.unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads = reader.join().expect("reader saw only whole results");
        assert!(reads > 0);
        // No temporary files are left behind.
        assert_eq!(files_under(dir.path()), vec!["faces/same.json"]);
    }

    #[test]
    #[cfg(all(feature = "s3", feature = "sqs"))]
    fn keys_and_dedup_ids() {
        assert_eq!(object_key("", "faces", "b/k.jpg"), "faces/b/k.jpg.json");
        assert_eq!(
            object_key("out/v1", "faces", "b/k.jpg"),
            "out/v1/faces/b/k.jpg.json"
        );
        assert!(is_fifo(
            "https://sqs.eu-west-1.amazonaws.com/1/results.fifo"
        ));
        assert!(!is_fifo("https://sqs.eu-west-1.amazonaws.com/1/results"));
        // sha256("captioning/msg-1"), computed with `printf 'captioning/msg-1' | sha256sum`.
        assert_eq!(
            dedup_id("captioning", "msg-1"),
            "81e0106e7b26b44fd7c91d2aa8aef23ecfe0342b2b85a34409e1544fbf65b459"
        );
        assert_ne!(dedup_id("captioning", "msg-1"), dedup_id("faces", "msg-1"));
    }

    #[cfg(feature = "s3")]
    use aws_sdk_s3::{
        config::http::HttpResponse, error::ErrorMetadata, operation::put_object::PutObjectError,
    };

    #[cfg(feature = "s3")]
    fn service_error(status: u16, code: &str) -> SdkError<PutObjectError> {
        let err = PutObjectError::generic(ErrorMetadata::builder().code(code).build());
        let raw = HttpResponse::new(
            status.try_into().unwrap(),
            aws_sdk_s3::primitives::SdkBody::empty(),
        );
        SdkError::service_error(err, raw)
    }

    #[test]
    #[cfg(feature = "s3")]
    fn sdk_failures_are_sorted_into_retryable_and_not() {
        for (status, code, want) in [
            (503, "SlowDown", ErrorType::Retryable),
            (500, "InternalError", ErrorType::Retryable),
            (429, "TooManyRequests", ErrorType::Retryable),
            (400, "RequestThrottled", ErrorType::Retryable),
            (403, "AccessDenied", ErrorType::Internal),
            (404, "NoSuchBucket", ErrorType::Internal),
            (400, "InvalidParameterValue", ErrorType::Internal),
        ] {
            let err = sdk_error("putting".into(), service_error(status, code));
            assert_eq!(err.error_type(), want, "{status} {code}: {err}");
        }
        let timeout: SdkError<PutObjectError> = SdkError::timeout_error("took too long");
        assert_eq!(
            sdk_error("putting".into(), timeout).error_type(),
            ErrorType::Retryable
        );
    }
}
