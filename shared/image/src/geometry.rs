//! Resizing and letterboxing, with the mapping back to the original image.
//!
//! Resizing uses `fast_image_resize` (SIMD convolution); `BENCHMARKS.md` has the measurement
//! against `image::imageops::resize` that chose it.

use fast_image_resize as fr;
use image::{Rgb, RgbImage};

/// Bilinear resize to exactly `width`×`height`, with antialiasing when shrinking: the bilinear
/// (triangle) kernel is widened by the scale factor, as PIL's `Image.resize(BILINEAR)` and
/// `image::imageops::resize(.., Triangle)` do, so a 4000-pixel photo shrunk to 640 does not alias.
/// Use [`resize_linear`] for OpenCV's `cv2.resize(.., INTER_LINEAR)` behaviour.
///
/// A zero `width` or `height`, or an empty source, gives an image of the requested size (black
/// where there is nothing to sample); this never panics.
pub fn resize(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_with(
        src,
        width,
        height,
        fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
    )
}

/// Bilinear resize sampling the 2×2 nearest source pixels at any scale, as OpenCV's
/// `cv2.resize(.., interpolation=cv2.INTER_LINEAR)` does (pixel centres aligned, no
/// antialiasing): for models whose reference preprocessing is OpenCV's (YuNet, SFace).
pub fn resize_linear(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_with(
        src,
        width,
        height,
        fr::ResizeAlg::Interpolation(fr::FilterType::Bilinear),
    )
}

fn resize_with(src: &RgbImage, width: u32, height: u32, alg: fr::ResizeAlg) -> RgbImage {
    if width == 0 || height == 0 || src.width() == 0 || src.height() == 0 {
        return RgbImage::new(width, height);
    }
    if (src.width(), src.height()) == (width, height) {
        return src.clone();
    }
    // Unreachable for an `RgbImage` (its buffer always matches its size and pixel type), but if
    // the library ever refuses, fall back to the slower resizer rather than fail a request.
    let fallback =
        || image::imageops::resize(src, width, height, image::imageops::FilterType::Triangle);
    let len = src.width() as usize * src.height() as usize * 3;
    let Ok(view) = fr::images::ImageRef::new(
        src.width(),
        src.height(),
        &src.as_raw()[..len],
        fr::PixelType::U8x3,
    ) else {
        return fallback();
    };
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new().resize_alg(alg);
    if fr::Resizer::new()
        .resize(&view, &mut dst, &options)
        .is_err()
    {
        return fallback();
    }
    RgbImage::from_raw(width, height, dst.into_vec()).unwrap_or_else(fallback)
}

/// How a [`letterbox`] placed the source inside the destination, to map results back.
///
/// The source was scaled by `scale` (the same on both axes, up to rounding of the content size)
/// to `content_w`×`content_h` and placed at (`pad_x`, `pad_y`) in a `dst_w`×`dst_h` canvas.
/// A reference that maps its outputs back by dividing by its scale (top-left anchor) is matched
/// with `/ scale`; [`Letterbox::to_original`] uses the exact per-axis factors instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub pad_x: u32,
    pub pad_y: u32,
    pub content_w: u32,
    pub content_h: u32,
    pub src_w: u32,
    pub src_h: u32,
    pub dst_w: u32,
    pub dst_h: u32,
}

impl Letterbox {
    /// The placement of a `src_w`×`src_h` image in a `dst_w`×`dst_h` canvas, centred, keeping
    /// the aspect ratio; the content is at least 1×1 when both sizes are non-zero.
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Letterbox {
        Letterbox::with_anchor(src_w, src_h, dst_w, dst_h, Anchor::Center)
    }

    /// As [`Letterbox::new`], with the content placed at `anchor`.
    pub fn with_anchor(
        src_w: u32,
        src_h: u32,
        dst_w: u32,
        dst_h: u32,
        anchor: Anchor,
    ) -> Letterbox {
        Letterbox::with_fit(src_w, src_h, dst_w, dst_h, anchor, Fit::Round)
    }

    /// As [`Letterbox::with_anchor`], with the content size and scale computed by `fit`.
    pub fn with_fit(
        src_w: u32,
        src_h: u32,
        dst_w: u32,
        dst_h: u32,
        anchor: Anchor,
        fit: Fit,
    ) -> Letterbox {
        let (sw, sh) = (f64::from(src_w), f64::from(src_h));
        let (dw, dh) = (f64::from(dst_w), f64::from(dst_h));
        // Content size before clamping, and the scale the rule reports.
        let (nw, nh, scale) = if src_w == 0 || src_h == 0 {
            (0.0, 0.0, 0.0)
        } else {
            match fit {
                Fit::Round => {
                    let s = (dw / sw).min(dh / sh);
                    ((sw * s).round(), (sh * s).round(), s)
                }
                Fit::InsightFace => {
                    // The expressions of insightface's `SCRFD.detect`, in its order, so the
                    // truncation lands on the same pixel.
                    let (nw, nh) = if sh / sw > dh / dw {
                        ((dh / (sh / sw)).trunc(), dh)
                    } else {
                        (dw, (dw * (sh / sw)).trunc())
                    };
                    (nw, nh, nh / sh)
                }
            }
        };
        // At least one pixel of content when there is room.
        let content_w = (nw as u32).clamp(1.min(dst_w), dst_w);
        let content_h = (nh as u32).clamp(1.min(dst_h), dst_h);
        let (pad_x, pad_y) = match anchor {
            Anchor::Center => ((dst_w - content_w) / 2, (dst_h - content_h) / 2),
            Anchor::TopLeft => (0, 0),
        };
        Letterbox {
            scale: scale as f32,
            pad_x,
            pad_y,
            content_w,
            content_h,
            src_w,
            src_h,
            dst_w,
            dst_h,
        }
    }

    // Per-axis factors from the rounded content size, so that the image edges map exactly onto
    // the content edges (a single `scale` would be off by up to half a pixel per axis).
    fn factors(&self) -> (f32, f32) {
        let f = |content: u32, src: u32| {
            if src == 0 {
                0.0
            } else {
                content as f32 / src as f32
            }
        };
        (f(self.content_w, self.src_w), f(self.content_h, self.src_h))
    }

    /// Maps a point in the original image to the letterboxed canvas.
    pub fn to_letterbox(&self, x: f32, y: f32) -> (f32, f32) {
        let (fx, fy) = self.factors();
        (x * fx + self.pad_x as f32, y * fy + self.pad_y as f32)
    }

    /// Maps a point in the letterboxed canvas (a model's output) back to the original image.
    /// Points in the padding map outside the image; see [`Letterbox::box_to_original`].
    ///
    /// Uses the exact per-axis factor `content / src` of the rounded content size; a reference
    /// that divides by `scale` instead (OpenCV's YuNet recipe does) differs by less than half a
    /// source pixel per axis times `src / content`. Match such a reference with `(x - pad_x) /
    /// scale` directly.
    pub fn to_original(&self, x: f32, y: f32) -> (f32, f32) {
        let (fx, fy) = self.factors();
        let back = |v: f32, pad: u32, f: f32| if f == 0.0 { 0.0 } else { (v - pad as f32) / f };
        (back(x, self.pad_x, fx), back(y, self.pad_y, fy))
    }

    /// Maps a box `[x1, y1, x2, y2]` in the canvas back to the original image and clamps it to
    /// the image (`0..=src_w`, `0..=src_h`), so boxes that reach into the padding stay valid.
    pub fn box_to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let (x1, y1) = self.to_original(b[0], b[1]);
        let (x2, y2) = self.to_original(b[2], b[3]);
        clamp_box([x1, y1, x2, y2], self.src_w, self.src_h)
    }
}

/// Clamps a box `[x1, y1, x2, y2]` to a `width`×`height` image; NaN coordinates become 0.
pub fn clamp_box(b: [f32; 4], width: u32, height: u32) -> [f32; 4] {
    let c = |v: f32, max: u32| {
        if v.is_nan() {
            0.0
        } else {
            v.clamp(0.0, max as f32)
        }
    };
    [
        c(b[0], width),
        c(b[1], height),
        c(b[2], width),
        c(b[3], height),
    ]
}

/// How a letterbox sizes the content and the scale it reports. References differ in the
/// rounding, and parity with one needs the same content size and the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// `s = min(W / w, H / h)`, content `(round(w s), round(h s))`: OpenCV-style letterboxes,
    /// among them the OpenCV YuNet reference (`tests/fixtures/faces/OPENCV_NOTES.md` §2).
    #[default]
    Round,
    /// insightface `SCRFD.detect`: with `r = h / w` against the canvas's `H / W`, the long side
    /// fills the canvas and the other is truncated (`int()`); the scale is `content_h / h`, which
    /// for a wide photo is not `W / w`.
    InsightFace,
}

/// Where [`letterbox_with`] puts the resized content in the canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anchor {
    /// Centred, padding split between both sides (YOLO-style letterboxes).
    #[default]
    Center,
    /// Top-left, all padding right and bottom (OpenCV's YuNet pads this way).
    TopLeft,
}

/// Which resampling [`letterbox_with`] uses for the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resample {
    /// [`resize`]: bilinear, antialiased when shrinking (PIL / `image` semantics).
    #[default]
    Bilinear,
    /// [`resize_linear`]: OpenCV `INTER_LINEAR` semantics, no antialiasing.
    Linear,
}

/// How [`letterbox_with`] builds its canvas. The default is black padding, centred,
/// antialiased bilinear, rounded content size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LetterboxOptions {
    /// Colour of the padding.
    pub fill: Rgb<u8>,
    pub anchor: Anchor,
    pub resample: Resample,
    pub fit: Fit,
}

impl Default for LetterboxOptions {
    fn default() -> Self {
        LetterboxOptions {
            fill: Rgb([0, 0, 0]),
            anchor: Anchor::default(),
            resample: Resample::default(),
            fit: Fit::default(),
        }
    }
}

/// Resizes `src` to fit inside `dst_w`×`dst_h` keeping its aspect ratio (with [`resize`]),
/// centres it, and fills the rest with `fill`. Returns the canvas and the mapping back.
pub fn letterbox(src: &RgbImage, dst_w: u32, dst_h: u32, fill: Rgb<u8>) -> (RgbImage, Letterbox) {
    letterbox_with(
        src,
        dst_w,
        dst_h,
        &LetterboxOptions {
            fill,
            ..LetterboxOptions::default()
        },
    )
}

/// [`letterbox`] with the anchor, resampling and fit chosen. The OpenCV YuNet reference recipe
/// (tests/fixtures/faces/OPENCV_NOTES.md) is `fill: Rgb([0, 0, 0]), anchor: TopLeft,
/// resample: Linear, fit: Round`; insightface's SCRFD is the same with `fit: InsightFace`.
pub fn letterbox_with(
    src: &RgbImage,
    dst_w: u32,
    dst_h: u32,
    options: &LetterboxOptions,
) -> (RgbImage, Letterbox) {
    let lb = Letterbox::with_fit(
        src.width(),
        src.height(),
        dst_w,
        dst_h,
        options.anchor,
        options.fit,
    );
    let mut canvas = RgbImage::from_pixel(dst_w, dst_h, options.fill);
    if lb.content_w > 0 && lb.content_h > 0 && src.width() > 0 && src.height() > 0 {
        let content = match options.resample {
            Resample::Bilinear => resize(src, lb.content_w, lb.content_h),
            Resample::Linear => resize_linear(src, lb.content_w, lb.content_h),
        };
        image::imageops::replace(
            &mut canvas,
            &content,
            i64::from(lb.pad_x),
            i64::from(lb.pad_y),
        );
    }
    (canvas, lb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::quadrants;

    #[test]
    fn letterbox_places_content_and_maps_back() {
        // A 200x100 source into 64x64: scale 0.32, content 64x32, padded 16 rows top and bottom.
        let src = quadrants(200, 100);
        let fill = Rgb([114, 114, 114]);
        let (canvas, lb) = letterbox(&src, 64, 64, fill);
        assert_eq!((canvas.width(), canvas.height()), (64, 64));
        assert_eq!(
            (lb.content_w, lb.content_h, lb.pad_x, lb.pad_y),
            (64, 32, 0, 16)
        );
        assert!((lb.scale - 0.32).abs() < 1e-6);
        assert_eq!(*canvas.get_pixel(10, 5), fill);
        assert_eq!(*canvas.get_pixel(10, 60), fill);
        // The source's top-left quadrant (red) lands where the mapping says.
        let (x, y) = lb.to_letterbox(25.0, 25.0);
        assert_eq!(*canvas.get_pixel(x as u32, y as u32), Rgb([255, 0, 0]));
        let (x, y) = lb.to_letterbox(175.0, 75.0);
        assert_eq!(*canvas.get_pixel(x as u32, y as u32), Rgb([255, 255, 255]));

        // Round trips are within half a pixel for odd sizes too.
        for (sw, sh, dw, dh) in [
            (200, 100, 64, 64),
            (450, 655, 320, 320),
            (31, 7, 640, 480),
            (640, 480, 640, 480),
        ] {
            let lb = Letterbox::new(sw, sh, dw, dh);
            for (px, py) in [
                (0.0, 0.0),
                (sw as f32, sh as f32),
                (sw as f32 * 0.37, sh as f32 * 0.81),
            ] {
                let (cx, cy) = lb.to_letterbox(px, py);
                assert!(cx >= 0.0 && cx <= dw as f32 && cy >= 0.0 && cy <= dh as f32);
                let (bx, by) = lb.to_original(cx, cy);
                assert!(
                    (bx - px).abs() < 0.5 && (by - py).abs() < 0.5,
                    "{sw}x{sh}->{dw}x{dh}: ({px},{py}) -> ({bx},{by})"
                );
            }
        }
    }

    #[test]
    fn top_left_anchor_pads_right_and_bottom() {
        let src = quadrants(100, 200);
        let options = LetterboxOptions {
            fill: Rgb([0, 0, 0]),
            anchor: Anchor::TopLeft,
            resample: Resample::Linear,
            fit: Fit::Round,
        };
        let (canvas, lb) = letterbox_with(&src, 64, 64, &options);
        assert_eq!(
            (lb.pad_x, lb.pad_y, lb.content_w, lb.content_h),
            (0, 0, 32, 64)
        );
        assert_eq!(*canvas.get_pixel(2, 2), Rgb([255, 0, 0]));
        assert_eq!(*canvas.get_pixel(40, 10), Rgb([0, 0, 0]));
        let (x, y) = lb.to_original(16.0, 32.0);
        assert!(
            (x - 50.0).abs() < 1e-4 && (y - 100.0).abs() < 1e-4,
            "({x}, {y})"
        );
    }

    #[test]
    fn fits_round_like_their_references() {
        let fit = |fit: Fit, w, h| {
            let lb = Letterbox::with_fit(w, h, 640, 640, Anchor::TopLeft, fit);
            (lb.content_w, lb.content_h, lb.scale)
        };
        // kafka.jpg, 450 x 655: OpenCV's reference rounds 450 * 640/655 = 439.69 to 440;
        // insightface truncates to 439 and takes its scale from the height, 640 / 655.
        assert_eq!(
            fit(Fit::Round, 450, 655),
            (440, 640, (640.0f64 / 655.0) as f32)
        );
        assert_eq!(
            fit(Fit::InsightFace, 450, 655),
            (439, 640, (640.0f64 / 655.0) as f32)
        );
        // cat.jpg, 451 x 300: insightface's width fills, height int(640 * 300/451) = 425, and
        // the scale is 425 / 300, not 640 / 451.
        assert_eq!(
            fit(Fit::InsightFace, 451, 300),
            (640, 425, (425.0f64 / 300.0) as f32)
        );
        assert_eq!(fit(Fit::Round, 451, 300).1, 426);
        // group.jpg, 1600 x 1000: both give 640 x 400 at 0.4.
        assert_eq!(fit(Fit::InsightFace, 1600, 1000), (640, 400, 0.4));
        assert_eq!(fit(Fit::Round, 1600, 1000), (640, 400, 0.4));
        // An empty source still gets a pixel of content and no NaN, under either rule.
        assert_eq!(fit(Fit::InsightFace, 0, 7), (1, 1, 0.0));
    }

    #[test]
    fn top_left_letterbox_maps_back_by_dividing_by_the_scale() {
        // The faces recipe: a 400 x 200 photo in 640 x 640 at 1.6, top-left, black padding.
        let img = RgbImage::from_pixel(400, 200, Rgb([200, 100, 50]));
        let options = LetterboxOptions {
            anchor: Anchor::TopLeft,
            resample: Resample::Linear,
            ..LetterboxOptions::default()
        };
        let (canvas, lb) = letterbox_with(&img, 640, 640, &options);
        assert_eq!(lb.scale, 1.6);
        assert_eq!(canvas.dimensions(), (640, 640));
        assert_eq!(canvas.get_pixel(639, 319).0, [200, 100, 50]);
        assert_eq!(canvas.get_pixel(0, 320).0, [0, 0, 0]);
        assert_eq!(lb.to_original(320.0, 160.0), (320.0 / 1.6, 160.0 / 1.6));
    }

    #[test]
    fn boxes_in_the_padding_are_clamped() {
        let lb = Letterbox::new(200, 100, 64, 64);
        let b = lb.box_to_original([-5.0, 0.0, 70.0, 30.0]);
        assert_eq!(b[0], 0.0);
        assert_eq!(b[1], 0.0);
        assert_eq!(b[2], 200.0);
        assert!((b[3] - 14.0 / 0.32).abs() < 1e-3, "{b:?}");
        assert_eq!(
            clamp_box([f32::NAN, 3.0, 1e9, -1.0], 10, 10),
            [0.0, 3.0, 10.0, 0.0]
        );
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let src = quadrants(4, 4);
        assert_eq!(resize(&src, 0, 5).dimensions(), (0, 5));
        assert_eq!(resize(&RgbImage::new(0, 0), 3, 3).dimensions(), (3, 3));
        let (canvas, lb) = letterbox(&RgbImage::new(0, 0), 8, 8, Rgb([1, 2, 3]));
        assert_eq!(*canvas.get_pixel(4, 4), Rgb([1, 2, 3]));
        assert_eq!(lb.to_original(4.0, 4.0), (0.0, 0.0));
        let (canvas, lb) = letterbox(&src, 0, 0, Rgb([0, 0, 0]));
        assert_eq!(canvas.dimensions(), (0, 0));
        assert_eq!((lb.content_w, lb.content_h), (0, 0));
        // A 1000x1 strip still gets one row of content.
        assert_eq!(Letterbox::new(1000, 1, 10, 10).content_h, 1);
    }

    #[test]
    fn antialiased_resize_matches_image_crate_triangle() {
        // Same kernel (triangle widened by the scale) as `image`; fast_image_resize computes in
        // fixed point, `image` in f32, so a difference of a level or two is rounding. Stated
        // tolerance: mean absolute difference ≤ 1.0 level and no pixel off by more than 4 levels.
        let src = RgbImage::from_fn(1280, 886, |x, y| {
            Rgb([
                ((x * 7 + y * 3) % 256) as u8,
                ((x ^ y) % 256) as u8,
                (((x as f32 * 0.05).sin() * 120.0 + 128.0) as u8),
            ])
        });
        for (w, h) in [(640, 443), (320, 222), (1500, 1000)] {
            let ours = resize(&src, w, h);
            let theirs = image::imageops::resize(&src, w, h, image::imageops::FilterType::Triangle);
            let (mean, max) = diff(&ours, &theirs);
            assert!(mean <= 1.0 && max <= 4, "{w}x{h}: mean {mean}, max {max}");
        }
    }

    fn fixture(name: &str) -> RgbImage {
        // Made by shared/image/fixtures/gen_resize_reference.py (OpenCV 4.14, lossless PNG).
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/");
        let bytes = std::fs::read(format!("{path}{name}")).unwrap();
        crate::decode(&bytes, &crate::ImageLimits::default())
            .unwrap()
            .image
    }

    #[test]
    fn linear_resize_matches_opencv_inter_linear() {
        // OpenCV interpolates in 11-bit fixed point, fast_image_resize in its own fixed point:
        // stated tolerance one grey level per value, mean below 0.5. Measured: max 1, mean
        // 0.04..0.29 over these sizes.
        let src = fixture("resize-src.png");
        for (w, h) in [(64, 48), (61, 47), (300, 200), (160, 90)] {
            let cv = fixture(&format!("resize-linear-{w}x{h}.png"));
            let (mean, max) = diff(&resize_linear(&src, w, h), &cv);
            assert!(mean < 0.5 && max <= 1, "{w}x{h}: mean {mean}, max {max}");
        }
    }

    #[test]
    fn antialiased_resize_is_closer_to_an_area_filter_when_shrinking() {
        // Shrinking 2.5x: the fine stripes and checkerboard alias under INTER_LINEAR sampling;
        // the widened bilinear kernel averages them like OpenCV's INTER_AREA box filter does.
        let src = fixture("resize-src.png");
        for (w, h) in [(64, 48), (61, 47)] {
            let area = fixture(&format!("resize-area-{w}x{h}.png"));
            let (smooth, _) = diff(&resize(&src, w, h), &area);
            let (sampled, _) = diff(&resize_linear(&src, w, h), &area);
            assert!(
                smooth < sampled,
                "{w}x{h}: antialiased {smooth} vs linear {sampled}"
            );
        }
    }

    pub(crate) fn diff(a: &RgbImage, b: &RgbImage) -> (f64, u8) {
        assert_eq!(a.dimensions(), b.dimensions());
        let mut sum = 0u64;
        let mut max = 0u8;
        for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
            let d = x.abs_diff(*y);
            sum += u64::from(d);
            max = max.max(d);
        }
        (sum as f64 / a.as_raw().len() as f64, max)
    }
}
