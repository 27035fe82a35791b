//! Photos to the vision tower's input, as open_clip's `image_transform_v2` (eval) makes it from a
//! PIL image: resize (PIL's antialiased bicubic or bilinear), centre crop, `/ 255`, `(x - mean) / std`.
//!
//! - `shortest` (OpenAI CLIP): torchvision `Resize(size)`: the shorter side becomes `size`, the
//!   longer `int(size * long / short)` (truncated); then `CenterCrop(size)` at
//!   `int(round((side - size) / 2))`, Python's round (half to even).
//! - `squash` (SigLIP): `Resize((size, size))`.
//!
//! Both filters are PIL's own arithmetic ([`crate::resample`]): `coldpath_image::resize`
//! (`fast_image_resize`) is the same filter with other fixed-point rounding, up to 4 levels
//! apart from PIL on the sample photos.

use coldpath_image::{ChannelOrder, RgbImage, to_nchw};
use ndarray::Array4;

use crate::error::ClipError;
use crate::layout::{Interpolation, PreprocessConfig, ResizeMode};

/// The size a `shortest` resize gives a `width`×`height` photo.
pub fn shortest_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    // Python: int(size * long / short), the product in integers, the division in doubles.
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short.max(1))) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's centre-crop offset: `int(round((side - size) / 2.0))`, half to even.
pub fn center_crop_offset(side: u32, size: u32) -> u32 {
    (f64::from(side.saturating_sub(size)) / 2.0).round_ties_even() as u32
}

/// Resizes with the filter open_clip's config names, exactly as PIL does ([`crate::resample`]).
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Interpolation) -> RgbImage {
    crate::resample::resize(src, width, height, filter)
}

/// A model's preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub config: PreprocessConfig,
}

impl Preprocess {
    pub fn new(config: PreprocessConfig) -> Self {
        Preprocess { config }
    }

    /// The 8-bit `size`×`size` image the tower sees, before normalisation.
    pub fn prepare(&self, image: &RgbImage) -> RgbImage {
        let size = self.config.size;
        let filter = self.config.interpolation;
        match self.config.resize_mode {
            ResizeMode::Squash => resize(image, size, size, filter),
            ResizeMode::Shortest => {
                let (w, h) = shortest_side_size(image.width(), image.height(), size);
                let resized = resize(image, w, h, filter);
                if (w, h) == (size, size) {
                    return resized;
                }
                let x = center_crop_offset(w, size);
                let y = center_crop_offset(h, size);
                coldpath_image::image::imageops::crop_imm(&resized, x, y, size, size).to_image()
            }
        }
    }

    /// `[N, 3, size, size]`: each image prepared, scaled to 0..1 and normalised by mean and std.
    pub fn tensor(&self, images: &[&RgbImage]) -> Result<Array4<f32>, ClipError> {
        let prepared: Vec<RgbImage> = images.iter().map(|im| self.prepare(im)).collect();
        let refs: Vec<&RgbImage> = prepared.iter().collect();
        self.normalize(&refs)
    }

    /// `[N, 3, size, size]` from already prepared images.
    pub fn normalize(&self, prepared: &[&RgbImage]) -> Result<Array4<f32>, ClipError> {
        to_nchw(
            prepared,
            ChannelOrder::Rgb,
            1.0 / 255.0,
            self.config.mean,
            self.config.std,
        )
        .map_err(|e| ClipError::Inference(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coldpath_image::Rgb;

    #[test]
    fn shortest_side_truncates_like_torchvision() {
        // int(224 * 451 / 300) = int(336.77) = 336
        assert_eq!(shortest_side_size(451, 300, 224), (336, 224));
        // int(224 * 655 / 450) = int(326.04) = 326
        assert_eq!(shortest_side_size(450, 655, 224), (224, 326));
        assert_eq!(shortest_side_size(512, 512, 224), (224, 224));
        assert_eq!(shortest_side_size(1280, 886, 224), (323, 224));
    }

    #[test]
    fn center_crop_rounds_half_to_even() {
        // (323 - 224) / 2 = 49.5 -> 50 (round half to even); Immich's crop_pil takes int() -> 49.
        assert_eq!(center_crop_offset(323, 224), 50);
        // (325 - 224) / 2 = 50.5 -> 50
        assert_eq!(center_crop_offset(325, 224), 50);
        assert_eq!(center_crop_offset(326, 224), 51);
        assert_eq!(center_crop_offset(224, 224), 0);
    }

    #[test]
    fn squash_and_shortest_give_the_input_size() {
        let image = RgbImage::from_pixel(300, 120, Rgb([10, 200, 30]));
        for mode in [ResizeMode::Squash, ResizeMode::Shortest] {
            for interpolation in [Interpolation::Bicubic, Interpolation::Bilinear] {
                let p = Preprocess::new(PreprocessConfig {
                    size: 32,
                    mean: [0.5; 3],
                    std: [0.5; 3],
                    interpolation,
                    resize_mode: mode,
                });
                let out = p.prepare(&image);
                assert_eq!(out.dimensions(), (32, 32));
                // A flat colour stays flat through either filter.
                assert!(out.pixels().all(|px| *px == Rgb([10, 200, 30])));
                let t = p.tensor(&[&image]).unwrap();
                assert_eq!(t.shape(), &[1, 3, 32, 32]);
                let expect = (200.0 / 255.0 - 0.5) / 0.5;
                assert!((t[[0, 1, 5, 5]] - expect).abs() < 1e-6);
            }
        }
    }
}
