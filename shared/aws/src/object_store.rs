use std::path::{Path, PathBuf};

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;
use coldpath_io::{FetchError, LocalObjectDir, NoObjectStore, ObjectFetcher};

#[cfg(feature = "s3")]
use crate::S3Fetcher;

/// The object store a deployment reads `s3://` URIs from, chosen by `COLDPATH_OBJECT_STORE`:
///
/// - `s3`: Amazon S3 through the standard AWS configuration chain;
/// - `local:<dir>`: `s3://bucket/key` is the file `<dir>/bucket/key` (local runs, tests);
/// - `none`: any `s3://` URI is an error;
/// - unset or `auto`: `s3` inside Lambda, `local:events/data` elsewhere, so the sample events
///   work with no cloud at all.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    /// Needs the `s3` feature; without it, choosing `s3` is a configuration error.
    #[cfg(feature = "s3")]
    S3(S3Fetcher),
    Local(LocalObjectDir),
    None(NoObjectStore),
}

/// The parsed setting, before any client is built.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    S3,
    Local(PathBuf),
    None,
}

fn parse_choice(raw: Option<&str>, in_lambda: bool) -> Result<Choice, ConfigError> {
    let raw = raw
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("auto");
    match raw {
        "auto" if in_lambda => Ok(Choice::S3),
        "auto" => Ok(Choice::Local(PathBuf::from("events/data"))),
        "s3" => Ok(Choice::S3),
        "none" => Ok(Choice::None),
        _ => match raw.strip_prefix("local:") {
            Some(dir) if !dir.is_empty() => Ok(Choice::Local(PathBuf::from(dir))),
            _ => Err(ConfigError::invalid(
                "COLDPATH_OBJECT_STORE",
                "auto, s3, none or local:<dir>",
                raw,
            )),
        },
    }
}

/// How S3 is reached: path-style URLs or not, and the size of the ranges a large object is
/// fetched in (`None`: one GET for the whole object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct S3Setting {
    path_style: bool,
    range_bytes: Option<u64>,
}

/// AWS's guidance for ranged GETs is 8-16 MB a range.
const DEFAULT_RANGE_MIB: u64 = 16;

/// The choice and, for S3, how to reach it, read before any client is built.
fn read_setting(env: &impl EnvSource) -> Result<(Choice, S3Setting), ConfigError> {
    let raw = config::get(env, "COLDPATH_OBJECT_STORE");
    let in_lambda = config::get(env, "AWS_LAMBDA_FUNCTION_NAME").is_some();
    let choice = parse_choice(raw.as_deref(), in_lambda)?;
    let s3 = match choice {
        Choice::S3 => {
            let mib: u64 = config::parse_or(
                env,
                "COLDPATH_S3_RANGE_MIB",
                "a whole number of MiB (0: one GET per object)",
                DEFAULT_RANGE_MIB,
            )?;
            S3Setting {
                path_style: config::bool_or(env, "COLDPATH_S3_FORCE_PATH_STYLE", false)?,
                range_bytes: (mib > 0).then(|| mib.saturating_mul(1 << 20)),
            }
        }
        Choice::Local(_) | Choice::None => S3Setting {
            path_style: false,
            range_bytes: None,
        },
    };
    Ok((choice, s3))
}

impl ObjectStore {
    /// Reads `COLDPATH_OBJECT_STORE` (and, for S3, `COLDPATH_S3_FORCE_PATH_STYLE` for
    /// S3-compatible servers and `COLDPATH_S3_RANGE_MIB`); inside Lambda is told by
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub async fn from_env(env: &impl EnvSource) -> Result<ObjectStore, ConfigError> {
        Ok(match read_setting(env)? {
            #[cfg(feature = "s3")]
            (Choice::S3, s3) => ObjectStore::S3(
                S3Fetcher::from_env(s3.path_style)
                    .await
                    .with_ranges(s3.range_bytes),
            ),
            #[cfg(not(feature = "s3"))]
            (Choice::S3, _) => {
                return Err(ConfigError::invalid(
                    "COLDPATH_OBJECT_STORE",
                    "local:<dir> or none (this binary's coldpath-aws has no `s3` feature)",
                    config::get(env, "COLDPATH_OBJECT_STORE").unwrap_or_else(|| "auto".to_string()),
                ));
            }
            (Choice::Local(dir), _) => ObjectStore::Local(LocalObjectDir::new(dir)),
            (Choice::None, _) => ObjectStore::None(NoObjectStore),
        })
    }

    /// The variables [`ObjectStore::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("COLDPATH_OBJECT_STORE", "auto, s3, none or local:<dir>"),
        EnvVar::optional(
            "COLDPATH_S3_FORCE_PATH_STYLE",
            "path-style S3 URLs (S3-compatible servers)",
        ),
        EnvVar::optional(
            "COLDPATH_S3_RANGE_MIB",
            "large objects are fetched in ranges of this many MiB, 8 at a time (default 16; 0: one GET each)",
        ),
        EnvVar::platform(
            "AWS_LAMBDA_FUNCTION_NAME",
            "set by Lambda: auto means s3 there",
        ),
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(_) => "s3",
            ObjectStore::Local(_) => "local",
            ObjectStore::None(_) => "none",
        }
    }
}

impl ObjectFetcher for ObjectStore {
    async fn fetch_to(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, FetchError> {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.fetch_to(bucket, key, dest).await,
            ObjectStore::Local(l) => l.fetch_to(bucket, key, dest).await,
            ObjectStore::None(n) => n.fetch_to(bucket, key, dest).await,
        }
    }

    async fn fetch_bytes(
        &self,
        bucket: &str,
        key: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, FetchError> {
        match self {
            #[cfg(feature = "s3")]
            ObjectStore::S3(s) => s.fetch_bytes(bucket, key, max_bytes).await,
            ObjectStore::Local(l) => l.fetch_bytes(bucket, key, max_bytes).await,
            ObjectStore::None(n) => n.fetch_bytes(bucket, key, max_bytes).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deploy contract: the setting is read from exactly [`ObjectStore::ENV`].
    #[test]
    fn the_setting_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(coldpath_core::MapEnv::new([(
            "COLDPATH_OBJECT_STORE",
            "s3",
        )]));
        let setting = read_setting(&env).map(|(choice, s3)| (choice, s3.path_style));
        assert_eq!(setting, Ok((Choice::S3, false)));
        let difference = env.difference(&[ObjectStore::ENV]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn s3_ranges_default_to_16_mib_and_zero_means_whole_objects() {
        let ranges = |v: Option<&str>| {
            let env = coldpath_core::MapEnv::new(
                [("COLDPATH_OBJECT_STORE", "s3")]
                    .into_iter()
                    .chain(v.map(|v| ("COLDPATH_S3_RANGE_MIB", v))),
            );
            read_setting(&env).map(|(_, s3)| s3.range_bytes)
        };
        assert_eq!(ranges(None), Ok(Some(16 << 20)));
        assert_eq!(ranges(Some("8")), Ok(Some(8 << 20)));
        assert_eq!(ranges(Some("0")), Ok(None));
        let err = ranges(Some("-1")).unwrap_err();
        assert!(
            err.to_string().starts_with("COLDPATH_S3_RANGE_MIB"),
            "{err}"
        );
    }

    #[test]
    fn parses_choices() {
        assert_eq!(parse_choice(None, true), Ok(Choice::S3));
        assert_eq!(
            parse_choice(Some(""), false),
            Ok(Choice::Local("events/data".into()))
        );
        assert_eq!(parse_choice(Some("s3"), false), Ok(Choice::S3));
        assert_eq!(parse_choice(Some("none"), true), Ok(Choice::None));
        assert_eq!(
            parse_choice(Some("local:/data"), true),
            Ok(Choice::Local("/data".into()))
        );
        assert!(parse_choice(Some("local:"), false).is_err());
        let err = parse_choice(Some("gcs"), false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("COLDPATH_OBJECT_STORE: expected"),
            "{err}"
        );
    }
}
