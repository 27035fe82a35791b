//! The server's configuration, read once from the environment at start: which workloads it
//! hosts, where it listens, each model's queue and batching policy, and the drain deadline. Each
//! hosted engine reads its own settings exactly as its Lambda function does
//! ([`EmbeddingsConfig::from_env`], [`FacesConfig::from_env`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use coldpath_clip::{ClipConfig, Towers};
use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::{self, EnvVar};
use coldpath_embeddings::EmbeddingsConfig;
use coldpath_faces::FacesConfig;

/// The port SageMaker and most container platforms expect when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 8080;

/// How one model's requests queue and batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Requests that may wait for the model. Admission also covers one batch's worth
    /// (`max_items` requests) being prepared or run; past both, a request is refused with 429.
    pub queue: usize,
    /// Most items (texts, photos) in one batch. A request larger than this still runs, alone.
    pub max_items: usize,
    /// Most weight (tokens for embeddings) in one batch; `None` for no budget. A request heavier
    /// than the budget still runs, alone.
    pub max_weight: Option<usize>,
    /// How long a request may take from admission to answer before it gets 503; a request still
    /// queued then is dropped without running.
    pub deadline: Duration,
}

/// What one client connection may hold, so that neither many idle or slow clients nor a few
/// large ones can exhaust the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; one more is accepted and closed at once.
    pub max: usize,
    /// A request's head must arrive within this (an idle keep-alive connection is closed after
    /// it too), and a body may not pause longer than this between two reads.
    pub read_timeout: Duration,
}

/// Per connection, what its read buffer may grow to: request heads are small, and a body passes
/// through this buffer in pieces of at most this size before the handler holds it.
pub const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// Everything `coldpath-serve` reads from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    /// `COLDPATH_SERVE_HOST` (default 0.0.0.0, every interface, as a container needs).
    pub host: IpAddr,
    /// `PORT` (default 8080); 0 lets the OS choose (tests).
    pub port: u16,
    /// `EMBEDDINGS_*` settings when embeddings is hosted.
    pub embeddings: Option<EmbeddingsConfig>,
    pub embeddings_batch: BatchPolicy,
    /// `FACES_*` settings when faces is hosted.
    pub faces: Option<FacesConfig>,
    pub faces_batch: BatchPolicy,
    /// `CLIP_*` settings when CLIP's text tower is hosted (workload `clip`: the query side of
    /// photo search, warm beside the text embeddings; photos are embedded on upload, elsewhere).
    pub clip: Option<ClipConfig>,
    pub clip_batch: BatchPolicy,
    /// `COLDPATH_SERVE_DRAIN_MS`: after SIGTERM, how long in-flight and queued requests get to
    /// finish before the process exits anyway.
    pub drain: Duration,
    /// `COLDPATH_SERVE_RETRY_AFTER_S`: the `Retry-After` a refused request is given.
    pub retry_after_s: u64,
    /// `COLDPATH_SERVE_MAX_CONNECTIONS` (1024) and `COLDPATH_SERVE_READ_TIMEOUT_MS` (10 s).
    pub connections: ConnectionLimits,
    /// `COLDPATH_SERVE_STALL_MS` (60 s): a model call running longer than this marks the
    /// server not ready (`/ready` 503) until it returns, so the load balancer sends elsewhere.
    pub stall: Duration,
    /// `COLDPATH_SERVE_LOCAL_PATHS_DIR`: faces accepts `{"path"}` images, but only of files
    /// inside this directory (local runs only; unset, the default, refuses every path).
    pub local_paths_dir: Option<PathBuf>,
}

impl ServeConfig {
    /// The variables [`ServeConfig::from_env`] reads itself; [`ServeConfig::env`] adds the
    /// hosted engines'.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional(
            "COLDPATH_SERVE_WORKLOADS",
            "the hosted workloads (embeddings,faces,clip)",
        ),
        EnvVar::optional("COLDPATH_SERVE_HOST", "the address to listen on"),
        EnvVar::optional("PORT", "the port to listen on (8080)"),
        EnvVar::optional(
            "COLDPATH_SERVE_EMBEDDINGS_QUEUE",
            "embeddings requests that may wait",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_EMBEDDINGS_MAX_BATCH",
            "texts in one embeddings batch",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_EMBEDDINGS_BATCH_TOKENS",
            "tokens in one embeddings batch",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_EMBEDDINGS_DEADLINE_MS",
            "an embeddings request's deadline",
        ),
        EnvVar::optional("COLDPATH_SERVE_FACES_QUEUE", "faces requests that may wait"),
        EnvVar::optional(
            "COLDPATH_SERVE_FACES_MAX_BATCH",
            "photos in one faces batch",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_FACES_DEADLINE_MS",
            "a faces request's deadline",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_CLIP_QUEUE",
            "CLIP text requests that may wait",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_CLIP_MAX_BATCH",
            "texts in one CLIP text batch",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_CLIP_DEADLINE_MS",
            "a CLIP text request's deadline",
        ),
        EnvVar::optional("COLDPATH_SERVE_DRAIN_MS", "the drain after SIGTERM"),
        EnvVar::optional(
            "COLDPATH_SERVE_RETRY_AFTER_S",
            "Retry-After of a refused request",
        ),
        EnvVar::optional("COLDPATH_SERVE_MAX_CONNECTIONS", "open connections at most"),
        EnvVar::optional(
            "COLDPATH_SERVE_READ_TIMEOUT_MS",
            "a request head's and body pause's bound",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_STALL_MS",
            "a model call this long marks the server not ready",
        ),
        EnvVar::optional(
            "COLDPATH_SERVE_LOCAL_PATHS_DIR",
            "the directory {\"path\"} images may name",
        ),
    ];

    /// Every variable [`ServeConfig::from_env`] reads with every workload hosted.
    pub fn env() -> Vec<EnvVar> {
        contract::union(&[
            Self::ENV,
            &EmbeddingsConfig::env(),
            &FacesConfig::env(),
            &ClipConfig::env_for(Towers::Text),
        ])
    }

    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let raw = config::get(env, "COLDPATH_SERVE_WORKLOADS")
            .unwrap_or_else(|| "embeddings,faces".to_string());
        let (mut embeddings, mut faces, mut clip) = (false, false, false);
        for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "embeddings" => embeddings = true,
                "faces" => faces = true,
                "clip" => clip = true,
                _ => {
                    return Err(ConfigError::invalid(
                        "COLDPATH_SERVE_WORKLOADS",
                        "a comma-separated list of embeddings, faces, clip",
                        raw.as_str(),
                    ));
                }
            }
        }
        if !embeddings && !faces && !clip {
            return Err(ConfigError::invalid(
                "COLDPATH_SERVE_WORKLOADS",
                "at least one of embeddings, faces, clip",
                raw.as_str(),
            ));
        }
        let host = config::parse_or(
            env,
            "COLDPATH_SERVE_HOST",
            "an IP address",
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        )?;
        let port = config::parse_or(env, "PORT", "a port number", DEFAULT_PORT)?;
        let ms = |name: &str, default: usize| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(
                config::positive_or(env, name, default)? as u64,
            ))
        };
        Ok(ServeConfig {
            host,
            port,
            embeddings: embeddings
                .then(|| EmbeddingsConfig::from_env(env))
                .transpose()?,
            embeddings_batch: BatchPolicy {
                queue: config::positive_or(env, "COLDPATH_SERVE_EMBEDDINGS_QUEUE", 512)?,
                max_items: config::positive_or(env, "COLDPATH_SERVE_EMBEDDINGS_MAX_BATCH", 256)?,
                max_weight: Some(config::positive_or(
                    env,
                    "COLDPATH_SERVE_EMBEDDINGS_BATCH_TOKENS",
                    // Four of the embedder's runs: a batch is answered when its last run ends,
                    // so a larger one only delays its first members.
                    1_536,
                )?),
                deadline: ms("COLDPATH_SERVE_EMBEDDINGS_DEADLINE_MS", 5_000)?,
            },
            faces: faces.then(|| FacesConfig::from_env(env)).transpose()?,
            faces_batch: BatchPolicy {
                // Queued photos are decoded: at most this many full-size RGB buffers wait.
                queue: config::positive_or(env, "COLDPATH_SERVE_FACES_QUEUE", 16)?,
                max_items: config::positive_or(env, "COLDPATH_SERVE_FACES_MAX_BATCH", 4)?,
                max_weight: None,
                deadline: ms("COLDPATH_SERVE_FACES_DEADLINE_MS", 30_000)?,
            },
            clip: clip
                .then(|| ClipConfig::from_env(env, Towers::Text))
                .transpose()?,
            clip_batch: BatchPolicy {
                queue: config::positive_or(env, "COLDPATH_SERVE_CLIP_QUEUE", 512)?,
                // Every CLIP text row is the context length (77), so the item count is the
                // weight: no token budget.
                max_items: config::positive_or(env, "COLDPATH_SERVE_CLIP_MAX_BATCH", 64)?,
                max_weight: None,
                deadline: ms("COLDPATH_SERVE_CLIP_DEADLINE_MS", 5_000)?,
            },
            drain: ms("COLDPATH_SERVE_DRAIN_MS", 25_000)?,
            retry_after_s: config::positive_or(env, "COLDPATH_SERVE_RETRY_AFTER_S", 1)? as u64,
            connections: ConnectionLimits {
                max: config::positive_or(env, "COLDPATH_SERVE_MAX_CONNECTIONS", 1024)?,
                read_timeout: ms("COLDPATH_SERVE_READ_TIMEOUT_MS", 10_000)?,
            },
            stall: ms("COLDPATH_SERVE_STALL_MS", 60_000)?,
            local_paths_dir: config::get(env, "COLDPATH_SERVE_LOCAL_PATHS_DIR").map(PathBuf::from),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The most memory that faces requests in flight can hold at once, beyond the loaded
    /// models, from this configuration alone (`None` when faces is not hosted).
    ///
    /// A faces request holds nothing before it is admitted (its body stays in the client's
    /// socket), and at most `queue + max_items` are admitted. An admitted one holds, one after
    /// the other and each freed once the next exists: its body `B` (at most the photo's base64
    /// and 64 KiB of JSON), the base64 text parsed out of it (at most `B`), the encoded photo
    /// (`max_bytes`), and the decoder's pixels (at most `max_pixels` × 11 bytes: a 16-bit RGBA
    /// frame and the RGB8 copy made from it). Its peak is the largest adjacent pair; each open
    /// connection adds its read buffer.
    pub fn faces_memory_bound(&self) -> Option<u64> {
        let faces = self.faces.as_ref()?;
        let limits = faces.image_limits;
        let body = limits.max_bytes.saturating_mul(4) / 3 + 64 * 1024;
        let pixels = limits.max_pixels.saturating_mul(11);
        let per_request = (2 * body)
            .max(body + limits.max_bytes)
            .max(limits.max_bytes + pixels);
        let admitted = (self.faces_batch.queue + self.faces_batch.max_items) as u64;
        let connections = (self.connections.max * CONNECTION_BUFFER_BYTES) as u64;
        Some(admitted * per_request + connections)
    }

    /// The hosted workloads' names, for logs and errors.
    pub fn workloads(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.embeddings.is_some() {
            names.push("embeddings");
        }
        if self.faces.is_some() {
            names.push("faces");
        }
        if self.clip.is_some() {
            names.push("clip");
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    /// The deploy contract: `from_env` reads exactly [`ServeConfig::env`].
    #[test]
    fn from_env_reads_exactly_its_list() {
        // Every workload hosted: the list is what the server reads when it hosts them all.
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "2"),
            ("COLDPATH_PROVIDER", "cuda"),
            ("COLDPATH_SERVE_WORKLOADS", "embeddings,faces,clip"),
        ]));
        ServeConfig::from_env(&env).unwrap();
        let difference = env.difference(&[&ServeConfig::env()]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn defaults_host_both_on_8080() {
        let c = ServeConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(c.addr(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.workloads(), ["embeddings", "faces"]);
        assert!(c.clip.is_none());
        let with_clip = MapEnv::new([("COLDPATH_SERVE_WORKLOADS", "embeddings,clip")]);
        let c2 = ServeConfig::from_env(&with_clip).unwrap();
        assert_eq!(c2.workloads(), ["embeddings", "clip"]);
        // The query side only: the text tower's files, never the vision graph.
        let clip = c2.clip.unwrap();
        assert!(clip.model.file("textual/model.onnx").is_some());
        assert!(clip.model.file("visual/model.onnx").is_none());
        assert_eq!(c2.clip_batch.max_items, 64);
        assert_eq!(c.embeddings_batch.queue, 512);
        assert_eq!(c.embeddings_batch.max_weight, Some(1_536));
        assert_eq!(c.faces_batch.max_weight, None);
        assert_eq!(c.drain, Duration::from_secs(25));
        assert_eq!(c.connections.max, 1024);
        assert_eq!(c.connections.read_timeout, Duration::from_secs(10));
        assert_eq!(c.stall, Duration::from_secs(60));
        assert_eq!(c.local_paths_dir, None);
    }

    #[test]
    fn overrides_and_errors_name_the_variable() {
        let c = ServeConfig::from_env(&MapEnv::new([
            ("COLDPATH_SERVE_WORKLOADS", " faces "),
            ("PORT", "9000"),
            ("COLDPATH_SERVE_HOST", "127.0.0.1"),
            ("COLDPATH_SERVE_FACES_QUEUE", "2"),
            ("COLDPATH_SERVE_FACES_DEADLINE_MS", "50"),
            ("COLDPATH_SERVE_MAX_CONNECTIONS", "3"),
            ("COLDPATH_SERVE_READ_TIMEOUT_MS", "250"),
            ("COLDPATH_SERVE_LOCAL_PATHS_DIR", "events/data"),
        ]))
        .unwrap();
        assert_eq!(c.workloads(), ["faces"]);
        assert!(c.embeddings.is_none());
        assert_eq!(c.addr(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.faces_batch.queue, 2);
        assert_eq!(c.faces_batch.deadline, Duration::from_millis(50));
        assert_eq!(c.connections.max, 3);
        assert_eq!(c.connections.read_timeout, Duration::from_millis(250));
        assert_eq!(c.local_paths_dir, Some(PathBuf::from("events/data")));
        for (k, v) in [
            ("COLDPATH_SERVE_MAX_CONNECTIONS", "0"),
            ("COLDPATH_SERVE_STALL_MS", "soon"),
            ("COLDPATH_SERVE_WORKLOADS", "embeddings,captions"),
            ("COLDPATH_SERVE_WORKLOADS", ","),
            ("PORT", "http"),
            ("PORT", "70000"),
            ("COLDPATH_SERVE_EMBEDDINGS_QUEUE", "0"),
            ("COLDPATH_SERVE_HOST", "localhost:1"),
        ] {
            let err = ServeConfig::from_env(&MapEnv::new([(k, v)])).unwrap_err();
            assert!(err.to_string().starts_with(k), "{k}={v}: {err}");
        }
    }
}
