//! Measured figures per workload: cold start, inference time, memory, batch throughput.
//!
//! The committed `infra/placement/measurements.toml` names, per workload and figure, the
//! benchmark output the figure is read from (`from`, JSON files that `make bench` wrote and
//! `make plan-inputs` copied to `infra/placement/bench/`); only figures still waiting for their
//! benchmark are typed there, and those must be listed in `estimated`. A fresh `make bench`
//! result under `target/bench/` can also be laid over them with `--measurements`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::InputError;

/// One workload's figures. Times are medians (p50) in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The document the figures come from (a `BENCHMARKS.md` or a bench JSON file).
    pub source: String,
    /// The machine they were measured on.
    pub machine: String,
    /// The fields that are still estimates waiting for their benchmark (`gpu_inference_ms`,
    /// `batch_throughput`, ...). A bench JSON file that supplies a field takes it off this list;
    /// the plan flags every decision that uses a field on it.
    pub estimated: Vec<String>,
    /// Process start to first response on Lambda's CPUs.
    pub cold_start_ms: f64,
    /// One item (a query, a photo, an image), warm, on CPU.
    pub inference_ms: f64,
    /// Peak resident memory, which sizes `MemorySize`.
    pub peak_rss_mib: Option<f64>,
    /// Container start to first result on a serverless GPU (image, CUDA context, sessions).
    pub gpu_cold_start_ms: Option<f64>,
    /// One item, warm, on a GPU at batch size 1.
    pub gpu_inference_ms: Option<f64>,
    /// A bulk GPU pool from zero to its first result: instance launch and registration, the
    /// worker image pulled onto an empty disk, CUDA context, model fetch and sessions. Billed
    /// from the instance's start; the backlog waits for it.
    pub gpu_pool_start_ms: Option<f64>,
    /// GPU throughput at each batch size relative to batch size 1 (items/s ÷ items/s at 1).
    pub batch_throughput: BTreeMap<String, f64>,
    /// Free-text notes: what is assumed and what replaces the assumption.
    pub notes: Option<String>,
    /// The benchmark output each figure was read from (figure name → file); figures not here
    /// were typed in the TOML.
    pub from: BTreeMap<String, PathBuf>,
}

/// A workload's table as `measurements.toml` holds it: each figure typed, or read `from` a
/// benchmark's JSON output (a path relative to the TOML file).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    source: String,
    machine: String,
    #[serde(default)]
    estimated: Vec<String>,
    #[serde(default)]
    from: BTreeMap<String, PathBuf>,
    cold_start_ms: Option<f64>,
    inference_ms: Option<f64>,
    peak_rss_mib: Option<f64>,
    gpu_cold_start_ms: Option<f64>,
    gpu_inference_ms: Option<f64>,
    gpu_pool_start_ms: Option<f64>,
    #[serde(default)]
    batch_throughput: BTreeMap<String, f64>,
    notes: Option<String>,
}

/// The figures a benchmark's JSON output carries, and where in it: the in-process benchmarks
/// (`query_latency_ms.function.p50`, `cold_start_in_process.total_ms`, `peak_rss_mib`) and the
/// whole-process cold-start comparison of `tools/cold_start.py` (`commands.rust.*_summary`).
/// The first pointer present wins; the factor turns its unit into the figure's.
const BENCH_FIGURES: [(&str, &[(&str, f64)]); 3] = [
    ("inference_ms", &[("/query_latency_ms/function/p50", 1.0)]),
    (
        "cold_start_ms",
        &[
            ("/commands/rust/wall_s_summary/median", 1000.0),
            ("/cold_start_in_process/total_ms", 1.0),
        ],
    ),
    (
        "peak_rss_mib",
        &[
            ("/commands/rust/peak_rss_kib_summary/median", 1.0 / 1024.0),
            ("/peak_rss_mib", 1.0),
        ],
    ),
];

/// The figure `figure` from a benchmark's JSON output, if the output carries it.
fn bench_figure(value: &Value, figure: &str) -> Option<f64> {
    let (_, pointers) = BENCH_FIGURES.iter().find(|(f, _)| *f == figure)?;
    pointers
        .iter()
        .find_map(|(p, factor)| value.pointer(p).and_then(Value::as_f64).map(|x| x * factor))
}

fn read_json(path: &Path) -> Result<Value, InputError> {
    serde_json::from_str(&read(path)?).map_err(|e| InputError::Parse {
        path: path.to_path_buf(),
        format: "JSON",
        reason: e.to_string(),
    })
}

impl Entry {
    /// Reads every `from` file and fills the figures; `base` is the TOML file's folder.
    fn resolve(self, path: &Path, workload: &str) -> Result<Measurement, InputError> {
        let invalid = |what: String| InputError::Invalid {
            path: path.to_path_buf(),
            what,
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let mut typed: BTreeMap<&str, Option<f64>> = BTreeMap::from([
            ("cold_start_ms", self.cold_start_ms),
            ("inference_ms", self.inference_ms),
            ("peak_rss_mib", self.peak_rss_mib),
        ]);
        let mut from = BTreeMap::new();
        for (figure, file) in &self.from {
            let Some(slot) = typed.get_mut(figure.as_str()) else {
                return Err(invalid(format!(
                    "{workload}.from names {figure:?}; a benchmark's output gives only {}",
                    BENCH_FIGURES.map(|(f, _)| f).join(", ")
                )));
            };
            if slot.is_some() {
                return Err(invalid(format!(
                    "{workload}.{figure} is typed and also read from {}: keep one",
                    file.display()
                )));
            }
            let file = base.join(file);
            let value =
                bench_figure(&read_json(&file)?, figure).ok_or_else(|| InputError::Invalid {
                    path: file.clone(),
                    what: format!("carries no {figure} for {workload}"),
                })?;
            *slot = Some(value);
            from.insert(figure.clone(), file);
        }
        let required = |figure: &str| {
            typed[figure].ok_or_else(|| {
                invalid(format!(
                    "{workload} has no {figure}: name the benchmark output it comes from in \
                     `from`, or type an estimate and list it in `estimated`"
                ))
            })
        };
        Ok(Measurement {
            source: self.source,
            machine: self.machine,
            estimated: self.estimated,
            cold_start_ms: required("cold_start_ms")?,
            inference_ms: required("inference_ms")?,
            peak_rss_mib: typed["peak_rss_mib"],
            gpu_cold_start_ms: self.gpu_cold_start_ms,
            gpu_inference_ms: self.gpu_inference_ms,
            gpu_pool_start_ms: self.gpu_pool_start_ms,
            batch_throughput: self.batch_throughput,
            notes: self.notes,
            from,
        })
    }
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

    /// Parses the committed format; `from` paths are relative to `path`'s folder.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, InputError> {
        let entries: BTreeMap<String, Entry> =
            toml::from_str(text).map_err(|e| InputError::Parse {
                path: path.to_path_buf(),
                format: "TOML",
                reason: e.message().to_string(),
            })?;
        let mut by_workload = BTreeMap::new();
        for (workload, entry) in entries {
            let m = entry.resolve(path, &workload)?;
            validate(path, &workload, &m)?;
            by_workload.insert(workload, m);
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

    /// Takes the figures a `make bench` JSON file carries and replaces those fields only. The
    /// workload is the file's `"benchmark"`, or its name up to the first `-`
    /// (`embeddings-cold-start-fresh-sandbox.json`).
    fn overlay_bench_json(&mut self, path: &Path) -> Result<(), InputError> {
        let v = read_json(path)?;
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
        for (figure, _) in BENCH_FIGURES {
            let Some(x) = bench_figure(&v, figure) else {
                continue;
            };
            match figure {
                "inference_ms" => m.inference_ms = x,
                "cold_start_ms" => m.cold_start_ms = x,
                _ => m.peak_rss_mib = Some(x),
            }
            m.measured(figure);
            m.from.insert(figure.to_string(), path.to_path_buf());
            taken += 1;
        }
        if taken == 0 {
            return Err(InputError::Invalid {
                path: path.to_path_buf(),
                what: "carries none of the figures `make bench` writes (query_latency_ms, \
                       cold_start_in_process, commands.rust, peak_rss_mib)"
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

fn validate(path: &Path, workload: &str, measurement: &Measurement) -> Result<(), InputError> {
    let positive = [
        ("cold_start_ms", Some(measurement.cold_start_ms)),
        ("inference_ms", Some(measurement.inference_ms)),
        ("gpu_cold_start_ms", measurement.gpu_cold_start_ms),
        ("gpu_inference_ms", measurement.gpu_inference_ms),
        ("gpu_pool_start_ms", measurement.gpu_pool_start_ms),
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
    if let Some(bad) = measurement
        .estimated
        .iter()
        .find(|e| !FIGURES.contains(&e.as_str()))
    {
        return Err(InputError::Invalid {
            path: path.to_path_buf(),
            what: format!(
                "{workload}.estimated names {bad:?}, which is not a figure (one of {})",
                FIGURES.join(", ")
            ),
        });
    }
    for (batch, ratio) in &measurement.batch_throughput {
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
source = "functions/hosts/embeddings/BENCHMARKS.md"
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

    /// `toml` as `m.toml` in a folder that also holds `files` (name, contents).
    fn load_with(toml: &str, files: &[(&str, &str)]) -> Result<Measurements, InputError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let path = dir.path().join("m.toml");
        std::fs::write(&path, toml).unwrap();
        Measurements::from_toml_file(&path)
    }

    const FROM: &str = r#"
[embeddings]
source = "functions/hosts/embeddings/BENCHMARKS.md"
machine = "2-vCPU VM"
from = { inference_ms = "bench/e.json", cold_start_ms = "bench/cold.json", peak_rss_mib = "bench/cold.json" }
"#;
    const IN_PROCESS: &str =
        r#"{"benchmark": "embeddings", "query_latency_ms": {"function": {"p50": 3.25}}}"#;
    const COLD: &str = r#"{"commands": {"rust": {"wall_s_summary": {"median": 0.43}, "peak_rss_kib_summary": {"median": 110592}}}}"#;

    #[test]
    fn figures_are_read_from_the_benchmark_output_they_name() {
        let m = load_with(
            FROM,
            &[("bench/e.json", IN_PROCESS), ("bench/cold.json", COLD)],
        )
        .unwrap();
        let e = m.get("embeddings").unwrap();
        assert!((e.inference_ms - 3.25).abs() < 1e-9);
        assert!((e.cold_start_ms - 430.0).abs() < 1e-9);
        assert_eq!(e.peak_rss_mib, Some(108.0));
        assert!(e.from["inference_ms"].ends_with("bench/e.json"));
        assert!(e.from["cold_start_ms"].ends_with("bench/cold.json"));
    }

    #[test]
    fn a_figure_missing_from_its_benchmark_output_or_given_twice_is_an_error() {
        // The in-process file carries no cold start.
        let swapped = FROM.replace(
            "cold_start_ms = \"bench/cold.json\"",
            "cold_start_ms = \"bench/e.json\"",
        );
        let err = load_with(
            &swapped,
            &[("bench/e.json", IN_PROCESS), ("bench/cold.json", COLD)],
        )
        .unwrap_err();
        assert!(
            matches!(&err, InputError::Invalid { path, what } if path.ends_with("bench/e.json") && what.contains("cold_start_ms")),
            "{err}"
        );
        // A missing file names itself.
        let err = load_with(FROM, &[("bench/cold.json", COLD)]).unwrap_err();
        assert!(
            matches!(&err, InputError::Read { path, .. } if path.ends_with("bench/e.json")),
            "{err}"
        );
        // Typed and read: which one holds is ambiguous.
        let twice = format!("{FROM}inference_ms = 3.0\n");
        let err = load_with(
            &twice,
            &[("bench/e.json", IN_PROCESS), ("bench/cold.json", COLD)],
        )
        .unwrap_err();
        assert!(
            matches!(&err, InputError::Invalid { what, .. } if what.contains("keep one")),
            "{err}"
        );
        // A figure no benchmark output carries.
        let gpu = FROM.replace(
            "peak_rss_mib =",
            "gpu_inference_ms = \"bench/e.json\", peak_rss_mib =",
        );
        let err = load_with(
            &gpu,
            &[("bench/e.json", IN_PROCESS), ("bench/cold.json", COLD)],
        )
        .unwrap_err();
        assert!(
            matches!(&err, InputError::Invalid { what, .. } if what.contains("gpu_inference_ms")),
            "{err}"
        );
        // Neither typed nor read.
        let none = FROM.replace("inference_ms = \"bench/e.json\", ", "");
        let err = load_with(&none, &[("bench/cold.json", COLD)]).unwrap_err();
        assert!(
            matches!(&err, InputError::Invalid { what, .. } if what.contains("no inference_ms")),
            "{err}"
        );
    }

    /// The committed file: it loads, and every figure typed in it (not read from a benchmark's
    /// output) is one it lists as estimated, so no measured figure is copied by hand.
    #[test]
    fn the_committed_measurements_type_only_estimates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("measurements.toml");
        let m = Measurements::from_toml_file(&path).unwrap();
        for workload in ["embeddings", "faces", "captioning"] {
            let e = m.get(workload).unwrap();
            let present = [
                ("cold_start_ms", true),
                ("inference_ms", true),
                ("peak_rss_mib", e.peak_rss_mib.is_some()),
                ("gpu_cold_start_ms", e.gpu_cold_start_ms.is_some()),
                ("gpu_inference_ms", e.gpu_inference_ms.is_some()),
                ("gpu_pool_start_ms", e.gpu_pool_start_ms.is_some()),
                ("batch_throughput", !e.batch_throughput.is_empty()),
            ];
            for (figure, _) in present.iter().filter(|(_, p)| *p) {
                assert!(
                    e.from.contains_key(*figure) || e.estimated.iter().any(|x| x == figure),
                    "{workload}.{figure} is typed in measurements.toml but not listed as estimated"
                );
            }
            for figure in ["cold_start_ms", "inference_ms", "peak_rss_mib"] {
                assert!(
                    e.from.contains_key(figure),
                    "{workload}.{figure} is not read from a benchmark"
                );
            }
        }
    }
}
