use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use coldpath_core::config::{self, EnvSource};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::SessionBuilder;

use crate::ModelError;
use crate::session::{
    GraphOptLevel, Provider, SessionConfig, is_provider_compiled_in, register_provider,
    select_provider,
};

/// The variable that names the ONNX Runtime shared library.
pub const ORT_DYLIB_VAR: &str = "ORT_DYLIB_PATH";
/// Where the Lambda layer puts the library (`lib/` in a layer is mounted at `/opt/lib`).
pub const DEFAULT_ORT_DYLIB_PATH: &str = "/opt/lib/libonnxruntime.so";

/// A loaded ONNX Runtime library and its process-wide environment.
pub struct OrtRuntime {
    env: Environment,
    pub library: PathBuf,
}

impl std::fmt::Debug for OrtRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtRuntime")
            .field("library", &self.library)
            .finish()
    }
}

impl OrtRuntime {
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
        tracing::info!(
            library = %library.display(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "onnx runtime loaded"
        );
        Ok(OrtRuntime {
            env,
            library: library.to_path_buf(),
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

    /// Builds on one provider. On the CPU, with `optimized_model_dir` set, the graph ONNX Runtime
    /// optimised on the first build is saved there and later builds load it with optimisation
    /// off: graph optimisation is most of session build time, so this shortens the next cold start
    /// on the same machine (a warm `/tmp` in the same sandbox, or a local run).
    fn build_on(
        &self,
        model: &str,
        model_path: &Path,
        config: &SessionConfig,
        threads: usize,
        provider: Provider,
    ) -> ort::Result<Session> {
        let cached = match (&config.optimized_model_dir, provider) {
            (Some(dir), Provider::Cpu) => {
                optimized_model_path(dir, model, model_path, config, &self.library)
            }
            _ => None,
        };
        if let Some(cached) = cached.as_deref().filter(|c| c.is_file()) {
            let plain = SessionConfig {
                opt_level: GraphOptLevel::Disable,
                ..config.clone()
            };
            match self
                .builder(&plain, threads)
                .and_then(|mut b| b.commit_from_file(cached))
            {
                Ok(session) => {
                    tracing::info!(model, path = %cached.display(), "optimized model cache hit");
                    return Ok(session);
                }
                Err(e) => {
                    tracing::warn!(model, path = %cached.display(), error = %e, "optimized model cache unusable; rebuilding it");
                    remove_cached(cached, None);
                }
            }
        }
        let mut builder = register_provider(self.builder(config, threads)?, provider)?;
        let Some(cached) = cached else {
            return builder.commit_from_file(model_path);
        };
        // ONNX Runtime writes the optimised graph while it builds the session. The weights go to
        // a separate file, which ONNX Runtime memory-maps when it loads the graph again: that
        // load is about three times faster and needs no second in-memory copy of the weights.
        // The graph is written under a temporary name and renamed into place, so a half-written
        // file is never loaded; the weights file is named per writer, so two processes caching
        // at once never write the same file.
        let partial = cached.with_extension(format!("partial-{}", std::process::id()));
        let data = data_file_name(&cached);
        if let Some(dir) = cached.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        builder = builder
            .with_optimized_model_path(&partial)?
            .with_config_entry(
                "session.optimized_model_external_initializers_file_name",
                &data,
            )?
            .with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            )?;
        let session = builder.commit_from_file(model_path)?;
        match std::fs::rename(&partial, &cached) {
            Ok(()) => {
                remove_cached(&cached, Some(&data));
                tracing::info!(model, path = %cached.display(), "optimized model cached");
            }
            Err(e) => {
                tracing::warn!(model, error = %e, "could not cache the optimized model");
                let _ = std::fs::remove_file(&partial);
                if let Some(dir) = cached.parent() {
                    let _ = std::fs::remove_file(dir.join(&data));
                }
            }
        }
        Ok(session)
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

/// A new name for the weights file of the cached graph `cached`. Unique per process and per
/// build, because a weights file may be memory-mapped by a live session: it is never rewritten in
/// place, only replaced by a new file and unlinked.
fn data_file_name(cached: &Path) -> String {
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let stem = cached.file_stem().unwrap_or_default().to_string_lossy();
    let build = BUILDS.fetch_add(1, Ordering::Relaxed);
    format!("{stem}.{}-{build}.data", std::process::id())
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

/// Where the optimised graph of `model_path` is cached. The name changes with everything that
/// shapes the optimised graph: the model file (size and modification time, which a new
/// deployment changes), the optimisation level and the ONNX Runtime library.
fn optimized_model_path(
    dir: &Path,
    model: &str,
    model_path: &Path,
    config: &SessionConfig,
    library: &Path,
) -> Option<PathBuf> {
    use sha2::{Digest, Sha256};
    let stamp = |p: &Path| -> Option<String> {
        let m = std::fs::metadata(p).ok()?;
        let mtime = m
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(format!("{}:{}:{mtime}", p.display(), m.len()))
    };
    let mut h = Sha256::new();
    // The cache layout (graph plus a separate weights file); bump it when that changes.
    h.update("graph+external-weights/1");
    h.update(stamp(model_path)?);
    // Every option that changes the optimised graph: a graph cached under other options would
    // load silently and undo them.
    h.update(format!("{:?}/qdq={}", config.opt_level, config.qdq_fusion));
    h.update(stamp(library)?);
    let safe: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(dir.join(format!("{safe}-{}.onnx", hex::encode(&h.finalize()[..8]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimized_cache_name_follows_model_options_and_library() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model.onnx");
        let lib = dir.path().join("libonnxruntime.so");
        std::fs::write(&model, b"v1").unwrap();
        std::fs::write(&lib, b"lib").unwrap();
        let cache = dir.path().join("cache");
        let all = SessionConfig::default();
        let path =
            |m: &Path, c: &SessionConfig| optimized_model_path(&cache, "all MiniLM", m, c, &lib);
        let a = path(&model, &all).unwrap();
        assert!(a.starts_with(&cache));
        assert!(
            a.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("all_MiniLM-")
        );
        assert_eq!(a, path(&model, &all).unwrap());
        let basic = SessionConfig {
            opt_level: GraphOptLevel::Basic,
            ..SessionConfig::default()
        };
        assert_ne!(a, path(&model, &basic).unwrap());
        // QDQ fusion changes the optimised graph, so it must change the cache entry.
        let no_qdq = SessionConfig {
            qdq_fusion: false,
            ..SessionConfig::default()
        };
        assert_ne!(a, path(&model, &no_qdq).unwrap());
        // Spinning is a run-time setting, not part of the graph.
        let no_spin = SessionConfig {
            thread_spinning: false,
            ..SessionConfig::default()
        };
        assert_eq!(a, path(&model, &no_spin).unwrap());
        std::fs::write(&model, b"v2, a new deployment").unwrap();
        assert_ne!(a, path(&model, &all).unwrap());
        assert!(path(&dir.path().join("missing"), &all).is_none());
    }
}
