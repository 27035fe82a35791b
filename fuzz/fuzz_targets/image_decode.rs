//! `coldpath_image::decode` on arbitrary bytes, under small limits.
//!
//! Invariants checked: nothing panics; a failure is an `ImageError` that classifies as
//! `InvalidInput` with a non-empty message; a success respects every limit (bytes, pixels, side),
//! has an RGB8 buffer of exactly width × height × 3 bytes, an EXIF orientation from 1 to 8, and
//! the format the magic bytes name. The limits are small (a 512 × 512 image at most) so that a
//! header promising a huge image must be refused from the header, and the fuzzer's memory limit
//! catches any allocation made before that check.
//!
//! HEIC and AVIF: `make fuzz` runs with setup's environment, so libheif/libde265 and libavif/dav1d
//! are loaded and fuzzed with our container reader in front of them (they are not instrumented:
//! libFuzzer steers by our code's coverage, and a crash or a leak beyond the RSS limit inside
//! them still stops the run). Where a library is not loaded, its format must fail as
//! `CodecUnavailable` (`Config`), and only then.
#![no_main]

use std::sync::OnceLock;

use coldpath_core::config::ProcessEnv;
use coldpath_core::{Classify, ErrorType};
use coldpath_image::{CodecPaths, CodecStatus, Format, ImageError, ImageLimits, decode};
use libfuzzer_sys::fuzz_target;

fn codecs() -> &'static CodecStatus {
    static STATUS: OnceLock<CodecStatus> = OnceLock::new();
    STATUS.get_or_init(|| coldpath_image::load_native_codecs(&CodecPaths::from_env(&ProcessEnv).unwrap_or_default()))
}

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 256 * 1024,
    max_pixels: 512 * 512,
    max_side: 1024,
};

fuzz_target!(|data: &[u8]| {
    let codecs = codecs();
    match decode(data, &LIMITS) {
        Ok(decoded) => {
            let (w, h) = (decoded.width(), decoded.height());
            assert!(w > 0 && h > 0, "decoded an empty {w}x{h} image");
            assert!(w <= LIMITS.max_side && h <= LIMITS.max_side, "{w}x{h} over the side limit");
            assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels, "{w}x{h} over the pixel limit");
            assert_eq!(decoded.image.as_raw().len(), w as usize * h as usize * 3);
            assert!((1..=8).contains(&decoded.orientation), "orientation {}", decoded.orientation);
            assert_eq!(decoded.bytes, data.len());
            let magic = match decoded.format {
                Format::Jpeg => data.starts_with(&[0xFF, 0xD8, 0xFF]),
                Format::Png => data.starts_with(b"\x89PNG\r\n\x1a\n"),
                Format::WebP => data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP",
                Format::Heic | Format::Avif => data.len() >= 12 && &data[4..8] == b"ftyp",
            };
            assert!(magic, "format {} without its magic bytes", decoded.format);
        }
        Err(ImageError::CodecUnavailable { format, reason }) => {
            let missing = match format {
                "heic" => codecs.heic.is_err(),
                _ => codecs.avif.is_err(),
            };
            assert!(missing, "{format} refused as unavailable while loaded: {reason}");
        }
        Err(e) => {
            assert_eq!(e.error_type(), ErrorType::InvalidInput, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }
});
