//! Images to the `[N, 3, H, W]` float tensors that vision models take.

use image::RgbImage;
use ndarray::Array4;

use crate::ImageError;

/// The channel order of the tensor's planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Plane 0 red, 1 green, 2 blue (PyTorch / PIL preprocessing).
    Rgb,
    /// Plane 0 blue, 1 green, 2 red (OpenCV preprocessing: YuNet, SFace).
    Bgr,
}

/// Packs same-sized images into an `[N, 3, H, W]` tensor, each value
/// `(pixel * scale - mean[c]) / std[c]`.
///
/// `mean` and `std` are per OUTPUT plane: with [`ChannelOrder::Bgr`], `mean[0]` applies to the
/// blue plane. Typical settings: ImageNet `scale = 1/255`, `mean = [0.485, 0.456, 0.406]`,
/// `std = [0.229, 0.224, 0.225]` with `Rgb`; raw 0..255 BGR (OpenCV `blobFromImage` defaults)
/// with `scale = 1`, `mean = [0; 3]`, `std = [1; 3]`, `Bgr`.
///
/// # Errors
/// [`ImageError::Batch`] (class `Internal`: a caller bug) for an empty slice or images of
/// different sizes; resize them first.
pub fn to_nchw(
    images: &[&RgbImage],
    order: ChannelOrder,
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
) -> Result<Array4<f32>, ImageError> {
    let Some(first) = images.first() else {
        return Err(ImageError::Batch(
            "expected at least one image, found none".into(),
        ));
    };
    let (w, h) = first.dimensions();
    if let Some((i, other)) = images
        .iter()
        .enumerate()
        .find(|(_, im)| im.dimensions() != (w, h))
    {
        return Err(ImageError::Batch(format!(
            "expected every image to be {w}x{h} like the first, found {}x{} at index {i}",
            other.width(),
            other.height()
        )));
    }
    // Which source channel feeds each output plane.
    let src_channel = match order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    // (p * scale - mean) / std == p * (scale / std) - mean / std: one multiply-add a value.
    let mul: [f32; 3] = std::array::from_fn(|c| scale / std[c]);
    let add: [f32; 3] = std::array::from_fn(|c| -mean[c] / std[c]);
    let plane = w as usize * h as usize;
    let mut data = vec![0f32; images.len() * 3 * plane];
    for (image, out) in images.iter().zip(data.chunks_exact_mut(3 * plane)) {
        let pixels = &image.as_raw()[..plane * 3];
        for (c, dst) in out.chunks_exact_mut(plane).enumerate() {
            let (s, m, a) = (src_channel[c], mul[c], add[c]);
            for (d, px) in dst.iter_mut().zip(pixels.chunks_exact(3)) {
                *d = f32::from(px[s]) * m + a;
            }
        }
    }
    Array4::from_shape_vec((images.len(), 3, h as usize, w as usize), data)
        .map_err(|e| ImageError::Batch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn two_by_two() -> RgbImage {
        // (x, y): (0,0) red-ish, (1,0) green-ish, (0,1) blue-ish, (1,1) grey.
        let px = [[200, 10, 20], [30, 220, 40], [50, 60, 240], [128, 128, 128]];
        RgbImage::from_fn(2, 2, |x, y| Rgb(px[(y * 2 + x) as usize]))
    }

    fn close(a: f32, b: f32) -> bool {
        // Stated tolerance: 1e-5, f32 rounding of one multiply-add.
        (a - b).abs() <= 1e-5
    }

    #[test]
    fn rgb_and_bgr_planes_with_normalisation() {
        let img = two_by_two();
        let mean = [0.485, 0.456, 0.406];
        let std = [0.229, 0.224, 0.225];
        let t = to_nchw(&[&img], ChannelOrder::Rgb, 1.0 / 255.0, mean, std).unwrap();
        assert_eq!(t.shape(), &[1, 3, 2, 2]);
        // Plane 0 is red: pixel (x=1, y=0) has red 30.
        assert!(close(t[[0, 0, 0, 1]], (30.0 / 255.0 - 0.485) / 0.229));
        assert!(close(t[[0, 1, 1, 0]], (60.0 / 255.0 - 0.456) / 0.224));
        assert!(close(t[[0, 2, 1, 1]], (128.0 / 255.0 - 0.406) / 0.225));

        let t = to_nchw(&[&img], ChannelOrder::Bgr, 1.0, [0.0; 3], [1.0; 3]).unwrap();
        let want_blue = [[20.0, 40.0], [240.0, 128.0]];
        let want_red = [[200.0, 30.0], [50.0, 128.0]];
        for y in 0..2 {
            for x in 0..2 {
                assert_eq!(t[[0, 0, y, x]], want_blue[y][x]);
                assert_eq!(t[[0, 2, y, x]], want_red[y][x]);
            }
        }
        // Mean/std follow the output plane: in BGR, mean[0] is subtracted from blue.
        let t = to_nchw(
            &[&img],
            ChannelOrder::Bgr,
            1.0,
            [10.0, 0.0, 0.0],
            [2.0, 1.0, 1.0],
        )
        .unwrap();
        assert_eq!(t[[0, 0, 0, 0]], (20.0 - 10.0) / 2.0);
    }

    #[test]
    fn batches_stack_and_mismatches_are_errors() {
        let a = two_by_two();
        let b = RgbImage::from_pixel(2, 2, Rgb([1, 2, 3]));
        let t = to_nchw(&[&a, &b], ChannelOrder::Rgb, 1.0, [0.0; 3], [1.0; 3]).unwrap();
        assert_eq!(t.shape(), &[2, 3, 2, 2]);
        assert_eq!(t[[1, 2, 1, 1]], 3.0);
        assert_eq!(t[[0, 0, 0, 0]], 200.0);

        let c = RgbImage::new(3, 2);
        let err = to_nchw(&[&a, &c], ChannelOrder::Rgb, 1.0, [0.0; 3], [1.0; 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot batch images: expected every image to be 2x2 like the first, found 3x2 at index 1"
        );
        assert!(to_nchw(&[], ChannelOrder::Rgb, 1.0, [0.0; 3], [1.0; 3]).is_err());
    }
}
