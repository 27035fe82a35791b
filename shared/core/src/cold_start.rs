//! The cold-start record: where a function's init time went.
//!
//! Every function logs exactly one record when its init finishes. Placement decisions read these
//! numbers (a workload whose cold start is long and on the user's path must stay warm), so the
//! phases and their names are stable.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Init phases in the order they run, with their duration in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ColdStartRecord {
    pub function: String,
    /// The execution provider the sessions ended up on (`cpu`, `cuda`, `tensorrt`).
    pub provider: String,
    pub library_load_ms: f64,
    pub model_fetch_ms: f64,
    pub session_build_ms: f64,
    pub warmup_ms: f64,
    pub total_ms: f64,
}

/// Measures the phases of one init, from the moment it is created.
#[derive(Debug)]
pub struct ColdStartTimer {
    started: Instant,
    record: ColdStartRecord,
}

/// One of the recorded init phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    LibraryLoad,
    ModelFetch,
    SessionBuild,
    Warmup,
}

impl ColdStartTimer {
    pub fn start(function: &str) -> Self {
        ColdStartTimer {
            started: Instant::now(),
            record: ColdStartRecord {
                function: function.to_string(),
                provider: "cpu".to_string(),
                library_load_ms: 0.0,
                model_fetch_ms: 0.0,
                session_build_ms: 0.0,
                warmup_ms: 0.0,
                total_ms: 0.0,
            },
        }
    }

    /// Adds `elapsed` to a phase; phases that run more than once (one session per model) add up.
    pub fn add(&mut self, phase: Phase, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1e3;
        let slot = match phase {
            Phase::LibraryLoad => &mut self.record.library_load_ms,
            Phase::ModelFetch => &mut self.record.model_fetch_ms,
            Phase::SessionBuild => &mut self.record.session_build_ms,
            Phase::Warmup => &mut self.record.warmup_ms,
        };
        *slot += ms;
    }

    /// Runs `f`, adding its wall time to `phase`.
    pub fn time<T>(&mut self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(phase, t.elapsed());
        out
    }

    pub fn set_provider(&mut self, provider: &str) {
        self.record.provider = provider.to_string();
    }

    /// Closes the record, logs it once as one structured event and returns it.
    pub fn finish(mut self) -> ColdStartRecord {
        self.record.total_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let r = &self.record;
        tracing::info!(
            target: "coldpath::cold_start",
            function = %r.function,
            provider = %r.provider,
            library_load_ms = r.library_load_ms,
            model_fetch_ms = r.model_fetch_ms,
            session_build_ms = r.session_build_ms,
            warmup_ms = r.warmup_ms,
            total_ms = r.total_ms,
            "cold start"
        );
        self.record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_accumulate_and_total_covers_them() {
        let mut t = ColdStartTimer::start("embeddings");
        t.add(Phase::SessionBuild, Duration::from_millis(3));
        t.add(Phase::SessionBuild, Duration::from_millis(2));
        let v = t.time(Phase::Warmup, || {
            std::thread::sleep(Duration::from_millis(2));
            41 + 1
        });
        t.set_provider("cuda");
        let r = t.finish();
        assert_eq!(v, 42);
        assert!((r.session_build_ms - 5.0).abs() < 1e-9);
        assert!(r.warmup_ms >= 2.0);
        assert!(r.total_ms >= r.warmup_ms);
        assert_eq!(r.provider, "cuda");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["function"], "embeddings");
        assert!(json["total_ms"].is_f64());
    }
}
