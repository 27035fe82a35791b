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
    /// Where a benchmark output gives each figure (figure name → `file.json#/pointer`, as
    /// `from` or `pending` names it), so `--measurements` can lay that file over them.
    pub pointers: BTreeMap<String, String>,
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
    /// Figures a benchmark will give, typed as estimates until its output is committed: read
    /// from `file.json#/pointer` once that file exists, and off the estimated list then.
    #[serde(default)]
    pending: BTreeMap<String, PathBuf>,
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
        let mut pointers = BTreeMap::new();
        let mut estimated = self.estimated;
        let mut reads: Vec<(&String, &PathBuf)> = self.from.iter().collect();
        for (figure, file) in &self.pending {
            if !typed.contains_key(figure.as_str()) || !estimated.contains(figure) {
                return Err(invalid(format!(
                    "{workload}.pending names {figure:?}, which must be a typed figure listed in \
                     `estimated` until {} is committed",
                    file.display()
                )));
            }
            let name = file.to_string_lossy();
            let name = name.split_once('#').map_or(&*name, |(n, _)| n);
            if base.join(name).is_file() {
                // The benchmark's output is here: it replaces the estimate.
                typed.insert(figure.as_str(), None);
                estimated.retain(|e| e != figure);
                reads.push((figure, file));
            } else {
                pointers.insert(figure.clone(), file.to_string_lossy().into_owned());
            }
        }
        for (figure, file) in reads {
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
            // `file.json#/json/pointer` reads that value (in the figure's own unit); a bare file
            // name reads the figure where the benchmarks put it (BENCH_FIGURES).
            let text = file.to_string_lossy();
            let (name, pointer) = match text.split_once('#') {
                Some((name, pointer)) => (PathBuf::from(name), Some(pointer.to_string())),
                None => (file.clone(), None),
            };
            let path = base.join(&name);
            let json = read_json(&path)?;
            let value = match &pointer {
                Some(p) => json.pointer(p).and_then(Value::as_f64),
                None => bench_figure(&json, figure),
            }
            .ok_or_else(|| InputError::Invalid {
                path: path.clone(),
                what: match &pointer {
                    Some(p) => format!("carries no number at {p} for {workload}.{figure}"),
                    None => format!("carries no {figure} for {workload}"),
                },
            })?;
            *slot = Some(value);
            from.insert(figure.clone(), path);
            pointers.insert(figure.clone(), text.into_owned());
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
            estimated,
            pointers,
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
        if !self.by_workload.contains_key(&workload) {
            return self.overlay_by_pointers(path, &v, &workload);
        }
        let m = self.by_workload.get_mut(&workload).expect("checked above");
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

    /// Lays a benchmark output that serves several workloads (`clip.json`: the text and the
    /// vision tower) over every workload whose `from` or `pending` names a file of that name,
    /// each figure read at its pointer.
    fn overlay_by_pointers(
        &mut self,
        path: &Path,
        v: &Value,
        benchmark: &str,
    ) -> Result<(), InputError> {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut taken = 0;
        for m in self.by_workload.values_mut() {
            let reads: Vec<(String, String)> = m
                .pointers
                .iter()
                .filter_map(|(figure, spec)| {
                    let (file, pointer) = spec.split_once('#')?;
                    let same = Path::new(file)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        == file_name;
                    same.then(|| (figure.clone(), pointer.to_string()))
                })
                .collect();
            // Only the figures the file carries, as a bench JSON overlay takes them.
            for (figure, pointer) in reads {
                let Some(x) = v.pointer(&pointer).and_then(Value::as_f64) else {
                    continue;
                };
                match figure.as_str() {
                    "inference_ms" => m.inference_ms = x,
                    "cold_start_ms" => m.cold_start_ms = x,
                    _ => m.peak_rss_mib = Some(x),
                }
                m.measured(&figure);
                m.from.insert(figure, path.to_path_buf());
                m.source = path.display().to_string();
                taken += 1;
            }
        }
        if taken == 0 {
            return Err(InputError::NoMeasurement {
                workload: benchmark.to_string(),
                sources: self.describe_sources(),
            });
        }
        self.sources.push(path.to_path_buf());
        for (workload, m) in &self.by_workload {
            validate(path, workload, m)?;
        }
        Ok(())
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

    #[test]
    fn a_figure_is_read_at_the_json_pointer_its_from_names() {
        // One benchmark output carrying two workloads' figures (the CLIP towers').
        let clip = r#"{"benchmark": "clip", "query_latency_ms": {"function": {"p50": 21.5}}, "photo_latency_ms": {"function": {"p50": 480.0}}, "cold_start_ms": {"text": 900.0, "vision": 1200.0}}"#;
        let toml = r#"
[clip-text]
source = "s"
machine = "m"
from = { inference_ms = "bench/clip.json#/query_latency_ms/function/p50", cold_start_ms = "bench/clip.json#/cold_start_ms/text" }
[clip-vision]
source = "s"
machine = "m"
from = { inference_ms = "bench/clip.json#/photo_latency_ms/function/p50", cold_start_ms = "bench/clip.json#/cold_start_ms/vision" }
"#;
        let m = load_with(toml, &[("bench/clip.json", clip)]).unwrap();
        let text = m.get("clip-text").unwrap();
        assert_eq!((text.inference_ms, text.cold_start_ms), (21.5, 900.0));
        assert!(text.from["inference_ms"].ends_with("bench/clip.json"));
        let vision = m.get("clip-vision").unwrap();
        assert_eq!((vision.inference_ms, vision.cold_start_ms), (480.0, 1200.0));
        // A pointer to nothing names the file, the pointer and the figure.
        let wrong = toml.replace("/cold_start_ms/vision", "/cold_start_ms/photo");
        let err = load_with(&wrong, &[("bench/clip.json", clip)]).unwrap_err();
        assert!(
            matches!(&err, InputError::Invalid { path, what } if path.ends_with("bench/clip.json")
                && what.contains("/cold_start_ms/photo") && what.contains("clip-vision.cold_start_ms")),
            "{err}"
        );
    }

    #[test]
    fn a_pending_figure_is_the_estimate_until_its_benchmark_output_is_committed() {
        let toml = r#"
[clip-text]
source = "s"
machine = "m"
estimated = ["inference_ms", "cold_start_ms"]
pending = { inference_ms = "bench/clip.json#/query_latency_ms/function/p50" }
inference_ms = 30.0
cold_start_ms = 900.0
"#;
        let clip = r#"{"benchmark": "clip", "query_latency_ms": {"function": {"p50": 21.5}}}"#;
        // No bench/clip.json yet: the estimate, still listed as one.
        let m = load_with(toml, &[]).unwrap();
        let e = m.get("clip-text").unwrap();
        assert_eq!(e.inference_ms, 30.0);
        assert_eq!(e.estimated, ["inference_ms", "cold_start_ms"]);
        // Committed: read from it, and no longer an estimate.
        let m = load_with(toml, &[("bench/clip.json", clip)]).unwrap();
        let e = m.get("clip-text").unwrap();
        assert_eq!(e.inference_ms, 21.5);
        assert_eq!(e.estimated, ["cold_start_ms"]);
        assert!(e.from["inference_ms"].ends_with("bench/clip.json"));
        // A fresh run laid over it with --measurements, found by its file name; it replaces
        // only the figures it carries, and one carrying none of them is an error.
        let mut m = load_with(toml, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("clip.json");
        std::fs::write(&fresh, clip.replace("21.5", "19.0")).unwrap();
        m.overlay(&fresh).unwrap();
        let e = m.get("clip-text").unwrap();
        assert_eq!(e.inference_ms, 19.0);
        assert_eq!(e.estimated, ["cold_start_ms"]);
        std::fs::write(&fresh, r#"{"benchmark": "clip"}"#).unwrap();
        assert!(matches!(
            m.overlay(&fresh),
            Err(InputError::NoMeasurement { .. })
        ));
        // A pending figure must be a typed estimate until then.
        let untyped = toml.replace(
            "estimated = [\"inference_ms\", \"cold_start_ms\"]",
            "estimated = [\"cold_start_ms\"]",
        );
        let err = load_with(&untyped, &[]).unwrap_err();
        assert!(
            matches!(&err, InputError::Invalid { what, .. } if what.contains("pending")),
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
        // The CLIP towers wait for bench/clip.json: each CPU figure is read from it or, until it
        // is committed, an estimate that names where the benchmark will give it.
        for workload in ["clip-text", "clip-vision"] {
            let e = m.get(workload).unwrap();
            for figure in ["cold_start_ms", "inference_ms", "peak_rss_mib"] {
                let read = e.from.contains_key(figure);
                let pending = e.estimated.iter().any(|x| x == figure)
                    && e.pointers
                        .get(figure)
                        .is_some_and(|p| p.starts_with("bench/clip.json#/"));
                assert!(
                    read || pending,
                    "{workload}.{figure} is neither read from bench/clip.json nor pending on it"
                );
            }
        }
    }
}
