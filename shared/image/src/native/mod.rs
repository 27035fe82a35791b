//! HEIC and AVIF through C libraries loaded at run time: libheif (with libde265 for HEVC) and
//! libavif (with dav1d for AV1).
//!
//! Why C, and why loaded rather than linked: no maintained Rust crate decodes HEVC, and the
//! AVIF crates either link a system dav1d (not on a fresh machine, not in Lambda) or are not
//! production decoders. Both libraries come from registry wheels that ship them for manylinux
//! (glibc 2.28, so they run on Lambda's Amazon Linux 2023): libheif 1.23 and libde265 from
//! `pi-heif` (LGPL-3.0; the decode-only build, unlike `pillow-heif`, whose libheif needs the
//! GPL x265 encoder), libavif 1.4 with dav1d from `pillow` (BSD-2-Clause).
//! `tools/setup/bootstrap.py` takes them out of the pinned wheels; the Lambda layer and the pod
//! images carry them. Loading them with `dlopen` (as `ort` loads ONNX Runtime) keeps every build,
//! test and fuzz target free of them: without a library, that format alone fails with
//! [`ImageError::CodecUnavailable`].
//!
//! Where they are found: `COLDPATH_LIBHEIF_PATH` and `COLDPATH_LIBAVIF_PATH`, or else the
//! sonames `libheif.so.1` and `libavif.so.16` on the loader's search path (Lambda puts the
//! layer's `/opt/lib` there).

mod avif;
mod heif;
pub mod isolate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use coldpath_core::config::{self, EnvSource};
use coldpath_core::contract::EnvVar;

pub(crate) use avif::Avif;
pub(crate) use heif::Heif;
pub use isolate::{Isolation, isolation_overhead, run_decoder_if_asked};
pub(crate) use isolate::{NativeError, Pool};

use crate::ImageError;
use crate::decode::Format;

/// Where the decoder libraries are; read once at init with [`CodecPaths::from_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecPaths {
    /// libheif: a path, or a soname for the loader's search path.
    pub libheif: PathBuf,
    /// libavif: a path, or a soname.
    pub libavif: PathBuf,
    /// Where the libraries run: in a child process (the default) or in this one.
    pub isolation: Isolation,
}

impl Default for CodecPaths {
    fn default() -> Self {
        CodecPaths {
            libheif: PathBuf::from("libheif.so.1"),
            libavif: PathBuf::from("libavif.so.16"),
            isolation: Isolation::default(),
        }
    }
}

impl CodecPaths {
    /// The variables [`CodecPaths::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("COLDPATH_LIBHEIF_PATH", "the HEIC decoder library"),
        EnvVar::optional("COLDPATH_LIBAVIF_PATH", "the AVIF decoder library"),
        EnvVar::optional("COLDPATH_DECODER_ISOLATION", "process (the default) or off"),
        EnvVar::optional(
            "COLDPATH_DECODER_EXE",
            "the executable the decoder child runs",
        ),
        EnvVar::optional(
            "COLDPATH_DECODE_TIMEOUT_MS",
            "how long one HEIC/AVIF decode may take",
        ),
    ];

    /// Reads `COLDPATH_LIBHEIF_PATH` and `COLDPATH_LIBAVIF_PATH` (unset or empty means the
    /// soname), and the isolation settings: `COLDPATH_DECODER_ISOLATION` (`process`, the
    /// default, or `off`), `COLDPATH_DECODER_EXE` and `COLDPATH_DECODE_TIMEOUT_MS`.
    pub fn from_env(env: &impl EnvSource) -> Result<Self, config::ConfigError> {
        let d = CodecPaths::default();
        let enabled = match config::get(env, "COLDPATH_DECODER_ISOLATION").as_deref() {
            None | Some("process") => true,
            Some("off") => false,
            Some(other) => {
                return Err(config::ConfigError::invalid(
                    "COLDPATH_DECODER_ISOLATION",
                    "process or off",
                    other,
                ));
            }
        };
        let timeout_ms = config::positive_or(
            env,
            "COLDPATH_DECODE_TIMEOUT_MS",
            d.isolation.timeout.as_millis() as usize,
        )?;
        Ok(CodecPaths {
            libheif: config::get(env, "COLDPATH_LIBHEIF_PATH").map_or(d.libheif, PathBuf::from),
            libavif: config::get(env, "COLDPATH_LIBAVIF_PATH").map_or(d.libavif, PathBuf::from),
            isolation: Isolation {
                enabled,
                exe: config::get(env, "COLDPATH_DECODER_EXE").map(PathBuf::from),
                timeout: Duration::from_millis(timeout_ms as u64),
                idle: d.isolation.idle,
            },
        })
    }
}

/// Which optional formats this process can decode, for the init log and `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecStatus {
    /// `Ok(version)` of libheif, or why it could not be loaded.
    pub heic: Result<String, String>,
    /// `Ok(version and codecs)` of libavif, or why it could not be loaded.
    pub avif: Result<String, String>,
    /// The executable decodes run in, when they run in child processes.
    pub decoder_process: Option<PathBuf>,
}

impl CodecStatus {
    /// One init log line per format: the library's version, or a warning saying why that format
    /// will be refused (the other formats are unaffected).
    pub fn log(&self) {
        for (format, status) in [("heic", &self.heic), ("avif", &self.avif)] {
            match status {
                Ok(version) => tracing::info!(format, decoder = %version, "image decoder loaded"),
                Err(why) => tracing::warn!(
                    format,
                    reason = %why,
                    "image decoder not available: requests in this format will fail"
                ),
            }
        }
        match &self.decoder_process {
            Some(exe) => tracing::info!(
                executable = %exe.display(),
                "HEIC and AVIF decode in child processes"
            ),
            None => tracing::info!("HEIC and AVIF decode in this process"),
        }
    }
}

pub(crate) struct Codecs {
    pub heif: Result<Heif, String>,
    pub avif: Result<Avif, String>,
    /// Where decodes run: `Some` in child processes, `None` in this one.
    pub pool: Option<Pool>,
}

static CODECS: OnceLock<Codecs> = OnceLock::new();

/// Loads the decoder libraries from `paths` once per process and says what loaded. Call it at
/// init, so the cost lands in the cold start and a missing library shows in the init log; a
/// later call returns the first call's result. Without a call, the first HEIC or AVIF decode
/// loads them from `COLDPATH_LIBHEIF_PATH` / `COLDPATH_LIBAVIF_PATH` in the process
/// environment.
pub fn load_native_codecs(paths: &CodecPaths) -> CodecStatus {
    status(CODECS.get_or_init(|| load(paths)))
}

pub(crate) fn codecs() -> &'static Codecs {
    CODECS.get_or_init(|| {
        // A malformed isolation setting here (no init call) falls back to the defaults; the
        // hosts read it at init, where it is an error.
        let paths = CodecPaths::from_env(&config::ProcessEnv).unwrap_or_default();
        load(&paths)
    })
}

fn load(paths: &CodecPaths) -> Codecs {
    Codecs {
        heif: Heif::load(&paths.libheif),
        avif: Avif::load(&paths.libavif),
        pool: Pool::new(paths),
    }
}

fn status(c: &Codecs) -> CodecStatus {
    CodecStatus {
        heic: c.heif.as_ref().map(Heif::version).map_err(Clone::clone),
        avif: c.avif.as_ref().map(Avif::version).map_err(Clone::clone),
        decoder_process: c.pool.as_ref().map(|p| p.exe().to_path_buf()),
    }
}

/// Where a library writes the RGB8 pixels it decodes: asked once, when the size is known, for
/// `width × height × 3` bytes (rows packed, no padding). In process that is the image's own
/// `Vec`; in a decoder child it is the memory shared with the parent, so the pixels are written
/// once and never copied through a pipe.
pub(crate) trait PixelSink {
    /// A buffer of exactly `width × height × 3` bytes, or why there is none.
    fn pixels(&mut self, width: u32, height: u32) -> Result<&mut [u8], String>;
}

/// The in-process sink: a fresh buffer that becomes the `RgbImage`.
#[derive(Default)]
pub(crate) struct VecSink(Vec<u8>);

impl PixelSink for VecSink {
    fn pixels(&mut self, width: u32, height: u32) -> Result<&mut [u8], String> {
        let len = rgb_len(width, height)
            .ok_or_else(|| format!("a {width}x{height} image does not fit in memory"))?;
        self.0 = vec![0u8; len];
        Ok(&mut self.0)
    }
}

/// `width × height × 3`, when it fits in a `usize`.
pub(crate) fn rgb_len(width: u32, height: u32) -> Option<usize> {
    let len = u64::from(width)
        .checked_mul(u64::from(height))?
        .checked_mul(3)?;
    usize::try_from(len).ok()
}

/// The library call itself, in this process: HEIC upright (libheif applies `irot`/`imir`),
/// AVIF as stored. `max_pixels` and `max_side` go to the library as its own limits.
pub(crate) fn library_decode(
    codecs: &Codecs,
    format: Format,
    bytes: &[u8],
    max_pixels: u64,
    max_side: u32,
) -> Result<image::RgbImage, NativeError> {
    let mut sink = VecSink::default();
    let (width, height) =
        library_decode_into(codecs, format, bytes, max_pixels, max_side, &mut sink)?;
    image::RgbImage::from_raw(width, height, sink.0).ok_or_else(|| {
        NativeError::Undecodable(format!(
            "a {width}x{height} image in a buffer of another size"
        ))
    })
}

/// [`library_decode`] into `sink`: the decoded image's width and height.
pub(crate) fn library_decode_into(
    codecs: &Codecs,
    format: Format,
    bytes: &[u8],
    max_pixels: u64,
    max_side: u32,
    sink: &mut dyn PixelSink,
) -> Result<(u32, u32), NativeError> {
    isolate::fault_injection(bytes);
    match format {
        Format::Heic => {
            let heif = codecs
                .heif
                .as_ref()
                .map_err(|why| NativeError::Unavailable(why.clone()))?;
            heif.decode_into(bytes, max_pixels, sink)
                .map_err(NativeError::Undecodable)
        }
        _ => {
            let avif = codecs
                .avif
                .as_ref()
                .map_err(|why| NativeError::Unavailable(why.clone()))?;
            avif.decode_into(bytes, max_pixels, max_side, sink)
                .map_err(NativeError::Undecodable)
        }
    }
}

/// Opens a library; the message names the path and the loader's reason.
fn open(path: &Path) -> Result<libloading::Library, String> {
    // SAFETY: loading runs the library's initialisers; these are the pinned libheif, libde265
    // and libavif builds, whose initialisers only set up their own state.
    unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {path:?}: {e}"))
}

/// A C function of `lib` as a Rust function pointer; the message names the library and the
/// function.
///
/// # Safety
/// `T` must be the C prototype of `name` (the pointer is only valid while `lib` is loaded; the
/// structs that hold these keep their library beside them).
unsafe fn symbol<T: Copy>(lib: &libloading::Library, path: &Path, name: &str) -> Result<T, String> {
    let c_name = format!("{name}\0");
    // SAFETY: the caller vouches for `T`.
    unsafe { lib.get::<T>(c_name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| format!("{path:?} lacks {name}: {e}"))
}

/// The error for a HEIC or AVIF file when its library is missing: the deployment's fault, not
/// the caller's (the same file decodes where the library is installed).
pub(crate) fn unavailable(format: &'static str, why: &str) -> ImageError {
    ImageError::CodecUnavailable {
        format,
        reason: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_message_naming_it() {
        let heif = Heif::load(Path::new("/nonexistent/libheif.so.1"))
            .err()
            .unwrap();
        assert!(heif.contains("/nonexistent"), "{heif}");
        let avif = Avif::load(Path::new("libavif-not-installed.so.16"))
            .err()
            .unwrap();
        assert!(
            avif.contains("cannot load \"libavif-not-installed.so.16\""),
            "{avif}"
        );
    }

    #[test]
    fn paths_default_to_the_sonames() {
        use coldpath_core::MapEnv;
        assert_eq!(
            CodecPaths::from_env(&MapEnv::default()).unwrap(),
            CodecPaths::default()
        );
        assert!(CodecPaths::default().isolation.enabled);
        let env = MapEnv::new([
            ("COLDPATH_LIBHEIF_PATH", "/opt/lib/libheif.so.1"),
            ("COLDPATH_DECODER_ISOLATION", "off"),
            ("COLDPATH_DECODE_TIMEOUT_MS", "500"),
            ("COLDPATH_DECODER_EXE", "/opt/bin/decoder"),
        ]);
        let p = CodecPaths::from_env(&env).unwrap();
        assert_eq!(p.libheif, PathBuf::from("/opt/lib/libheif.so.1"));
        assert_eq!(p.libavif, PathBuf::from("libavif.so.16"));
        assert!(!p.isolation.enabled);
        assert_eq!(p.isolation.timeout, Duration::from_millis(500));
        assert_eq!(p.isolation.exe, Some(PathBuf::from("/opt/bin/decoder")));
        for (k, v) in [
            ("COLDPATH_DECODER_ISOLATION", "thread"),
            ("COLDPATH_DECODE_TIMEOUT_MS", "0"),
        ] {
            let err = CodecPaths::from_env(&MapEnv::new([(k, v)])).unwrap_err();
            assert!(err.to_string().starts_with(k), "{err}");
        }
    }
}
