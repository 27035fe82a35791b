//! Metrics as CloudWatch embedded metric format (EMF) lines: no API call, no agent.
//!
//! CloudWatch Logs turns any log event that is an EMF document (one JSON object with an `_aws`
//! member) into metric values, so a function publishes its metrics by writing one line per
//! document to a stream that reaches CloudWatch Logs. Lambda sends a function's stdout and stderr
//! there; a container on AWS Batch does too, through its `awslogs` driver. The lines go to
//! **stderr**: in local `invoke` mode stdout holds only the response JSON, and in Lambda stderr
//! is captured exactly like stdout. They are written whole, with one `write_all` on the locked
//! stream, beside the tracing subscriber's lines and never through it: EMF must be the raw JSON
//! object, and the JSON log formatter would wrap it in a log record.
//!
//! Every document puts its metrics in namespace [`NAMESPACE`] under the dimension `Function`
//! (the function's name); error counts are also broken down by `ErrorType`. The metric names are
//! stable, since dashboards and alarms refer to them:
//!
//! | metric | unit | dimensions | when |
//! |---|---|---|---|
//! | [`LATENCY`] | Milliseconds | `Function` | once per invocation (per batch in the captioning worker) |
//! | [`BATCH_SIZE`] | Count | `Function` | same line: SQS messages, S3 records or embedding inputs |
//! | [`ERRORS`] | Count | `Function` | same line: failed units of work (0 when none failed) |
//! | [`ERRORS`] | Count | `Function`, `ErrorType` | one line per error type that occurred |
//! | [`COLD_START`] | Milliseconds | `Function` | once per process, from the cold-start record |
//!
//! Whether lines are written is [`MetricsMode`], read once from `COLDPATH_METRICS` (`emf` or
//! `off`) into each function's config: `emf` by default inside Lambda and inside an AWS Batch job
//! (the captioning worker's pool, whose default `awslogs` driver sends the container's output to
//! CloudWatch Logs), `off` elsewhere (a terminal or a test has no use for them; any other
//! container whose logs reach CloudWatch sets `COLDPATH_METRICS=emf`).
//!
//! The document follows the EMF specification (CloudWatch user guide, "Specification: Embedded
//! metric format"): `_aws.Timestamp` in milliseconds since the epoch, `_aws.CloudWatchMetrics` an
//! array of directives each with `Namespace`, `Dimensions` (an array of dimension sets, each an
//! array of at most 30 member names whose values are strings at the root) and `Metrics` (at most
//! 100 definitions with `Name` and `Unit`), and every referenced member at the root with a numeric
//! value for a metric.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;
use coldpath_core::{ColdStartRecord, ErrorType};
use serde_json::{Map, Value, json};

/// The setting that switches metric lines on or off.
pub const METRICS_VAR: &str = "COLDPATH_METRICS";
/// The CloudWatch namespace of every coldpath metric.
pub const NAMESPACE: &str = "coldpath";
/// The dimension every metric carries: the function's name.
pub const FUNCTION_DIMENSION: &str = "Function";
/// The dimension of the per-type error counts: the stable `errorType`.
pub const ERROR_TYPE_DIMENSION: &str = "ErrorType";

/// Time spent on one invocation (one batch in the captioning worker), milliseconds.
pub const LATENCY: &str = "Latency";
/// Units of work in one invocation: SQS messages, S3 records or embedding inputs.
pub const BATCH_SIZE: &str = "BatchSize";
/// Failed units of work; per `ErrorType` on the error lines.
pub const ERRORS: &str = "Errors";
/// The process's init time from the cold-start record, milliseconds.
pub const COLD_START: &str = "ColdStart";

/// The EMF limit on metric definitions in one directive.
pub const MAX_METRICS: usize = 100;
/// The EMF limit on dimensions in one dimension set.
pub const MAX_DIMENSIONS: usize = 30;

/// A CloudWatch unit, as EMF spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Count,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Milliseconds => "Milliseconds",
            Unit::Count => "Count",
        }
    }
}

/// One metric value for a document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub unit: Unit,
    pub value: f64,
}

/// Why a document could not be built. Every caller in this workspace passes fixed names, so
/// these are bugs, reported in the log rather than written as a document CloudWatch would reject.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error("an EMF document needs 1 to {MAX_METRICS} metrics, found {0}")]
    MetricCount(usize),
    #[error("an EMF dimension set holds at most {MAX_DIMENSIONS} dimensions, found {0}")]
    DimensionCount(usize),
    #[error("member {0:?} is used twice, or is `_aws`")]
    Name(String),
    #[error("metric {name:?} has value {value}, which JSON cannot hold")]
    NotFinite { name: String, value: String },
}

/// Builds one EMF document: `metrics` in [`NAMESPACE`] under one dimension set made of
/// `dimensions` (name, value), stamped `timestamp_ms` (milliseconds since the epoch).
pub fn document(
    timestamp_ms: u64,
    dimensions: &[(&str, &str)],
    metrics: &[Metric<'_>],
) -> Result<Value, MetricsError> {
    if metrics.is_empty() || metrics.len() > MAX_METRICS {
        return Err(MetricsError::MetricCount(metrics.len()));
    }
    if dimensions.len() > MAX_DIMENSIONS {
        return Err(MetricsError::DimensionCount(dimensions.len()));
    }
    let mut root = Map::new();
    let names = dimensions
        .iter()
        .map(|(name, _)| *name)
        .chain(metrics.iter().map(|m| m.name));
    for name in names {
        // A dimension and a metric share the root's namespace of members.
        if name == "_aws" || name.is_empty() || root.insert(name.to_string(), Value::Null).is_some()
        {
            return Err(MetricsError::Name(name.to_string()));
        }
    }
    for (name, value) in dimensions {
        root.insert(name.to_string(), json!(value));
    }
    for m in metrics {
        let value =
            serde_json::Number::from_f64(m.value).ok_or_else(|| MetricsError::NotFinite {
                name: m.name.to_string(),
                value: m.value.to_string(),
            })?;
        root.insert(m.name.to_string(), Value::Number(value));
    }
    let definitions: Vec<Value> = metrics
        .iter()
        .map(|m| json!({"Name": m.name, "Unit": m.unit.as_str()}))
        .collect();
    let dimension_set: Vec<&str> = dimensions.iter().map(|(name, _)| *name).collect();
    root.insert(
        "_aws".to_string(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimension_set],
                "Metrics": definitions,
            }],
        }),
    );
    Ok(Value::Object(root))
}

/// Whether metric lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsMode {
    /// EMF lines on stderr.
    Emf,
    /// None.
    Off,
}

impl MetricsMode {
    /// The variables [`MetricsMode::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional(METRICS_VAR, "emf or off (emf inside Lambda and AWS Batch)"),
        EnvVar::platform(
            "AWS_LAMBDA_FUNCTION_NAME",
            "set by Lambda: metrics on by default",
        ),
        EnvVar::platform(
            "AWS_BATCH_JOB_ID",
            "set by AWS Batch: metrics on by default",
        ),
    ];

    /// `COLDPATH_METRICS` (`emf` or `off`); unset, `emf` inside Lambda (told by
    /// `AWS_LAMBDA_FUNCTION_NAME`) or an AWS Batch job (`AWS_BATCH_JOB_ID`), whose output reaches
    /// CloudWatch Logs, and `off` elsewhere.
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let on_aws = ["AWS_LAMBDA_FUNCTION_NAME", "AWS_BATCH_JOB_ID"]
            .iter()
            .any(|name| config::get(env, name).is_some());
        match config::get(env, METRICS_VAR) {
            None if on_aws => Ok(MetricsMode::Emf),
            None => Ok(MetricsMode::Off),
            Some(raw) => match raw.to_ascii_lowercase().as_str() {
                "emf" => Ok(MetricsMode::Emf),
                "off" => Ok(MetricsMode::Off),
                _ => Err(ConfigError::invalid(METRICS_VAR, "emf or off", raw)),
            },
        }
    }
}

/// Where lines go.
#[derive(Debug, Clone)]
enum Output {
    Off,
    Stderr,
    /// Kept in memory, for tests of the functions' wiring.
    Memory(Arc<Mutex<Vec<String>>>),
}

/// One function's metric writer, built once at init and shared by its handlers.
#[derive(Debug, Clone)]
pub struct Metrics {
    function: String,
    output: Output,
}

impl Default for Metrics {
    /// Writes nothing (services built without a config, as unit tests build them).
    fn default() -> Self {
        Metrics {
            function: String::new(),
            output: Output::Off,
        }
    }
}

/// The lines a [`Metrics::in_memory`] writer wrote, each parsed back.
#[derive(Debug, Clone, Default)]
pub struct MemoryLines(Arc<Mutex<Vec<String>>>);

impl MemoryLines {
    pub fn documents(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
            .collect()
    }
}

impl Metrics {
    pub fn new(function: &str, mode: MetricsMode) -> Self {
        Metrics {
            function: function.to_string(),
            output: match mode {
                MetricsMode::Emf => Output::Stderr,
                MetricsMode::Off => Output::Off,
            },
        }
    }

    /// A writer that keeps its lines in memory (tests).
    pub fn in_memory(function: &str) -> (Self, MemoryLines) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let metrics = Metrics {
            function: function.to_string(),
            output: Output::Memory(Arc::clone(&lines)),
        };
        (metrics, MemoryLines(lines))
    }

    /// The same output under another `Function` value (the captioning worker reports as
    /// `captioning-worker`, apart from the Lambda function that shares its code).
    pub fn for_function(&self, function: &str) -> Self {
        Metrics {
            function: function.to_string(),
            output: self.output.clone(),
        }
    }

    pub fn function(&self) -> &str {
        &self.function
    }

    pub fn is_enabled(&self) -> bool {
        !matches!(self.output, Output::Off)
    }

    /// Starts measuring one invocation; its line is written when the returned value is dropped,
    /// so an early return on an error path still reports it.
    pub fn invocation(&self) -> Invocation<'_> {
        Invocation {
            metrics: self,
            started: Instant::now(),
            batch_size: 0,
            errors: BTreeMap::new(),
        }
    }

    /// The cold-start line, once per process, from the record init logged.
    pub fn cold_start(&self, record: &ColdStartRecord) {
        if !self.is_enabled() {
            return;
        }
        self.emit(
            &[(FUNCTION_DIMENSION, &self.function)],
            &[Metric {
                name: COLD_START,
                unit: Unit::Milliseconds,
                value: record.total_ms,
            }],
        );
    }

    fn emit(&self, dimensions: &[(&str, &str)], metrics: &[Metric<'_>]) {
        let line = match document(now_ms(), dimensions, metrics) {
            Ok(doc) => doc.to_string(),
            Err(e) => {
                tracing::warn!("metric line not written: {e}");
                return;
            }
        };
        match &self.output {
            Output::Off => {}
            Output::Stderr => {
                let mut bytes = line.into_bytes();
                bytes.push(b'\n');
                // One write on the locked stream, so a tracing line cannot land inside it.
                if let Err(e) = std::io::stderr().lock().write_all(&bytes) {
                    tracing::warn!("metric line not written: {e}");
                }
            }
            Output::Memory(lines) => lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One invocation being measured; see [`Metrics::invocation`].
#[derive(Debug)]
pub struct Invocation<'a> {
    metrics: &'a Metrics,
    started: Instant,
    batch_size: usize,
    errors: BTreeMap<&'static str, u64>,
}

impl Invocation<'_> {
    /// How many units of work the invocation carries.
    pub fn set_batch_size(&mut self, n: usize) {
        self.batch_size = n;
    }

    /// Counts one failed unit of work.
    pub fn error(&mut self, error_type: ErrorType) {
        *self.errors.entry(error_type.as_str()).or_default() += 1;
    }

    /// The time since the invocation started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Invocation<'_> {
    fn drop(&mut self) {
        let metrics = self.metrics;
        if !metrics.is_enabled() {
            return;
        }
        let function = (FUNCTION_DIMENSION, metrics.function.as_str());
        let total: u64 = self.errors.values().sum();
        metrics.emit(
            &[function],
            &[
                Metric {
                    name: LATENCY,
                    unit: Unit::Milliseconds,
                    value: self.started.elapsed().as_secs_f64() * 1e3,
                },
                Metric {
                    name: BATCH_SIZE,
                    unit: Unit::Count,
                    value: self.batch_size as f64,
                },
                Metric {
                    name: ERRORS,
                    unit: Unit::Count,
                    value: total as f64,
                },
            ],
        );
        // One line per type: a document has one value per dimension, and these lines carry no
        // `Function`-only count, so the total above is not counted twice.
        for (error_type, count) in &self.errors {
            metrics.emit(
                &[function, (ERROR_TYPE_DIMENSION, error_type)],
                &[Metric {
                    name: ERRORS,
                    unit: Unit::Count,
                    value: *count as f64,
                }],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use coldpath_core::MapEnv;

    use super::*;

    /// Checks `doc` against the EMF specification's rules and returns its one directive.
    fn check_emf(doc: &Value) -> &Value {
        let root = doc.as_object().expect("an EMF document is a JSON object");
        let aws = &root["_aws"];
        assert!(
            aws["Timestamp"]
                .as_u64()
                .is_some_and(|t| t > 1_600_000_000_000)
        );
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1);
        let directive = &directives[0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        for set in directive["Dimensions"].as_array().unwrap() {
            let set = set.as_array().unwrap();
            assert!(!set.is_empty() && set.len() <= MAX_DIMENSIONS);
            for name in set {
                // Dimension values are strings at the root.
                assert!(root[name.as_str().unwrap()].is_string(), "{name}");
            }
        }
        let metrics = directive["Metrics"].as_array().unwrap();
        assert!(!metrics.is_empty() && metrics.len() <= MAX_METRICS);
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(root[name].is_number(), "{name}");
            assert!(["Milliseconds", "Count"].contains(&m["Unit"].as_str().unwrap()));
            assert_eq!(m.as_object().unwrap().len(), 2);
        }
        directive
    }

    #[test]
    fn a_document_follows_the_emf_structure() {
        let doc = document(
            1_764_298_800_123,
            &[("Function", "faces")],
            &[
                Metric {
                    name: LATENCY,
                    unit: Unit::Milliseconds,
                    value: 12.5,
                },
                Metric {
                    name: BATCH_SIZE,
                    unit: Unit::Count,
                    value: 3.0,
                },
            ],
        )
        .unwrap();
        check_emf(&doc);
        assert_eq!(
            doc,
            json!({
                "_aws": {
                    "Timestamp": 1_764_298_800_123u64,
                    "CloudWatchMetrics": [{
                        "Namespace": "coldpath",
                        "Dimensions": [["Function"]],
                        "Metrics": [
                            {"Name": "Latency", "Unit": "Milliseconds"},
                            {"Name": "BatchSize", "Unit": "Count"}
                        ]
                    }]
                },
                "Function": "faces",
                "Latency": 12.5,
                "BatchSize": 3.0
            })
        );
        // One line: no newline inside the serialised document.
        assert!(!doc.to_string().contains('\n'));
    }

    #[test]
    fn documents_that_break_the_specification_are_refused() {
        let m = |name| Metric {
            name,
            unit: Unit::Count,
            value: 1.0,
        };
        assert_eq!(
            document(1, &[("Function", "f")], &[]),
            Err(MetricsError::MetricCount(0))
        );
        let names: Vec<String> = (0..=MAX_METRICS).map(|i| format!("m{i}")).collect();
        let many: Vec<Metric<'_>> = names.iter().map(|n| m(n.as_str())).collect();
        assert_eq!(document(1, &[], &many), Err(MetricsError::MetricCount(101)));
        assert!(document(1, &[], &many[..MAX_METRICS]).is_ok());
        let dims: Vec<String> = (0..=MAX_DIMENSIONS).map(|i| format!("d{i}")).collect();
        let dims: Vec<(&str, &str)> = dims.iter().map(|d| (d.as_str(), "v")).collect();
        assert_eq!(
            document(1, &dims, &[m("x")]),
            Err(MetricsError::DimensionCount(31))
        );
        assert!(matches!(
            document(1, &[("Errors", "x")], &[m("Errors")]),
            Err(MetricsError::Name(_))
        ));
        assert!(matches!(
            document(1, &[], &[m("_aws")]),
            Err(MetricsError::Name(_))
        ));
        let nan = Metric {
            name: "x",
            unit: Unit::Count,
            value: f64::NAN,
        };
        assert!(matches!(
            document(1, &[], &[nan]),
            Err(MetricsError::NotFinite { .. })
        ));
    }

    #[test]
    fn an_invocation_writes_its_line_and_one_per_error_type() {
        let (metrics, lines) = Metrics::in_memory("captioning");
        {
            let mut invocation = metrics.invocation();
            invocation.set_batch_size(5);
            invocation.error(ErrorType::InvalidInput);
            invocation.error(ErrorType::Retryable);
            invocation.error(ErrorType::InvalidInput);
        }
        let docs = lines.documents();
        assert_eq!(docs.len(), 3, "{docs:?}");
        for doc in &docs {
            check_emf(doc);
            assert_eq!(doc["Function"], "captioning");
        }
        let main = check_emf(&docs[0]);
        assert_eq!(main["Dimensions"], json!([["Function"]]));
        assert!(docs[0]["Latency"].as_f64().is_some_and(|l| l >= 0.0));
        assert_eq!(docs[0]["BatchSize"], 5.0);
        assert_eq!(docs[0]["Errors"], 3.0);
        let by_type: Vec<(String, f64)> = docs[1..]
            .iter()
            .map(|d| {
                assert_eq!(
                    check_emf(d)["Dimensions"],
                    json!([["Function", "ErrorType"]])
                );
                (
                    d["ErrorType"].as_str().unwrap().to_string(),
                    d["Errors"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            by_type,
            [
                ("InvalidInput".to_string(), 2.0),
                ("Retryable".to_string(), 1.0)
            ]
        );

        // A clean invocation still reports zero errors, so an error rate can be computed.
        lines.0.lock().unwrap().clear();
        drop(metrics.invocation());
        let docs = lines.documents();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["Errors"], 0.0);
    }

    #[test]
    fn the_cold_start_line_carries_the_record_total() {
        let (metrics, lines) = Metrics::in_memory("faces");
        let record = ColdStartRecord {
            function: "faces".into(),
            provider: "cpu".into(),
            library_load_ms: 10.0,
            model_fetch_ms: 20.0,
            session_build_ms: 250.0,
            warmup_ms: 30.0,
            total_ms: 312.5,
        };
        metrics.cold_start(&record);
        let docs = lines.documents();
        assert_eq!(docs.len(), 1);
        let directive = check_emf(&docs[0]);
        assert_eq!(
            directive["Metrics"],
            json!([{"Name": "ColdStart", "Unit": "Milliseconds"}])
        );
        assert_eq!(docs[0]["ColdStart"], 312.5);
    }

    #[test]
    fn off_writes_nothing() {
        let metrics = Metrics::new("embeddings", MetricsMode::Off);
        assert!(!metrics.is_enabled());
        drop(metrics.invocation());
        assert!(!Metrics::default().is_enabled());
    }

    /// The deploy contract: the mode is read from exactly [`MetricsMode::ENV`].
    #[test]
    fn the_mode_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::default());
        MetricsMode::from_env(&env).unwrap();
        let difference = env.difference(&[MetricsMode::ENV]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn the_mode_comes_from_the_setting_or_the_environment() {
        let mode = |pairs: &[(&str, &str)]| MetricsMode::from_env(&MapEnv::new(pairs.to_vec()));
        assert_eq!(mode(&[]), Ok(MetricsMode::Off));
        assert_eq!(
            mode(&[("AWS_LAMBDA_FUNCTION_NAME", "coldpath-faces")]),
            Ok(MetricsMode::Emf)
        );
        assert_eq!(
            mode(&[
                ("AWS_LAMBDA_FUNCTION_NAME", "coldpath-faces"),
                ("COLDPATH_METRICS", "off")
            ]),
            Ok(MetricsMode::Off)
        );
        assert_eq!(
            mode(&[("AWS_BATCH_JOB_ID", "3f2c0d6e-1b2a-4c5d-9e8f-0a1b2c3d4e5f")]),
            Ok(MetricsMode::Emf)
        );
        assert_eq!(mode(&[("COLDPATH_METRICS", " EMF ")]), Ok(MetricsMode::Emf));
        let err = mode(&[("COLDPATH_METRICS", "prometheus")]).unwrap_err();
        assert!(err.to_string().contains("COLDPATH_METRICS"), "{err}");
    }
}
