//! HEIC through libheif's C API (`heif_context`, `heif_image_handle`, `heif_image`), declared
//! here for the few calls we make. libheif applies the container's `clap`, `irot` and `imir`
//! itself, decodes grids (an iPhone photo is a grid of 512 × 512 HEVC tiles) and converts 10-bit
//! images to the 8-bit interleaved RGB we ask for.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::Path;

use super::{PixelSink, open, symbol};

/// `struct heif_error`, returned by value.
#[repr(C)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

/// The leading fields of `struct heif_decoding_options` (libheif ≥ 1.13, version ≥ 3); the
/// struct is allocated by libheif, so only these fields' offsets matter.
#[repr(C)]
struct DecodingOptions {
    version: u8,
    ignore_transformations: u8,
    start_progress: *const c_void,
    on_progress: *const c_void,
    end_progress: *const c_void,
    progress_user_data: *mut c_void,
    convert_hdr_to_8bit: u8,
    strict_decoding: u8,
}

const HEIF_COLORSPACE_RGB: c_int = 1;
const HEIF_CHROMA_INTERLEAVED_RGB: c_int = 10;
const HEIF_CHANNEL_INTERLEAVED: c_int = 10;

type Ptr = *mut c_void;

/// libheif, loaded, with the entry points we call.
pub(crate) struct Heif {
    version: String,
    context_alloc: unsafe extern "C" fn() -> Ptr,
    context_free: unsafe extern "C" fn(Ptr),
    set_maximum_image_size_limit: unsafe extern "C" fn(Ptr, c_int),
    read_from_memory_without_copy:
        unsafe extern "C" fn(Ptr, *const c_void, usize, *const c_void) -> HeifError,
    get_primary_image_handle: unsafe extern "C" fn(Ptr, *mut Ptr) -> HeifError,
    handle_release: unsafe extern "C" fn(Ptr),
    decode_image: unsafe extern "C" fn(Ptr, *mut Ptr, c_int, c_int, *const c_void) -> HeifError,
    decoding_options_alloc: unsafe extern "C" fn() -> *mut DecodingOptions,
    decoding_options_free: unsafe extern "C" fn(*mut DecodingOptions),
    image_get_width: unsafe extern "C" fn(Ptr, c_int) -> c_int,
    image_get_height: unsafe extern "C" fn(Ptr, c_int) -> c_int,
    image_get_plane_readonly: unsafe extern "C" fn(Ptr, c_int, *mut c_int) -> *const u8,
    image_release: unsafe extern "C" fn(Ptr),
    // Last: the function pointers above point into these.
    _lib: libloading::Library,
    _deps: Vec<libloading::Library>,
}

// SAFETY: the struct holds function pointers and the libraries they live in; libheif's API is
// thread-safe across distinct contexts, and every decode makes its own.
unsafe impl Send for Heif {}
unsafe impl Sync for Heif {}

impl Heif {
    /// Loads libheif from `path` and initialises it.
    ///
    /// The libheif in `pi-heif`'s wheel names its libde265 by a hashed soname and carries no
    /// RPATH, so the loader would not find it beside libheif: any `libde265*` file in the same
    /// directory is loaded first, and the loader then matches libheif's dependency by soname.
    pub(crate) fn load(path: &Path) -> Result<Heif, String> {
        let mut deps = Vec::new();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut found: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| format!("cannot list {dir:?}: {e}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libde265") && n.contains(".so"))
                })
                .collect();
            found.sort();
            for dep in found {
                deps.push(open(&dep)?);
            }
        }
        let lib = open(path)?;
        macro_rules! sym {
            // SAFETY: each declared type is the C prototype of that libheif function.
            ($name:literal) => {
                unsafe { symbol(&lib, path, $name) }?
            };
        }
        let init: unsafe extern "C" fn(*const c_void) -> HeifError = sym!("heif_init");
        let get_version: unsafe extern "C" fn() -> *const c_char = sym!("heif_get_version");
        // SAFETY: heif_init takes optional parameters (NULL: defaults) and is reference-counted.
        let err = unsafe { init(std::ptr::null()) };
        if err.code != 0 {
            return Err(format!("heif_init failed: {}", message(&err)));
        }
        // SAFETY: returns a static NUL-terminated string.
        let version = unsafe { CStr::from_ptr(get_version()) }
            .to_string_lossy()
            .into_owned();
        Ok(Heif {
            version: format!("libheif {version}"),
            context_alloc: sym!("heif_context_alloc"),
            context_free: sym!("heif_context_free"),
            set_maximum_image_size_limit: sym!("heif_context_set_maximum_image_size_limit"),
            read_from_memory_without_copy: sym!("heif_context_read_from_memory_without_copy"),
            get_primary_image_handle: sym!("heif_context_get_primary_image_handle"),
            handle_release: sym!("heif_image_handle_release"),
            decode_image: sym!("heif_decode_image"),
            decoding_options_alloc: sym!("heif_decoding_options_alloc"),
            decoding_options_free: sym!("heif_decoding_options_free"),
            image_get_width: sym!("heif_image_get_width"),
            image_get_height: sym!("heif_image_get_height"),
            image_get_plane_readonly: sym!("heif_image_get_plane_readonly"),
            image_release: sym!("heif_image_release"),
            _lib: lib,
            _deps: deps,
        })
    }

    pub(crate) fn version(&self) -> String {
        self.version.clone()
    }

    /// [`Heif::decode_into`] a fresh buffer (tests).
    #[cfg(test)]
    pub(crate) fn decode(&self, bytes: &[u8], max_pixels: u64) -> Result<image::RgbImage, String> {
        let mut sink = super::VecSink::default();
        let (w, h) = self.decode_into(bytes, max_pixels, &mut sink)?;
        image::RgbImage::from_raw(w, h, sink.0).ok_or_else(|| "a short buffer".to_string())
    }

    /// Decodes the primary image to upright RGB8 in `sink`, and answers its width and height.
    /// The caller has checked the header's size against its limits; `max_pixels` is handed to libheif as its own limit too (its
    /// `max_image_size_pixels`, which it checks on every image it allocates and passes on to
    /// libde265), so a coded stream that claims more than its header cannot make it allocate more.
    pub(crate) fn decode_into(
        &self,
        bytes: &[u8],
        max_pixels: u64,
        sink: &mut dyn PixelSink,
    ) -> Result<(u32, u32), String> {
        // SAFETY: each pointer below comes from the libheif call that allocates it, is checked
        // for NULL, used only while alive, and released once by its guard. `bytes` outlives the
        // context that reads it without copying.
        unsafe {
            let ctx = Guard((self.context_alloc)(), self.context_free);
            if ctx.0.is_null() {
                return Err("libheif could not allocate a context".to_string());
            }
            // The call takes a width and sets width² pixels: the smallest width whose square
            // covers `max_pixels`.
            let width = (max_pixels as f64).sqrt().ceil() as u64;
            (self.set_maximum_image_size_limit)(
                ctx.0,
                c_int::try_from(width).unwrap_or(c_int::MAX),
            );
            check(
                "reading the file",
                (self.read_from_memory_without_copy)(
                    ctx.0,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    std::ptr::null(),
                ),
            )?;
            let mut handle: Ptr = std::ptr::null_mut();
            check(
                "finding the primary image",
                (self.get_primary_image_handle)(ctx.0, &mut handle),
            )?;
            let handle = Guard(handle, self.handle_release);

            let options = (self.decoding_options_alloc)();
            if options.is_null() {
                return Err("libheif could not allocate decoding options".to_string());
            }
            let options = OptionsGuard(options, self.decoding_options_free);
            // Strict: a grid with a missing or broken tile is an error, not a photo with a hole
            // in it. Transformations stay on (the default): libheif applies clap, irot, imir.
            if (*options.0).version >= 3 {
                (*options.0).strict_decoding = 1;
            }
            (*options.0).ignore_transformations = 0;

            let mut img: Ptr = std::ptr::null_mut();
            check(
                "decoding",
                (self.decode_image)(
                    handle.0,
                    &mut img,
                    HEIF_COLORSPACE_RGB,
                    HEIF_CHROMA_INTERLEAVED_RGB,
                    options.0.cast(),
                ),
            )?;
            let img = Guard(img, self.image_release);
            let width = (self.image_get_width)(img.0, HEIF_CHANNEL_INTERLEAVED);
            let height = (self.image_get_height)(img.0, HEIF_CHANNEL_INTERLEAVED);
            let mut stride: c_int = 0;
            let plane =
                (self.image_get_plane_readonly)(img.0, HEIF_CHANNEL_INTERLEAVED, &mut stride);
            let (Ok(w), Ok(h), Ok(stride)) = (
                usize::try_from(width),
                usize::try_from(height),
                usize::try_from(stride),
            ) else {
                return Err(format!("libheif returned a {width}x{height} image"));
            };
            if plane.is_null() || w == 0 || h == 0 || stride < w * 3 {
                return Err(format!(
                    "libheif returned no usable RGB plane ({w}x{h}, stride {stride})"
                ));
            }
            // Both fit in a u32: they came from a non-negative c_int.
            let pixels = sink.pixels(w as u32, h as u32)?;
            if pixels.len() != w * h * 3 {
                return Err("a pixel buffer of the wrong size".to_string());
            }
            for (row, out) in pixels.chunks_exact_mut(w * 3).enumerate() {
                let start = plane.add(row * stride);
                out.copy_from_slice(std::slice::from_raw_parts(start, w * 3));
            }
            Ok((w as u32, h as u32))
        }
    }
}

/// Releases a libheif object when dropped.
struct Guard(Ptr, unsafe extern "C" fn(Ptr));

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from the matching allocation and is released once.
            unsafe { (self.1)(self.0) }
        }
    }
}

struct OptionsGuard(
    *mut DecodingOptions,
    unsafe extern "C" fn(*mut DecodingOptions),
);

impl Drop for OptionsGuard {
    fn drop(&mut self) {
        // SAFETY: allocated by heif_decoding_options_alloc, freed once.
        unsafe { (self.1)(self.0) }
    }
}

fn message(err: &HeifError) -> String {
    if err.message.is_null() {
        return format!("libheif error {}.{}", err.code, err.subcode);
    }
    // SAFETY: libheif's messages are NUL-terminated and live at least as long as the context.
    let text = unsafe { CStr::from_ptr(err.message) }.to_string_lossy();
    format!(
        "{} (libheif error {}.{})",
        text.trim(),
        err.code,
        err.subcode
    )
}

fn check(what: &str, err: HeifError) -> Result<(), String> {
    if err.code == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", message(&err)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libheif's own limit holds even where our header check is not in front of it: the second
    /// line against a coded stream larger than its `ispe`.
    #[test]
    fn libheif_refuses_an_image_over_its_own_pixel_limit() {
        let path = std::env::var("COLDPATH_LIBHEIF_PATH")
            .expect("COLDPATH_LIBHEIF_PATH: run with `make test` (or `eval \"$(make -s env)\"`)");
        let heif = Heif::load(Path::new(&path)).unwrap();
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/heif/g800-10bit.heic");
        let bytes = std::fs::read(file).unwrap();
        let img = heif.decode(&bytes, 800 * 600).unwrap();
        assert_eq!(img.dimensions(), (800, 600));
        let err = heif.decode(&bytes, 800 * 600 / 2).unwrap_err();
        assert!(err.contains("Security limit"), "{err}");
    }
}
