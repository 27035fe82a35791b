//! The C decoders in helper processes, so that a crash, an abort, a hang or a runaway
//! allocation in libheif/libde265 or libavif/dav1d ends one decode, not the host.
//!
//! Rust's `catch_unwind` sees Rust panics only; a `SIGSEGV` or `abort()` in C takes the whole
//! process, with every request or SQS message in it. So a host that has installed the hook
//! ([`crate::run_decoder_if_asked`], first thing in `main`) decodes HEIC and AVIF in a child
//! started from its own executable: the parent sends the encoded bytes and limits on the
//! child's stdin and reads RGB8 pixels back on its stdout. A child that dies, or is killed by
//! the watchdog after the decode timeout, becomes [`ImageError::DecoderCrashed`] for that image
//! alone; the next decode starts a fresh child. Each child limits its own address space per
//! decode (from the job's pixel limit), writes no core file, and serves one decode at a time;
//! idle children are kept for reuse (process start and library load cost about a millisecond
//! or two, the pipe about 1 ms per 10 MB of pixels: `make bench-image-formats` measures it).
//!
//! Processes without the hook (test binaries, tools) decode in process, as before: a child
//! started from a binary that does not know the protocol would run that binary's `main`.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::CodecPaths;
use crate::decode::Format;

/// The argument that makes a hooked binary a decoder child.
pub const DECODER_ARG: &str = "__coldpath-image-decoder";

/// Set once a binary's `main` has run the hook: its own executable can serve as the child.
static HOOKED: AtomicBool = AtomicBool::new(false);

/// What isolation has cost this process: decodes answered by a child, and the time they took
/// beyond the library call itself (as the child timed it): the pipes, the copies, the waits.
static ISOLATED_DECODES: AtomicU64 = AtomicU64::new(0);
static ISOLATION_OVERHEAD_US: AtomicU64 = AtomicU64::new(0);

/// Decodes this process had a child answer, and their total time beyond the library call (the
/// cost of isolation; `make bench-image-formats` reports it per decode).
pub fn isolation_overhead() -> (u64, Duration) {
    (
        ISOLATED_DECODES.load(Ordering::Relaxed),
        Duration::from_micros(ISOLATION_OVERHEAD_US.load(Ordering::Relaxed)),
    )
}

/// Bytes that make a fault-injection build's child abort, hang or allocate without bound
/// before decoding: the hosts' tests put them in a `free` box of a real HEIC to prove that a
/// decoder crash fails that image alone. Release builds carry no such check.
#[cfg(feature = "fault-injection")]
pub const ABORT_MARKER: &[u8] = b"COLDPATH-TEST-DECODER-ABORT";
#[cfg(feature = "fault-injection")]
pub const HANG_MARKER: &[u8] = b"COLDPATH-TEST-DECODER-HANG";
#[cfg(feature = "fault-injection")]
pub const HOG_MARKER: &[u8] = b"COLDPATH-TEST-DECODER-HOG";

/// Why the library call failed.
#[derive(Debug)]
pub(crate) enum NativeError {
    /// The library is not installed or not usable here.
    Unavailable(String),
    /// The library refused the bytes.
    Undecodable(String),
    /// The child process died or was killed.
    Crashed(String),
}

/// How a host runs the C decoders, read once with [`CodecPaths::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// `COLDPATH_DECODER_ISOLATION`: `process` (the default) or `off` (in process).
    pub enabled: bool,
    /// `COLDPATH_DECODER_EXE`: the executable started as the child; unset, the host's own
    /// (when its `main` installed the hook).
    pub exe: Option<PathBuf>,
    /// `COLDPATH_DECODE_TIMEOUT_MS` (30 s): a decode not answered by then is killed.
    pub timeout: Duration,
    /// Children kept idle for reuse.
    pub idle: usize,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            enabled: true,
            exe: None,
            timeout: Duration::from_secs(30),
            idle: 4,
        }
    }
}

/// The pool of decoder children.
pub(crate) struct Pool {
    exe: PathBuf,
    paths: CodecPaths,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Worker>>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Dropped when it died, answered garbage, or is one idle child too many: killed (a
        // no-op on one already gone) and reaped, so no zombie is left behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pool {
    /// The pool for `paths`, or `None` to decode in process (isolation off, or no executable
    /// that speaks the protocol).
    pub(crate) fn new(paths: &CodecPaths) -> Option<Pool> {
        let isolation = &paths.isolation;
        if !isolation.enabled {
            return None;
        }
        let exe = match &isolation.exe {
            Some(exe) => exe.clone(),
            None if HOOKED.load(Ordering::Acquire) => std::env::current_exe().ok()?,
            None => return None,
        };
        Some(Pool {
            exe,
            paths: paths.clone(),
            timeout: isolation.timeout,
            max_idle: isolation.idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn exe(&self) -> &Path {
        &self.exe
    }

    fn spawn(&self) -> Result<Worker, NativeError> {
        let mut child = Command::new(&self.exe)
            .arg(DECODER_ARG)
            .env("COLDPATH_LIBHEIF_PATH", &self.paths.libheif)
            .env("COLDPATH_LIBAVIF_PATH", &self.paths.libavif)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                NativeError::Unavailable(format!(
                    "cannot start the decoder process {:?}: {e}",
                    self.exe
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(NativeError::Unavailable(
                "the decoder process has no pipes".to_string(),
            ));
        };
        // A larger pipe moves a photo's pixels in fewer wake-ups (the default is 64 KiB; 1 MiB
        // is what an unprivileged process may ask for). A refusal only costs speed.
        // SAFETY: fcntl on a pipe descriptor we own; F_SETPIPE_SZ takes an int.
        unsafe {
            libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    /// Decodes in a child: the library's RGB8 image, its refusal, or how the child died.
    pub(crate) fn decode(
        &self,
        format: Format,
        bytes: &[u8],
        max_pixels: u64,
        max_side: u32,
    ) -> Result<RgbImage, NativeError> {
        let reused = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match reused {
            Some(w) => w,
            None => self.spawn()?,
        };
        let pid = worker.child.id();
        let (done, watch) = std::sync::mpsc::channel::<()>();
        let timeout = self.timeout;
        let watchdog = std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(timeout) {
                // SAFETY: kill(2) on our own child's pid, which is not reaped before this
                // thread is joined.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
                return true;
            }
            false
        });
        let asked = Instant::now();
        let answer = exchange(&mut worker, format, bytes, max_pixels, max_side);
        let _ = done.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        match answer {
            Ok(reply) => {
                if let Ok((_, library)) = &reply {
                    let beyond = asked.elapsed().saturating_sub(*library);
                    ISOLATED_DECODES.fetch_add(1, Ordering::Relaxed);
                    ISOLATION_OVERHEAD_US.fetch_add(beyond.as_micros() as u64, Ordering::Relaxed);
                }
                let reply = reply.map(|(image, _)| image);
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < self.max_idle {
                    idle.push(worker);
                }
                reply
            }
            Err(io) => {
                let status = worker.child.wait();
                let how = match status {
                    _ if timed_out => format!(
                        "was killed after the {} ms decode timeout",
                        timeout.as_millis()
                    ),
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("was lost ({e})"),
                };
                // A pipe that closed mid-reply says nothing the exit status does not.
                let detail = match io.kind() {
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe => {
                        String::new()
                    }
                    _ => format!(" ({io})"),
                };
                // The worker is dropped: the next decode starts a fresh child.
                Err(NativeError::Crashed(format!(
                    "the decoder process {how}{detail}"
                )))
            }
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.signal(), status.code()) {
        (Some(sig), _) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => "ended".to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGXCPU => "SIGXCPU",
        _ => "another signal",
    }
}

// The protocol, all integers little-endian.
// Request: format (u8: 0 HEIC, 1 AVIF), max_pixels (u64), max_side (u32), length (u64), bytes.
// Reply: status (u8: 0 pixels, 1 undecodable, 2 unavailable), then for 0: width (u32), height
// (u32), the library call's time in microseconds (u64), width × height × 3 bytes; otherwise: length (u32), a UTF-8 message.
const OK: u8 = 0;
const UNDECODABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// One request and its reply; an I/O error means the child is gone.
fn exchange(
    worker: &mut Worker,
    format: Format,
    bytes: &[u8],
    max_pixels: u64,
    max_side: u32,
) -> std::io::Result<Result<(RgbImage, Duration), NativeError>> {
    let mut head = Vec::with_capacity(21);
    head.push(u8::from(format == Format::Avif));
    head.extend_from_slice(&max_pixels.to_le_bytes());
    head.extend_from_slice(&max_side.to_le_bytes());
    head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    worker.stdin.write_all(&head)?;
    worker.stdin.write_all(bytes)?;
    worker.stdin.flush()?;
    let out = &mut worker.stdout;
    let status = read_u8(out)?;
    if status == OK {
        let (w, h) = (read_u32(out)?, read_u32(out)?);
        // The child is not trusted with our memory either: its image obeys the same limit.
        if w == 0 || h == 0 || u64::from(w) * u64::from(h) > max_pixels {
            return Err(std::io::Error::other(format!(
                "it answered a {w}x{h} image under a limit of {max_pixels} pixels"
            )));
        }
        let library = Duration::from_micros(read_u64(out)?);
        let mut pixels = vec![0u8; w as usize * h as usize * 3];
        out.read_exact(&mut pixels)?;
        let image = RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| std::io::Error::other("a plane of the wrong size"))?;
        return Ok(Ok((image, library)));
    }
    let len = read_u32(out)? as usize;
    if len > 64 * 1024 {
        return Err(std::io::Error::other("an oversized message"));
    }
    let mut message = vec![0u8; len];
    out.read_exact(&mut message)?;
    let message = String::from_utf8_lossy(&message).into_owned();
    Ok(Err(match status {
        UNAVAILABLE => NativeError::Unavailable(message),
        _ => NativeError::Undecodable(message),
    }))
}

fn read_u8(r: &mut impl Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Makes this binary a decoder child when it was started as one; otherwise records that its
/// own executable can serve as the child, and returns. Call it first thing in `main`, before
/// any runtime or thread starts.
pub fn run_decoder_if_asked() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(DECODER_ARG)) {
        let code = match serve_decodes() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("coldpath image decoder: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    HOOKED.store(true, Ordering::Release);
}

/// The child's loop: one decode per request until stdin closes.
fn serve_decodes() -> std::io::Result<()> {
    // An abort must not leave a core file in a Lambda's /tmp or a container's working directory.
    set_limit(libc::RLIMIT_CORE, 0);
    let env = coldpath_core::config::ProcessEnv;
    let mut paths = CodecPaths::from_env(&env).unwrap_or_default();
    // The child decodes in itself.
    paths.isolation.enabled = false;
    let codecs = super::load(&paths);
    let baseline = address_space_bytes();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut output = stdout.lock();
    loop {
        let format = match read_u8(&mut input) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let max_pixels = read_u64(&mut input)?;
        let max_side = read_u32(&mut input)?;
        let len = read_u64(&mut input)?;
        let mut bytes = vec![0u8; usize::try_from(len).map_err(std::io::Error::other)?];
        input.read_exact(&mut bytes)?;
        // The decode may use its pixels several times over (16-bit planes, RGBA, tiles) and
        // the libraries' own buffers: beyond that the allocation fails here, in the child.
        let budget = max_pixels
            .saturating_mul(24)
            .saturating_add(len.saturating_mul(2))
            .saturating_add(1 << 30);
        if let Some(base) = baseline {
            set_limit(libc::RLIMIT_AS, base.saturating_add(budget));
        }
        let format = if format == 1 {
            Format::Avif
        } else {
            Format::Heic
        };
        let started = Instant::now();
        let result = super::library_decode(&codecs, format, &bytes, max_pixels, max_side);
        let library = started.elapsed();
        drop(bytes);
        match result {
            Ok(image) => {
                output.write_all(&[OK])?;
                output.write_all(&image.width().to_le_bytes())?;
                output.write_all(&image.height().to_le_bytes())?;
                output.write_all(&(library.as_micros() as u64).to_le_bytes())?;
                output.write_all(image.as_raw())?;
            }
            Err(e) => {
                let (status, message) = match e {
                    NativeError::Unavailable(m) => (UNAVAILABLE, m),
                    NativeError::Undecodable(m) | NativeError::Crashed(m) => (UNDECODABLE, m),
                };
                let message = &message.as_bytes()[..message.len().min(64 * 1024)];
                output.write_all(&[status])?;
                output.write_all(&(message.len() as u32).to_le_bytes())?;
                output.write_all(message)?;
            }
        }
        output.flush()?;
    }
}

/// Test builds: the library call "crashes" on marker bytes, wherever it runs (so a test that
/// turns isolation off sees the host itself abort).
#[cfg(feature = "fault-injection")]
pub(crate) fn fault_injection(bytes: &[u8]) {
    let has = |marker: &[u8]| bytes.windows(marker.len()).any(|w| w == marker);
    if has(ABORT_MARKER) {
        std::process::abort();
    }
    if has(HANG_MARKER) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if has(HOG_MARKER) {
        // Reserves until the address-space limit refuses an allocation (an abort). The pages
        // are never touched: the limit is on address space, so the machine's memory is spared.
        let mut held: Vec<Vec<u8>> = Vec::new();
        loop {
            held.push(Vec::with_capacity(64 << 20));
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn fault_injection(_: &[u8]) {}

/// Sets the soft limit of `resource` (never above the hard limit, which an unprivileged
/// process cannot raise; the soft one it may raise again for the next decode).
fn set_limit(resource: libc::__rlimit_resource_t, bytes: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live struct. A
    // refusal leaves the previous limit, which only loses protection.
    unsafe {
        if libc::getrlimit(resource, &mut limit) != 0 {
            return;
        }
        limit.rlim_cur = bytes.min(limit.rlim_max);
        libc::setrlimit(resource, &limit);
    }
}

/// This process's mapped address space now (`VmSize`), which the per-decode limit adds to.
fn address_space_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A pool whose child is a shell script: how real children die, without a hooked binary.
    fn pool_running(script: &str, timeout: Duration) -> (Pool, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("child.sh");
        std::fs::write(&exe, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = CodecPaths {
            isolation: Isolation {
                exe: Some(exe),
                timeout,
                ..Isolation::default()
            },
            ..CodecPaths::default()
        };
        (Pool::new(&paths).expect("a pool"), dir)
    }

    fn crash_of(pool: &Pool) -> String {
        match pool.decode(Format::Heic, b"not a photo", 1000, 100) {
            Err(NativeError::Crashed(why)) => why,
            other => panic!("expected a crash, got {other:?}"),
        }
    }

    #[test]
    fn an_aborting_child_is_a_crash_of_that_decode_and_the_next_gets_a_fresh_child() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("starts");
        let (pool, _keep) = pool_running(
            &format!("echo started >> {}; kill -ABRT $$", count.display()),
            Duration::from_secs(10),
        );
        let why = crash_of(&pool);
        assert!(why.contains("signal 6 (SIGABRT)"), "{why}");
        let why = crash_of(&pool);
        assert!(why.contains("SIGABRT"), "{why}");
        let starts = std::fs::read_to_string(&count).unwrap();
        assert_eq!(
            starts.lines().count(),
            2,
            "each decode after a crash starts a child"
        );
    }

    #[test]
    fn a_child_that_never_answers_is_killed_at_the_timeout() {
        let (pool, _keep) = pool_running("exec sleep 60", Duration::from_millis(300));
        let started = std::time::Instant::now();
        let why = crash_of(&pool);
        assert!(
            why.contains("killed after the 300 ms decode timeout"),
            "{why}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_child_that_exits_or_answers_garbage_is_a_crash() {
        let (pool, _keep) = pool_running("exit 3", Duration::from_secs(10));
        assert!(crash_of(&pool).contains("exited with status 3"));
        // Claims a 100000x100000 image: over the job's limit, refused before allocating.
        let (pool, _keep) = pool_running(
            "head -c 29 >/dev/null; printf '\\000\\240\\206\\001\\000\\240\\206\\001\\000'; sleep 5",
            Duration::from_secs(10),
        );
        let why = crash_of(&pool);
        assert!(why.contains("100000x100000"), "{why}");
    }

    #[test]
    fn without_the_hook_or_an_executable_decodes_stay_in_process() {
        // Test binaries never run the hook.
        assert!(Pool::new(&CodecPaths::default()).is_none());
        let off = CodecPaths {
            isolation: Isolation {
                enabled: false,
                exe: Some(PathBuf::from("/bin/true")),
                ..Isolation::default()
            },
            ..CodecPaths::default()
        };
        assert!(Pool::new(&off).is_none());
    }
}
