use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::ModelError;

/// Intra-op thread count for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// As many as the process may actually use. `std::thread::available_parallelism` honours the
    /// CPU affinity mask and cgroup CPU quotas, which is what Lambda (vCPUs by memory size) and
    /// container platforms limit, rather than the host's core count.
    Auto,
    Fixed(usize),
}

impl Threads {
    pub fn resolve(self) -> usize {
        match self {
            Threads::Fixed(n) => n,
            Threads::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// ONNX Runtime's graph optimisation level, in order: each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GraphOptLevel {
    Disable,
    Basic,
    Extended,
    All,
}

impl GraphOptLevel {
    pub(crate) fn to_ort(self) -> GraphOptimizationLevel {
        match self {
            GraphOptLevel::Disable => GraphOptimizationLevel::Disable,
            GraphOptLevel::Basic => GraphOptimizationLevel::Level1,
            GraphOptLevel::Extended => GraphOptimizationLevel::Level2,
            GraphOptLevel::All => GraphOptimizationLevel::Level3,
        }
    }
}

impl FromStr for GraphOptLevel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "disable" | "none" => Ok(GraphOptLevel::Disable),
            "basic" => Ok(GraphOptLevel::Basic),
            "extended" => Ok(GraphOptLevel::Extended),
            "all" => Ok(GraphOptLevel::All),
            _ => Err(()),
        }
    }
}

/// Where a session runs, chosen by the function's placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda {
        device_id: i32,
    },
    /// TensorRT, with CUDA registered behind it for the operators TensorRT does not take.
    TensorRt {
        device_id: i32,
    },
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda { .. } => "cuda",
            Provider::TensorRt { .. } => "tensorrt",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Session options, read once from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub intra_threads: Threads,
    pub opt_level: GraphOptLevel,
    pub provider: Provider,
    pub allow_cpu_fallback: bool,
    /// Where CPU sessions cache their optimised graph between cold starts; `None` turns it off.
    pub optimized_model_dir: Option<PathBuf>,
    /// A read-only directory of graphs prepared at packaging time (`prepare <OUT_DIR>`), looked
    /// up before `optimized_model_dir`: in a fresh Lambda sandbox `/tmp` is empty, so only a graph
    /// shipped in the artefact spares the first cold start ONNX Runtime's graph optimisation.
    pub prepared_model_dir: Option<PathBuf>,
    /// Set by `prepare <OUT_DIR>` only, never from the environment: every CPU session is built
    /// from the original model, and its portable graph is written here and loaded back.
    pub prepare_into: Option<PathBuf>,
    /// ONNX Runtime's QDQ fusion: int8 kernels for `QuantizeLinear`/`DequantizeLinear` patterns.
    /// It pays off on int8 matrix work (the MiniLM embedder); where a quantised model's weights
    /// are best dequantised once at load (the YuNet/SFace int8bq convolutions), turning it off
    /// lets constant folding do that instead of dequantising on every run.
    pub qdq_fusion: bool,
    /// Whether intra-op threads spin while waiting for work. Spinning shaves latency off one
    /// session's back-to-back ops; two sessions alternating on few cores (detector, recogniser)
    /// spend the spin stealing each other's CPU.
    pub thread_spinning: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            intra_threads: Threads::Auto,
            opt_level: GraphOptLevel::All,
            provider: Provider::Cpu,
            allow_cpu_fallback: false,
            optimized_model_dir: None,
            prepared_model_dir: None,
            prepare_into: None,
            qdq_fusion: true,
            thread_spinning: true,
        }
    }
}

impl SessionConfig {
    /// The variables [`SessionConfig::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional(
            "COLDPATH_INTRA_THREADS",
            "intra-op threads: auto or a count",
        ),
        EnvVar::optional(
            "COLDPATH_GRAPH_OPT",
            "graph optimisation: disable, basic, extended or all",
        ),
        EnvVar::optional(
            "COLDPATH_PROVIDER",
            "execution provider: cpu, cuda or tensorrt",
        ),
        EnvVar::optional("COLDPATH_CUDA_DEVICE", "the GPU index for cuda or tensorrt"),
        EnvVar::optional(
            "COLDPATH_ALLOW_CPU_FALLBACK",
            "run on CPU when the GPU provider is missing",
        ),
        EnvVar::optional(
            "COLDPATH_OPTIMIZED_MODEL_DIR",
            "the writable optimised-graph cache",
        ),
        EnvVar::optional(
            "COLDPATH_PREPARED_MODEL_DIR",
            "read-only graphs prepared at packaging",
        ),
        EnvVar::optional(
            "COLDPATH_QDQ_FUSION",
            "fuse QDQ pairs (the function's default otherwise)",
        ),
        EnvVar::optional(
            "COLDPATH_THREAD_SPINNING",
            "intra-op spinning (the function's default otherwise)",
        ),
    ];

    /// Reads `COLDPATH_INTRA_THREADS` (`auto` or a count), `COLDPATH_GRAPH_OPT`
    /// (`disable|basic|extended|all`), `COLDPATH_PROVIDER` (`cpu|cuda|tensorrt`),
    /// `COLDPATH_CUDA_DEVICE`, `COLDPATH_ALLOW_CPU_FALLBACK`, `COLDPATH_OPTIMIZED_MODEL_DIR`,
    /// `COLDPATH_PREPARED_MODEL_DIR`, `COLDPATH_QDQ_FUSION` and `COLDPATH_THREAD_SPINNING`, with
    /// ONNX Runtime's defaults.
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        Self::from_env_with(env, &SessionConfig::default())
    }

    /// Like `from_env`, but an unset `COLDPATH_QDQ_FUSION` or `COLDPATH_THREAD_SPINNING` takes
    /// the function's own default from `defaults` (what its benchmarks chose).
    pub fn from_env_with(
        env: &impl EnvSource,
        defaults: &SessionConfig,
    ) -> Result<Self, ConfigError> {
        let intra_threads = match config::get(env, "COLDPATH_INTRA_THREADS") {
            None => Threads::Auto,
            Some(v) if v.eq_ignore_ascii_case("auto") => Threads::Auto,
            Some(_) => Threads::Fixed(config::positive_or(env, "COLDPATH_INTRA_THREADS", 1)?),
        };
        let opt_level = match config::get(env, "COLDPATH_GRAPH_OPT") {
            None => GraphOptLevel::All,
            Some(v) => v.parse().map_err(|()| {
                ConfigError::invalid("COLDPATH_GRAPH_OPT", "disable, basic, extended or all", v)
            })?,
        };
        let device_id: i32 = config::parse_or(env, "COLDPATH_CUDA_DEVICE", "a GPU index", 0)?;
        let provider = match config::get(env, "COLDPATH_PROVIDER")
            .as_deref()
            .map(str::to_ascii_lowercase)
        {
            None => Provider::Cpu,
            Some(p) => match p.as_str() {
                "cpu" => Provider::Cpu,
                "cuda" => Provider::Cuda { device_id },
                "tensorrt" => Provider::TensorRt { device_id },
                _ => {
                    return Err(ConfigError::invalid(
                        "COLDPATH_PROVIDER",
                        "cpu, cuda or tensorrt",
                        p,
                    ));
                }
            },
        };
        Ok(SessionConfig {
            intra_threads,
            opt_level,
            provider,
            allow_cpu_fallback: config::bool_or(env, "COLDPATH_ALLOW_CPU_FALLBACK", false)?,
            optimized_model_dir: config::get(env, "COLDPATH_OPTIMIZED_MODEL_DIR")
                .map(PathBuf::from),
            prepared_model_dir: config::get(env, "COLDPATH_PREPARED_MODEL_DIR").map(PathBuf::from),
            prepare_into: None,
            qdq_fusion: config::bool_or(env, "COLDPATH_QDQ_FUSION", defaults.qdq_fusion)?,
            thread_spinning: config::bool_or(
                env,
                "COLDPATH_THREAD_SPINNING",
                defaults.thread_spinning,
            )?,
        })
    }
}

impl SessionConfig {
    /// The same options for `prepare <OUT_DIR>`: sessions are built from the original models and
    /// their portable graphs written to `out_dir`.
    pub fn preparing_into(self, out_dir: impl Into<PathBuf>) -> SessionConfig {
        SessionConfig {
            prepare_into: Some(out_dir.into()),
            ..self
        }
    }
}

/// Decides the provider before any session is built: the requested one if the library has it,
/// otherwise CPU when fallback is allowed, otherwise an error that says how to allow it.
pub fn select_provider(
    requested: Provider,
    compiled_in: impl Fn(Provider) -> bool,
    allow_cpu_fallback: bool,
) -> Result<Provider, ModelError> {
    if requested == Provider::Cpu || compiled_in(requested) {
        return Ok(requested);
    }
    if allow_cpu_fallback {
        tracing::warn!(requested = %requested, "execution provider not in this ONNX Runtime build; falling back to CPU");
        return Ok(Provider::Cpu);
    }
    Err(ModelError::ProviderUnavailable {
        requested,
        available: "not compiled into the loaded library; use the onnxruntime-gpu build"
            .to_string(),
    })
}

/// Whether the loaded library was built with the provider (says nothing about a GPU being there).
pub(crate) fn is_provider_compiled_in(p: Provider) -> bool {
    let available = match p {
        Provider::Cpu => Ok(true),
        Provider::Cuda { .. } => ep::CUDA::is_available(),
        Provider::TensorRt { .. } => ep::TensorRT::is_available(),
    };
    available.unwrap_or(false)
}

/// Registers the provider so that a failure to start it is an error, not a silent CPU run.
pub(crate) fn register_provider(
    builder: SessionBuilder,
    p: Provider,
) -> ort::Result<SessionBuilder> {
    let eps = match p {
        Provider::Cpu => return Ok(builder),
        Provider::Cuda { device_id } => vec![
            ep::CUDA::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure(),
        ],
        Provider::TensorRt { device_id } => vec![
            ep::TensorRT::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure(),
            ep::CUDA::default()
                .with_device_id(device_id)
                .build()
                .error_on_failure(),
        ],
    };
    Ok(builder.with_execution_providers(eps)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    /// The deploy contract: the readers of this crate read exactly the variables they list.
    #[test]
    fn the_readers_read_exactly_their_lists() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "2"),
            ("COLDPATH_PROVIDER", "cuda"),
        ]));
        SessionConfig::from_env(&env).unwrap();
        crate::OrtRuntime::library_from_env(&env);
        let difference = env.difference(&[SessionConfig::ENV, crate::OrtRuntime::ENV]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn defaults_are_cpu_all_auto() {
        let c = SessionConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(c, SessionConfig::default());
        assert!(Threads::Auto.resolve() >= 1);
    }

    #[test]
    fn reads_all_options() {
        let env = MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "3"),
            ("COLDPATH_GRAPH_OPT", "basic"),
            ("COLDPATH_PROVIDER", "TensorRT"),
            ("COLDPATH_CUDA_DEVICE", "1"),
            ("COLDPATH_ALLOW_CPU_FALLBACK", "true"),
            ("COLDPATH_OPTIMIZED_MODEL_DIR", "/tmp/coldpath/graphs"),
            ("COLDPATH_PREPARED_MODEL_DIR", "/var/task/graphs"),
        ]);
        let c = SessionConfig::from_env(&env).unwrap();
        assert_eq!(
            c.optimized_model_dir.as_deref(),
            Some(std::path::Path::new("/tmp/coldpath/graphs"))
        );
        assert_eq!(
            c.prepared_model_dir.as_deref(),
            Some(std::path::Path::new("/var/task/graphs"))
        );
        assert_eq!(c.prepare_into, None, "never read from the environment");
        assert_eq!(c.intra_threads, Threads::Fixed(3));
        assert_eq!(c.opt_level, GraphOptLevel::Basic);
        assert_eq!(c.provider, Provider::TensorRt { device_id: 1 });
        assert!(c.allow_cpu_fallback);
    }

    #[test]
    fn function_defaults_apply_only_when_unset() {
        let faces = SessionConfig {
            qdq_fusion: false,
            thread_spinning: false,
            ..SessionConfig::default()
        };
        let c = SessionConfig::from_env_with(&MapEnv::default(), &faces).unwrap();
        assert!(!c.qdq_fusion && !c.thread_spinning);
        let env = MapEnv::new([
            ("COLDPATH_QDQ_FUSION", "true"),
            ("COLDPATH_THREAD_SPINNING", "1"),
        ]);
        let c = SessionConfig::from_env_with(&env, &faces).unwrap();
        assert!(c.qdq_fusion && c.thread_spinning);
    }

    #[test]
    fn rejects_bad_options() {
        for (k, v) in [
            ("COLDPATH_INTRA_THREADS", "0"),
            ("COLDPATH_GRAPH_OPT", "max"),
            ("COLDPATH_PROVIDER", "tpu"),
            ("COLDPATH_CUDA_DEVICE", "x"),
            ("COLDPATH_QDQ_FUSION", "maybe"),
        ] {
            let err = SessionConfig::from_env(&MapEnv::new([(k, v)])).unwrap_err();
            assert!(err.to_string().starts_with(k), "{err}");
        }
    }

    #[test]
    fn provider_selection_respects_fallback() {
        let none = |_: Provider| false;
        let all = |_: Provider| true;
        let cuda = Provider::Cuda { device_id: 0 };
        assert_eq!(
            select_provider(Provider::Cpu, none, false).unwrap(),
            Provider::Cpu
        );
        assert_eq!(select_provider(cuda, all, false).unwrap(), cuda);
        assert_eq!(select_provider(cuda, none, true).unwrap(), Provider::Cpu);
        let err = select_provider(cuda, none, false).unwrap_err();
        assert!(
            err.to_string().contains("COLDPATH_ALLOW_CPU_FALLBACK"),
            "{err}"
        );
        assert_eq!(
            coldpath_core::Classify::error_type(&err),
            coldpath_core::ErrorType::ModelLoad
        );
    }
}
