//! AVIF through libavif's C API (`avifDecoder`, `avifImage`, `avifRGBImage`), declared here for
//! the few calls we make. libavif's structs are not opaque, so the fields we touch are declared
//! with the layout of libavif 1.x's `avif.h` (the pinned build is 1.4.2, ABI `libavif.so.16`);
//! only prefixes of the structs libavif allocates, and the whole of `avifRGBImage`, which we
//! allocate. libavif does not apply `irot`/`imir` (the caller turns the pixels) and converts
//! 10- and 12-bit images to the 8-bit RGB we ask for.

use std::ffi::{CStr, c_char, c_int};
use std::path::Path;

use super::{PixelSink, open, symbol};

/// `avifImage`, up to `depth` (the first fields, stable across libavif 1.x).
#[repr(C)]
struct AvifImage {
    width: u32,
    height: u32,
    depth: u32,
}

/// `avifDecoder` up to `diag` (libavif 1.x).
#[repr(C)]
struct AvifDecoder {
    codec_choice: c_int,
    max_threads: c_int,
    requested_source: c_int,
    allow_progressive: c_int,
    allow_incremental: c_int,
    ignore_exif: c_int,
    ignore_xmp: c_int,
    image_size_limit: u32,
    image_dimension_limit: u32,
    image_count_limit: u32,
    strict_flags: u32,
    image: *mut AvifImage,
    image_index: c_int,
    image_count: c_int,
    progressive_state: c_int,
    // avifImageTiming: timescale, pts, ptsInTimescales, duration, durationInTimescales.
    image_timing: [u64; 5],
    timescale: u64,
    duration: f64,
    duration_in_timescales: u64,
    repetition_count: c_int,
    alpha_present: c_int,
    // avifIOStats: colorOBUSize, alphaOBUSize.
    io_stats: [usize; 2],
    diag: [c_char; 256],
}

/// `avifRGBImage`, whole: we allocate it and libavif fills its defaults.
#[repr(C)]
struct AvifRgbImage {
    width: u32,
    height: u32,
    depth: u32,
    format: c_int,
    chroma_upsampling: c_int,
    chroma_downsampling: c_int,
    avoid_lib_yuv: c_int,
    ignore_alpha: c_int,
    alpha_premultiplied: c_int,
    is_float: c_int,
    max_threads: c_int,
    pixels: *mut u8,
    row_bytes: u32,
}

const AVIF_RESULT_OK: c_int = 0;
const AVIF_RGB_FORMAT_RGB: c_int = 0;
const AVIF_STRICT_DISABLED: u32 = 0;
/// libavif's own ceiling for `imageSizeLimit` (16384²).
const AVIF_MAX_IMAGE_SIZE_LIMIT: u32 = 16384 * 16384;

/// libavif, loaded, with the entry points we call.
pub(crate) struct Avif {
    version: String,
    decoder_create: unsafe extern "C" fn() -> *mut AvifDecoder,
    decoder_destroy: unsafe extern "C" fn(*mut AvifDecoder),
    set_io_memory: unsafe extern "C" fn(*mut AvifDecoder, *const u8, usize) -> c_int,
    parse: unsafe extern "C" fn(*mut AvifDecoder) -> c_int,
    next_image: unsafe extern "C" fn(*mut AvifDecoder) -> c_int,
    rgb_set_defaults: unsafe extern "C" fn(*mut AvifRgbImage, *const AvifImage),
    yuv_to_rgb: unsafe extern "C" fn(*const AvifImage, *mut AvifRgbImage) -> c_int,
    result_to_string: unsafe extern "C" fn(c_int) -> *const c_char,
    // Last: the function pointers above point into it.
    _lib: libloading::Library,
}

// SAFETY: function pointers and their library; every decode creates its own avifDecoder.
unsafe impl Send for Avif {}
unsafe impl Sync for Avif {}

impl Avif {
    pub(crate) fn load(path: &Path) -> Result<Avif, String> {
        let lib = open(path)?;
        macro_rules! sym {
            // SAFETY: each declared type is the C prototype of that libavif function.
            ($name:literal) => {
                unsafe { symbol(&lib, path, $name) }?
            };
        }
        let version: unsafe extern "C" fn() -> *const c_char = sym!("avifVersion");
        let codec_versions: unsafe extern "C" fn(*mut c_char) = sym!("avifCodecVersions");
        // SAFETY: avifVersion returns a static string; avifCodecVersions writes at most 256
        // bytes, NUL included.
        let (version, codecs) = unsafe {
            let mut buf = [0 as c_char; 256];
            codec_versions(buf.as_mut_ptr());
            (
                CStr::from_ptr(version()).to_string_lossy().into_owned(),
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
            )
        };
        // Our struct declarations are libavif 1.x's; refuse another major version.
        if !version.starts_with("1.") {
            return Err(format!(
                "{path:?} is libavif {version}; coldpath declares libavif 1.x's structs"
            ));
        }
        if !codecs.contains("dav1d") && !codecs.contains("aom") {
            return Err(format!("{path:?} has no AV1 decoder ({codecs})"));
        }
        Ok(Avif {
            version: format!("libavif {version} ({codecs})"),
            decoder_create: sym!("avifDecoderCreate"),
            decoder_destroy: sym!("avifDecoderDestroy"),
            set_io_memory: sym!("avifDecoderSetIOMemory"),
            parse: sym!("avifDecoderParse"),
            next_image: sym!("avifDecoderNextImage"),
            rgb_set_defaults: sym!("avifRGBImageSetDefaults"),
            yuv_to_rgb: sym!("avifImageYUVToRGB"),
            result_to_string: sym!("avifResultToString"),
            _lib: lib,
        })
    }

    pub(crate) fn version(&self) -> String {
        self.version.clone()
    }

    /// Decodes the primary image (the first frame of a sequence) to RGB8 as stored, before
    /// `irot`/`imir`. `max_pixels` and `max_side` also go to libavif, which hands them to dav1d,
    /// so a coded stream that claims more than its header cannot make it allocate more. The
    /// pixels go to `sink`; the answer is the image's width and height.
    pub(crate) fn decode_into(
        &self,
        bytes: &[u8],
        max_pixels: u64,
        max_side: u32,
        sink: &mut dyn PixelSink,
    ) -> Result<(u32, u32), String> {
        // SAFETY: the decoder comes from avifDecoderCreate, is checked for NULL and destroyed
        // once by its guard; `bytes` outlives it (avifDecoderSetIOMemory does not copy);
        // `image` is read only after a successful parse, while the decoder owns it; the RGB
        // buffer is the sink's, checked to be width × height × 3 bytes with that row stride.
        unsafe {
            let decoder = (self.decoder_create)();
            if decoder.is_null() {
                return Err("libavif could not allocate a decoder".to_string());
            }
            let _guard = DecoderGuard(decoder, self.decoder_destroy);
            let d = &mut *decoder;
            d.max_threads = 1;
            d.ignore_exif = 1;
            d.ignore_xmp = 1;
            // Browsers decode files that bend the spec (a missing pixi, an odd clap); so do we.
            d.strict_flags = AVIF_STRICT_DISABLED;
            d.image_size_limit =
                u32::try_from(max_pixels.min(u64::from(AVIF_MAX_IMAGE_SIZE_LIMIT))).unwrap_or(0);
            d.image_dimension_limit = max_side;
            self.result(
                "reading the file",
                decoder,
                (self.set_io_memory)(decoder, bytes.as_ptr(), bytes.len()),
            )?;
            self.result("parsing", decoder, (self.parse)(decoder))?;
            self.result("decoding", decoder, (self.next_image)(decoder))?;
            let image = (*decoder).image;
            if image.is_null() {
                return Err("libavif returned no image".to_string());
            }
            let (w, h) = ((*image).width, (*image).height);
            if w == 0 || h == 0 || u64::from(w) * u64::from(h) > max_pixels {
                return Err(format!("libavif returned a {w}x{h} image"));
            }
            let pixels = sink.pixels(w, h)?;
            if pixels.len() != w as usize * h as usize * 3 {
                return Err("a pixel buffer of the wrong size".to_string());
            }
            let mut rgb: AvifRgbImage = std::mem::zeroed();
            (self.rgb_set_defaults)(&mut rgb, image);
            rgb.format = AVIF_RGB_FORMAT_RGB;
            rgb.depth = 8;
            rgb.pixels = pixels.as_mut_ptr();
            rgb.row_bytes = w * 3;
            if (rgb.width, rgb.height) != (w, h) {
                return Err("libavif's RGB image does not match the decoded size".to_string());
            }
            let converted = (self.yuv_to_rgb)(image, &mut rgb);
            self.result("converting to RGB", decoder, converted)?;
            Ok((w, h))
        }
    }

    /// `Ok` for AVIF_RESULT_OK; otherwise libavif's name for the result and its diagnostic.
    ///
    /// # Safety
    /// `decoder` is a live decoder.
    unsafe fn result(&self, what: &str, decoder: *mut AvifDecoder, r: c_int) -> Result<(), String> {
        if r == AVIF_RESULT_OK {
            return Ok(());
        }
        // SAFETY: avifResultToString returns a static string; diag.error is NUL-terminated
        // (libavif clears it at each call and writes at most 255 bytes).
        let (name, diag) = unsafe {
            let d = &*decoder;
            (
                CStr::from_ptr((self.result_to_string)(r)).to_string_lossy(),
                CStr::from_ptr(d.diag.as_ptr()).to_string_lossy(),
            )
        };
        if diag.is_empty() {
            Err(format!("{what}: {name}"))
        } else {
            Err(format!("{what}: {name}: {diag}"))
        }
    }
}

struct DecoderGuard(*mut AvifDecoder, unsafe extern "C" fn(*mut AvifDecoder));

impl Drop for DecoderGuard {
    fn drop(&mut self) {
        // SAFETY: created by avifDecoderCreate, destroyed once.
        unsafe { (self.1)(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_layouts_match_libavif_1_x_on_64_bit() {
        // Offsets worked out from avif.h (libavif 1.4.2) for x86_64 / aarch64: a change here is
        // an ABI mismatch, not a refactor.
        assert_eq!(std::mem::offset_of!(AvifDecoder, image), 48);
        assert_eq!(std::mem::offset_of!(AvifDecoder, image_timing), 72);
        assert_eq!(std::mem::offset_of!(AvifDecoder, io_stats), 144);
        assert_eq!(std::mem::offset_of!(AvifDecoder, diag), 160);
        assert_eq!(std::mem::offset_of!(AvifRgbImage, pixels), 48);
        assert_eq!(std::mem::size_of::<AvifRgbImage>(), 64);
    }
}
