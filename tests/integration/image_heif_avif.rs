//! HEIC and AVIF as phones and browsers write them, through the setup's libheif and libavif:
//! the fixtures `shared/image/fixtures/gen_heif_avif.py` made from the committed group photos
//! with registry encoders (x265 through pillow-heif, aom through Pillow and OpenCV), decoded and
//! compared with the JPEG each came from; the `irot`/`imir`-turned, gridded and 10-bit copies;
//! and the hostile files, each of which must be a typed refusal.

use coldpath_core::{Classify, ErrorType};
use coldpath_image::{Format, ImageError, ImageLimits, decode, dimensions};
use coldpath_test_support::repo_root;
use coldpath_tests::{HeifFixture, heif_fixtures, image_codecs};

/// The lossy encodes measured 45.4–50 dB against their sources when they were made (libheif
/// 1.23.6 / libavif 1.4.2); 40 dB leaves room for the decoder builds differing, and is far above
/// what a wrong turn or a wrong channel order gives (≈10–15 dB).
const MIN_PSNR_DB: f64 = 40.0;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn fixture(f: &HeifFixture) -> Vec<u8> {
    read(&format!("shared/image/fixtures/heif/{}", f.file))
}

fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

fn format_of(f: &HeifFixture) -> Format {
    match f.format.as_str() {
        "heic" => Format::Heic,
        "avif" => Format::Avif,
        other => panic!("{}: format {other}", f.file),
    }
}

#[test]
fn heic_and_avif_decode_upright_to_their_source_photo() {
    image_codecs();
    let manifest = heif_fixtures();
    let good: Vec<_> = manifest.files.iter().filter(|f| f.expect == "ok").collect();
    // The kinds users bring: plain 8-bit, 10-bit, turned, mirrored, a grid, both formats.
    for kind in ["none", "irot1", "imir0", "grid3x2"] {
        assert!(
            good.iter().any(|f| f.transform.as_deref() == Some(kind)),
            "no {kind} fixture"
        );
    }
    assert!(
        good.iter()
            .any(|f| f.bit_depth == Some(10) && f.format == "heic")
    );
    assert!(
        good.iter()
            .any(|f| f.bit_depth == Some(10) && f.format == "avif")
    );

    for f in good {
        let bytes = fixture(f);
        let got =
            decode(&bytes, &ImageLimits::default()).unwrap_or_else(|e| panic!("{}: {e}", f.file));
        assert_eq!(got.format, format_of(f), "{}", f.file);
        assert_eq!(
            (got.width(), got.height()),
            (f.width.unwrap(), f.height.unwrap()),
            "{}",
            f.file
        );
        let (orientation, stored) = match f.transform.as_deref() {
            // irot 1: the stored pixels are the upright photo turned 90° clockwise.
            Some("irot1") => (8, (got.height(), got.width())),
            // imir axis 0: stored upside down (top and bottom exchanged).
            Some("imir0") => (4, (got.width(), got.height())),
            _ => (1, (got.width(), got.height())),
        };
        assert_eq!(got.orientation, orientation, "{}", f.file);
        // The header alone gives the stored size, with no library involved.
        assert_eq!(dimensions(&bytes).unwrap(), stored, "{}", f.file);

        let source = decode(&read(f.source.as_deref().unwrap()), &ImageLimits::default()).unwrap();
        let db = psnr(&got.image, &source.image);
        assert!(
            db >= MIN_PSNR_DB,
            "{}: {db:.1} dB against its source",
            f.file
        );
    }
}

#[test]
fn hostile_heic_and_avif_files_are_typed_refusals() {
    image_codecs();
    let manifest = heif_fixtures();
    let hostile: Vec<_> = manifest.files.iter().filter(|f| f.expect != "ok").collect();
    assert!(hostile.len() >= 7, "{} hostile fixtures", hostile.len());
    for f in hostile {
        let bytes = fixture(f);
        let err = decode(&bytes, &ImageLimits::default()).unwrap_err();
        assert_eq!(
            err.error_type(),
            ErrorType::InvalidInput,
            "{}: {err}",
            f.file
        );
        match f.expect.as_str() {
            "too_many_pixels" => assert!(
                matches!(
                    err,
                    ImageError::TooManyPixels {
                        width: 100_000,
                        height: 100_000,
                        ..
                    }
                ),
                "{}: {err}",
                f.file
            ),
            "undecodable" => assert!(
                matches!(err, ImageError::Undecodable { format, .. } if format == f.format),
                "{}: {err}",
                f.file
            ),
            other => panic!("{}: expect {other}", f.file),
        }
    }
}

#[test]
fn every_cut_of_a_heic_and_an_avif_is_refused_without_a_panic() {
    image_codecs();
    for name in ["g800-grid.heic", "g800-irot1.avif"] {
        let bytes = read(&format!("shared/image/fixtures/heif/{name}"));
        // Every header byte, then coarser steps through the coded data.
        let cuts = (1..600.min(bytes.len())).chain((600..bytes.len()).step_by(997));
        for cut in cuts {
            match decode(&bytes[..cut], &ImageLimits::default()) {
                Err(e) => assert_eq!(
                    e.error_type(),
                    ErrorType::InvalidInput,
                    "{name} cut {cut}: {e}"
                ),
                Ok(img) => panic!(
                    "{name} cut at {cut} of {} decoded to {:?}",
                    bytes.len(),
                    img.image.dimensions()
                ),
            }
        }
    }
}

#[test]
fn limits_apply_to_heic_and_avif_from_the_header() {
    image_codecs();
    let small = ImageLimits {
        max_pixels: 800 * 600 - 1,
        ..ImageLimits::default()
    };
    for name in ["g800-10bit.heic", "g800-10bit.avif", "g800-grid.heic"] {
        let err = decode(&read(&format!("shared/image/fixtures/heif/{name}")), &small).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::TooManyPixels {
                    width: 800,
                    height: 600,
                    ..
                }
            ),
            "{name}: {err}"
        );
    }
    let bytes = read("shared/image/fixtures/heif/t1.avif");
    let few_bytes = ImageLimits {
        max_bytes: bytes.len() as u64 - 1,
        ..ImageLimits::default()
    };
    assert!(matches!(
        decode(&bytes, &few_bytes),
        Err(ImageError::TooManyBytes { .. })
    ));
}
