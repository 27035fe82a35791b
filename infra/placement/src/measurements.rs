//! Measured figures per workload: cold start, inference time, memory, batch throughput.
//!
//! The committed `infra/placement/measurements.toml` carries the figures from each function's
//! `BENCHMARKS.md` (and says which, and which figures are still estimates). The JSON files
//! `make bench` writes under `target/bench/` can be laid over it with `--measurements`, so a
//! fresh benchmark run feeds the plan without editing the committed file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::InputError;

/// One workload's figures. Times are medians (p50) in milliseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// The document the figures come from (a `BENCHMARKS.md` or a bench JSON file).
    pub source: String,
    /// The machine they were measured on.
    pub machine: String,
    /// The fields that are still estimates waiting for their benchmark (`gpu_inference_ms`,
    /// `batch_throughput`, ...). A bench JSON file that supplies a field takes it off this list;
    /// the plan flags every decision that uses a field on it.
    #[serde(default)]
    pub estimated: Vec<String>,
    /// Process start to first response on Lambda's CPUs.
    pub cold_start_ms: f64,
    /// One item (a query, a photo, an image), warm, on CPU.
    pub inference_ms: f64,
    /// Peak resident memory, which sizes `MemorySize`.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// Container start to first result on a serverless GPU (image, CUDA context, sessions).
    #[serde(default)]
    pub gpu_cold_start_ms: Option<f64>,
    /// One item, warm, on a GPU at batch size 1.
    #[serde(default)]
    pub gpu_inference_ms: Option<f64>,
    /// A bulk GPU pool from zero to its first result: instance launch and registration, the
    /// worker image pulled onto an empty disk, CUDA context, model fetch and sessions. Billed
    /// from the instance's start; the backlog waits for it.
    #[serde(default)]
    pub gpu_pool_start_ms: Option<f64>,
    /// GPU throughput at each batch size relative to batch size 1 (items/s ÷ items/s at 1).
    #[serde(default)]
    pub batch_throughput: BTreeMap<String, f64>,
    /// Free-text notes: what is assumed and what replaces the assumption.
    #[serde(default)]
    pub notes: Option<String>,
}

/// The fields of [`Measurement`] that hold figures, the names `estimated` may list.
pub const FIGURES: [&str; 7] = [
    "cold_start_ms",
    "inference_ms",
    "peak_rss_mib",
    "gpu_cold_start_ms",
    "gpu_inference_ms",
    "gpu_pool_start_ms",
    "batch_throughput",
];

impl Measurement {
    /// The figures among `fields` that are still estimates, in the order given.
    pub fn estimated_among<'f>(&self, fields: &[&'f str]) -> Vec<&'f str> {
        fields
            .iter()
            .copied()
            .filter(|f| self.estimated.iter().any(|e| e == f))
            .collect()
    }

    fn measured(&mut self, field: &str) {
        self.estimated.retain(|e| e != field);
    }

    /// The throughput ratio at `batch`, which must have been measured: interpolating a batch
    /// curve would invent figures.
    pub fn batch_ratio(&self, batch: u32) -> Option<f64> {
        if batch == 1 {
            return Some(1.0);
        }
        self.batch_throughput.get(&batch.to_string()).copied()
    }
}

/// All workloads' figures, and where they came from.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    pub by_workload: BTreeMap<String, Measurement>,
    pub sources: Vec<PathBuf>,
}

impl Measurements {
    /// Reads the committed TOML file: one table per workload.
    pub fn from_toml_file(path: &Path) -> Result<Self, InputError> {
        Self::from_toml_str(&read(path)?, path)
    }

    /// Parses the committed format; `path` is only used in messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, InputError> {
        let by_workload: BTreeMap<String, Measurement> =
            toml::from_str(text).map_err(|e| InputError::Parse {
                path: path.to_path_buf(),
                format: "TOML",
                reason: e.message().to_string(),
            })?;
        for (workload, m) in &by_workload {
            validate(path, workload, m)?;
        }
        Ok(Measurements {
            by_workload,
            sources: vec![path.to_path_buf()],
        })
    }

    /// Lays a file over these figures: TOML in the committed format, or a `make bench` JSON file.
    pub fn overlay(&mut self, path: &Path) -> Result<(), InputError> {
        if path.extension().is_some_and(|e| e == "json") {
            self.overlay_bench_json(path)
        } else {
            let other = Self::from_toml_file(path)?;
            self.by_workload.extend(other.by_workload);
            self.sources.push(path.to_path_buf());
            Ok(())
        }
    }

    /// Takes the figures a `make bench` JSON file carries and replaces those fields only.
    ///
    /// Two shapes exist: the in-process benchmark (`"benchmark": "<workload>"`, with
    /// `query_latency_ms.function.p50`, `cold_start_in_process.total_ms` and, from the captioning
    /// real-size benchmark, `peak_rss_mib`) and the
    /// whole-process cold-start comparison (`commands.rust.wall_s_summary.median`,
    /// `peak_rss_kib_summary.median`), named `<workload>-cold-start*.json`.
    fn overlay_bench_json(&mut self, path: &Path) -> Result<(), InputError> {
        let text = read(path)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| InputError::Parse {
            path: path.to_path_buf(),
            format: "JSON",
            reason: e.to_string(),
        })?;
        let file_stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let workload = v
            .get("benchmark")
            .and_then(|b| b.as_str())
            .unwrap_or_else(|| file_stem.split('-').next().unwrap_or_default())
            .to_string();
        let sources = self.describe_sources();
        let m = self
            .by_workload
            .get_mut(&workload)
            .ok_or(InputError::NoMeasurement {
                workload: workload.clone(),
                sources,
            })?;
        let mut taken = 0;
        if let Some(p50) = v
            .pointer("/query_latency_ms/function/p50")
            .and_then(|x| x.as_f64())
        {
            m.inference_ms = p50;
            m.measured("inference_ms");
            taken += 1;
        }
        if let Some(total) = v
            .pointer("/cold_start_in_process/total_ms")
            .and_then(|x| x.as_f64())
        {
            m.cold_start_ms = total;
            m.measured("cold_start_ms");
            taken += 1;
        }
        if let Some(wall) = v
            .pointer("/commands/rust/wall_s_summary/median")
            .and_then(|x| x.as_f64())
        {
            m.cold_start_ms = wall * 1000.0;
            m.measured("cold_start_ms");
            taken += 1;
        }
        if let Some(kib) = v
            .pointer("/commands/rust/peak_rss_kib_summary/median")
            .and_then(|x| x.as_f64())
        {
            m.peak_rss_mib = Some(kib / 1024.0);
            m.measured("peak_rss_mib");
            taken += 1;
        }
        if let Some(mib) = v.get("peak_rss_mib").and_then(|x| x.as_f64()) {
            m.peak_rss_mib = Some(mib);
            m.measured("peak_rss_mib");
            taken += 1;
        }
        if taken == 0 {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                what: "carries none of the figures `make bench` writes (query_latency_ms, \
                       cold_start_in_process, commands.rust)"
                    .to_string(),
            });
        }
        m.source = path.display().to_string();
        self.sources.push(path.to_path_buf());
        validate(path, &workload, m)
    }

    pub fn get(&self, workload: &str) -> Result<&Measurement, InputError> {
        self.by_workload
            .get(workload)
            .ok_or_else(|| InputError::NoMeasurement {
                workload: workload.to_string(),
                sources: self.describe_sources(),
            })
    }

    fn describe_sources(&self) -> String {
        let names: Vec<String> = self
            .sources
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        names.join(", ")
    }
}

fn validate(path: &Path, workload: &str, m: &Measurement) -> Result<(), InputError> {
    let positive = [
        ("cold_start_ms", Some(m.cold_start_ms)),
        ("inference_ms", Some(m.inference_ms)),
        ("gpu_cold_start_ms", m.gpu_cold_start_ms),
        ("gpu_inference_ms", m.gpu_inference_ms),
        ("gpu_pool_start_ms", m.gpu_pool_start_ms),
    ];
    for (field, value) in positive {
        if let Some(x) = value
            && !(x.is_finite() && x > 0.0)
        {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "{workload}.{field} must be a positive number of milliseconds, found {x}"
                ),
            });
        }
    }
    if let Some(bad) = m.estimated.iter().find(|e| !FIGURES.contains(&e.as_str())) {
        return Err(InputError::Invalid {
            path: path.to_path_buf(),
            what: format!(
                "{workload}.estimated names {bad:?}, which is not a figure (one of {})",
                FIGURES.join(", ")
            ),
        });
    }
    for (batch, ratio) in &m.batch_throughput {
        if batch.parse::<u32>().map_or(true, |b| b == 0) || !(ratio.is_finite() && *ratio > 0.0) {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                what: format!(
                    "{workload}.batch_throughput needs positive integer batch sizes and positive \
                     ratios, found {batch} = {ratio}"
                ),
            });
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|e| InputError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[embeddings]
source = "functions/embeddings/BENCHMARKS.md"
machine = "2-vCPU VM"
cold_start_ms = 100.0
inference_ms = 3.51
peak_rss_mib = 90.5
"#;

    /// `base` as the committed TOML with the bench JSON `json` (named `name`) laid over it.
    fn overlaid(base: &str, name: &str, json: &str) -> Measurements {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("m.toml");
        std::fs::write(&toml, base).unwrap();
        let mut m = Measurements::from_toml_file(&toml).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, json).unwrap();
        m.overlay(&path).unwrap();
        m
    }

    #[test]
    fn bench_json_replaces_only_the_figures_it_carries() {
        let m = overlaid(
            BASE,
            "embeddings-cold-start.json",
            r#"{"commands": {"rust": {"wall_s_summary": {"median": 0.12}, "peak_rss_kib_summary": {"median": 102400}}}}"#,
        );
        let e = m.get("embeddings").unwrap();
        assert!((e.cold_start_ms - 120.0).abs() < 1e-9);
        assert!((e.peak_rss_mib.unwrap() - 100.0).abs() < 1e-9);
        assert!((e.inference_ms - 3.51).abs() < 1e-9, "untouched");
    }

    #[test]
    fn bench_json_for_an_unknown_workload_or_without_figures_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("m.toml");
        std::fs::write(&base, BASE).unwrap();
        let mut m = Measurements::from_toml_file(&base).unwrap();
        let json = dir.path().join("other.json");
        std::fs::write(&json, r#"{"benchmark": "faces"}"#).unwrap();
        assert!(matches!(
            m.overlay(&json),
            Err(InputError::NoMeasurement { .. })
        ));
        std::fs::write(&json, r#"{"benchmark": "embeddings"}"#).unwrap();
        assert!(matches!(m.overlay(&json), Err(InputError::Invalid { .. })));
    }

    #[test]
    fn bench_json_takes_the_figures_it_measures_off_the_estimated_list() {
        let base = BASE.replace(
            "peak_rss_mib = 90.5",
            "peak_rss_mib = 90.5\nestimated = [\"inference_ms\", \"cold_start_ms\", \"peak_rss_mib\", \"gpu_inference_ms\"]",
        );
        let m = overlaid(
            &base,
            "real.json",
            r#"{"benchmark": "embeddings", "query_latency_ms": {"function": {"p50": 700.0}}, "peak_rss_mib": 2000.0}"#,
        );
        let e = m.get("embeddings").unwrap();
        assert!((e.inference_ms - 700.0).abs() < 1e-9);
        assert_eq!(e.peak_rss_mib, Some(2000.0));
        assert_eq!(e.estimated, ["cold_start_ms", "gpu_inference_ms"]);
        assert_eq!(
            e.estimated_among(&["gpu_inference_ms", "inference_ms"]),
            ["gpu_inference_ms"]
        );
    }

    #[test]
    fn an_estimated_list_naming_no_figure_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("m.toml");
        std::fs::write(&base, format!("{BASE}estimated = [\"latency\"]\n")).unwrap();
        assert!(matches!(
            Measurements::from_toml_file(&base),
            Err(InputError::Invalid { what, .. }) if what.contains("latency")
        ));
    }

    #[test]
    fn negative_times_and_zero_batches_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("m.toml");
        std::fs::write(
            &base,
            BASE.replace("inference_ms = 3.51", "inference_ms = -1.0"),
        )
        .unwrap();
        assert!(matches!(
            Measurements::from_toml_file(&base),
            Err(InputError::Invalid { .. })
        ));
        std::fs::write(
            &base,
            format!("{BASE}[embeddings.batch_throughput]\n0 = 2.0\n"),
        )
        .unwrap();
        assert!(matches!(
            Measurements::from_toml_file(&base),
            Err(InputError::Invalid { .. })
        ));
    }
}
