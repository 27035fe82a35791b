//! The face pipeline on one upright photo: detector input (YuNet at the photo's own size padded
//! to 32, or a letterbox) → detect → five landmarks → align → recognise, over ONNX Runtime
//! sessions built once at init.

use coldpath_image::{
    Anchor, ChannelOrder, Fit, LetterboxOptions, Resample, RgbImage, letterbox_with, to_nchw,
};
use ndarray::Array4;
use ort::session::Session;
use ort::value::{Tensor, ValueType};

use coldpath_core::vector::l2_normalize;
use coldpath_core::{Classify, ErrorType};
use coldpath_models::{SessionPool, output_last_dim};

use crate::align::{ALIGNED_SIZE, AlignError, align_face};
use crate::config::{DetectOptions, DetectorInput, ModelFamily};
use crate::detect::{DecodeError, Detection, StrideOutputs, decode_scrfd, decode_yunet};
use crate::nms;
// The face the pipeline answers is a plain data type of the response, so it lives in `request`
// (which builds without the `onnx` feature); it is still `pipeline::Face` here.
pub use crate::request::Face;

/// The strides both detector families predict at.
pub const STRIDES: [usize; 3] = [8, 16, 32];
/// The detector input side used when the model leaves it dynamic (insightface's `det_size`).
pub const DEFAULT_DETECTOR_SIZE: usize = 640;

/// `image` at the top-left of a black `width` × `height` canvas (at least its size).
fn pad_to(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let mut canvas = RgbImage::new(width, height);
    let row = image.width() as usize * 3;
    let stride = width as usize * 3;
    let dst: &mut [u8] = &mut canvas;
    for (y, src) in image.as_raw().chunks_exact(row.max(1)).enumerate() {
        dst[y * stride..y * stride + row].copy_from_slice(src);
    }
    canvas
}

#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    #[error("model {model} does not look like a {family} {role}: {reason}")]
    ModelSignature {
        model: String,
        family: ModelFamily,
        role: &'static str,
        reason: String,
    },
    #[error("model {model}: {source}")]
    Decode {
        model: String,
        #[source]
        source: DecodeError,
    },
    #[error("running model {model}: {reason}")]
    Inference { model: String, reason: String },
    #[error("aligning face {index}: {source}")]
    Align {
        index: usize,
        #[source]
        source: AlignError,
    },
    #[error("the photo is empty ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
}

impl Classify for FaceError {
    fn error_type(&self) -> ErrorType {
        match self {
            FaceError::ModelSignature { .. } | FaceError::Decode { .. } => ErrorType::ModelLoad,
            FaceError::EmptyImage { .. } => ErrorType::InvalidInput,
            FaceError::Inference { .. } | FaceError::Align { .. } => ErrorType::Internal,
        }
    }
}

/// What a handler needs from the models: faces in a photo. The ONNX pipeline below is the real
/// implementation; tests of request handling may use a small fake.
pub trait AnalyzeFaces: Send + Sync {
    fn analyze(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<Face>, FaceError>;
    /// The detector's and the recogniser's names, reported with every result.
    fn model_names(&self) -> (&str, &str);
}

/// How a family feeds pixels to its models: `(pixel - mean) / std` per plane, in `order`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Normalization {
    order: ChannelOrder,
    mean: f32,
    std: f32,
}

impl Normalization {
    fn nchw(&self, images: &[&RgbImage]) -> Result<Array4<f32>, String> {
        to_nchw(images, self.order, 1.0, [self.mean; 3], [self.std; 3]).map_err(|e| e.to_string())
    }
}

fn detector_normalization(family: ModelFamily) -> Normalization {
    match family {
        // OpenCV `blobFromImage(image)` on a BGR Mat: BGR, 0..255, no mean, no scale.
        ModelFamily::YunetSface => Normalization {
            order: ChannelOrder::Bgr,
            mean: 0.0,
            std: 1.0,
        },
        // insightface `blobFromImage(img, 1/128, size, (127.5,)*3, swapRB=True)`.
        ModelFamily::ScrfdArcface => Normalization {
            order: ChannelOrder::Rgb,
            mean: 127.5,
            std: 128.0,
        },
    }
}

fn recognizer_normalization(family: ModelFamily) -> Normalization {
    match family {
        // OpenCV `FaceRecognizerSF::feature`: `blobFromImage(aligned, 1, 112x112, 0, swapRB=true)`.
        ModelFamily::YunetSface => Normalization {
            order: ChannelOrder::Rgb,
            mean: 0.0,
            std: 1.0,
        },
        // insightface `ArcFaceONNX`: input_mean 127.5, input_std 127.5, swapRB=True.
        ModelFamily::ScrfdArcface => Normalization {
            order: ChannelOrder::Rgb,
            mean: 127.5,
            std: 127.5,
        },
    }
}

/// The fixed dimensions of a model's first input, `None` where the graph leaves one symbolic.
fn input_shape(session: &Session) -> Option<Vec<Option<usize>>> {
    match session.inputs().first()?.dtype() {
        ValueType::Tensor { shape, .. } => Some(
            shape
                .iter()
                .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
                .collect(),
        ),
        _ => None,
    }
}

/// A detector and a recogniser of one family.
pub struct OnnxFaces {
    family: ModelFamily,
    /// How photos are shrunk or grown to the detector input.
    resample: Resample,
    detector: SessionPool,
    detector_name: String,
    detector_input: String,
    /// Output names in decode order: per stride 8/16/32, YuNet `cls, obj, bbox, kps` (by
    /// name); SCRFD scores, boxes, landmarks (by position, as insightface reads them).
    detector_outputs: Vec<[Option<String>; 4]>,
    det_width: usize,
    det_height: usize,
    /// Whether the detector takes any input size (its H and W are not fixed in the file).
    det_dynamic: bool,
    input: DetectorInput,
    recognizer: SessionPool,
    recognizer_name: String,
    recognizer_input: String,
    recognizer_output: String,
    /// Whether the recogniser takes several faces in one run (its batch dimension is dynamic).
    batched: bool,
    dimensions: usize,
}

impl OnnxFaces {
    /// Puts the two models' sessions together, checking that they have the inputs and outputs
    /// the family's decoding needs.
    pub fn new(
        family: ModelFamily,
        detector: SessionPool,
        detector_name: &str,
        recognizer: SessionPool,
        recognizer_name: &str,
    ) -> Result<Self, FaceError> {
        let det_err = |reason: String| FaceError::ModelSignature {
            model: detector_name.to_string(),
            family,
            role: "detector",
            reason,
        };
        let rec_err = |reason: String| FaceError::ModelSignature {
            model: recognizer_name.to_string(),
            family,
            role: "recogniser",
            reason,
        };
        let detector_input = detector
            .input_names()
            .first()
            .cloned()
            .ok_or_else(|| det_err("no inputs".to_string()))?;
        let shape = detector
            .with(|s| input_shape(s))
            .ok_or_else(|| det_err("its input is not a tensor".to_string()))?;
        if shape.len() != 4 || shape[1].is_some_and(|c| c != 3) {
            return Err(det_err(format!(
                "input {detector_input} is not N x 3 x H x W: {shape:?}"
            )));
        }
        let det_dynamic = shape[2].is_none() && shape[3].is_none();
        let det_height = shape[2].unwrap_or(DEFAULT_DETECTOR_SIZE);
        let det_width = shape[3].unwrap_or(DEFAULT_DETECTOR_SIZE);
        if det_width % 32 != 0 || det_height % 32 != 0 {
            return Err(det_err(format!(
                "input {det_width}x{det_height} is not a multiple of the largest stride, 32"
            )));
        }
        let outputs = detector.output_names();
        let detector_outputs = match family {
            ModelFamily::YunetSface => STRIDES
                .iter()
                .map(|s| {
                    let names = ["cls", "obj", "bbox", "kps"].map(|h| format!("{h}_{s}"));
                    for n in &names {
                        if !outputs.contains(n) {
                            return Err(det_err(format!(
                                "no output named {n} (outputs: {})",
                                outputs.join(", ")
                            )));
                        }
                    }
                    Ok(names.map(Some))
                })
                .collect::<Result<Vec<_>, _>>()?,
            ModelFamily::ScrfdArcface => {
                if outputs.len() != 9 {
                    return Err(det_err(format!(
                        "expected 9 outputs (scores, boxes, landmarks at 3 strides), found {}",
                        outputs.len()
                    )));
                }
                (0..STRIDES.len())
                    .map(|i| {
                        [
                            Some(outputs[i].clone()),
                            None,
                            Some(outputs[i + 3].clone()),
                            Some(outputs[i + 6].clone()),
                        ]
                    })
                    .collect()
            }
        };

        // SFace's file lists its weights as graph inputs too (they have initialisers, so they
        // need no value): the image is the first input, and only it is fed.
        let recognizer_input = recognizer
            .input_names()
            .first()
            .cloned()
            .ok_or_else(|| rec_err("no inputs".to_string()))?;
        let rshape = recognizer
            .with(|s| input_shape(s))
            .ok_or_else(|| rec_err("its input is not a tensor".to_string()))?;
        let face = Some(ALIGNED_SIZE as usize);
        if rshape.len() != 4
            || rshape[1].is_some_and(|c| c != 3)
            || rshape[2].is_some_and(|d| Some(d) != face)
            || rshape[3].is_some_and(|d| Some(d) != face)
        {
            return Err(rec_err(format!(
                "input {recognizer_input} is not N x 3 x 112 x 112: {rshape:?}"
            )));
        }
        // A recogniser whose batch dimension is dynamic (ArcFace exports, and SFace as the setup
        // repair leaves it) embeds all faces of a photo in one run; one fixed at 1 (SFace as
        // shipped) runs them one by one.
        let batched = rshape[0] != Some(1);
        let recognizer_output = recognizer
            .output_names()
            .first()
            .cloned()
            .ok_or_else(|| rec_err("no outputs".to_string()))?;
        let declared = recognizer.with(|s| output_last_dim(s, &recognizer_output));
        let mut faces = OnnxFaces {
            family,
            resample: Resample::Bilinear,
            detector,
            detector_name: detector_name.to_string(),
            detector_input,
            detector_outputs,
            det_width,
            det_height,
            det_dynamic,
            input: DetectorInput::Letterbox,
            recognizer,
            recognizer_name: recognizer_name.to_string(),
            recognizer_input,
            recognizer_output,
            batched,
            dimensions: 0,
        };
        faces.dimensions = match declared {
            Some(d) => d,
            None => {
                let probe = RgbImage::new(ALIGNED_SIZE, ALIGNED_SIZE);
                faces.embed_aligned(&[&probe])?[0].len()
            }
        };
        Ok(faces)
    }

    /// Sets how photos are resampled to the detector input (antialiased bilinear by default).
    pub fn with_resample(mut self, resample: Resample) -> Self {
        self.resample = resample;
        self
    }

    /// Sets what the detector runs on (the letterbox until set; `init` sets the configured one).
    pub fn with_detector_input(mut self, input: DetectorInput) -> Self {
        self.input = input;
        self
    }

    /// The cap on the detector input's long side when YuNet runs at the photo's own size, or
    /// `None` when every photo is letterboxed into the detector's fixed input.
    pub fn native_max_side(&self) -> Option<u32> {
        match self.input {
            DetectorInput::Native { max_side }
                if self.det_dynamic && self.family == ModelFamily::YunetSface =>
            {
                Some(max_side)
            }
            _ => None,
        }
    }

    /// The detector's input for a `width` × `height` photo: (content width, content height,
    /// canvas width, canvas height). At native size the content is the photo (shrunk so its long
    /// side is at most the cap, aspect kept, sides rounded) and the canvas that rounded up to a
    /// multiple of 32, as OpenCV's `FaceDetectorYN` pads; otherwise the fixed letterbox canvas.
    pub fn detector_input_size(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let (dw, dh) = (self.det_width as u32, self.det_height as u32);
        let Some(cap) = self.native_max_side() else {
            return (dw, dh, dw, dh);
        };
        let long = width.max(height).max(1);
        let (cw, ch) = if long <= cap {
            (width, height)
        } else {
            let s = f64::from(cap) / f64::from(long);
            let side = |v: u32| ((f64::from(v) * s).round() as u32).clamp(1, cap);
            (side(width), side(height))
        };
        let pad = |v: u32| v.max(1).div_ceil(32) * 32;
        (cw, ch, pad(cw), pad(ch))
    }

    pub fn family(&self) -> ModelFamily {
        self.family
    }

    /// Length of each embedding (128 for SFace, 512 for ArcFace R50).
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Whether all faces of a photo go through the recogniser in one run.
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// The detector's input size, width × height.
    pub fn detector_size(&self) -> (usize, usize) {
        (self.det_width, self.det_height)
    }

    /// Detects faces, in the photo's coordinates, best first, after NMS, the size filter and
    /// the cap on their number.
    pub fn detect(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, FaceError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(FaceError::EmptyImage {
                width: image.width(),
                height: image.height(),
            });
        }
        // Top-left with black padding, sized by each reference's own rounding, so mapping back is
        // a plain division by the scale, exactly as in both references.
        let letterbox = LetterboxOptions {
            anchor: Anchor::TopLeft,
            resample: self.resample,
            fit: match self.family {
                ModelFamily::YunetSface => Fit::Round,
                ModelFamily::ScrfdArcface => Fit::InsightFace,
            },
            ..LetterboxOptions::default()
        };
        let (cw, ch, pw, ph) = self.detector_input_size(image.width(), image.height());
        let (canvas, scale) = if self.native_max_side().is_none() {
            let (canvas, boxed) = letterbox_with(image, pw, ph, &letterbox);
            (canvas, boxed.scale)
        } else {
            // The photo (or its shrunk copy: the shared letterbox with the canvas exactly the
            // content's size) at the top-left of a zero canvas rounded up to a multiple of 32.
            let shrunk = (cw, ch) != image.dimensions();
            let content = shrunk.then(|| letterbox_with(image, cw, ch, &letterbox));
            let (pixels, scale) = match &content {
                Some((c, boxed)) => (c, boxed.scale),
                None => (image, 1.0),
            };
            (pad_to(pixels, pw, ph), scale)
        };
        let candidates = self.detect_letterboxed(&canvas, options.min_score)?;
        let kept = nms::suppress(self.family, candidates, options, scale);
        Ok(kept
            .into_iter()
            .filter(|d| d.width.min(d.height) >= options.min_face_size)
            .take(options.max_faces)
            .collect())
    }

    /// Runs the detector on an image already of its input size: every candidate scoring at
    /// least `min_score`, before NMS, in the input's pixels.
    pub fn detect_letterboxed(
        &self,
        canvas: &RgbImage,
        min_score: f32,
    ) -> Result<Vec<Detection>, FaceError> {
        let infer = |reason: String| FaceError::Inference {
            model: self.detector_name.clone(),
            reason,
        };
        // A dynamic detector takes any multiple of the largest stride; a fixed one its size.
        let (w, h) = (canvas.width() as usize, canvas.height() as usize);
        let fits = if self.det_dynamic {
            w > 0 && h > 0 && w % 32 == 0 && h % 32 == 0
        } else {
            (w, h) == (self.det_width, self.det_height)
        };
        if !fits {
            return Err(infer(format!(
                "expected a {}x{} input{}, found {w}x{h}",
                self.det_width,
                self.det_height,
                if self.det_dynamic {
                    " or another multiple of 32"
                } else {
                    ""
                }
            )));
        }
        let data = detector_normalization(self.family)
            .nchw(&[canvas])
            .map_err(infer)?;
        let tensor = Tensor::from_array(data).map_err(|e| infer(e.to_string()))?;
        self.detector.with(|session| {
            let outputs = session
                .run(ort::inputs![self.detector_input.as_str() => tensor])
                .map_err(|e| infer(e.to_string()))?;
            let mut slices: Vec<[&[f32]; 4]> = Vec::with_capacity(STRIDES.len());
            for names in &self.detector_outputs {
                let mut four: [&[f32]; 4] = [&[]; 4];
                for (slot, name) in four.iter_mut().zip(names) {
                    if let Some(name) = name {
                        let value = outputs
                            .get(name.as_str())
                            .ok_or_else(|| infer(format!("no output {name}")))?;
                        *slot = value
                            .try_extract_tensor::<f32>()
                            .map_err(|e| infer(format!("output {name}: {e}")))?
                            .1;
                    }
                }
                slices.push(four);
            }
            let strides: Vec<StrideOutputs<'_>> = STRIDES
                .iter()
                .zip(&slices)
                .map(|(&stride, [score, obj, bbox, kps])| StrideOutputs {
                    stride,
                    score,
                    obj: (self.family == ModelFamily::YunetSface).then_some(*obj),
                    bbox,
                    kps,
                })
                .collect();
            let decoded = match self.family {
                ModelFamily::YunetSface => decode_yunet(&strides, w, h, min_score),
                ModelFamily::ScrfdArcface => decode_scrfd(&strides, w, h, min_score),
            };
            decoded.map_err(|source| FaceError::Decode {
                model: self.detector_name.clone(),
                source,
            })
        })
    }

    /// Unit-length embeddings of aligned 112 × 112 faces: one run for all of them when the
    /// recogniser takes batches, one run per face otherwise.
    pub fn embed_aligned(&self, faces: &[&RgbImage]) -> Result<Vec<Vec<f32>>, FaceError> {
        if self.batched {
            self.run_recognizer(faces)
        } else {
            let mut out = Vec::with_capacity(faces.len());
            for f in faces {
                out.extend(self.run_recognizer(&[f])?);
            }
            Ok(out)
        }
    }

    /// Embeds each face in its own run, whatever the model allows (batch-equals-single tests).
    pub fn embed_each(&self, faces: &[&RgbImage]) -> Result<Vec<Vec<f32>>, FaceError> {
        faces
            .iter()
            .map(|f| self.run_recognizer(&[f]).map(|mut v| v.remove(0)))
            .collect()
    }

    fn run_recognizer(&self, faces: &[&RgbImage]) -> Result<Vec<Vec<f32>>, FaceError> {
        if faces.is_empty() {
            return Ok(Vec::new());
        }
        let infer = |reason: String| FaceError::Inference {
            model: self.recognizer_name.clone(),
            reason,
        };
        let data = recognizer_normalization(self.family)
            .nchw(faces)
            .map_err(infer)?;
        let tensor = Tensor::from_array(data).map_err(|e| infer(e.to_string()))?;
        self.recognizer.with(|session| {
            let outputs = session
                .run(ort::inputs![self.recognizer_input.as_str() => tensor])
                .map_err(|e| infer(e.to_string()))?;
            let (_, values) = outputs[self.recognizer_output.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| infer(e.to_string()))?;
            if values.is_empty() || values.len() % faces.len() != 0 {
                return Err(infer(format!(
                    "{} output values for {} faces",
                    values.len(),
                    faces.len()
                )));
            }
            Ok(values
                .chunks_exact(values.len() / faces.len())
                .map(|v| {
                    let mut v = v.to_vec();
                    l2_normalize(&mut v);
                    v
                })
                .collect())
        })
    }

    /// Aligns each detection on the photo (landmarks in the photo's coordinates).
    pub fn align(&self, image: &RgbImage, dets: &[Detection]) -> Result<Vec<RgbImage>, FaceError> {
        dets.iter()
            .enumerate()
            .map(|(index, d)| {
                align_face(image, &d.landmarks).map_err(|source| FaceError::Align { index, source })
            })
            .collect()
    }
}

impl AnalyzeFaces for OnnxFaces {
    fn analyze(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<Face>, FaceError> {
        let dets = self.detect(image, options)?;
        let crops = self.align(image, &dets)?;
        let refs: Vec<&RgbImage> = crops.iter().collect();
        let embeddings = self.embed_aligned(&refs)?;
        Ok(dets
            .into_iter()
            .zip(embeddings)
            .map(|(detection, embedding)| Face {
                detection,
                embedding,
            })
            .collect())
    }

    fn model_names(&self) -> (&str, &str) {
        (&self.detector_name, &self.recognizer_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_on_the_letterbox_map_back_by_its_scale() {
        // A 400 x 200 photo letterboxed top-left into 640 x 640 (scale 1.6): a detection at
        // letterbox (320, 160) is at photo (200, 100).
        let img = RgbImage::from_pixel(400, 200, image::Rgb([200, 100, 50]));
        let options = LetterboxOptions {
            anchor: Anchor::TopLeft,
            resample: Resample::Linear,
            ..LetterboxOptions::default()
        };
        let (_, lb) = letterbox_with(&img, 640, 640, &options);
        let d = Detection {
            x: 320.0,
            y: 160.0,
            width: 16.0,
            height: 16.0,
            score: 1.0,
            landmarks: [[320.0, 160.0]; 5],
        }
        .unscaled(lb.scale);
        assert_eq!((d.x, d.y, d.width), (200.0, 100.0, 10.0));
    }

    #[test]
    fn normalisation_orders_channels_and_scales() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([10 * (x as u8 + 1), 100, 255]));
        let bgr = detector_normalization(ModelFamily::YunetSface)
            .nchw(&[&img])
            .unwrap();
        assert_eq!(
            bgr.into_raw_vec_and_offset().0,
            vec![255.0, 255.0, 100.0, 100.0, 10.0, 20.0]
        );
        let arc = recognizer_normalization(ModelFamily::ScrfdArcface)
            .nchw(&[&img, &img])
            .unwrap()
            .into_raw_vec_and_offset()
            .0;
        assert_eq!(arc.len(), 12);
        assert!((arc[0] - (10.0 - 127.5) / 127.5).abs() < 1e-6);
        assert!((arc[4] - 1.0).abs() < 1e-6);
        assert_eq!(arc[6..], arc[..6]);
    }
}
