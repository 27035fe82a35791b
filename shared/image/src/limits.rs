//! How much image a request may send: encoded bytes, decoded pixels, longest side.

use coldpath_core::config::{self, ConfigError, EnvSource};
use coldpath_core::contract::EnvVar;

/// Hard limits checked before and during decoding.
///
/// `max_bytes` bounds what is fetched or decoded from base64 (checked before the bytes are read
/// where the size is known). `max_pixels` and `max_side` are checked against the header before
/// any pixel buffer is allocated, and are also handed to the decoder as `image::Limits`, so a
/// decompression bomb fails with [`crate::ImageError::TooManyPixels`] instead of exhausting
/// memory. Decoded memory is at most about `max_pixels * 8` bytes (16-bit RGBA) plus the RGB8
/// copy, so size the function's memory with that in mind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded image, in bytes.
    pub max_bytes: u64,
    /// Largest decoded image, in pixels (width × height).
    pub max_pixels: u64,
    /// Longest allowed width or height, in pixels.
    pub max_side: u32,
}

impl Default for ImageLimits {
    /// 25 MiB encoded, 50 megapixels, 20000 pixels a side: every photo a phone or a DSLR takes,
    /// and a decoded RGB8 buffer of at most 150 MB.
    fn default() -> Self {
        ImageLimits {
            max_bytes: 25 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_side: 20_000,
        }
    }
}

impl ImageLimits {
    /// The variables [`ImageLimits::from_env`] reads.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional(
            "COLDPATH_IMAGE_MAX_BYTES",
            "the largest encoded photo, in bytes",
        ),
        EnvVar::optional(
            "COLDPATH_IMAGE_MAX_PIXELS",
            "the largest decoded photo, in pixels",
        ),
        EnvVar::optional(
            "COLDPATH_IMAGE_MAX_SIDE",
            "the longest side of a decoded photo",
        ),
    ];

    /// Reads `COLDPATH_IMAGE_MAX_BYTES`, `COLDPATH_IMAGE_MAX_PIXELS` and
    /// `COLDPATH_IMAGE_MAX_SIDE` (positive integers); unset or empty means the default.
    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let d = ImageLimits::default();
        let max_side = config::positive_or(env, "COLDPATH_IMAGE_MAX_SIDE", d.max_side as usize)?;
        Ok(ImageLimits {
            max_bytes: config::positive_or(env, "COLDPATH_IMAGE_MAX_BYTES", d.max_bytes as usize)?
                as u64,
            max_pixels: config::positive_or(
                env,
                "COLDPATH_IMAGE_MAX_PIXELS",
                d.max_pixels as usize,
            )? as u64,
            max_side: u32::try_from(max_side).map_err(|_| {
                ConfigError::invalid(
                    "COLDPATH_IMAGE_MAX_SIDE",
                    "a positive integer below 2^32",
                    max_side.to_string(),
                )
            })?,
        })
    }

    /// Whether a `width`×`height` image is within `max_pixels` and `max_side`.
    pub fn allows(&self, width: u32, height: u32) -> bool {
        width <= self.max_side
            && height <= self.max_side
            && u64::from(width) * u64::from(height) <= self.max_pixels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;

    /// The deploy contract: the crate's readers read exactly their lists.
    #[test]
    fn the_readers_read_exactly_their_lists() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::default());
        ImageLimits::from_env(&env).unwrap();
        crate::CodecPaths::from_env(&env).unwrap();
        let difference = env.difference(&[ImageLimits::ENV, crate::CodecPaths::ENV]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn limits_come_from_env_with_defaults() {
        assert_eq!(
            ImageLimits::from_env(&MapEnv::default()).unwrap(),
            ImageLimits::default()
        );
        let env = MapEnv::new([
            ("COLDPATH_IMAGE_MAX_BYTES", "1000"),
            ("COLDPATH_IMAGE_MAX_PIXELS", "640000"),
            ("COLDPATH_IMAGE_MAX_SIDE", " "),
        ]);
        assert_eq!(
            ImageLimits::from_env(&env).unwrap(),
            ImageLimits {
                max_bytes: 1000,
                max_pixels: 640_000,
                max_side: 20_000
            }
        );
        let bad = MapEnv::new([("COLDPATH_IMAGE_MAX_PIXELS", "lots")]);
        assert_eq!(
            ImageLimits::from_env(&bad).unwrap_err().to_string(),
            "COLDPATH_IMAGE_MAX_PIXELS: expected a positive integer, found \"lots\""
        );
        let zero = MapEnv::new([("COLDPATH_IMAGE_MAX_BYTES", "0")]);
        assert!(ImageLimits::from_env(&zero).is_err());
        let huge = MapEnv::new([("COLDPATH_IMAGE_MAX_SIDE", "99999999999")]);
        assert!(ImageLimits::from_env(&huge).is_err());
    }

    #[test]
    fn allows_checks_side_and_area() {
        let l = ImageLimits {
            max_bytes: 1,
            max_pixels: 100,
            max_side: 20,
        };
        assert!(l.allows(10, 10));
        assert!(!l.allows(11, 10));
        assert!(!l.allows(21, 1));
        assert!(!l.allows(u32::MAX, u32::MAX));
    }
}
