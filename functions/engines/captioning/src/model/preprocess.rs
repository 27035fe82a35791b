//! Image preprocessing as `preprocessor_config.json` (ViTImageProcessor) describes it: resize to
//! the model's size with the configured filter, rescale, normalise, NCHW float32.
//!
//! transformers resizes with Pillow. Bilinear (ViT-GPT2's `resample: 2`) goes through the shared
//! `coldpath_image::resize`, the other filters through `fast_image_resize` directly; both use
//! Pillow's convolution filters (same supports, 8-bit intermediate) with 16-bit rather than
//! Pillow's 22-bit coefficients, so pixels agree with the Python reference to within one 8-bit
//! level (the parity test states the tolerance). Packing into NCHW is `coldpath_image::to_nchw`.

use coldpath_image::{ChannelOrder, to_nchw};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use ndarray::Array4;

use super::CaptionError;
use super::config::{PREPROCESSOR_FILE, PreprocessorFile, SizeField};

/// Resolved preprocessing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    /// Model input size; images are resized to it when `resize` is set.
    pub height: u32,
    pub width: u32,
    pub resize: bool,
    filter: FilterType,
    /// Multiplies 8-bit values (1/255 by default), or 1 when rescaling is off.
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Preprocessor {
    pub(crate) fn from_file(file: PreprocessorFile) -> Result<Preprocessor, CaptionError> {
        let bad = |reason: String| CaptionError::bad_model(PREPROCESSOR_FILE, reason);
        let size = file
            .size
            .ok_or_else(|| bad("needs size {\"height\", \"width\"}".into()))?;
        let (height, width) = match size {
            SizeField::Square(n) if n > 0 => (n, n),
            SizeField::Dims {
                height: Some(h),
                width: Some(w),
            } if h > 0 && w > 0 => (h, w),
            _ => {
                return Err(bad(
                    "size must give a positive height and width (shortest_edge resizing is not supported)".into(),
                ));
            }
        };
        // PIL's resample codes, as transformers' PILImageResampling numbers them.
        let filter = match file.resample {
            1 => FilterType::Lanczos3,
            2 => FilterType::Bilinear,
            3 => FilterType::CatmullRom,
            4 => FilterType::Box,
            5 => FilterType::Hamming,
            other => return Err(bad(format!("resample {other} is not supported"))),
        };
        let three = |v: Option<Vec<f32>>, name: &str| -> Result<[f32; 3], CaptionError> {
            match v.as_deref() {
                None => Ok([0.5; 3]),
                Some([x]) => Ok([*x; 3]),
                Some([a, b, c]) => Ok([*a, *b, *c]),
                Some(other) => Err(bad(format!(
                    "{name} needs 1 or 3 values, found {}",
                    other.len()
                ))),
            }
        };
        let (mean, std) = if file.do_normalize {
            let std = three(file.image_std, "image_std")?;
            if std.contains(&0.0) {
                return Err(bad("image_std must not contain 0".into()));
            }
            (three(file.image_mean, "image_mean")?, std)
        } else {
            ([0.0; 3], [1.0; 3])
        };
        Ok(Preprocessor {
            height,
            width,
            resize: file.do_resize,
            filter,
            scale: if file.do_rescale {
                file.rescale_factor as f32
            } else {
                1.0
            },
            mean,
            std,
        })
    }

    /// `pixel_values` `[images.len(), 3, height, width]`.
    pub fn pixel_values(&self, images: &[&RgbImage]) -> Result<Array4<f32>, CaptionError> {
        if images.is_empty() {
            return Ok(Array4::zeros((
                0,
                3,
                self.height as usize,
                self.width as usize,
            )));
        }
        let mut resized: Vec<Option<RgbImage>> = Vec::with_capacity(images.len());
        for (i, img) in images.iter().enumerate() {
            if img.width() == 0 || img.height() == 0 {
                return Err(CaptionError::InvalidInput(format!(
                    "image {i} is empty ({}x{})",
                    img.width(),
                    img.height()
                )));
            }
            if img.width() == self.width && img.height() == self.height {
                resized.push(None);
            } else if self.resize {
                resized.push(Some(self.resize_one(img)?));
            } else {
                return Err(CaptionError::InvalidInput(format!(
                    "image {i} is {}x{} but the model takes {}x{} and its preprocessor does not resize",
                    img.width(),
                    img.height(),
                    self.width,
                    self.height
                )));
            }
        }
        let same: Vec<&RgbImage> = images
            .iter()
            .zip(&resized)
            .map(|(orig, r)| r.as_ref().unwrap_or(orig))
            .collect();
        to_nchw(&same, ChannelOrder::Rgb, self.scale, self.mean, self.std)
            .map_err(|e| CaptionError::inference(format!("pixel tensor: {e}")))
    }

    fn resize_one(&self, img: &RgbImage) -> Result<RgbImage, CaptionError> {
        if self.filter == FilterType::Bilinear {
            // The shared resizer: Pillow's antialiased bilinear, as transformers resizes.
            return Ok(coldpath_image::resize(img, self.width, self.height));
        }
        let resize_err =
            |e: &dyn std::fmt::Display| CaptionError::inference(format!("resize: {e}"));
        let src = Image::from_vec_u8(
            img.width(),
            img.height(),
            img.as_raw().clone(),
            PixelType::U8x3,
        )
        .map_err(|e| resize_err(&e))?;
        let mut dst = Image::new(self.width, self.height, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(self.filter));
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| resize_err(&e))?;
        RgbImage::from_raw(self.width, self.height, dst.into_vec())
            .ok_or_else(|| CaptionError::inference("resize: short buffer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::s;

    /// Stated tolerance: f32 rounding of one multiply-add per value.
    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-6
    }

    fn vit(size: u32) -> Preprocessor {
        let file: PreprocessorFile = serde_json::from_str(&format!(
            r#"{{"size": {{"height": {size}, "width": {size}}}, "image_mean": [0.5,0.5,0.5], "image_std": [0.5,0.5,0.5]}}"#
        ))
        .unwrap();
        Preprocessor::from_file(file).unwrap()
    }

    #[test]
    fn normalises_to_minus_one_one_in_nchw() {
        let p = vit(2);
        let img =
            RgbImage::from_raw(2, 2, vec![0, 255, 0, 255, 0, 0, 0, 0, 255, 51, 102, 153]).unwrap();
        let x = p.pixel_values(&[&img]).unwrap();
        assert_eq!(x.shape(), &[1, 3, 2, 2]);
        assert!(close(x[[0, 0, 0, 0]], -1.0));
        assert!(close(x[[0, 1, 0, 0]], 1.0));
        assert!(close(x[[0, 0, 0, 1]], 1.0));
        assert!(close(x[[0, 2, 1, 0]], 1.0));
        assert!((x[[0, 0, 1, 1]] - (0.2 * 2.0 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn resizes_a_flat_image_to_the_same_colour() {
        let p = vit(4);
        let img = RgbImage::from_pixel(17, 9, image::Rgb([255, 0, 255]));
        let x = p.pixel_values(&[&img, &img]).unwrap();
        assert_eq!(x.shape(), &[2, 3, 4, 4]);
        assert!(x.slice(s![.., 0, .., ..]).iter().all(|&v| close(v, 1.0)));
        assert!(x.slice(s![.., 1, .., ..]).iter().all(|&v| close(v, -1.0)));
    }

    #[test]
    fn accepts_the_old_square_size_of_vit_feature_extractor() {
        let file: PreprocessorFile = serde_json::from_str(
            r#"{"do_normalize": true, "do_resize": true, "feature_extractor_type": "ViTFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 224}"#,
        )
        .unwrap();
        let p = Preprocessor::from_file(file).unwrap();
        assert_eq!((p.height, p.width, p.resize), (224, 224, true));
    }

    #[test]
    fn rejects_configs_it_cannot_follow() {
        for json in [
            r#"{"size": {"shortest_edge": 224}}"#,
            r#"{"size": {"height": 8, "width": 8}, "resample": 0}"#,
            r#"{"size": {"height": 8, "width": 8}, "image_std": [0, 1, 1]}"#,
            r#"{"size": {"height": 8, "width": 8}, "image_mean": [0.1, 0.2]}"#,
        ] {
            let file: PreprocessorFile = serde_json::from_str(json).unwrap();
            assert!(
                matches!(
                    Preprocessor::from_file(file),
                    Err(CaptionError::BadModel { .. })
                ),
                "{json}"
            );
        }
    }

    #[test]
    fn empty_image_is_invalid_input() {
        let p = vit(4);
        let img = RgbImage::new(0, 0);
        assert!(matches!(
            p.pixel_values(&[&img]),
            Err(CaptionError::InvalidInput(_))
        ));
    }
}
