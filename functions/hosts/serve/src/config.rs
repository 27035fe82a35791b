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
    /// Longest a batch smaller than the one before waits for more requests (at most an eighth
    /// of the last batch's run); zero never waits. See the batcher's fill wait.
    pub fill_wait: Duration,
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

/// The tokenizers' working set while they tokenize one text, per byte of the text: the most
/// measured over texts built to be costly (one token a byte, such as `"a!"` repeated: 299 bytes
/// for all-MiniLM-L6-v2's WordPiece, 321 for CLIP's byte-level BPE, with tokenizers 0.23, 1 MiB
/// texts), rounded up by a fifth. Measured, not derived: the tokenizer keeps every piece of the
/// text with its offsets until it truncates.
pub const TOKENIZER_BYTES_PER_TEXT_BYTE: u64 = 384;

/// A request whose texts come to at most this many bytes (a search query) is tokenized on the
/// runtime worker that took it, in tens of microseconds, instead of queueing for a tokenizing
/// thread, where it would wait behind whatever large text that thread is on (a 1 MiB text takes
/// about a second). Each worker then holds at most one such working set (384 KiB) beside its
/// tokenizing thread's.
pub const INLINE_TOKENIZE_BYTES: usize = 1024;

/// What the loaded models fix that a text bound needs: their vector sizes, and CLIP's context
/// length (its rows' width). Known once the models are loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextShapes {
    pub embeddings_dims: Option<usize>,
    /// CLIP's text vector size and context length.
    pub clip: Option<(usize, usize)>,
}

/// One text workload's parts of [`ServeConfig::text_memory_bound`], in bytes.
struct TextTerms {
    admitted: u64,
    /// What one admitted request holds at most.
    held: u64,
    /// What one worker thread holds at most for one of its requests (a JSON tree).
    worker: u64,
    /// The request body limit.
    body: u64,
    /// The running batch's own copies.
    batch: u64,
}

impl TextTerms {
    fn new(
        policy: BatchPolicy,
        body: usize,
        texts: usize,
        ids: usize,
        dims: usize,
        batch: usize,
    ) -> Self {
        let body = body as u64;
        let buffer = 2 * (body + CONNECTION_BUFFER_BYTES as u64);
        let parsed = body + 64 * texts as u64;
        let ids = ids as u64;
        let vectors = (texts * dims * 4) as u64;
        let answer = answer_bytes(texts, dims);
        let held = (buffer + parsed)
            .max(parsed + ids)
            .max(ids + vectors)
            .max(vectors + answer);
        let answer_tree = 32 * (texts * dims) as u64 + answer;
        TextTerms {
            admitted: (policy.queue + policy.max_items) as u64,
            held,
            worker: (32 * body + parsed).max(answer_tree),
            body,
            batch: batch as u64,
        }
    }
}

/// An OpenAI embeddings answer of `texts` vectors of `dims` floats, serialized: at most 16
/// bytes a float (`-1.2345678e-12,`) and 96 a vector for its object, and 512 for the rest.
fn answer_bytes(texts: usize, dims: usize) -> u64 {
    (texts * (16 * dims + 96) + 512) as u64
}

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
        EnvVar::optional(
            "COLDPATH_SERVE_EMBEDDINGS_FILL_WAIT_MS",
            "longest wait to fill an embeddings batch (5; 0 never waits)",
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
        EnvVar::optional(
            "COLDPATH_SERVE_CLIP_FILL_WAIT_MS",
            "longest wait to fill a CLIP text batch (5; 0 never waits)",
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
        let fill_ms = |name: &str, default: u64| -> Result<Duration, ConfigError> {
            config::parse_or(env, name, "milliseconds (0 never waits)", default)
                .map(Duration::from_millis)
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
                fill_wait: fill_ms("COLDPATH_SERVE_EMBEDDINGS_FILL_WAIT_MS", 5)?,
            },
            faces: faces.then(|| FacesConfig::from_env(env)).transpose()?,
            faces_batch: BatchPolicy {
                // Queued photos are decoded: at most this many full-size RGB buffers wait.
                queue: config::positive_or(env, "COLDPATH_SERVE_FACES_QUEUE", 16)?,
                max_items: config::positive_or(env, "COLDPATH_SERVE_FACES_MAX_BATCH", 4)?,
                max_weight: None,
                deadline: ms("COLDPATH_SERVE_FACES_DEADLINE_MS", 30_000)?,
                // Photos run one after the other, not stacked: a fuller batch saves nothing.
                fill_wait: Duration::ZERO,
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
                fill_wait: fill_ms("COLDPATH_SERVE_CLIP_FILL_WAIT_MS", 5)?,
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

    /// The most memory that text requests in flight (embeddings, and CLIP's text tower when
    /// hosted) can hold at once, beyond the loaded models, from this configuration and the
    /// loaded models' shapes (`None` when neither is hosted). `workers` is the runtime's worker
    /// threads, which is also how many requests are tokenized at once.
    ///
    /// Like faces, a text request holds nothing before it is admitted, and at most `queue +
    /// max_items` are admitted per workload. An admitted one holds, in turn: its body being read
    /// (at most `2 (B + 64 KiB)`: a body of undeclared length grows its buffer by doubling), the
    /// texts parsed out of it (`B`, and 64 bytes a text) while the body is freed, the texts and
    /// their token ids (12 bytes a kept token: ids, type ids, mask; CLIP rows of 4 bytes a
    /// position), the ids and its vectors (4 bytes a dimension), the vectors and the serialized
    /// answer (at most 16 bytes a dimension and 96 a text). Its share is the largest adjacent pair.
    ///
    /// Beside those, bounded by the threads that do the work rather than by the queue: each
    /// worker thread parses one body into a JSON tree at a time (at most 32 bytes of tree a byte
    /// of body: a `Value` is 32 bytes and the shortest JSON value is one byte and a comma), or
    /// builds one answer's tree (32 bytes a dimension); each of `workers` tokenizing threads
    /// holds the tokenizer's working set for one text, [`TOKENIZER_BYTES_PER_TEXT_BYTE`] times
    /// the text's bytes; and each model's running batch holds its input tensors and output.
    pub fn text_memory_bound(&self, shapes: &TextShapes, workers: usize) -> Option<u64> {
        let mut terms: Vec<TextTerms> = Vec::new();
        if let (Some(c), Some(dims)) = (&self.embeddings, shapes.embeddings_dims) {
            let tokens = c.pipeline.max_tokens;
            // The embedder's runs are at most `max_batch_tokens` padded tokens, or one text.
            let run_tokens = c.pipeline.max_batch_tokens.max(tokens);
            terms.push(TextTerms::new(
                self.embeddings_batch,
                c.limits.max_request_bytes,
                c.limits.max_inputs,
                // ids, type ids and attention mask (u32 each) a kept token, and the encoding's
                // own fixed part (its empty vectors and map) a text.
                c.limits.max_inputs * (12 * tokens + 256),
                dims,
                // i64 ids, mask, its copy and type ids a padded position, and the model's
                // output of `dims` floats a position.
                run_tokens * (32 + 4 * dims),
            ));
        }
        if let (Some(c), Some((dims, context))) = (&self.clip, shapes.clip) {
            let limits = c.limits.text;
            let rows = |texts: usize| texts * (4 * context + 8);
            terms.push(TextTerms::new(
                self.clip_batch,
                limits.max_request_bytes,
                limits.max_inputs,
                rows(limits.max_inputs),
                dims,
                // The batch's rows stacked into one array (a request larger than a batch runs
                // alone), and the tower's output.
                rows(self.clip_batch.max_items.max(limits.max_inputs)) * (1 + dims),
            ));
        }
        if terms.is_empty() {
            return None;
        }
        let admitted: u64 = terms.iter().map(|t| t.admitted * t.held).sum();
        let per_worker = terms.iter().map(|t| t.worker).max().unwrap_or(0);
        let largest_text = terms.iter().map(|t| t.body).max().unwrap_or(0);
        // A tokenizing thread's text, and a small one tokenized on the worker itself.
        let tokenizing =
            TOKENIZER_BYTES_PER_TEXT_BYTE * (largest_text + INLINE_TOKENIZE_BYTES as u64);
        let batches: u64 = terms.iter().map(|t| t.batch).sum();
        Some(admitted + workers as u64 * (per_worker + tokenizing) + batches)
    }

    /// The largest answer a text workload can give, serialized: what one connection whose
    /// client does not read its answer can keep (`None` when no text workload is hosted).
    pub fn largest_text_answer(&self, shapes: &TextShapes) -> Option<u64> {
        let embeddings = self
            .embeddings
            .as_ref()
            .zip(shapes.embeddings_dims)
            .map(|(c, dims)| answer_bytes(c.limits.max_inputs, dims));
        let clip = self
            .clip
            .as_ref()
            .zip(shapes.clip)
            .map(|(c, (dims, _))| answer_bytes(c.limits.text.max_inputs, dims));
        embeddings.into_iter().chain(clip).max()
    }

    /// The pod's in-flight bound: faces' (with every connection's read buffer), the text
    /// workloads', and one unread text answer per open connection (an answer is handed to its
    /// connection when its request's place is given back, and stays there until the client
    /// reads it). The loaded models' idle memory comes on top.
    pub fn memory_bound(&self, shapes: &TextShapes, workers: usize) -> u64 {
        let connections = (self.connections.max * CONNECTION_BUFFER_BYTES) as u64;
        let faces = self.faces_memory_bound().unwrap_or(connections);
        let text = self.text_memory_bound(shapes, workers).unwrap_or(0);
        let unread = self.largest_text_answer(shapes).unwrap_or(0) * self.connections.max as u64;
        faces + text + unread
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

    /// The text bound from its parts, at the server's defaults with both text workloads (the
    /// shapes of all-MiniLM-L6-v2 and ViT-B-32's text tower, two workers): a change to the
    /// formula or the defaults shows here, and in the figures quoted in BENCHMARKS.md.
    #[test]
    fn the_text_bound_is_stated_from_the_configuration() {
        let shapes = TextShapes {
            embeddings_dims: Some(384),
            clip: Some((512, 77)),
        };
        let faces_only =
            ServeConfig::from_env(&MapEnv::new([("COLDPATH_SERVE_WORKLOADS", "faces")])).unwrap();
        assert_eq!(faces_only.text_memory_bound(&shapes, 2), None);
        let c = ServeConfig::from_env(&MapEnv::new([(
            "COLDPATH_SERVE_WORKLOADS",
            "embeddings,faces,clip",
        )]))
        .unwrap();
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let text = c.text_memory_bound(&shapes, 2).unwrap();
        let one_worker = c.text_memory_bound(&shapes, 1).unwrap();
        // A worker more is one more JSON tree of the largest body and one more tokenizer
        // working set of it: 32 + 1 + 384 times 1 MiB, and the texts' own 64 bytes each; and
        // the working set of a small request it tokenizes itself (384 times 1 KiB).
        assert_eq!(
            text - one_worker,
            (32 + 1 + 384) * (1 << 20) + 64 * 256 + 384 * 1024
        );
        // One more place in the embeddings queue is one more request's share: its body's buffer
        // (2 × (1 MiB + 64 KiB)) beside its texts (1 MiB and 64 bytes each for 256 texts).
        let deeper = ServeConfig {
            embeddings_batch: BatchPolicy {
                queue: c.embeddings_batch.queue + 1,
                ..c.embeddings_batch
            },
            ..c.clone()
        };
        let share = deeper.text_memory_bound(&shapes, 2).unwrap() - text;
        assert_eq!(share, 2 * ((1 << 20) + 65_536) + (1 << 20) + 64 * 256);
        let answer = c.largest_text_answer(&shapes).unwrap();
        assert_eq!(answer, 256 * (16 * 384 + 96) + 512);
        let total = c.memory_bound(&shapes, 2);
        assert_eq!(
            total,
            c.faces_memory_bound().unwrap() + text + answer * c.connections.max as u64
        );
        eprintln!(
            "defaults: text {:.0} MiB, unread answers {:.0} MiB, faces {:.0} MiB, in flight {:.0} MiB",
            mib(text),
            mib(answer * c.connections.max as u64),
            mib(c.faces_memory_bound().unwrap()),
            mib(total)
        );
        // The pod's task (infra/pod/service.yaml): faces queue 4 and batches of 2.
        let pod = ServeConfig::from_env(&MapEnv::new([
            ("COLDPATH_SERVE_WORKLOADS", "embeddings,faces,clip"),
            ("COLDPATH_SERVE_FACES_QUEUE", "4"),
            ("COLDPATH_SERVE_FACES_MAX_BATCH", "2"),
        ]))
        .unwrap();
        eprintln!(
            "pod: text {:.0} MiB, faces {:.0} MiB, in flight {:.0} MiB",
            mib(pod.text_memory_bound(&shapes, 2).unwrap()),
            mib(pod.faces_memory_bound().unwrap()),
            mib(pod.memory_bound(&shapes, 2))
        );
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
