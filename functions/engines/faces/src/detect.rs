//! Face detection post-processing: turning raw detector outputs into scored boxes with five
//! landmarks, and mapping back from the detector's input to the photo. Non-maximum suppression
//! is in [`crate::nms`].
//!
//! Two detector families are decoded here, each exactly as its reference implementation does it,
//! so that results can be compared with the reference face for face:
//!
//! - YuNet (OpenCV `FaceDetectorYN`, `modules/objdetect/src/face_detect.cpp`): one anchor per
//!   cell at strides 8/16/32; `score = sqrt(clamp(cls) * clamp(obj))`; centre and landmark
//!   offsets in units of the stride, width and height as `exp(d) * stride`.
//! - SCRFD (insightface `model_zoo/scrfd.py`, which Immich uses): usually two anchors per cell;
//!   distances to the box sides and landmark offsets in units of the stride
//!   (`distance2bbox` / `distance2kps`).

/// One detected face, in the coordinates of the image it was detected on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Top-left corner, width and height.
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
    pub score: f32,
    /// Right eye, left eye, nose tip, right and left mouth corner (as seen in the image: the
    /// first point is the leftmost eye), the order the ArcFace template uses.
    pub landmarks: [[f32; 2]; 5],
}

impl Detection {
    /// Maps a detection on a scaled copy of a photo back onto the photo: every coordinate is
    /// divided by `scale` (the letterbox's resize factor; the copy starts at the top-left corner,
    /// so there is no offset).
    pub fn unscaled(&self, scale: f32) -> Detection {
        let mut landmarks = self.landmarks;
        for p in &mut landmarks {
            p[0] /= scale;
            p[1] /= scale;
        }
        Detection {
            x: self.x / scale,
            y: self.y / scale,
            width: self.width / scale,
            height: self.height / scale,
            score: self.score,
            landmarks,
        }
    }
}

/// The outputs of one detector stride, flattened row-major (cell by cell, anchors of a cell
/// together), borrowed from the ONNX Runtime output tensors.
#[derive(Debug, Clone, Copy)]
pub struct StrideOutputs<'a> {
    pub stride: usize,
    /// YuNet: `cls`; SCRFD: `score`. One value per anchor.
    pub score: &'a [f32],
    /// YuNet only: objectness, one value per anchor.
    pub obj: Option<&'a [f32]>,
    /// Four values per anchor.
    pub bbox: &'a [f32],
    /// Ten values per anchor.
    pub kps: &'a [f32],
}

/// Why a detector's outputs could not be decoded: the model is not the one we think it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("detector output at stride {stride}: expected {expected} values, found {found}")]
pub struct DecodeError {
    pub stride: usize,
    pub expected: String,
    pub found: usize,
}

/// Grid size of one stride over a `width` × `height` input (OpenCV and insightface both floor).
fn grid(width: usize, height: usize, stride: usize) -> (usize, usize) {
    (width / stride, height / stride)
}

fn check_len(stride: usize, name: &str, found: usize, expected: usize) -> Result<(), DecodeError> {
    if found == expected {
        Ok(())
    } else {
        Err(DecodeError {
            stride,
            expected: format!("{expected} {name}"),
            found,
        })
    }
}

/// Decodes YuNet outputs for a `width` × `height` input, keeping detections with
/// `score >= min_score` (before NMS), as `FaceDetectorYNImpl::postProcess` does.
pub fn decode_yunet(
    strides: &[StrideOutputs<'_>],
    width: usize,
    height: usize,
    min_score: f32,
) -> Result<Vec<Detection>, DecodeError> {
    let mut out = Vec::new();
    for s in strides {
        let (cols, rows) = grid(width, height, s.stride);
        let cells = cols * rows;
        let obj = s.obj.ok_or_else(|| DecodeError {
            stride: s.stride,
            expected: "an objectness output".to_string(),
            found: 0,
        })?;
        check_len(s.stride, "class scores", s.score.len(), cells)?;
        check_len(s.stride, "objectness scores", obj.len(), cells)?;
        check_len(s.stride, "box values", s.bbox.len(), cells * 4)?;
        check_len(s.stride, "landmark values", s.kps.len(), cells * 10)?;
        let st = s.stride as f32;
        for r in 0..rows {
            for c in 0..cols {
                let idx = r * cols + c;
                let cls = s.score[idx].clamp(0.0, 1.0);
                let ob = obj[idx].clamp(0.0, 1.0);
                let score = (cls * ob).sqrt();
                if score < min_score {
                    continue;
                }
                let b = &s.bbox[idx * 4..idx * 4 + 4];
                let cx = (c as f32 + b[0]) * st;
                let cy = (r as f32 + b[1]) * st;
                let w = b[2].exp() * st;
                let h = b[3].exp() * st;
                let k = &s.kps[idx * 10..idx * 10 + 10];
                let mut landmarks = [[0f32; 2]; 5];
                for (n, p) in landmarks.iter_mut().enumerate() {
                    *p = [(k[2 * n] + c as f32) * st, (k[2 * n + 1] + r as f32) * st];
                }
                out.push(Detection {
                    x: cx - w / 2.0,
                    y: cy - h / 2.0,
                    width: w,
                    height: h,
                    score,
                    landmarks,
                });
            }
        }
    }
    Ok(out)
}

/// Decodes SCRFD outputs for a `width` × `height` input, keeping `score >= min_score`, as
/// insightface's `SCRFD.forward` does. Anchors per cell are read from the output size (two in
/// every released SCRFD model with landmarks); anchor `a` of cell `(r, c)` sits at
/// `(c * stride, r * stride)`.
pub fn decode_scrfd(
    strides: &[StrideOutputs<'_>],
    width: usize,
    height: usize,
    min_score: f32,
) -> Result<Vec<Detection>, DecodeError> {
    let mut out = Vec::new();
    for s in strides {
        let (cols, rows) = grid(width, height, s.stride);
        let cells = cols * rows;
        if cells == 0 || s.score.len() % cells != 0 || s.score.is_empty() {
            return Err(DecodeError {
                stride: s.stride,
                expected: format!("a multiple of {cells} scores (one or more anchors per cell)"),
                found: s.score.len(),
            });
        }
        let anchors = s.score.len() / cells;
        check_len(s.stride, "box values", s.bbox.len(), cells * anchors * 4)?;
        check_len(
            s.stride,
            "landmark values",
            s.kps.len(),
            cells * anchors * 10,
        )?;
        let st = s.stride as f32;
        for (i, &score) in s.score.iter().enumerate() {
            if score < min_score {
                continue;
            }
            let cell = i / anchors;
            let (cx, cy) = ((cell % cols) as f32 * st, (cell / cols) as f32 * st);
            let d = &s.bbox[i * 4..i * 4 + 4];
            let (x1, y1) = (cx - d[0] * st, cy - d[1] * st);
            let (x2, y2) = (cx + d[2] * st, cy + d[3] * st);
            let k = &s.kps[i * 10..i * 10 + 10];
            let mut landmarks = [[0f32; 2]; 5];
            for (n, p) in landmarks.iter_mut().enumerate() {
                *p = [cx + k[2 * n] * st, cy + k[2 * n + 1] * st];
            }
            out.push(Detection {
                x: x1,
                y: y1,
                width: x2 - x1,
                height: y2 - y1,
                score,
                landmarks,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A detection without landmarks, for tests here and in `nms`.
    pub(crate) fn det(x: f32, y: f32, w: f32, h: f32, score: f32) -> Detection {
        Detection {
            x,
            y,
            width: w,
            height: h,
            score,
            landmarks: [[0.0; 2]; 5],
        }
    }

    pub(crate) fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn yunet_decode_places_boxes_and_landmarks_on_the_grid() {
        // A 32 × 16 input: stride 8 is a 4 × 2 grid, stride 16 a 2 × 1 grid.
        let mut cls8 = vec![0.0; 8];
        let mut obj8 = vec![0.0; 8];
        let mut bbox8 = vec![0.0; 32];
        let mut kps8 = vec![0.0; 80];
        // Cell row 1, column 2 (index 6): cls 0.81 and obj 1.2 (clamped to 1) give score 0.9.
        cls8[6] = 0.81;
        obj8[6] = 1.2;
        bbox8[24..28].copy_from_slice(&[0.5, 0.25, 2f32.ln(), 0.0]);
        for n in 0..5 {
            kps8[60 + 2 * n] = n as f32 * 0.1;
            kps8[60 + 2 * n + 1] = -0.5;
        }
        // A negative class score clamps to 0 and is never kept.
        cls8[0] = -3.0;
        obj8[0] = 1.0;
        let cls16 = vec![0.5, 0.0];
        let obj16 = vec![0.5, 0.0];
        let strides = [
            StrideOutputs {
                stride: 8,
                score: &cls8,
                obj: Some(&obj8),
                bbox: &bbox8,
                kps: &kps8,
            },
            StrideOutputs {
                stride: 16,
                score: &cls16,
                obj: Some(&obj16),
                bbox: &[0.0; 8],
                kps: &[0.0; 20],
            },
        ];
        let dets = decode_yunet(&strides, 32, 16, 0.4).unwrap();
        assert_eq!(dets.len(), 2, "{dets:?}");
        let d = dets[0];
        // centre ((2 + 0.5) * 8, (1 + 0.25) * 8) = (20, 10); size (2 * 8, 1 * 8).
        assert!(close(d.score, 0.9), "{}", d.score);
        assert!(close(d.width, 16.0) && close(d.height, 8.0));
        assert!(close(d.x, 12.0) && close(d.y, 6.0), "{d:?}");
        for n in 0..5 {
            assert!(close(d.landmarks[n][0], (n as f32 * 0.1 + 2.0) * 8.0));
            assert!(close(d.landmarks[n][1], 4.0));
        }
        // Stride 16, cell (0, 0): score sqrt(0.25) = 0.5, an 16 × 16 box centred on (0, 0).
        let e = dets[1];
        assert!(close(e.score, 0.5) && close(e.x, -8.0) && close(e.width, 16.0));
        assert!(decode_yunet(&strides, 32, 16, 0.95).unwrap().is_empty());
    }

    #[test]
    fn yunet_decode_rejects_wrong_sizes() {
        let s = [StrideOutputs {
            stride: 8,
            score: &[0.0; 3],
            obj: Some(&[0.0; 4]),
            bbox: &[0.0; 16],
            kps: &[0.0; 40],
        }];
        let err = decode_yunet(&s, 16, 16, 0.5).unwrap_err();
        assert_eq!(err.stride, 8);
        assert_eq!(err.found, 3);
    }

    #[test]
    fn scrfd_decode_uses_distances_and_two_anchors_per_cell() {
        // A 16 × 8 input at stride 8: a 2 × 1 grid, two anchors per cell, four anchors in all.
        let score = [0.1, 0.2, 0.3, 0.8];
        let mut bbox = [0.0f32; 16];
        // Anchor 3 is the second anchor of cell (row 0, column 1), centre (8, 0).
        bbox[12..16].copy_from_slice(&[0.5, 0.25, 1.0, 2.0]);
        let mut kps = [0.0f32; 40];
        for n in 0..5 {
            kps[30 + 2 * n] = n as f32;
            kps[30 + 2 * n + 1] = 1.0;
        }
        let s = [StrideOutputs {
            stride: 8,
            score: &score,
            obj: None,
            bbox: &bbox,
            kps: &kps,
        }];
        let dets = decode_scrfd(&s, 16, 8, 0.25).unwrap();
        assert_eq!(dets.len(), 2);
        let d = dets[1];
        assert!(close(d.score, 0.8));
        // x1 = 8 - 4, y1 = 0 - 2, x2 = 8 + 8, y2 = 0 + 16.
        assert!(close(d.x, 4.0) && close(d.y, -2.0));
        assert!(close(d.width, 12.0) && close(d.height, 18.0));
        for n in 0..5 {
            assert!(close(d.landmarks[n][0], 8.0 + n as f32 * 8.0));
            assert!(close(d.landmarks[n][1], 8.0));
        }
        // Anchor 2 is the first anchor of the same cell: zero distances put it on the centre.
        assert!(close(dets[0].x, 8.0) && close(dets[0].width, 0.0));
        let bad = [StrideOutputs {
            stride: 8,
            score: &[0.0; 3],
            obj: None,
            bbox: &[0.0; 12],
            kps: &[0.0; 30],
        }];
        assert!(decode_scrfd(&bad, 16, 8, 0.5).is_err());
    }

    #[test]
    fn unscaling_maps_back_to_the_photo() {
        let mut d = det(64.0, 32.0, 128.0, 96.0, 0.9);
        d.landmarks = [[80.0, 40.0]; 5];
        let o = d.unscaled(0.5);
        assert_eq!((o.x, o.y, o.width, o.height), (128.0, 64.0, 256.0, 192.0));
        assert_eq!(o.landmarks[4], [160.0, 80.0]);
        assert_eq!(o.score, 0.9);
    }
}
