//! The captioning function's configuration, read once from the environment at start.
//!
//! One struct serves both ways the binary runs: the Lambda SQS handler reads the batch settings,
//! the worker reads those and the queue settings. Everything is validated here, so a bad value is
//! a `Config` error naming the variable before any model is loaded.

use std::path::PathBuf;
use std::time::Duration;

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::{self, EnvVar};
use coldpath_image::{CodecPaths, ImageLimits};
use coldpath_models::{OrtRuntime, SessionConfig};
use coldpath_runtime::metrics::MetricsMode;

use crate::model::CaptionModelConfig;

/// SQS caps a long poll at 20 seconds.
pub const MAX_WAIT_SECS: u64 = 20;
/// SQS caps a message's visibility timeout at 12 hours.
pub const MAX_VISIBILITY_SECS: u64 = 43_200;

#[derive(Debug, Clone, PartialEq)]
pub struct CaptioningConfig {
    /// The model and how it decodes (`CAPTIONING_MODEL_*`, `CAPTIONING_NUM_BEAMS`, ...).
    pub model: CaptionModelConfig,
    pub ort_library: PathBuf,
    pub session: SessionConfig,
    /// Where remote (`s3://`) models are cached; Lambda only allows writes under /tmp.
    pub cache_dir: PathBuf,
    pub images: ImageLimits,
    /// `COLDPATH_LIBHEIF_PATH` / `COLDPATH_LIBAVIF_PATH`: the HEIC and AVIF decoders.
    pub image_codecs: CodecPaths,
    pub batch: BatchSettings,
    pub worker: WorkerSettings,
    /// Run one caption at init so the first batch does not pay ONNX Runtime's first-run cost.
    pub warmup: bool,
    /// `COLDPATH_METRICS`: whether metric lines (CloudWatch EMF, on stderr) are written.
    pub metrics: MetricsMode,
    /// `CAPTIONING_FAULT_BATCH_DELAY_MS`: a pause before each model call, read only in builds
    /// with the `fault-injection` feature (the process and chaos tests), never in a deployed one.
    #[cfg(feature = "fault-injection")]
    pub fault_delay: Duration,
}

/// How one batch of messages is processed, in either mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Images per model call (`CAPTIONING_MAX_BATCH`); also the worker's batch size outside bulk
    /// mode.
    pub max_batch: usize,
    /// The largest `max_new_tokens` a message may ask for (`CAPTIONING_MAX_NEW_TOKENS_CAP`).
    pub max_new_tokens_cap: usize,
    /// Images fetched and decoded at once (`CAPTIONING_IMAGE_CONCURRENCY`).
    pub image_concurrency: usize,
    /// Megapixels that may be decoded at once (`CAPTIONING_DECODE_BUDGET_MPX`, default 64). A
    /// decode waits until its photo's megapixels fit; a photo becomes its model input right after
    /// decoding, so a batch's memory is this budget plus the model's, whatever the batch size
    /// or the photos' resolution. Decoding costs up to about 14 bytes a pixel at its peak (the
    /// RGB buffer, the decoder's own, the EXIF rotation), so 64 Mpx is about 900 MB; lower it
    /// on a small Lambda. A photo larger than the budget still decodes, alone.
    pub decode_budget_mpx: u32,
    /// The Lambda handler's safety margin (`CAPTIONING_DEADLINE_MARGIN_MS`, default 2000): it
    /// plans its work to end this long before the invocation's deadline, and stops work still
    /// running then, leaving room to return the batch response (a timed-out invocation would
    /// return every message of the batch, finished ones included).
    pub deadline_margin: Duration,
    /// The most photos one message may carry (`CAPTIONING_MAX_PHOTOS_PER_MESSAGE`, default 100);
    /// a message with more fails as `RequestTooLarge` before any photo is fetched. A message is
    /// done only when all its photos are, so its captions must fit one Lambda invocation: 100
    /// at the measured 0.7 s a caption on Lambda's CPUs take 70 s of the 120 s timeout.
    pub max_photos_per_message: usize,
}

/// The queue worker's settings (`captioning worker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// `CAPTIONING_QUEUE_URL`; required by the worker only, so it is checked when the worker starts.
    pub queue_url: Option<String>,
    /// Batch size while the backlog is above `bulk_threshold` (`CAPTIONING_BULK_BATCH`).
    pub bulk_batch: usize,
    /// Approximate visible messages above which the worker switches to `bulk_batch`.
    pub bulk_threshold: u64,
    /// Exit after this long with an empty queue (`CAPTIONING_IDLE_EXIT_SECS`; 0 never exits).
    pub idle_exit: Option<Duration>,
    /// How long a received message stays hidden from other consumers; the worker extends it at
    /// half this period while the message's batch is in flight.
    pub visibility_timeout: Duration,
    /// Long-poll wait of the first receive of each batch (`CAPTIONING_WAIT_SECS`, 0..=20).
    /// A receive in flight is never cancelled (its messages would stay hidden with nobody to
    /// hand them back), so a stop can take this long before the worker sees it.
    pub wait: Duration,
    /// Once a batch has its first message, how long to keep receiving to fill it
    /// (`CAPTIONING_BATCH_FILL_MS`). SQS short polls sample a subset of its servers and may come
    /// back empty while messages wait, so one empty poll does not end the batch.
    pub fill_wait: Duration,
    /// After SIGTERM, how long the batch in flight may still run (`CAPTIONING_STOP_DEADLINE_SECS`,
    /// default 20, inside the 30 s most container platforms give before SIGKILL). At the deadline
    /// every message without a written result is handed back (visibility 0) and the worker
    /// exits 0.
    pub stop_deadline: Duration,
}

impl WorkerSettings {
    /// The queue URL, or the error the worker reports when it is missing.
    pub fn require_queue_url(&self) -> Result<&str, ConfigError> {
        self.queue_url
            .as_deref()
            .ok_or_else(|| ConfigError::Missing {
                name: "CAPTIONING_QUEUE_URL".to_string(),
                hint: "the URL of the SQS queue the worker reads".to_string(),
            })
    }
}

/// The variables [`require_result_sink`] reads: the worker's own requirement.
pub const WORKER_ENV: &[EnvVar] = &[EnvVar::required(
    coldpath_aws::RESULT_SINK_VAR,
    "where results go; `captioning worker` refuses to start without it",
)];

/// The worker's results must leave its machine: a container's or serverless GPU runtime's disk
/// goes with it, so the local default `COLDPATH_RESULT_SINK` has outside Lambda would lose every
/// caption. The worker therefore needs the variable set (a `local:<dir>` is fine when it is
/// meant, as in tests and on a machine with a persistent disk).
pub fn require_result_sink(env: &impl EnvSource) -> Result<(), ConfigError> {
    match config::get(env, coldpath_aws::RESULT_SINK_VAR) {
        Some(_) => Ok(()),
        None => Err(ConfigError::Missing {
            name: coldpath_aws::RESULT_SINK_VAR.to_string(),
            hint: "the worker's results must leave the machine: set s3://<bucket>/<prefix>, sqs:<queue-url> or local:<dir>".to_string(),
        }),
    }
}

fn secs(
    env: &impl EnvSource,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let expected = format!("whole seconds from {} to {}", range.start(), range.end());
    let value: u64 = config::parse_or(env, name, &expected, default)?;
    if !range.contains(&value) {
        return Err(ConfigError::invalid(name, expected, value.to_string()));
    }
    Ok(value)
}

impl CaptioningConfig {
    /// The variables [`CaptioningConfig::from_env`] reads itself in a deployed build;
    /// [`CaptioningConfig::env`] adds those of the readers it calls. A build with the
    /// `fault-injection` feature (tests only) also reads `CAPTIONING_FAULT_BATCH_DELAY_MS`, which
    /// is no deployment's to set and so is not listed.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("CAPTIONING_MAX_BATCH", "images per model call"),
        EnvVar::optional(
            "CAPTIONING_BULK_BATCH",
            "the worker's batch above the bulk threshold",
        ),
        EnvVar::optional(
            "CAPTIONING_BULK_THRESHOLD",
            "visible messages that switch the worker to bulk",
        ),
        EnvVar::optional(
            "CAPTIONING_IDLE_EXIT_SECS",
            "the worker exits after this long idle (0 never)",
        ),
        EnvVar::optional("CAPTIONING_WAIT_SECS", "the worker's long-poll wait"),
        EnvVar::optional(
            "CAPTIONING_STOP_DEADLINE_SECS",
            "how long the batch in flight runs after SIGTERM",
        ),
        EnvVar::optional(
            "CAPTIONING_MAX_NEW_TOKENS_CAP",
            "the most tokens a message may ask for",
        ),
        EnvVar::optional(
            "CAPTIONING_IMAGE_CONCURRENCY",
            "photos fetched and decoded at once",
        ),
        EnvVar::optional("CAPTIONING_DECODE_BUDGET_MPX", "megapixels decoded at once"),
        EnvVar::optional(
            "CAPTIONING_DEADLINE_MARGIN_MS",
            "the Lambda handler's margin before its deadline",
        ),
        EnvVar::optional(
            "CAPTIONING_MAX_PHOTOS_PER_MESSAGE",
            "photos one message may carry",
        ),
        EnvVar::optional("CAPTIONING_QUEUE_URL", "the SQS queue the worker reads"),
        EnvVar::optional(
            "CAPTIONING_VISIBILITY_TIMEOUT_SECS",
            "how long the worker hides a message",
        ),
        EnvVar::optional(
            "CAPTIONING_BATCH_FILL_MS",
            "how long the worker fills a batch",
        ),
        EnvVar::optional("CAPTIONING_WARMUP", "one caption at init"),
        EnvVar::optional("COLDPATH_CACHE_DIR", "where s3:// models are cached"),
    ];

    /// Every variable [`CaptioningConfig::from_env`] reads in a deployed build, its own and its
    /// readers'.
    pub fn env() -> Vec<EnvVar> {
        contract::union(&[
            Self::ENV,
            CaptionModelConfig::ENV,
            SessionConfig::ENV,
            OrtRuntime::ENV,
            ImageLimits::ENV,
            CodecPaths::ENV,
            MetricsMode::ENV,
        ])
    }

    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let max_batch = config::positive_or(env, "CAPTIONING_MAX_BATCH", 8)?;
        let bulk_batch = config::positive_or(env, "CAPTIONING_BULK_BATCH", 32)?;
        if bulk_batch < max_batch {
            return Err(ConfigError::invalid(
                "CAPTIONING_BULK_BATCH",
                format!("at least CAPTIONING_MAX_BATCH ({max_batch})"),
                bulk_batch.to_string(),
            ));
        }
        let idle = secs(
            env,
            "CAPTIONING_IDLE_EXIT_SECS",
            300,
            0..=u64::from(u32::MAX),
        )?;
        let wait = secs(
            env,
            "CAPTIONING_WAIT_SECS",
            MAX_WAIT_SECS,
            0..=MAX_WAIT_SECS,
        )?;
        let stop_deadline = secs(env, "CAPTIONING_STOP_DEADLINE_SECS", 20, 1..=3600)?;
        if wait > stop_deadline {
            // The receive in flight at SIGTERM runs to its end, so it must fit the deadline.
            return Err(ConfigError::invalid(
                "CAPTIONING_STOP_DEADLINE_SECS",
                format!("at least CAPTIONING_WAIT_SECS ({wait})"),
                stop_deadline.to_string(),
            ));
        }
        Ok(CaptioningConfig {
            model: CaptionModelConfig::from_env(env)?,
            ort_library: OrtRuntime::library_from_env(env),
            session: SessionConfig::from_env(env)?,
            cache_dir: coldpath_models::cache_dir_from_env(env),
            images: ImageLimits::from_env(env)?,
            image_codecs: CodecPaths::from_env(env)?,
            batch: BatchSettings {
                max_batch,
                max_new_tokens_cap: config::positive_or(env, "CAPTIONING_MAX_NEW_TOKENS_CAP", 128)?,
                image_concurrency: config::positive_or(env, "CAPTIONING_IMAGE_CONCURRENCY", 8)?,
                decode_budget_mpx: u32::try_from(config::positive_or(
                    env,
                    "CAPTIONING_DECODE_BUDGET_MPX",
                    64,
                )?)
                .unwrap_or(u32::MAX),
                deadline_margin: Duration::from_millis(config::parse_or(
                    env,
                    "CAPTIONING_DEADLINE_MARGIN_MS",
                    "milliseconds",
                    2000,
                )?),
                max_photos_per_message: config::positive_or(
                    env,
                    "CAPTIONING_MAX_PHOTOS_PER_MESSAGE",
                    100,
                )?,
            },
            worker: WorkerSettings {
                queue_url: config::get(env, "CAPTIONING_QUEUE_URL"),
                bulk_batch,
                bulk_threshold: config::parse_or(
                    env,
                    "CAPTIONING_BULK_THRESHOLD",
                    "a message count",
                    256,
                )?,
                idle_exit: (idle > 0).then(|| Duration::from_secs(idle)),
                visibility_timeout: Duration::from_secs(secs(
                    env,
                    "CAPTIONING_VISIBILITY_TIMEOUT_SECS",
                    300,
                    1..=MAX_VISIBILITY_SECS,
                )?),
                wait: Duration::from_secs(wait),
                fill_wait: Duration::from_millis(config::parse_or(
                    env,
                    "CAPTIONING_BATCH_FILL_MS",
                    "milliseconds",
                    1000,
                )?),
                stop_deadline: Duration::from_secs(stop_deadline),
            },
            warmup: config::bool_or(env, "CAPTIONING_WARMUP", true)?,
            metrics: MetricsMode::from_env(env)?,
            #[cfg(feature = "fault-injection")]
            fault_delay: Duration::from_millis(config::parse_or(
                env,
                "CAPTIONING_FAULT_BATCH_DELAY_MS",
                "milliseconds",
                0,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    /// Read only by test builds (the `fault-injection` feature), so in no deployed binary's list.
    #[cfg(feature = "fault-injection")]
    const TEST_ONLY: &[EnvVar] = &[EnvVar::optional(
        "CAPTIONING_FAULT_BATCH_DELAY_MS",
        "a pause before each model call",
    )];
    #[cfg(not(feature = "fault-injection"))]
    const TEST_ONLY: &[EnvVar] = &[];

    /// The deploy contract: `from_env` and the worker's requirement read exactly their lists
    /// (plus, in a test build, the fault-injection variable, which the lists must not hold).
    #[test]
    fn from_env_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "2"),
            ("COLDPATH_PROVIDER", "cuda"),
            ("CAPTIONING_NUM_BEAMS", "2"),
            ("CAPTIONING_MAX_NEW_TOKENS", "8"),
        ]));
        CaptioningConfig::from_env(&env).unwrap();
        let _ = require_result_sink(&env);
        let difference = env.difference(&[&CaptioningConfig::env(), WORKER_ENV, TEST_ONLY]);
        assert!(difference.is_empty(), "{difference:?}");
        assert!(
            !CaptioningConfig::env()
                .iter()
                .any(|v| v.name.contains("FAULT")),
            "a test-only variable is in the deployed list"
        );
    }

    #[test]
    fn defaults() {
        let c = CaptioningConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(c.batch.max_batch, 8);
        assert_eq!(c.batch.max_new_tokens_cap, 128);
        assert_eq!(c.batch.max_photos_per_message, 100);
        assert_eq!(c.batch.deadline_margin, Duration::from_secs(2));
        assert_eq!(c.worker.fill_wait, Duration::from_secs(1));
        assert_eq!(c.worker.stop_deadline, Duration::from_secs(20));
        assert_eq!(c.worker.bulk_batch, 32);
        assert_eq!(c.worker.bulk_threshold, 256);
        assert_eq!(c.worker.idle_exit, Some(Duration::from_secs(300)));
        assert_eq!(c.worker.visibility_timeout, Duration::from_secs(300));
        assert_eq!(c.worker.wait, Duration::from_secs(20));
        assert_eq!(c.worker.queue_url, None);
        let err = c.worker.require_queue_url().unwrap_err();
        assert!(err.to_string().starts_with("CAPTIONING_QUEUE_URL"), "{err}");
        assert!(c.warmup);
    }

    #[test]
    fn overrides() {
        let env = MapEnv::new([
            ("CAPTIONING_QUEUE_URL", "http://127.0.0.1:5000/123/q"),
            ("CAPTIONING_MAX_BATCH", "2"),
            ("CAPTIONING_BULK_BATCH", "4"),
            ("CAPTIONING_BULK_THRESHOLD", "10"),
            ("CAPTIONING_IDLE_EXIT_SECS", "0"),
            ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "2"),
            ("CAPTIONING_WAIT_SECS", "0"),
            ("CAPTIONING_MAX_NEW_TOKENS_CAP", "16"),
            ("CAPTIONING_BATCH_FILL_MS", "250"),
            ("CAPTIONING_STOP_DEADLINE_SECS", "5"),
            ("CAPTIONING_MAX_PHOTOS_PER_MESSAGE", "3"),
            ("CAPTIONING_DEADLINE_MARGIN_MS", "500"),
        ]);
        let c = CaptioningConfig::from_env(&env).unwrap();
        assert_eq!(
            c.worker.require_queue_url().unwrap(),
            "http://127.0.0.1:5000/123/q"
        );
        assert_eq!((c.batch.max_batch, c.worker.bulk_batch), (2, 4));
        assert_eq!(c.worker.bulk_threshold, 10);
        assert_eq!(c.worker.idle_exit, None);
        assert_eq!(c.worker.visibility_timeout, Duration::from_secs(2));
        assert_eq!(c.worker.wait, Duration::ZERO);
        assert_eq!(c.batch.max_new_tokens_cap, 16);
        assert_eq!(c.worker.fill_wait, Duration::from_millis(250));
        assert_eq!(c.worker.stop_deadline, Duration::from_secs(5));
        assert_eq!(c.batch.max_photos_per_message, 3);
        assert_eq!(c.batch.deadline_margin, Duration::from_millis(500));
    }

    /// Regression: a test-only pause was a production setting; a deployed function
    /// could be slowed by setting it. Now only `fault-injection` builds read the fault variable.
    #[test]
    fn the_old_delay_setting_is_not_read() {
        let env = MapEnv::new([("CAPTIONING_BATCH_DELAY_MS", "60000")]);
        let c = CaptioningConfig::from_env(&env).unwrap();
        assert_eq!(c, CaptioningConfig::from_env(&MapEnv::default()).unwrap());
    }

    #[test]
    fn the_worker_needs_an_explicit_result_sink() {
        let err = require_result_sink(&MapEnv::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("COLDPATH_RESULT_SINK: required"),
            "{err}"
        );
        let env = MapEnv::new([("COLDPATH_RESULT_SINK", "s3://results/captions")]);
        assert!(require_result_sink(&env).is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("CAPTIONING_MAX_BATCH", "0"),
            ("CAPTIONING_BULK_BATCH", "4"), // below the default max batch of 8
            ("CAPTIONING_WAIT_SECS", "21"),
            ("CAPTIONING_VISIBILITY_TIMEOUT_SECS", "0"),
            ("CAPTIONING_IDLE_EXIT_SECS", "-1"),
            ("CAPTIONING_BULK_THRESHOLD", "lots"),
            ("CAPTIONING_BATCH_FILL_MS", "1.5"),
            ("CAPTIONING_STOP_DEADLINE_SECS", "0"),
            ("CAPTIONING_MAX_PHOTOS_PER_MESSAGE", "0"),
            ("CAPTIONING_MAX_PHOTOS_PER_MESSAGE", "many"),
            // The default 20 s long poll would not fit a 10 s stop deadline.
            ("CAPTIONING_STOP_DEADLINE_SECS", "10"),
        ] {
            let err = CaptioningConfig::from_env(&MapEnv::new([(name, value)])).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}={value}: {err}");
        }
    }
}
