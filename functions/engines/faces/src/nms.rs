//! Non-maximum suppression for both detector families, each exactly as its reference does it:
//!
//! - YuNet (OpenCV `FaceDetectorYN`): `cv::dnn::NMSBoxes` on the detector's input, over boxes
//!   truncated to integers (`Rect2i`), after its candidate filter (scores strictly above the
//!   threshold when there are several, at most `top_k`); detections are mapped back afterwards.
//! - SCRFD (insightface `SCRFD.detect`): after mapping back to the photo, with insightface's
//!   `+1` pixel areas (photo pixels).

use crate::config::{DetectOptions, ModelFamily};
use crate::detect::Detection;

/// Suppresses overlapping candidates (in the detector input's pixels, as decoded) the way
/// `family`'s reference does and returns the kept faces in the photo's pixels, best first.
/// `scale` is the letterbox's detector pixels per photo pixel.
pub fn suppress(
    family: ModelFamily,
    candidates: Vec<Detection>,
    options: &DetectOptions,
    scale: f32,
) -> Vec<Detection> {
    // Each reference runs NMS where it is: OpenCV inside `detect`, on the detector's input
    // (integer rects there); insightface after mapping back to the photo (its +1 pixel areas are
    // photo pixels).
    match family {
        ModelFamily::YunetSface => nms(
            opencv_candidates(candidates, options.min_score),
            options.nms_iou,
            OverlapRule::OpenCvIntegerRects,
        )
        .into_iter()
        .map(|d| d.unscaled(scale))
        .collect(),
        ModelFamily::ScrfdArcface => nms(
            candidates.into_iter().map(|d| d.unscaled(scale)).collect(),
            options.nms_iou,
            OverlapRule::InsightFacePlusOne,
        ),
    }
}

/// How box overlap is measured during NMS; each reference does it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapRule {
    /// `cv::dnn::NMSBoxes` on `Rect2i`: boxes truncated to integers, areas `w * h`.
    OpenCvIntegerRects,
    /// insightface `nms`: corner boxes with areas `(x2 - x1 + 1) * (y2 - y1 + 1)`.
    InsightFacePlusOne,
}

impl OverlapRule {
    fn iou(self, a: &Detection, b: &Detection) -> f32 {
        match self {
            OverlapRule::OpenCvIntegerRects => {
                // `Rect2i(int(x), int(y), int(w), int(h))`: `int()` truncates toward zero.
                let r = |d: &Detection| {
                    let (x, y, w, h) = (
                        d.x.trunc() as i64,
                        d.y.trunc() as i64,
                        d.width.trunc() as i64,
                        d.height.trunc() as i64,
                    );
                    (x, y, w, h)
                };
                let (ax, ay, aw, ah) = r(a);
                let (bx, by, bw, bh) = r(b);
                let area_a = (aw * ah) as f64;
                let area_b = (bw * bh) as f64;
                if area_a + area_b <= 0.0 {
                    // OpenCV's jaccardDistance calls two empty boxes identical.
                    return 1.0;
                }
                let ix = ax.max(bx);
                let iy = ay.max(by);
                let iw = (ax + aw).min(bx + bw) - ix;
                let ih = (ay + ah).min(by + bh) - iy;
                let inter = if iw <= 0 || ih <= 0 {
                    0.0
                } else {
                    (iw * ih) as f64
                };
                (inter / (area_a + area_b - inter)) as f32
            }
            OverlapRule::InsightFacePlusOne => {
                let (ax2, ay2) = (a.x + a.width, a.y + a.height);
                let (bx2, by2) = (b.x + b.width, b.y + b.height);
                let area_a = (a.width + 1.0) * (a.height + 1.0);
                let area_b = (b.width + 1.0) * (b.height + 1.0);
                let w = (ax2.min(bx2) - a.x.max(b.x) + 1.0).max(0.0);
                let h = (ay2.min(by2) - a.y.max(b.y) + 1.0).max(0.0);
                let inter = w * h;
                inter / (area_a + area_b - inter)
            }
        }
    }
}

/// Greedy non-maximum suppression: highest score first, a detection is dropped when its overlap
/// with one already kept is above `iou_threshold`. Returns the kept detections, best first.
///
/// The sort is stable, so equal scores keep their decode order, as OpenCV's `stable_sort` does.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32, rule: OverlapRule) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len().min(64));
    for d in dets {
        if kept.iter().all(|k| rule.iou(&d, k) <= iou_threshold) {
            kept.push(d);
        }
    }
    kept
}

/// `FaceDetectorYN`'s `top_k`: `NMSBoxes` keeps at most this many candidates, best first.
pub const OPENCV_TOP_K: usize = 5000;

/// What `cv::dnn::NMSBoxes` does before suppressing, as `FaceDetectorYN` calls it: only when
/// there is more than one candidate, it keeps scores strictly above the threshold (decoding kept
/// `>=`), then at most `top_k` of them by score.
fn opencv_candidates(mut candidates: Vec<Detection>, min_score: f32) -> Vec<Detection> {
    if candidates.len() > 1 {
        candidates.retain(|d| d.score > min_score);
        if candidates.len() > OPENCV_TOP_K {
            candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
            candidates.truncate(OPENCV_TOP_K);
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::tests::{close, det};

    #[test]
    fn nms_keeps_best_of_overlapping_boxes() {
        let dets = vec![
            det(0.0, 0.0, 10.0, 10.0, 0.8),
            det(1.0, 1.0, 10.0, 10.0, 0.9),
            det(50.0, 50.0, 10.0, 10.0, 0.7),
            // Overlaps the best one by IoU 25/175 ≈ 0.14: kept at threshold 0.3.
            det(6.0, 6.0, 10.0, 10.0, 0.6),
        ];
        let kept = nms(dets.clone(), 0.3, OverlapRule::OpenCvIntegerRects);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6]);
        let kept = nms(dets, 0.1, OverlapRule::InsightFacePlusOne);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
    }

    #[test]
    fn overlap_rules_follow_their_references() {
        let a = det(0.9, 0.9, 10.9, 10.9, 1.0);
        let b = det(5.0, 0.0, 10.0, 10.0, 1.0);
        // OpenCV truncates a to (0, 0, 10, 10): intersection 5 × 10 = 50, union 150.
        assert!(close(
            OverlapRule::OpenCvIntegerRects.iou(&a, &b),
            50.0 / 150.0
        ));
        // insightface on (0,0,10,10) and (5,0,15,10): areas 121 each, intersection 6 × 11.
        let c = det(0.0, 0.0, 10.0, 10.0, 1.0);
        assert!(close(
            OverlapRule::InsightFacePlusOne.iou(&c, &b),
            66.0 / (242.0 - 66.0)
        ));
        let empty = det(0.0, 0.0, 0.0, 0.0, 1.0);
        assert_eq!(OverlapRule::OpenCvIntegerRects.iou(&empty, &empty), 1.0);
    }

    #[test]
    fn opencv_drops_threshold_ties_only_among_several_candidates() {
        let d = |score| Detection {
            x: 0.0,
            y: 0.0,
            width: 1.0,
            height: 1.0,
            score,
            landmarks: [[0.0; 2]; 5],
        };
        assert_eq!(opencv_candidates(vec![d(0.9)], 0.9).len(), 1);
        let kept = opencv_candidates(vec![d(0.9), d(0.95)], 0.9);
        assert_eq!(kept, vec![d(0.95)]);
        let many = opencv_candidates(vec![d(0.95); OPENCV_TOP_K + 3], 0.9);
        assert_eq!(many.len(), OPENCV_TOP_K);
    }

    #[test]
    fn each_family_suppresses_where_its_reference_does() {
        let options = DetectOptions {
            min_score: 0.5,
            nms_iou: 0.3,
            max_faces: 10,
            min_face_size: 0.0,
        };
        // On the detector's input these two overlap by IoU 36/164 = 0.22 under OpenCV's integer
        // rects (kept at 0.3); in photo pixels (x 2) with insightface's +1 areas, 169/713 = 0.24
        // (kept too); both come back in the photo's pixels, best first.
        let candidates = vec![
            det(0.0, 0.0, 10.0, 10.0, 0.8),
            det(4.0, 4.0, 10.0, 10.0, 0.9),
        ];
        for family in [ModelFamily::YunetSface, ModelFamily::ScrfdArcface] {
            let kept = suppress(family, candidates.clone(), &options, 0.5);
            let got: Vec<(f32, f32)> = kept.iter().map(|d| (d.score, d.x)).collect();
            assert_eq!(got, vec![(0.9, 8.0), (0.8, 0.0)], "{family:?}");
        }
        // A box fully inside the best one is dropped by both.
        let nested = vec![det(0.0, 0.0, 10.0, 10.0, 0.9), det(1.0, 1.0, 8.0, 8.0, 0.8)];
        for family in [ModelFamily::YunetSface, ModelFamily::ScrfdArcface] {
            assert_eq!(
                suppress(family, nested.clone(), &options, 1.0).len(),
                1,
                "{family:?}"
            );
        }
    }
}
