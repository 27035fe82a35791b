//! Bounded decoding: JPEG, PNG, WebP, HEIC and AVIF bytes to an upright RGB8 image.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::{ImageError, ImageLimits, isobmff, native};

/// The encoded formats [`decode`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    /// HEIF with HEVC-coded images: what an iPhone saves.
    Heic,
    /// HEIF with AV1-coded images.
    Avif,
}

impl Format {
    /// Lower-case name for logs and responses: `jpeg`, `png`, `webp`, `heic`, `avif`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
            Format::Heic => "heic",
            Format::Avif => "avif",
        }
    }

    /// The `image` crate's decoder for this format; HEIC and AVIF have none (they go through
    /// [`crate::native`]).
    fn to_image(self) -> Option<image::ImageFormat> {
        match self {
            Format::Jpeg => Some(image::ImageFormat::Jpeg),
            Format::Png => Some(image::ImageFormat::Png),
            Format::WebP => Some(image::ImageFormat::WebP),
            Format::Heic | Format::Avif => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded image, upright and in RGB8.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The pixels after the orientation was applied: what a person sees in a viewer.
    pub image: RgbImage,
    /// The encoded format the bytes were in.
    pub format: Format,
    /// The orientation found in the file as an EXIF orientation (1 to 8; 1 when there was
    /// none), already applied to `image`. For HEIC and AVIF it is the EXIF equivalent of the
    /// container's `irot` and `imir`, which HEIF readers follow instead of an EXIF tag. Coordinates
    /// computed on `image` are in the upright frame; a caller that must map them back to the
    /// stored pixel grid needs this value.
    pub orientation: u8,
    /// Size of the encoded input, in bytes.
    pub bytes: usize,
}

impl DecodedImage {
    pub fn width(&self) -> u32 {
        self.image.width()
    }

    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

/// Decodes JPEG, PNG, WebP, HEIC or AVIF bytes into an upright RGB8 image within `limits`.
///
/// In order: the byte size is checked; the format is told from the magic bytes (not from a
/// name or a content type); the header is read and its width, height and pixel count are
/// checked against `limits` before any pixel buffer exists; the decoder then runs under
/// `image::Limits` (max width, height and allocation) as a second line; the EXIF orientation
/// (JPEG APP1, PNG eXIf, WebP EXIF, read by `image`'s `ImageDecoder::orientation`) is applied
/// with [`crate::orient`]; grey-scale, grey+alpha, RGBA and 16-bit inputs are
/// converted to RGB8 (alpha is dropped, as PIL's `convert("RGB")` does).
///
/// HEIC and AVIF take the same steps with the container's own header: the primary image's
/// `ispe` size is read and checked by [`crate::isobmff`] before libheif or libavif sees the
/// bytes, and the library gets the limits too; the primary image of a multi-image file is the
/// one decoded (a grid's tiles are assembled); `irot`/`imir` are applied; 10- and 12-bit images
/// become 8-bit RGB. See [`crate::native`] for the libraries.
///
/// This is CPU work (tens of milliseconds for a phone photo): call it from a blocking context,
/// or use [`crate::ImageLoader::load`], which does that for you.
///
/// # Errors
/// [`ImageError::Empty`], [`ImageError::TooManyBytes`], [`ImageError::UnsupportedFormat`]
/// (text, GIF, anything not JPEG/PNG/WebP/HEIC/AVIF), [`ImageError::TooManyPixels`] and
/// [`ImageError::Undecodable`] (truncated or corrupt data), which classify as `InvalidInput`;
/// [`ImageError::CodecUnavailable`] (a HEIC or AVIF file where the library is not installed), a
/// `Config` error.
pub fn decode(bytes: &[u8], limits: &ImageLimits) -> Result<DecodedImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    let Some(image_format) = format.to_image() else {
        return decode_heif(bytes, format, limits, native::codecs());
    };
    let undecodable = |e: image::ImageError| ImageError::Undecodable {
        format: format.as_str(),
        reason: e.to_string(),
    };
    if format == Format::WebP {
        webp_chunks_fit(bytes).map_err(|reason| ImageError::Undecodable {
            format: format.as_str(),
            reason,
        })?;
    }
    if format == Format::Jpeg && !jpeg_has_end(bytes) {
        return Err(ImageError::Undecodable {
            format: format.as_str(),
            reason: "truncated: no end-of-image marker after the image data".to_string(),
        });
    }

    // Room for the decoded buffer at up to 8 bytes a pixel (16-bit RGBA) and as much again for
    // the decoder's working buffers (JPEG coefficients, PNG rows); the pixel check below is what
    // keeps a request inside this.
    let max_alloc = limits.max_pixels.saturating_mul(16);
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(max_alloc);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    reader.limits(header_limits);
    let mut decoder = reader.into_decoder().map_err(undecodable)?;

    // Only the header has been read so far: refuse absurd sizes before allocating anything,
    // with the numbers in the message.
    let (width, height) = decoder.dimensions();
    let too_many_pixels = || ImageError::TooManyPixels {
        width,
        height,
        max_pixels: limits.max_pixels,
        max_side: limits.max_side,
    };
    if !limits.allows(width, height) {
        return Err(too_many_pixels());
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    decode_limits.max_alloc = Some(max_alloc);
    decode_limits
        .reserve(decoder.total_bytes())
        .map_err(|_| too_many_pixels())?;
    decoder.set_limits(decode_limits).map_err(|e| match e {
        image::ImageError::Limits(_) => too_many_pixels(),
        e => undecodable(e),
    })?;

    let orientation = decoder.orientation().map_err(undecodable)?;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => too_many_pixels(),
        e => undecodable(e),
    })?;
    // Convert first, then turn: the turn then moves 3 bytes a pixel whatever the source had, and
    // `orient` is `apply_orientation`'s result, faster for the 90° cases (see orient.rs).
    let orientation = orientation.to_exif();
    Ok(DecodedImage {
        image: crate::orient(image.into_rgb8(), orientation),
        format,
        orientation,
        bytes: bytes.len(),
    })
}

/// The stored width and height of an encoded image, read from its header only: no pixel buffer
/// is allocated, so a caller can budget the memory a decode will take before running it. The
/// sizes are as stored (before the EXIF orientation, which may swap them); the pixel count is
/// the same either way.
pub fn dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff(bytes)?;
    let Some(image_format) = format.to_image() else {
        let p = isobmff::primary(bytes, format.as_str())?;
        return Ok((p.width, p.height));
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    // The header read needs no more than a small allocation; refuse anything bigger.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(64 << 20);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| ImageError::Undecodable {
        format: format.as_str(),
        reason: e.to_string(),
    })?;
    Ok(decoder.dimensions())
}

/// HEIC or AVIF: the header's size checked, the library's decode, the container's turn applied.
fn decode_heif(
    bytes: &[u8],
    format: Format,
    limits: &ImageLimits,
    codecs: &native::Codecs,
) -> Result<DecodedImage, ImageError> {
    let name = format.as_str();
    let primary = isobmff::primary(bytes, name)?;
    if !limits.allows(primary.width, primary.height) {
        return Err(ImageError::TooManyPixels {
            width: primary.width,
            height: primary.height,
            max_pixels: limits.max_pixels,
            max_side: limits.max_side,
        });
    }
    let undecodable = |reason: String| ImageError::Undecodable {
        format: name,
        reason,
    };
    let orientation = primary.exif_orientation();
    // The libraries get the header's own size as their limit, not the global one: a file whose
    // header says 1x1 cannot make them allocate a 7000x7000 picture. The slack covers coded
    // sizes rounded up to the codec's blocks (HEVC's 64-pixel CTBs, AV1's 128-pixel
    // superblocks), which the decoders allocate before cropping.
    let slack = |side: u32| u64::from(side) + 128;
    let max_pixels = limits
        .max_pixels
        .min(slack(primary.width) * slack(primary.height));
    let max_side = limits.max_side.min(primary.width.max(primary.height) + 128);
    let decoded = match &codecs.pool {
        Some(pool) => {
            let area = u64::from(primary.width) * u64::from(primary.height);
            pool.decode(format, bytes, max_pixels, max_side, area)
        }
        None => native::library_decode(codecs, format, bytes, max_pixels, max_side),
    };
    let decoded = decoded.map_err(|e| match e {
        native::NativeError::Unavailable(why) => native::unavailable(name, &why),
        native::NativeError::Undecodable(why) => undecodable(why),
        native::NativeError::Crashed(why) => ImageError::DecoderCrashed {
            format: name,
            reason: why,
        },
    })?;
    let image = match format {
        // libheif applies irot and imir itself.
        Format::Heic => decoded,
        _ => {
            if decoded.dimensions() != (primary.width, primary.height) {
                return Err(undecodable(format!(
                    "the image decodes to {}x{}, its header says {}x{}",
                    decoded.width(),
                    decoded.height(),
                    primary.width,
                    primary.height
                )));
            }
            crate::orient(decoded, orientation)
        }
    };
    // A clean-aperture crop (clap) may make libheif's image smaller than the header's; larger
    // would mean the header lied about the size we checked.
    let (w, h) = primary.upright_size();
    if image.width() > w || image.height() > h {
        return Err(undecodable(format!(
            "the image decodes to {}x{}, its header says {w}x{h}",
            image.width(),
            image.height()
        )));
    }
    Ok(DecodedImage {
        image,
        format,
        orientation,
        bytes: bytes.len(),
    })
}

/// The format from the magic bytes, or a description of what was found instead.
fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    match isobmff::sniff(bytes) {
        Some(Ok(isobmff::Family::Heic)) => return Ok(Format::Heic),
        Some(Ok(isobmff::Family::Avif)) => return Ok(Format::Avif),
        Some(Err(found)) => return Err(ImageError::UnsupportedFormat { found }),
        None => {}
    }
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Jpeg) => Ok(Format::Jpeg),
        Ok(image::ImageFormat::Png) => Ok(Format::Png),
        Ok(image::ImageFormat::WebP) => Ok(Format::WebP),
        Ok(other) => Err(ImageError::UnsupportedFormat {
            found: format!("{other:?}"),
        }),
        Err(_) => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Err(ImageError::UnsupportedFormat {
                found: format!(
                    "data with no known image signature (first bytes: {})",
                    head.join(" ")
                ),
            })
        }
    }
}

/// Checks that a WebP file's RIFF chunks fit in its bytes.
///
/// `image-webp` allocates a metadata chunk (EXIF, XMP, ICC) at the size its header claims before
/// reading it, so a 100-byte file whose EXIF chunk claims 4 GB made it allocate 4 GB (found by
/// the fuzzer). Every chunk of a well-formed file lies inside the file: walking the chunk
/// headers, each claimed size is checked against the bytes left before any decoder runs.
fn webp_chunks_fit(bytes: &[u8]) -> Result<(), String> {
    let le32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let riff = le32(4).ok_or("truncated: no RIFF size")?;
    let end = riff
        .checked_add(8)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| {
            format!(
                "truncated: the RIFF header claims {riff} bytes, {} are there",
                bytes.len().saturating_sub(8)
            )
        })?;
    let mut at = 12; // after "RIFF", the size and "WEBP"
    while at < end {
        let kind = bytes
            .get(at..at + 4)
            .filter(|_| at + 8 <= end)
            .ok_or("truncated: a chunk header is cut off")?;
        let size = le32(at + 4).ok_or("truncated: a chunk header is cut off")?;
        let left = end - at - 8;
        if size > left {
            return Err(format!(
                "chunk {:?} claims {size} bytes, {left} are left",
                String::from_utf8_lossy(kind)
            ));
        }
        // Chunks are padded to an even size.
        at += 8 + size + (size & 1);
    }
    Ok(())
}

/// Whether a JPEG's image data is followed by its end-of-image marker (EOI, `FF D9`).
///
/// The JPEG decoder fills a scan that was cut off with grey and reports success, so a photo
/// truncated in transit would be analysed as half a photo; we refuse it instead, as PIL does.
/// Marker segments carry their length, so walking them from SOI to the first start-of-scan
/// skips an EXIF thumbnail's own markers; inside entropy-coded data `FF` is always followed by
/// `00` or a restart marker, so the first `FF D9` after that is the real end (bytes after it, which
/// some cameras append, are allowed).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        match bytes[i + 1] {
            // Fill bytes before a marker.
            0xFF => i += 1,
            // Start of scan: the entropy-coded data follows.
            0xDA => return bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => i += 2,
            _ => i += 2 + usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]])),
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;
    use image::{ImageEncoder, Rgb};

    /// A small RGB test card: red top-left quadrant, green top-right, blue bottom-left, white
    /// bottom-right, so any rotation or flip moves colours to known corners.
    pub(crate) fn quadrants(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| match (x < w / 2, y < h / 2) {
            (true, true) => Rgb([255, 0, 0]),
            (false, true) => Rgb([0, 255, 0]),
            (true, false) => Rgb([0, 0, 255]),
            (false, false) => Rgb([255, 255, 255]),
        })
    }

    pub(crate) fn png_bytes(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(
                img.as_bytes(),
                img.width(),
                img.height(),
                img.color().into(),
            )
            .unwrap();
        out
    }

    pub(crate) fn jpeg_bytes(img: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95)
            .write_image(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    /// Inserts an APP1 Exif segment holding only an Orientation tag right after the SOI marker,
    /// as a camera writes it (big-endian TIFF header, one IFD entry).
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\x00\x2a"); // big-endian TIFF, magic 42
        tiff.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // value padded to 4 bytes
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// Rewrites a PNG's IHDR width and height and fixes the chunk's CRC, so the file is a
    /// well-formed PNG that merely claims another size.
    fn patch_png_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
        let mut out = png.to_vec();
        // 8-byte signature, then IHDR: length (4), type (4), width (4), height (4), ...
        assert_eq!(&out[12..16], b"IHDR");
        out[16..20].copy_from_slice(&width.to_be_bytes());
        out[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&out[12..29]); // type + 13 bytes of data
        out[29..33].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// CRC-32 as PNG defines it (ISO 3309, reflected, polynomial 0xedb88320).
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn limits() -> ImageLimits {
        ImageLimits::default()
    }

    fn close(a: &Rgb<u8>, b: [u8; 3]) -> bool {
        // JPEG at quality 95 keeps flat colours within a few levels; 40 is far below the
        // 255-level gaps between the quadrant colours.
        a.0.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 40)
    }

    #[test]
    fn png_round_trips_exactly() {
        let img = quadrants(8, 6);
        let bytes = png_bytes(&DynamicImage::ImageRgb8(img.clone()));
        let out = decode(&bytes, &limits()).unwrap();
        assert_eq!(out.format, Format::Png);
        assert_eq!(out.orientation, 1);
        assert_eq!(out.bytes, bytes.len());
        assert_eq!(out.image, img);
    }

    #[test]
    fn webp_decodes() {
        // image 0.25 encodes lossless WebP only, which must round-trip exactly.
        let img = quadrants(10, 4);
        let mut bytes = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
            .write_image(img.as_raw(), 10, 4, image::ExtendedColorType::Rgb8)
            .unwrap();
        let out = decode(&bytes, &limits()).unwrap();
        assert_eq!(out.format, Format::WebP);
        assert_eq!(out.image, img);
    }

    #[test]
    fn exif_orientation_6_rotates_clockwise() {
        let img = quadrants(32, 16);
        let plain = jpeg_bytes(&img);
        let upright = decode(&plain, &limits()).unwrap();
        assert_eq!(upright.orientation, 1);
        assert_eq!((upright.width(), upright.height()), (32, 16));

        let rotated = decode(&with_exif_orientation(&plain, 6), &limits()).unwrap();
        assert_eq!(rotated.format, Format::Jpeg);
        assert_eq!(rotated.orientation, 6);
        // Orientation 6: the stored pixels must be turned 90° clockwise to be upright, so the
        // stored top-left (red) lands top-right and the stored bottom-left (blue) lands top-left.
        assert_eq!((rotated.width(), rotated.height()), (16, 32));
        let px = |x, y| *rotated.image.get_pixel(x, y);
        assert!(close(&px(14, 1), [255, 0, 0]), "{:?}", px(14, 1));
        assert!(close(&px(1, 1), [0, 0, 255]), "{:?}", px(1, 1));
        assert!(close(&px(14, 30), [0, 255, 0]), "{:?}", px(14, 30));
        assert!(close(&px(1, 30), [255, 255, 255]), "{:?}", px(1, 30));
    }

    #[test]
    fn other_exif_orientations_land_the_stored_top_left_where_expected() {
        // (orientation, upright size, where the stored top-left red quadrant ends up).
        let img = quadrants(32, 16);
        let plain = jpeg_bytes(&img);
        for (o, size, red_at) in [
            (2, (32, 16), (30, 1)),  // mirrored left-right
            (3, (32, 16), (30, 14)), // turned 180°
            (8, (16, 32), (1, 30)),  // turned 90° counter-clockwise
        ] {
            let out = decode(&with_exif_orientation(&plain, o), &limits()).unwrap();
            assert_eq!(out.orientation, o as u8);
            assert_eq!((out.width(), out.height()), size, "orientation {o}");
            let p = out.image.get_pixel(red_at.0, red_at.1);
            assert!(close(p, [255, 0, 0]), "orientation {o}: {p:?}");
        }
    }

    #[test]
    fn grey_and_rgba_become_rgb() {
        let grey = image::GrayImage::from_fn(4, 3, |x, y| image::Luma([(x * 60 + y) as u8]));
        let out = decode(&png_bytes(&DynamicImage::ImageLuma8(grey)), &limits()).unwrap();
        assert_eq!(*out.image.get_pixel(3, 2), Rgb([182, 182, 182]));

        let rgba =
            image::RgbaImage::from_fn(4, 3, |x, _| image::Rgba([10, 20, 30, (x * 80) as u8]));
        let out = decode(&png_bytes(&DynamicImage::ImageRgba8(rgba)), &limits()).unwrap();
        assert_eq!((out.width(), out.height()), (4, 3));
        // Alpha is dropped, not blended.
        assert!(out.image.pixels().all(|p| *p == Rgb([10, 20, 30])));

        let grey16 =
            image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(2, 2, image::Luma([65535u16]));
        let out = decode(&png_bytes(&DynamicImage::ImageLuma16(grey16)), &limits()).unwrap();
        assert!(out.image.pixels().all(|p| *p == Rgb([255, 255, 255])));
    }

    #[test]
    fn empty_text_and_unsupported_formats_are_refused() {
        assert!(matches!(decode(b"", &limits()), Err(ImageError::Empty)));
        let err = decode(b"hello world, this is not an image", &limits()).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected JPEG, PNG, WebP, HEIC or AVIF, found data with no known image signature (first bytes: 68 65 6c 6c 6f 20 77 6f)"),
            "{err}"
        );
        let err = decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00", &limits()).unwrap_err();
        assert!(
            matches!(err, ImageError::UnsupportedFormat { ref found } if found == "Gif"),
            "{err}"
        );
    }

    #[test]
    fn heic_and_avif_without_their_library_are_a_config_error_after_the_size_check() {
        use crate::isobmff::tests::{header, ispe};
        use coldpath_core::{Classify, ErrorType};
        let none = native::Codecs {
            heif: Err("cannot load \"libheif.so.1\": not found".into()),
            avif: Err("cannot load \"libavif.so.16\": not found".into()),
            pool: None,
        };
        for (brand, format) in [(b"heic", Format::Heic), (b"avif", Format::Avif)] {
            let file = header(brand, &[ispe(64, 48)]);
            let err = decode_heif(&file, format, &limits(), &none).unwrap_err();
            assert_eq!(err.error_type(), ErrorType::Config, "{err}");
            assert!(
                err.to_string().contains("cannot load")
                    && err.to_string().contains(format.as_str()),
                "{err}"
            );
            // The header is read first: an oversized image is the caller's error either way.
            let huge = header(brand, &[ispe(100_000, 100_000)]);
            let err = decode_heif(&huge, format, &limits(), &none).unwrap_err();
            assert!(
                matches!(err, ImageError::TooManyPixels { width: 100_000, .. }),
                "{err}"
            );
            assert_eq!(dimensions(&huge).unwrap(), (100_000, 100_000));
        }
    }

    #[test]
    fn truncated_jpeg_is_undecodable() {
        let bytes = jpeg_bytes(&quadrants(256, 256));
        // Inside the headers, inside the scan (the decoder alone would fill it with grey and
        // succeed), and just the end marker missing.
        for cut in [
            3,
            20,
            bytes.len() / 2,
            bytes.len() * 9 / 10,
            bytes.len() - 2,
        ] {
            let err = decode(&bytes[..cut], &limits()).unwrap_err();
            assert!(
                matches!(err, ImageError::Undecodable { format: "jpeg", .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_webp_chunk_claiming_more_than_the_file_is_refused_before_decoding() {
        // The fuzzer's find: 87 bytes whose EXIF chunk claims 0xff776881 bytes made image-webp
        // allocate 4 GB while reading the orientation.
        let mut bomb = b"RIFF\x4f\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00".to_vec();
        bomb.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // EXIF flag, 1x1
        bomb.extend_from_slice(b"EXIF\x81\x68\x77\xff");
        bomb.extend_from_slice(&[0; 40]);
        let riff = (bomb.len() - 8) as u32;
        bomb[4..8].copy_from_slice(&riff.to_le_bytes());
        let err = decode(&bomb, &limits()).unwrap_err();
        assert!(
            matches!(err, ImageError::Undecodable { format: "webp", ref reason } if reason.contains("\"EXIF\" claims 4286015617 bytes")),
            "{err}"
        );
        // A RIFF size past the end of the data: a truncated file.
        let mut good = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut good)
            .write_image(
                quadrants(10, 4).as_raw(),
                10,
                4,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        assert!(webp_chunks_fit(&good).is_ok());
        for cut in [13, 20, good.len() - 1] {
            let err = decode(&good[..cut], &limits()).unwrap_err();
            assert!(
                matches!(err, ImageError::Undecodable { format: "webp", .. }),
                "{cut}: {err}"
            );
        }
    }

    #[test]
    fn bytes_after_the_jpeg_end_marker_are_allowed() {
        let mut bytes = jpeg_bytes(&quadrants(64, 64));
        bytes.extend_from_slice(b"trailer some cameras append");
        let img = decode(&bytes, &limits()).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }

    #[test]
    fn too_many_bytes_is_refused_before_decoding() {
        let bytes = png_bytes(&DynamicImage::ImageRgb8(quadrants(8, 8)));
        let small = ImageLimits {
            max_bytes: 10,
            ..limits()
        };
        let err = decode(&bytes, &small).unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyBytes { limit: 10, .. }),
            "{err}"
        );
    }

    #[test]
    fn dimensions_come_from_the_header_alone() {
        let bytes = png_bytes(&DynamicImage::ImageRgb8(quadrants(8, 6)));
        assert_eq!(dimensions(&bytes).unwrap(), (8, 6));
        assert_eq!(dimensions(&jpeg_bytes(&quadrants(10, 4))).unwrap(), (10, 4));
        // A header claiming 100000 x 100000 is read, not allocated: budgeting happens before.
        let bomb = patch_png_size(&bytes, 100_000, 100_000);
        assert_eq!(dimensions(&bomb).unwrap(), (100_000, 100_000));
        assert!(matches!(dimensions(b""), Err(ImageError::Empty)));
        assert!(matches!(
            dimensions(b"hello, world"),
            Err(ImageError::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn png_header_claiming_100000_square_is_refused_without_allocating() {
        let bytes = png_bytes(&DynamicImage::ImageRgb8(quadrants(8, 8)));
        let bomb = patch_png_size(&bytes, 100_000, 100_000);
        let err = decode(&bomb, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels {
                    width: 100_000,
                    height: 100_000,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "image is too large: 100000x100000 pixels, the limits are 50000000 pixels and 20000 pixels a side"
        );
        // Within the side limit but over the pixel count.
        let wide = patch_png_size(&bytes, 10_000, 6_000);
        assert!(matches!(
            decode(&wide, &limits()),
            Err(ImageError::TooManyPixels { .. })
        ));
        // A header that claims a size within limits but lacks the data is corrupt, not large.
        let liar = patch_png_size(&bytes, 1_000, 1_000);
        assert!(matches!(
            decode(&liar, &limits()),
            Err(ImageError::Undecodable { format: "png", .. })
        ));
    }
}
