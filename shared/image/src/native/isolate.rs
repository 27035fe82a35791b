//! The C decoders in helper processes, so that a crash, an abort, a hang or a runaway
//! allocation in libheif/libde265 or libavif/dav1d ends one decode, not the host.
//!
//! Rust's `catch_unwind` sees Rust panics only; a `SIGSEGV` or `abort()` in C takes the whole
//! process, with every request or SQS message in it. So a host that has installed the hook
//! ([`crate::run_decoder_if_asked`], first thing in `main`) decodes HEIC and AVIF in a child
//! started from its own executable: the parent sends the encoded bytes and limits on the
//! child's stdin and reads the answer (the size, or why not) on its stdout. The RGB8 pixels do
//! not go through the pipe: the library writes them straight into memory the two processes
//! share (a memfd the parent creates and the child finds at descriptor 3, grows and maps), and
//! the parent copies them from its own mapping of it into the image. A 12 MP photo is 36 MB of
//! pixels, which a pipe moved in about 30 ms; the mapping is kept from one decode to the next,
//! so its pages are already there. The image's own memory is fresh, and the kernel takes longer
//! to fault in and zero its pages than the copy takes: the parent does that while the child
//! decodes (it would otherwise wait idle), so only the copy is left after the answer. A child
//! that dies, or is killed by the watchdog after the decode timeout, becomes
//! [`ImageError::DecoderCrashed`] for that image alone; the next decode starts a fresh child.
//! Each child limits its own address space per decode (from the job's pixel limit), writes no
//! core file, and serves one decode at a time; idle children are kept for reuse, each with the
//! shared memory of the largest image it decoded (`make bench-image-formats` measures what
//! isolation costs).
//!
//! The parent trusts nothing the child says: the size it answers must be within the job's
//! header-derived limits before anything is allocated, the memfd must hold that many bytes
//! before they are read, and it cannot shrink under the parent's mapping (it is sealed against
//! shrinking, so a read can never fault on a page a child took away) nor grow past what the
//! jobs it served allowed (a child that grows it further is dropped with its memory).
//!
//! Processes without the hook (test binaries, tools) decode in process, as before: a child
//! started from a binary that does not know the protocol would run that binary's `main`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use image::RgbImage;

use super::{CodecPaths, PixelSink, rgb_len};
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
    /// The pixels' way back; dropped after the child (fields drop after `Drop::drop`).
    memory: PixelMemory,
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
        let memory = PixelMemory::new().map_err(NativeError::Unavailable)?;
        let fd = memory.fd.as_raw_fd();
        let mut command = Command::new(&self.exe);
        // SAFETY: the hook runs in the forked child before exec and only calls dup2 or fcntl,
        // which are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || hand_over(fd));
        }
        let mut child = command
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
        Ok(Worker {
            child,
            stdin,
            stdout,
            memory,
        })
    }

    /// Decodes in a child: the library's RGB8 image, its refusal, or how the child died.
    /// `expected_pixels` is the image's area as its header gives it: the parent readies that
    /// much memory for the pixels while the child decodes.
    pub(crate) fn decode(
        &self,
        format: Format,
        bytes: &[u8],
        max_pixels: u64,
        max_side: u32,
        expected_pixels: u64,
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
        worker.memory.allow(max_pixels);
        let job = Job {
            format,
            bytes,
            max_pixels,
            max_side,
            expected_pixels: expected_pixels.min(max_pixels),
        };
        let answer = exchange(&mut worker, &job);
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
                // A pipe that closed mid-reply means the child is gone, and its exit status
                // says why; any other failure (an answer out of bounds) leaves it running, so
                // it is killed before it is reaped (a no-op on one that already died, whose
                // status stays as it was).
                let gone = matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe
                );
                let _ = worker.child.kill();
                let status = worker.child.wait();
                let how = match status {
                    _ if timed_out => format!(
                        "was killed after the {} ms decode timeout",
                        timeout.as_millis()
                    ),
                    _ if !gone => "answered out of bounds and was stopped".to_string(),
                    Ok(s) => describe_exit(s),
                    Err(e) => format!("was lost ({e})"),
                };
                let detail = if gone {
                    String::new()
                } else {
                    format!(" ({io})")
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
// (u32), the library call's time in microseconds (u64), and width × height × 3 bytes of RGB8 at
// the start of the shared memory (descriptor 3 in the child); otherwise: length (u32), a UTF-8
// message.
const OK: u8 = 0;
const UNDECODABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// One decode asked of a child.
struct Job<'a> {
    format: Format,
    bytes: &'a [u8],
    max_pixels: u64,
    max_side: u32,
    /// The area the header gives (at most `max_pixels`): what the parent readies memory for.
    expected_pixels: u64,
}

/// One request and its reply; an I/O error means the child is gone.
fn exchange(
    worker: &mut Worker,
    job: &Job<'_>,
) -> std::io::Result<Result<(RgbImage, Duration), NativeError>> {
    let Job {
        format,
        bytes,
        max_pixels,
        max_side,
        ..
    } = *job;
    let mut head = Vec::with_capacity(21);
    head.push(u8::from(format == Format::Avif));
    head.extend_from_slice(&max_pixels.to_le_bytes());
    head.extend_from_slice(&max_side.to_le_bytes());
    head.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    worker.stdin.write_all(&head)?;
    worker.stdin.write_all(bytes)?;
    worker.stdin.flush()?;
    // While the child decodes, this thread (otherwise idle until the answer) gets the image's
    // fresh memory from the kernel: a 12 MP image is 8,800 pages to fault in and zero, which
    // took longer than copying the pixels into them. Only the copy is then left after the
    // answer. The size is the header's; an image that answers larger gets fresh memory then.
    // It stops as soon as the child has answered: a file that fails at once costs no more.
    let answer = worker.stdout.as_raw_fd();
    let ready = usize::try_from(job.expected_pixels.saturating_mul(3))
        .map(|len| prefaulted(len, || readable(answer)))
        .unwrap_or_default();
    let out = &mut worker.stdout;
    let status = read_u8(out)?;
    if status == OK {
        let (w, h) = (read_u32(out)?, read_u32(out)?);
        // The child is not trusted with our memory either: its image obeys the job's limits.
        let len = rgb_len(w, h).filter(|_| {
            w > 0 && h > 0 && w.max(h) <= max_side && u64::from(w) * u64::from(h) <= max_pixels
        });
        let Some(len) = len else {
            return Err(std::io::Error::other(format!(
                "it answered a {w}x{h} image under a limit of {max_pixels} pixels, \
                 {max_side} a side"
            )));
        };
        let library = Duration::from_micros(read_u64(out)?);
        let pixels = worker.memory.copy_out(len, ready)?;
        let image = RgbImage::from_raw(w, h, pixels)
            .ok_or_else(|| std::io::Error::other("a plane of the wrong size"))?;
        return Ok(Ok((image, library)));
    }
    worker.memory.check_size()?;
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

/// Where the child finds the shared memory: the first descriptor after stdin, stdout and
/// stderr.
const PIXEL_FD: RawFd = 3;

/// In the forked child, before exec: puts the memfd at [`PIXEL_FD`], open across the exec
/// (the parent's copy is close-on-exec, so no other child inherits it).
fn hand_over(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 and fcntl on descriptors this process holds; both are async-signal-safe.
    let r = unsafe {
        if fd == PIXEL_FD {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, PIXEL_FD)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A shared mapping of a memfd's first `len` bytes, unmapped when dropped.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is memory this value owns, like a `Box<[u8]>`; sending it to another
// thread (the pool's workers move between the threads that decode) moves that ownership.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` (> 0) bytes of `fd`, populated at once: a page table built in one call, not
    /// one fault a page on the first decode.
    fn new(fd: RawFd, len: usize, writable: bool) -> std::io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address the kernel picks, of a descriptor we hold.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made, unmapped once; nothing borrows it past `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The size of the file behind `fd`.
fn file_size(fd: RawFd) -> std::io::Result<u64> {
    // SAFETY: fstat on a descriptor we hold, into a zeroed struct it fills.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    u64::try_from(stat.st_size).map_err(|_| std::io::Error::other("a negative file size"))
}

/// `len` rounded up to whole pages.
fn whole_pages(len: u64) -> u64 {
    // SAFETY: sysconf with a valid name.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)
        .unwrap_or(4096);
    len.div_ceil(page).saturating_mul(page)
}

/// The parent's end of one child's shared memory: the memfd, sealed against shrinking, and
/// the parent's read-only mapping of it, kept across decodes and remapped when it grows.
struct PixelMemory {
    fd: OwnedFd,
    map: Option<Mapping>,
    /// The most the memfd may hold: whole pages of the largest image the jobs this child
    /// served allowed.
    allowed: u64,
}

impl PixelMemory {
    #[cfg(target_os = "linux")]
    fn new() -> Result<PixelMemory, String> {
        use std::os::fd::FromRawFd;
        let fail = |what: &str| {
            format!(
                "cannot create the decoder's shared memory ({what}: {})",
                std::io::Error::last_os_error()
            )
        };
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor it returns is ours.
        let raw = unsafe {
            libc::memfd_create(
                c"coldpath-decoder-pixels".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(fail("memfd_create"));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The child may grow the file but never shrink it: what the parent checked and mapped
        // stays backed (reading a page cut off a mapping is a SIGBUS, which would be the
        // host's crash). The seals themselves are sealed.
        // SAFETY: fcntl on our descriptor with an int argument.
        let sealed = unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
            )
        };
        if sealed != 0 {
            return Err(fail("sealing it"));
        }
        Ok(PixelMemory {
            fd,
            map: None,
            allowed: 0,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn new() -> Result<PixelMemory, String> {
        Err(
            "decoding in a child process needs Linux (its pixels come back in a memfd); \
             set COLDPATH_DECODER_ISOLATION=off to decode in process"
                .to_string(),
        )
    }

    /// Lets the memfd hold a job's largest image (whole pages of `max_pixels` × 3 bytes).
    fn allow(&mut self, max_pixels: u64) {
        self.allowed = self.allowed.max(whole_pages(max_pixels.saturating_mul(3)));
    }

    /// The memfd's size, refused when the child grew it past what its jobs allowed.
    fn check_size(&self) -> std::io::Result<u64> {
        let size = file_size(self.fd.as_raw_fd())?;
        if size > self.allowed {
            return Err(std::io::Error::other(format!(
                "it grew its shared memory to {size} bytes, over the {} its images need",
                self.allowed
            )));
        }
        Ok(size)
    }

    /// The image's `len` bytes, copied out of the shared memory into `pixels` (an empty
    /// buffer, fresh memory if it has too little room) once the memfd is known to hold them
    /// (and no more than allowed).
    fn copy_out(&mut self, len: usize, mut pixels: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let size = self.check_size()?;
        if size < len as u64 {
            return Err(std::io::Error::other(format!(
                "its shared memory holds {size} bytes, the image it answered needs {len}"
            )));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.map.as_ref().is_none_or(|m| m.len < len) {
            self.map = None;
            let size = usize::try_from(size).map_err(std::io::Error::other)?;
            self.map = Some(Mapping::new(self.fd.as_raw_fd(), size, false)?);
        }
        let Some(map) = &self.map else {
            return Err(std::io::Error::other("no mapping"));
        };
        if pixels.capacity() < len {
            // The header's size was smaller (it cannot be larger than the limits checked
            // above): the readied memory goes before the image's is taken.
            pixels = Vec::new();
            pixels.reserve_exact(len);
        }
        // SAFETY: the mapping covers `map.len >= len` bytes of a file that held at least that
        // many when it was mapped and cannot shrink (sealed), so every byte read is backed;
        // `pixels` has room for `len` bytes, all written before `set_len`. The child writes
        // the memory only while it decodes, and we read it only after its answer; a child that
        // wrote during the copy would give wrong pixels, never a read outside the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(map.ptr.as_ptr(), pixels.as_mut_ptr(), len);
            pixels.set_len(len);
        }
        // An image smaller than its header (a clean-aperture crop) gives back the rest.
        pixels.shrink_to_fit();
        Ok(pixels)
    }
}

/// An empty buffer with room for `len` bytes whose pages are already in memory, so that
/// writing them later faults nothing, or fewer of them when `stop` says so first (it is asked
/// between chunks of 4 MiB). `MADV_POPULATE_WRITE` (Linux 5.14) faults a chunk in with one
/// call; where it is refused, one byte a page is written.
fn prefaulted(len: usize, stop: impl Fn() -> bool) -> Vec<u8> {
    const CHUNK: usize = 4 << 20;
    let mut buffer: Vec<u8> = Vec::with_capacity(len);
    let spare = buffer.spare_capacity_mut();
    let page = whole_pages(1) as usize;
    let base = spare.as_mut_ptr() as usize;
    // Whole pages inside the allocation (rounded inwards; none in a small one), as offsets
    // into it, `CHUNK` at a time.
    let first_page = base.next_multiple_of(page);
    let past_last_page = (base + spare.len()) / page * page;
    if past_last_page <= first_page {
        return buffer;
    }
    let (mut at, end) = (first_page - base, past_last_page - base);
    let mut populate = true;
    while at < end && !stop() {
        let next = (at + CHUNK).min(end);
        // SAFETY: `at..next` is whole pages inside `buffer`'s own allocation, which nothing
        // else uses, and the buffer is empty: no byte of it is relied on.
        populate = populate && unsafe { populate_write(base + at, next - at) };
        if !populate {
            for page_start in (at..next).step_by(page) {
                spare[page_start].write(0);
            }
        }
        at = next;
    }
    buffer
}

/// Faults in `len` bytes of pages from `addr` for writing, in one call; false where the kernel
/// refuses (before Linux 5.14, or not Linux).
///
/// # Safety
/// `addr..addr + len` must be whole pages of memory the caller owns and relies on no byte of:
/// pages not yet there come in zeroed (those already there are left as they are).
#[cfg(target_os = "linux")]
unsafe fn populate_write(addr: usize, len: usize) -> bool {
    // SAFETY: the caller vouches for the range; MADV_POPULATE_WRITE changes no mapping.
    unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) == 0 }
}

#[cfg(not(target_os = "linux"))]
unsafe fn populate_write(_: usize, _: usize) -> bool {
    false
}

/// Whether `fd` has something to read (or its writer is gone), without waiting.
fn readable(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one live struct for a descriptor we hold, with no timeout.
    unsafe { libc::poll(&mut poll, 1, 0) != 0 }
}

/// The child's end: the memfd at [`PIXEL_FD`], grown (whole pages, never shrunk) and mapped
/// when an image needs more than the mapping has, which is kept for the next decode.
#[derive(Default)]
struct SharedPixels {
    map: Option<Mapping>,
    /// Why the last decode could not have its memory: the child's failure, not the image's.
    failure: Option<std::io::Error>,
}

impl SharedPixels {
    /// The address space the mapping takes.
    fn mapped(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.len as u64)
    }

    fn grow(&mut self, len: usize) -> std::io::Result<()> {
        if self.map.as_ref().is_some_and(|m| m.len >= len) {
            return Ok(());
        }
        let want = whole_pages(len as u64);
        if file_size(PIXEL_FD)? < want {
            let size = libc::off_t::try_from(want).map_err(std::io::Error::other)?;
            // SAFETY: ftruncate on the descriptor the parent handed over.
            if unsafe { libc::ftruncate(PIXEL_FD, size) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // The old mapping goes first: the address-space limit need not hold both.
        self.map = None;
        let want = usize::try_from(want).map_err(std::io::Error::other)?;
        self.map = Some(Mapping::new(PIXEL_FD, want, true)?);
        Ok(())
    }
}

impl PixelSink for SharedPixels {
    fn pixels(&mut self, width: u32, height: u32) -> Result<&mut [u8], String> {
        let len = rgb_len(width, height)
            .ok_or_else(|| format!("a {width}x{height} image does not fit in memory"))?;
        if len == 0 {
            return Ok(&mut []);
        }
        if let Err(e) = self.grow(len) {
            let why = format!("shared memory for a {width}x{height} image: {e}");
            self.failure = Some(std::io::Error::new(e.kind(), why.clone()));
            return Err(why);
        }
        let Some(map) = &self.map else {
            return Err("no shared memory".to_string());
        };
        // SAFETY: the mapping is writable and at least `len` bytes long (grow); the parent
        // reads it only after this decode's answer, and the slice borrows `self`, so the
        // mapping outlives it.
        Ok(unsafe { std::slice::from_raw_parts_mut(map.ptr.as_ptr(), len) })
    }
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
    let mut shared = SharedPixels::default();
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
        // The shared mapping kept from earlier decodes is address space too.
        if let Some(base) = baseline {
            set_limit(
                libc::RLIMIT_AS,
                base.saturating_add(shared.mapped()).saturating_add(budget),
            );
        }
        let format = if format == 1 {
            Format::Avif
        } else {
            Format::Heic
        };
        let started = Instant::now();
        let result =
            super::library_decode_into(&codecs, format, &bytes, max_pixels, max_side, &mut shared);
        let library = started.elapsed();
        drop(bytes);
        // Shared memory that cannot be had is this process's trouble, not the image's: the
        // child ends, and the parent reports a crash and starts a fresh one.
        if let Some(e) = shared.failure.take() {
            return Err(e);
        }
        match result {
            Ok((width, height)) => {
                output.write_all(&[OK])?;
                output.write_all(&width.to_le_bytes())?;
                output.write_all(&height.to_le_bytes())?;
                output.write_all(&(library.as_micros() as u64).to_le_bytes())?;
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
        match pool.decode(Format::Heic, b"not a photo", 1000, 100, 1000) {
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
        // Claims a 100000x100000 image: over the job's limit, refused before allocating. The
        // child stays alive after answering: it is stopped, not waited for.
        let (pool, _keep) = pool_running(
            &format!(
                "{SKIP_REQUEST}; printf '\\000\\240\\206\\001\\000\\240\\206\\001\\000'; exec cat >/dev/null"
            ),
            Duration::from_secs(10),
        );
        let why = within(Duration::from_secs(20), move || crash_of(&pool));
        assert!(why.contains("100000x100000"), "{why}");
        // Claims 1000x1: within the job's 1000 pixels, over its 100 a side.
        let (pool, _keep) = pool_running(
            &format!(
                "{SKIP_REQUEST}; printf '\\000\\350\\003\\000\\000\\001\\000\\000\\000'; exec cat >/dev/null"
            ),
            Duration::from_secs(10),
        );
        let why = within(Duration::from_secs(20), move || crash_of(&pool));
        assert!(why.contains("1000x1 image"), "{why}");
    }

    /// `f`'s answer, or a failed test if it takes longer than `limit` (rather than a test run
    /// that never ends).
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("no answer within {limit:?}"))
    }

    /// Reads the request `crash_of` and `small_decode` send (21 bytes of header, 11 of photo).
    const SKIP_REQUEST: &str = "head -c 32 >/dev/null";

    /// `printf` arguments for an answer: pixels, `width`x`height`, 0 µs in the library.
    fn answer(width: u32, height: u32) -> String {
        let octal = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|b| format!("\\{b:03o}"))
                .collect::<String>()
        };
        let mut reply = vec![OK];
        reply.extend_from_slice(&width.to_le_bytes());
        reply.extend_from_slice(&height.to_le_bytes());
        reply.extend_from_slice(&0u64.to_le_bytes());
        format!("printf '{}'", octal(&reply))
    }

    fn small_decode(pool: &Pool) -> Result<RgbImage, NativeError> {
        pool.decode(Format::Heic, b"not a photo", 10_000, 1000, 4)
    }

    #[test]
    fn the_pixels_come_back_in_the_shared_memory_at_descriptor_3() {
        // The child writes 2x2 RGB pixels into descriptor 3 and answers; the parent reads them
        // from its own mapping.
        let (pool, _keep) = pool_running(
            &format!(
                "{SKIP_REQUEST}; printf '\\001\\002\\003\\004\\005\\006\\007\\010\\011\\012\\013\\014' >&3; {}; exec cat >/dev/null",
                answer(2, 2)
            ),
            Duration::from_secs(10),
        );
        let image = small_decode(&pool).unwrap();
        assert_eq!(image.dimensions(), (2, 2));
        assert_eq!(image.as_raw(), &(1..=12).collect::<Vec<u8>>());
    }

    #[test]
    fn the_pixels_fit_whatever_size_the_header_gave() {
        // The parent readies memory for the header's area; an image that answers smaller (a
        // crop) or larger than that (within the job's limits) still comes back whole, in a
        // buffer no larger than the image.
        for expected in [0, 1, 4, 10_000] {
            let (pool, _keep) = pool_running(
                &format!(
                    "{SKIP_REQUEST}; printf '\\001\\002\\003\\004\\005\\006\\007\\010\\011\\012\\013\\014' >&3; {}; exec cat >/dev/null",
                    answer(2, 2)
                ),
                Duration::from_secs(10),
            );
            let image = pool
                .decode(Format::Heic, b"not a photo", 10_000, 1000, expected)
                .unwrap();
            assert_eq!(image.as_raw(), &(1..=12).collect::<Vec<u8>>(), "{expected}");
            assert_eq!(image.into_raw().capacity(), 12, "{expected}");
        }
    }

    #[test]
    fn readying_memory_stops_when_the_answer_is_there() {
        let len = 10 << 20;
        let all = prefaulted(len, || false);
        assert!(all.is_empty() && all.capacity() >= len);
        let asked = std::cell::Cell::new(0);
        let none = prefaulted(len, || {
            asked.set(asked.get() + 1);
            true
        });
        assert!(none.is_empty() && none.capacity() >= len);
        assert_eq!(asked.get(), 1, "asked once, before the first chunk");
        assert!(prefaulted(0, || false).is_empty());
    }

    #[test]
    fn a_child_whose_shared_memory_lacks_the_pixels_is_a_crash_not_a_bad_read() {
        // One byte written, a 100x20 image (6000 bytes, within the job's limits) answered:
        // reading it from a mapping of a 1-byte file would fault past the first page.
        let (pool, _keep) = pool_running(
            &format!(
                "{SKIP_REQUEST}; printf 'x' >&3; {}; exec cat >/dev/null",
                answer(100, 20)
            ),
            Duration::from_secs(10),
        );
        match within(Duration::from_secs(20), move || small_decode(&pool)) {
            Err(NativeError::Crashed(why)) => {
                assert!(
                    why.contains("holds 1 bytes, the image it answered needs 6000"),
                    "{why}"
                )
            }
            other => panic!("expected a crash, got {other:?}"),
        }
    }

    #[test]
    fn the_shared_memory_cannot_shrink_under_the_parent() {
        // The child writes its pixels, then tries to cut the file to nothing (as a child could
        // while the parent copies): the seal refuses, and the pixels are still there.
        let (pool, _keep) = pool_running(
            &format!(
                "{SKIP_REQUEST}; printf 'abcdefghijkl' >&3; truncate -s 0 /proc/$$/fd/3 2>/dev/null; {}; exec cat >/dev/null",
                answer(2, 2)
            ),
            Duration::from_secs(10),
        );
        let image = small_decode(&pool).unwrap();
        assert_eq!(image.as_raw(), b"abcdefghijkl");
    }

    #[test]
    fn a_child_that_grows_its_shared_memory_past_its_images_is_a_crash() {
        // The job allows 10000 pixels, 30000 bytes (8 pages); the child writes 100 kB and
        // answers that the photo is undecodable. Its memory must not stay with the pool.
        let (pool, _keep) = pool_running(
            &format!(
                "{SKIP_REQUEST}; head -c 100000 /dev/zero >&3; printf '\\001\\000\\000\\000\\000'; exec cat >/dev/null"
            ),
            Duration::from_secs(10),
        );
        let pool = std::sync::Arc::new(pool);
        let decoding = pool.clone();
        match within(Duration::from_secs(20), move || small_decode(&decoding)) {
            Err(NativeError::Crashed(why)) => assert!(
                why.contains("grew its shared memory to 100000 bytes, over the 32768"),
                "{why}"
            ),
            other => panic!("expected a crash, got {other:?}"),
        }
        assert!(
            pool.idle.lock().unwrap().is_empty(),
            "the child was dropped"
        );
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
