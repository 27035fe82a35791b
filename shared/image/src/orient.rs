//! EXIF orientation applied to an RGB8 buffer.
//!
//! `image`'s `apply_orientation` turns an image by 90° one pixel at a time through bounds-checked
//! `get_pixel`/`put_pixel`, writing down columns, which thrashes the cache: about 5 ms for a
//! 1.6 MP photo on the project VM, as long as decoding it. Most phone photos in portrait are
//! stored with Orientation 6, so the turning orientations (5 to 8) are done here in cache-sized
//! tiles instead; the flips (2 to 4) use `image`'s in-place versions, which are already
//! row-friendly. `orientations_match_image_apply_orientation` checks every case pixel for pixel
//! against `image`, and `benches/decode.rs` measures both.

use image::RgbImage;
use image::imageops;

/// Returns `image` turned and/or mirrored as EXIF `orientation` (1 to 8) says, so that it is
/// upright; values outside 1..=8 leave it unchanged, as readers do with unknown tags.
pub fn orient(mut image: RgbImage, orientation: u8) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    // Each turning case maps a destination pixel (x, y) of the h×w result to its source pixel.
    match orientation {
        2 => imageops::flip_horizontal_in_place(&mut image),
        3 => imageops::rotate180_in_place(&mut image),
        4 => imageops::flip_vertical_in_place(&mut image),
        5 => return turn(&image, |x, y| (y, x)),
        6 => return turn(&image, |x, y| (y, h - 1 - x)),
        7 => return turn(&image, |x, y| (w - 1 - y, h - 1 - x)),
        8 => return turn(&image, |x, y| (w - 1 - y, x)),
        _ => {}
    }
    image
}

/// Builds the h×w image whose pixel (x, y) is `src`'s pixel `at(x, y)`, in square tiles so that
/// the column-wise reads of the source stay in cache.
fn turn(src: &RgbImage, at: impl Fn(usize, usize) -> (usize, usize)) -> RgbImage {
    const TILE: usize = 64;
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (sh, sw);
    // Whole pixels as [u8; 3]: one bounds check and one 3-byte move per pixel.
    let (s, _) = src.as_raw().as_chunks::<3>();
    let mut out = vec![[0u8; 3]; dw * dh];
    for ty in (0..dh).step_by(TILE) {
        for tx in (0..dw).step_by(TILE) {
            for y in ty..(ty + TILE).min(dh) {
                let row = &mut out[y * dw..(y + 1) * dw];
                for (x, px) in row
                    .iter_mut()
                    .enumerate()
                    .take((tx + TILE).min(dw))
                    .skip(tx)
                {
                    let (sx, sy) = at(x, y);
                    *px = s[sy * sw + sx];
                }
            }
        }
    }
    // The buffer is exactly dw×dh×3, so this cannot fail; an empty image is the fallback that
    // keeps this free of `expect`.
    RgbImage::from_raw(dw as u32, dh as u32, out.into_flattened()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, Rgb};

    #[test]
    fn orientations_match_image_apply_orientation() {
        // Odd sizes and more than one tile, so edges and tile borders are covered.
        for (w, h) in [(1, 1), (3, 2), (67, 130), (131, 65)] {
            let src = RgbImage::from_fn(w, h, |x, y| {
                Rgb([
                    (x % 256) as u8,
                    (y % 256) as u8,
                    ((x * 31 + y * 17) % 256) as u8,
                ])
            });
            for o in 0..=9u8 {
                let ours = orient(src.clone(), o);
                let mut theirs = DynamicImage::ImageRgb8(src.clone());
                if let Some(orientation) = image::metadata::Orientation::from_exif(o) {
                    theirs.apply_orientation(orientation);
                }
                assert_eq!(ours, theirs.into_rgb8(), "{w}x{h}, orientation {o}");
            }
        }
    }
}
