use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coldpath_core::config::{self, EnvSource};
use coldpath_core::contract::EnvVar;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;

use crate::digest::file_digest;
use crate::session::{
    GraphOptLevel, Provider, SessionConfig, is_provider_compiled_in, register_provider,
    select_provider,
};
use crate::{ModelError, Sha256Digest};

/// The variable that names the ONNX Runtime shared library.
pub const ORT_DYLIB_VAR: &str = "ORT_DYLIB_PATH";
/// Where the Lambda layer puts the library (`lib/` in a layer is mounted at `/opt/lib`).
pub const DEFAULT_ORT_DYLIB_PATH: &str = "/opt/lib/libonnxruntime.so";

/// A loaded ONNX Runtime library and its process-wide environment.
pub struct OrtRuntime {
    env: Environment,
    pub library: PathBuf,
    /// ONNX Runtime's build string (`GetBuildInfoString`), e.g. `ORT Build Info: git-branch=HEAD,
    /// git-commit-id=6af1a93, fp8-kv-cache=1, build type=Release` for the 1.31.1 release: the
    /// commit pins the version and the rest the build, so it is part of every graph's key.
    build_info: String,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library", &self.library)
            .field("build_info", &self.build_info)
            .finish()
    }
}

impl OrtRuntime {
    /// The variables [`OrtRuntime::library_from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[EnvVar::optional(
        ORT_DYLIB_VAR,
        "the ONNX Runtime library (default /opt/lib/libonnxruntime.so)",
    )];

    /// The library path from `ORT_DYLIB_PATH`, or the Lambda layer default.
    pub fn library_from_env(env: &impl EnvSource) -> PathBuf {
        config::get(env, ORT_DYLIB_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ORT_DYLIB_PATH))
    }

    /// Loads the library, once per process. A missing file, a file that is not ONNX Runtime, or a
    /// version older than the API level `ort` was built for is an error naming `ORT_DYLIB_PATH`.
    ///
    /// ONNX Runtime allows one environment per process, so later calls with the same path share
    /// the first runtime, and a call with another path is an error rather than a silent mix.
    pub fn load(library: &Path) -> Result<Arc<OrtRuntime>, ModelError> {
        static LOADED: Mutex<Option<Arc<OrtRuntime>>> = Mutex::new(None);
        let fail = |reason: String| ModelError::RuntimeLibrary {
            var: ORT_DYLIB_VAR,
            path: library.to_path_buf(),
            min_minor: ort::MINOR_VERSION,
            reason,
        };
        // A panic cannot happen while the lock is held (loading returns errors), but recover the
        // value rather than panic again if it ever did.
        let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = loaded.as_ref() {
            if rt.library == library {
                return Ok(Arc::clone(rt));
            }
            return Err(fail(format!(
                "this process already loaded ONNX Runtime from {}",
                rt.library.display()
            )));
        }
        let rt = Arc::new(Self::load_once(library).map_err(fail)?);
        *loaded = Some(Arc::clone(&rt));
        Ok(rt)
    }

    fn load_once(library: &Path) -> Result<OrtRuntime, String> {
        let started = Instant::now();
        // dlopen would search the system paths for a bare name; we want exactly the configured file.
        if !library.is_file() {
            return Err("no such file".to_string());
        }
        let env = ort::init_from(library)
            .map_err(|e| e.to_string())?
            .with_name("coldpath")
            .build()
            .map_err(|e| e.to_string())?;
        let build_info = ort::info().to_string();
        tracing::info!(
            library = %library.display(),
            build = %build_info,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "onnx runtime loaded"
        );
        Ok(OrtRuntime {
            env,
            library: library.to_path_buf(),
            build_info,
        })
    }

    /// Builds a session for `model_path` with the placement's options, and says which execution
    /// provider it ended up on.
    ///
    /// A provider that is not compiled into the library, or that fails to start (no GPU, missing
    /// CUDA libraries), is an error unless `allow_cpu_fallback` is set; then the session is built
    /// on the CPU and the fallback is logged as a warning.
    pub fn build_session(
        &self,
        model: &str,
        model_path: &Path,
        config: &SessionConfig,
    ) -> Result<(Session, Provider), ModelError> {
        let provider = select_provider(
            config.provider,
            is_provider_compiled_in,
            config.allow_cpu_fallback,
        )?;
        let session_err = |reason: String| ModelError::Session {
            model: model.to_string(),
            path: model_path.to_path_buf(),
            reason,
        };
        let threads = config.intra_threads.resolve();
        let build =
            |provider: Provider| self.build_on(model, model_path, config, threads, provider);
        let (session, used) = match build(provider) {
            Ok(s) => (s, provider),
            Err(e) if provider != Provider::Cpu && config.allow_cpu_fallback => {
                tracing::warn!(model, requested = %provider, error = %e, "execution provider failed to start; falling back to CPU");
                (
                    build(Provider::Cpu).map_err(|e| session_err(e.to_string()))?,
                    Provider::Cpu,
                )
            }
            Err(e) if provider != Provider::Cpu => {
                return Err(ModelError::ProviderUnavailable {
                    requested: provider,
                    available: format!("it failed to start: {e}"),
                });
            }
            Err(e) => return Err(session_err(e.to_string())),
        };
        tracing::info!(
            model,
            provider = %used,
            intra_threads = threads,
            opt_level = ?config.opt_level,
            "session built"
        );
        Ok((session, used))
    }

    /// Builds on one provider. On the CPU, graph optimisation is most of session build time, so a
    /// graph ONNX Runtime already optimised is loaded instead of the model when one is found,
    /// first in the read-only `prepared_model_dir` (shipped in the artefact, portable form), then
    /// in the writable `optimized_model_dir` (saved by an earlier build on this machine, local
    /// form); a miss in both builds from the model and saves its graph in the writable cache.
    /// `prepare <OUT_DIR>` (`prepare_into`) builds from the model, writes the portable graph there
    /// and loads it back, so packaging checks the very file it ships.
    fn build_on(
        &self,
        model: &str,
        model_path: &Path,
        config: &SessionConfig,
        threads: usize,
        provider: Provider,
    ) -> ort::Result<Session> {
        let wanted = provider == Provider::Cpu
            && config.opt_level != GraphOptLevel::Disable
            && (config.prepare_into.is_some()
                || config.prepared_model_dir.is_some()
                || config.optimized_model_dir.is_some());
        let key = if wanted {
            match GraphKey::new(model, model_path, config, self.build_info()) {
                Ok(key) => Some(key),
                Err(e) => {
                    // The model itself will fail to load with a clearer error if it is missing.
                    tracing::warn!(model, path = %model_path.display(), error = %e, "cannot key the optimized graph; building without it");
                    None
                }
            }
        } else {
            None
        };
        let Some(key) = key else {
            return register_provider(self.builder(config, threads)?, provider)?
                .commit_from_file(model_path);
        };

        if let Some(out_dir) = &config.prepare_into {
            let graph = out_dir.join(key.file_name(GraphForm::Portable));
            // A second session of the same model in this process (a pool of several) finds the
            // graph the first one wrote; writing it again would rewrite the weights file that
            // session maps.
            if graph.is_file()
                && let Ok(session) = self.load_graph(config, threads, &graph, GraphForm::Portable)
            {
                return Ok(session);
            }
            let session = self.save_graph(model, model_path, config, threads, &graph)?;
            // Load what was written, exactly as a cold start will: a graph that does not load
            // fails packaging instead of shipping. The session built from the model goes.
            drop(session);
            let session = self.load_graph(config, threads, &graph, GraphForm::Portable)?;
            tracing::info!(model, path = %graph.display(), "optimized graph prepared");
            return Ok(session);
        }

        if let Some(dir) = &config.prepared_model_dir {
            let graph = dir.join(key.file_name(GraphForm::Portable));
            if graph.is_file() {
                match self.load_graph(config, threads, &graph, GraphForm::Portable) {
                    Ok(session) => {
                        tracing::info!(model, path = %graph.display(), "prepared graph loaded");
                        return Ok(session);
                    }
                    // The directory is read-only (the deployment package): nothing to repair
                    // there; the writable cache or the model still give a correct session.
                    Err(e) => {
                        tracing::warn!(model, path = %graph.display(), error = %e, "prepared graph unusable; ignoring it")
                    }
                }
            } else {
                tracing::info!(model, path = %graph.display(), "no prepared graph for this model, runtime and options");
            }
        }

        let Some(dir) = &config.optimized_model_dir else {
            return register_provider(self.builder(config, threads)?, provider)?
                .commit_from_file(model_path);
        };
        let cached = dir.join(key.file_name(GraphForm::Local));
        if cached.is_file() {
            match self.load_graph(config, threads, &cached, GraphForm::Local) {
                Ok(session) => {
                    tracing::info!(model, path = %cached.display(), "optimized model cache hit");
                    return Ok(session);
                }
                Err(e) => {
                    tracing::warn!(model, path = %cached.display(), error = %e, "optimized model cache unusable; rebuilding it");
                    remove_cached(&cached, None);
                }
            }
        }
        self.save_graph(model, model_path, config, threads, &cached)
    }

    /// Builds a CPU session from the model and saves its optimised graph as `graph`: the portable
    /// form (`prepare_into`) at most at the Extended level, the local form at the configured one.
    ///
    /// ONNX Runtime writes the optimised graph while it builds the session. The weights go to a
    /// separate file, which ONNX Runtime memory-maps when it loads the graph again: that load is
    /// about three times faster and needs no second in-memory copy of the weights. The graph is
    /// written under a temporary name and renamed into place, so a half-written file is never
    /// loaded; the weights file is named per writer (see `data_file_name`), so a file a live
    /// session maps is never rewritten. A graph that cannot be saved in the writable cache is
    /// only a warning (the session is good); in `prepare` mode it is an error.
    fn save_graph(
        &self,
        model: &str,
        model_path: &Path,
        config: &SessionConfig,
        threads: usize,
        graph: &Path,
    ) -> ort::Result<Session> {
        let preparing = config.prepare_into.is_some();
        let form = if preparing {
            GraphForm::Portable
        } else {
            GraphForm::Local
        };
        let saving = SessionConfig {
            opt_level: form.saved_level(config.opt_level),
            ..config.clone()
        };
        let partial = graph.with_extension(format!("partial-{}", std::process::id()));
        let data = data_file_name(graph, !preparing);
        if let Some(dir) = graph.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
            && preparing
        {
            return Err(ort::Error::new(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
        let session = self
            .builder(&saving, threads)?
            .with_optimized_model_path(&partial)?
            .with_config_entry(
                "session.optimized_model_external_initializers_file_name",
                &data,
            )?
            .with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            )?
            .commit_from_file(model_path)?;
        match std::fs::rename(&partial, graph) {
            Ok(()) => {
                remove_cached(graph, Some(&data));
                tracing::info!(model, path = %graph.display(), level = ?saving.opt_level, "optimized graph saved");
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                if let Some(dir) = graph.parent() {
                    let _ = std::fs::remove_file(dir.join(&data));
                }
                if preparing {
                    return Err(ort::Error::new(format!(
                        "cannot write {}: {e}",
                        graph.display()
                    )));
                }
                tracing::warn!(model, error = %e, "could not cache the optimized model");
            }
        }
        Ok(session)
    }

    /// Loads a saved graph with the optimisation its form still needs (see `GraphForm`).
    fn load_graph(
        &self,
        config: &SessionConfig,
        threads: usize,
        graph: &Path,
        form: GraphForm,
    ) -> ort::Result<Session> {
        let loading = SessionConfig {
            opt_level: form.load_level(config.opt_level),
            ..config.clone()
        };
        self.builder(&loading, threads)?.commit_from_file(graph)
    }

    /// The loaded library's build string (version, git commit, build flags): a graph optimised by
    /// one ONNX Runtime build is only trusted by the same build.
    fn build_info(&self) -> &str {
        &self.build_info
    }

    fn builder(&self, config: &SessionConfig, threads: usize) -> ort::Result<SessionBuilder> {
        Ok(Session::builder(&self.env)?
            .with_optimization_level(config.opt_level.to_ort())?
            .with_intra_threads(threads)?
            // One request runs at a time per session; a second pool would only contend for cores.
            .with_inter_threads(1)?
            .with_parallel_execution(false)?
            .with_quant_qdq(config.qdq_fusion)?
            .with_intra_op_spinning(config.thread_spinning)?)
    }
}

/// The name of the weights file for the graph `graph`. In the writable cache it is new for every
/// process and build, because a weights file may be memory-mapped by a live session (of this or
/// another process): it is never rewritten in place, only replaced by a new file and unlinked. A
/// prepared directory has one writer, the packaging step, which writes each graph once (a second
/// session of the model loads the first one's), so there the name is fixed: `<graph stem>.data`,
/// the same from one packaging to the next.
fn data_file_name(graph: &Path, per_process: bool) -> String {
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let stem = graph.file_stem().unwrap_or_default().to_string_lossy();
    if per_process {
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        format!("{stem}.{}-{build}.data", std::process::id())
    } else {
        format!("{stem}.data")
    }
}

/// Removes the weights files that belong to the cached graph `cached`, except `keep`; without
/// `keep`, the graph itself goes too. A file another process still has mapped stays readable to
/// it until unmapped, so this is safe while others run.
fn remove_cached(cached: &Path, keep: Option<&str>) {
    let (Some(dir), Some(stem)) = (cached.parent(), cached.file_stem()) else {
        return;
    };
    if keep.is_none() {
        let _ = std::fs::remove_file(cached);
    }
    let prefix = format!("{}.", stem.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".data") && Some(name.as_str()) != keep {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The two forms an optimised graph is saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GraphForm {
    /// Prepared at packaging time on another machine, to run on whatever x86_64 CPU Lambda gives.
    /// ONNX Runtime's layout optimisations (the All level, e.g. NCHWc with the CPU's block size)
    /// may tie a saved graph to the CPU it was saved on: "When layout optimizations are enabled,
    /// the offline mode can only be used on compatible hardware" (onnxruntime.ai, Graph
    /// Optimizations, Online/Offline Mode). So this form is saved at most at the Extended level
    /// (fusions into CPU-provider kernels that pick their instructions at run time) and, when All
    /// is configured, loaded with All, so the layout pass runs on the machine that uses it.
    Portable,
    /// Saved by a cold start in its own writable cache, for later cold starts on the same
    /// machine: saved at the configured level and loaded with optimisation off.
    Local,
}

impl GraphForm {
    fn saved_level(self, configured: GraphOptLevel) -> GraphOptLevel {
        match self {
            GraphForm::Portable => configured.min(GraphOptLevel::Extended),
            GraphForm::Local => configured,
        }
    }

    fn load_level(self, configured: GraphOptLevel) -> GraphOptLevel {
        if configured > self.saved_level(configured) {
            configured
        } else {
            GraphOptLevel::Disable
        }
    }

    fn tag(self) -> &'static str {
        match self {
            GraphForm::Portable => "portable",
            GraphForm::Local => "local",
        }
    }
}

/// What an optimised graph depends on, hashed into its file name: the model's content (sha256,
/// so a model fetched from S3 or copied into a package finds the graph prepared for it, and a
/// changed model never loads an old graph), the ONNX Runtime build, and the options that change
/// the graph. Thread counts and spinning are run-time settings, not part of the graph.
#[derive(Debug, Clone)]
struct GraphKey {
    name: String,
    model_sha256: Sha256Digest,
    build_info: String,
    opt_level: GraphOptLevel,
    qdq_fusion: bool,
}

/// The layout of saved graphs (a graph file plus a separate weights file, named by `GraphKey`);
/// bump it when that changes, so old files are never read under the new rules.
const GRAPH_LAYOUT: &str = "coldpath-graph/2 graph+external-weights";

impl GraphKey {
    /// The key for `model_path`, whose digest the store noted when it verified the file, or which
    /// is hashed now (once per process) when the spec pins none.
    fn new(
        model: &str,
        model_path: &Path,
        config: &SessionConfig,
        build_info: &str,
    ) -> std::io::Result<GraphKey> {
        Ok(GraphKey {
            name: model.to_string(),
            model_sha256: file_digest(model_path)?,
            build_info: build_info.to_string(),
            opt_level: config.opt_level,
            qdq_fusion: config.qdq_fusion,
        })
    }

    /// `<model>-<16 hex digits>.onnx`, the model name kept readable for whoever lists the
    /// directory.
    fn file_name(&self, form: GraphForm) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            GRAPH_LAYOUT,
            form.tag(),
            &self.model_sha256.to_string(),
            &self.build_info,
            &format!(
                "{:?}/qdq={}",
                form.saved_level(self.opt_level),
                self.qdq_fusion
            ),
        ] {
            // Length-prefixed, so no two different lists of parts hash the same bytes.
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        let safe: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{safe}-{}.onnx", hex::encode(&h.finalize()[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &Path, config: &SessionConfig, build: &str) -> GraphKey {
        GraphKey::new("all MiniLM", model, config, build).unwrap()
    }

    #[test]
    fn graph_name_follows_model_content_runtime_build_and_graph_options() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"v1").unwrap();
        let all = SessionConfig::default();
        let name = |c: &SessionConfig, b: &str| key(&model, c, b).file_name(GraphForm::Local);
        let a = name(&all, "rel-1.31.1");
        assert!(a.starts_with("all_MiniLM-") && a.ends_with(".onnx"), "{a}");
        assert_eq!(a, name(&all, "rel-1.31.1"));
        assert_ne!(a, name(&all, "rel-1.32.0"), "another ONNX Runtime build");
        let basic = SessionConfig {
            opt_level: GraphOptLevel::Basic,
            ..SessionConfig::default()
        };
        assert_ne!(a, name(&basic, "rel-1.31.1"));
        // QDQ fusion changes the optimised graph, so it must change the name.
        let no_qdq = SessionConfig {
            qdq_fusion: false,
            ..SessionConfig::default()
        };
        assert_ne!(a, name(&no_qdq, "rel-1.31.1"));
        // Threads, spinning and where the caches are do not change the graph.
        let runtime_only = SessionConfig {
            thread_spinning: false,
            intra_threads: crate::Threads::Fixed(3),
            optimized_model_dir: Some("/elsewhere".into()),
            prepared_model_dir: Some("/var/task/graphs".into()),
            ..SessionConfig::default()
        };
        assert_eq!(a, name(&runtime_only, "rel-1.31.1"));
        // The two forms never share a file.
        assert_ne!(
            a,
            key(&model, &all, "rel-1.31.1").file_name(GraphForm::Portable)
        );
        assert!(GraphKey::new("m", &dir.path().join("missing"), &all, "b").is_err());
    }

    #[test]
    fn graph_name_follows_content_not_path_or_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let all = SessionConfig::default();
        let here = dir.path().join("a/model.onnx");
        let there = dir.path().join("b/model.onnx");
        for p in [&here, &there] {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"the same bytes").unwrap();
        }
        let name = |p: &Path| key(p, &all, "b").file_name(GraphForm::Portable);
        // A model copied elsewhere (into a package, or fetched from S3) finds the same graph,
        // whatever its path and modification time.
        assert_eq!(name(&here), name(&there));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&there, b"the same bytes").unwrap();
        assert_eq!(name(&here), name(&there));
        // A model with other bytes never does.
        std::fs::write(&there, b"other bytes, a new model").unwrap();
        assert_ne!(name(&here), name(&there));
    }

    #[test]
    fn portable_graphs_leave_the_layout_pass_to_the_machine_that_runs_them() {
        use GraphOptLevel::*;
        // Saved at most at Extended; All is applied when it loads.
        assert_eq!(GraphForm::Portable.saved_level(All), Extended);
        assert_eq!(GraphForm::Portable.load_level(All), All);
        for level in [Basic, Extended] {
            assert_eq!(GraphForm::Portable.saved_level(level), level);
            assert_eq!(GraphForm::Portable.load_level(level), Disable);
        }
        // The local form runs where it was saved: everything is done once.
        assert_eq!(GraphForm::Local.saved_level(All), All);
        assert_eq!(GraphForm::Local.load_level(All), Disable);
        // All and Extended share the portable graph: it is the same file.
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        std::fs::write(&model, b"m").unwrap();
        let ext = SessionConfig {
            opt_level: Extended,
            ..SessionConfig::default()
        };
        let all = SessionConfig::default();
        assert_eq!(
            key(&model, &all, "b").file_name(GraphForm::Portable),
            key(&model, &ext, "b").file_name(GraphForm::Portable)
        );
    }

    #[test]
    fn weights_file_names_never_repeat_a_live_file() {
        let graph = Path::new("/c/m-0123.onnx");
        let a = data_file_name(graph, true);
        let b = data_file_name(graph, true);
        assert_ne!(a, b);
        assert!(
            a.starts_with(&format!("m-0123.{}-", std::process::id())),
            "{a}"
        );
        assert_eq!(data_file_name(graph, false), "m-0123.data");
    }
}
