//! Face alignment: the similarity transform that puts five landmarks onto the ArcFace template,
//! and the bilinear warp that cuts the 112 × 112 face out of the photo.
//!
//! Both references do the same thing: OpenCV's `FaceRecognizerSF::alignCrop` (Umeyama's
//! least-squares similarity, then `warpAffine` with `INTER_LINEAR` and a black border) and
//! insightface's `norm_crop` (scikit-image `SimilarityTransform.estimate`, which is Umeyama too,
//! then `cv2.warpAffine` with border value 0).

use image::RgbImage;

/// Side of the aligned face crop both recognisers take.
pub const ALIGNED_SIZE: u32 = 112;

/// The standard ArcFace five-point template in a 112 × 112 crop: right eye, left eye, nose,
/// right and left mouth corner (image left to right).
pub const ARCFACE_TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// A 2 × 3 affine matrix `[a, b, c; d, e, f]` mapping `(x, y)` to
/// `(a x + b y + c, d x + e y + f)`.
pub type Affine = [[f64; 3]; 2];

/// Why five landmarks cannot be aligned.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlignError {
    #[error("the five landmarks coincide, so no similarity transform fits them")]
    Degenerate,
}

/// Umeyama's least-squares similarity (rotation, uniform scale, translation; no reflection) from
/// `src` onto `dst`.
///
/// In two dimensions the SVD in Umeyama's method has a closed form: with both point sets centred,
/// `s cos θ = Σ p·q / Σ |p|²` and `s sin θ = Σ p×q / Σ |p|²`. This is the same minimiser OpenCV's
/// `getSimilarityTransformMatrix` and scikit-image compute through the SVD.
pub fn similarity_transform(
    src: &[[f32; 2]; 5],
    dst: &[[f32; 2]; 5],
) -> Result<Affine, AlignError> {
    let n = src.len() as f64;
    let mean = |pts: &[[f32; 2]; 5]| {
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(x, y), p| {
            (x + f64::from(p[0]), y + f64::from(p[1]))
        });
        (sx / n, sy / n)
    };
    let (psx, psy) = mean(src);
    let (pdx, pdy) = mean(dst);
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (p, q) in src.iter().zip(dst) {
        let (px, py) = (f64::from(p[0]) - psx, f64::from(p[1]) - psy);
        let (qx, qy) = (f64::from(q[0]) - pdx, f64::from(q[1]) - pdy);
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
        norm += px * px + py * py;
    }
    if norm < 1e-12 {
        return Err(AlignError::Degenerate);
    }
    let a = dot / norm;
    let b = cross / norm;
    Ok([
        [a, -b, pdx - (a * psx - b * psy)],
        [b, a, pdy - (b * psx + a * psy)],
    ])
}

/// Applies `m` to a point.
pub fn apply(m: &Affine, p: [f64; 2]) -> [f64; 2] {
    [
        m[0][0] * p[0] + m[0][1] * p[1] + m[0][2],
        m[1][0] * p[0] + m[1][1] * p[1] + m[1][2],
    ]
}

/// The inverse of a similarity (or any invertible affine) matrix.
fn invert(m: &Affine) -> Option<Affine> {
    let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    if det.abs() < 1e-15 {
        return None;
    }
    let (a, b) = (m[1][1] / det, -m[0][1] / det);
    let (d, e) = (-m[1][0] / det, m[0][0] / det);
    Some([
        [a, b, -(a * m[0][2] + b * m[1][2])],
        [d, e, -(d * m[0][2] + e * m[1][2])],
    ])
}

/// Warps `src` through `m` (source to destination) into a `size` × `size` image, as
/// `cv::warpAffine(src, dst, m, size, INTER_LINEAR, BORDER_CONSTANT, 0)` does: every destination
/// pixel samples the source at `m⁻¹ (x, y)` (pixel centres on integer coordinates), bilinear
/// between the four neighbours, with neighbours outside the photo counting as black.
pub fn warp_affine(src: &RgbImage, m: &Affine, size: u32) -> Result<RgbImage, AlignError> {
    let inv = invert(m).ok_or(AlignError::Degenerate)?;
    let (w, h) = (i64::from(src.width()), i64::from(src.height()));
    let raw = src.as_raw();
    let stride = src.width() as usize * 3;
    let mut out = RgbImage::new(size, size);
    for (x, y, px) in out.enumerate_pixels_mut() {
        let [sx, sy] = apply(&inv, [f64::from(x), f64::from(y)]);
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = ((sx - x0) as f32, (sy - y0) as f32);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let mut acc = [0f32; 3];
        for (dy, wy) in [(0, 1.0 - fy), (1, fy)] {
            let yy = y0 + dy;
            if yy < 0 || yy >= h || wy == 0.0 {
                continue;
            }
            for (dx, wx) in [(0, 1.0 - fx), (1, fx)] {
                let xx = x0 + dx;
                if xx < 0 || xx >= w || wx == 0.0 {
                    continue;
                }
                let at = yy as usize * stride + xx as usize * 3;
                let wgt = wx * wy;
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += wgt * f32::from(raw[at + c]);
                }
            }
        }
        px.0 = acc.map(|v| v.round().clamp(0.0, 255.0) as u8);
    }
    Ok(out)
}

/// Aligns one face: the similarity onto the template, then the 112 × 112 crop.
pub fn align_face(src: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Result<RgbImage, AlignError> {
    let m = similarity_transform(landmarks, &ARCFACE_TEMPLATE)?;
    warp_affine(src, &m, ALIGNED_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn template_maps_onto_itself() {
        let m = similarity_transform(&ARCFACE_TEMPLATE, &ARCFACE_TEMPLATE).unwrap();
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        for r in 0..2 {
            for c in 0..3 {
                assert!(close(m[r][c], identity[r][c], 1e-9), "{m:?}");
            }
        }
    }

    #[test]
    fn recovers_a_known_scaled_rotated_translated_transform() {
        // Photo points = scale 2.5, rotation 30°, shift (100, 40) applied to the template; the
        // fitted photo-to-template transform must be that transform's exact inverse.
        let (s, t) = (2.5f64, 30f64.to_radians());
        let fwd: Affine = [
            [s * t.cos(), -s * t.sin(), 100.0],
            [s * t.sin(), s * t.cos(), 40.0],
        ];
        let photo: [[f32; 2]; 5] = ARCFACE_TEMPLATE.map(|p| {
            let q = apply(&fwd, [f64::from(p[0]), f64::from(p[1])]);
            [q[0] as f32, q[1] as f32]
        });
        let m = similarity_transform(&photo, &ARCFACE_TEMPLATE).unwrap();
        let inv = invert(&fwd).unwrap();
        for r in 0..2 {
            for c in 0..3 {
                assert!(close(m[r][c], inv[r][c], 1e-4), "{m:?} vs {inv:?}");
            }
        }
        for (p, q) in photo.iter().zip(ARCFACE_TEMPLATE) {
            let back = apply(&m, [f64::from(p[0]), f64::from(p[1])]);
            assert!(close(back[0], f64::from(q[0]), 1e-3));
            assert!(close(back[1], f64::from(q[1]), 1e-3));
        }
    }

    #[test]
    fn least_squares_fit_of_noisy_points_has_no_reflection() {
        // A mirrored face cannot be fitted by a proper rotation; the result must still be a
        // rotation (a == e, b == -d) and not a reflection.
        let mirrored = ARCFACE_TEMPLATE.map(|p| [112.0 - p[0], p[1]]);
        let m = similarity_transform(&mirrored, &ARCFACE_TEMPLATE).unwrap();
        assert!(close(m[0][0], m[1][1], 1e-12) && close(m[0][1], -m[1][0], 1e-12));
    }

    #[test]
    fn coinciding_landmarks_are_an_error() {
        assert_eq!(
            similarity_transform(&[[5.0, 5.0]; 5], &ARCFACE_TEMPLATE),
            Err(AlignError::Degenerate)
        );
    }

    #[test]
    fn warp_samples_bilinearly_with_a_black_border() {
        // A 4 × 1 ramp; shifting by half a pixel averages neighbours; outside is black.
        let src = RgbImage::from_fn(4, 1, |x, _| image::Rgb([(x * 60) as u8, 0, 255]));
        let shift: Affine = [[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]];
        let out = warp_affine(&src, &shift, 4).unwrap();
        // Destination x samples source x + 0.5.
        assert_eq!(out.get_pixel(0, 0).0, [30, 0, 255]);
        assert_eq!(out.get_pixel(1, 0).0, [90, 0, 255]);
        // x = 3 samples 3.5: half the last pixel, half black.
        assert_eq!(out.get_pixel(3, 0).0, [90, 0, 128]);
        // Row 1 lies below the one-row source: black.
        assert_eq!(out.get_pixel(0, 1).0, [0, 0, 0]);
        let id = warp_affine(&src, &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], 4).unwrap();
        assert_eq!(id.get_pixel(2, 0).0, [120, 0, 255]);
    }
}
