use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use ort::session::Session;
use ort::value::ValueType;

/// A few sessions of one model shared between callers.
///
/// `Session::run` takes `&mut self`, so each session sits behind its own mutex. A caller takes the
/// first free session, starting from a rotating index so load spreads, and waits on one only when
/// all are busy. In Lambda one request runs at a time per sandbox, so a pool of one never waits.
pub struct SessionPool {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl SessionPool {
    /// `sessions` must hold at least one session; they must all come from the same model.
    pub fn new(sessions: Vec<Session>) -> Option<Self> {
        let first = sessions.first()?;
        let input_names = first
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let output_names = first
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        Some(SessionPool {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            input_names,
            output_names,
        })
    }

    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs `f` with exclusive use of one session.
    pub fn with<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let mut order = (0..self.sessions.len()).map(|i| (start + i) % self.sessions.len());
        let mut guard = order.find_map(|i| match self.sessions[i].try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        });
        let mut guard: MutexGuard<'_, Session> = match guard.take() {
            Some(g) => g,
            // A panic while a session was held leaves ONNX Runtime's own state intact (it lives
            // behind the C API), so a poisoned lock is recovered rather than wedging the pool.
            None => self.sessions[start]
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        };
        f(&mut guard)
    }
}
/// The last dimension of output `name` when the graph declares it (an embedding width), or
/// `None` when the output is missing, not a tensor, or its last dimension is dynamic.
pub fn output_last_dim(session: &Session, name: &str) -> Option<usize> {
    let outlet = session.outputs().iter().find(|o| o.name() == name)?;
    match outlet.dtype() {
        ValueType::Tensor { shape, .. } => shape
            .last()
            .and_then(|&d| usize::try_from(d).ok())
            .filter(|&d| d > 0),
        _ => None,
    }
}
