//! The faces function's configuration, read once from the environment at start. The detection
//! settings and model family are plain types a request needs; [`FacesConfig`], which names the
//! models and their sessions, is part of the `onnx` feature.

use std::fmt;
use std::str::FromStr;

#[cfg(feature = "onnx")]
use {
    coldpath_core::config::{self, ConfigError, EnvSource},
    coldpath_core::contract::{self, EnvVar},
    coldpath_image::{CodecPaths, ImageLimits, Resample},
    coldpath_models::{ModelKind, ModelSpec, OrtRuntime, SessionConfig},
    coldpath_runtime::metrics::MetricsMode,
    std::path::PathBuf,
};

/// Files each model directory must hold.
pub const MODEL_FILES: [&str; 1] = ["model.onnx"];

/// Which detector/recogniser pair runs; it decides pre-processing and output decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// OpenCV Zoo's YuNet (2023mar) detector and SFace (2021dec) recogniser, 128-d embeddings.
    YunetSface,
    /// insightface `buffalo_l` as Immich ships it: SCRFD-10G detector, ArcFace R50, 512-d.
    ScrfdArcface,
}

impl ModelFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::YunetSface => "yunet-sface",
            ModelFamily::ScrfdArcface => "scrfd-arcface",
        }
    }

    /// Model names and bundled directories used when `FACES_*_NAME` / `_SOURCE` are unset.
    #[cfg(feature = "onnx")]
    fn default_models(self) -> [(&'static str, &'static str); 2] {
        match self {
            ModelFamily::YunetSface => [
                ("yunet-2023mar-int8bq", "/opt/models/yunet-2023mar-int8bq"),
                ("sface-2021dec-int8bq", "/opt/models/sface-2021dec-int8bq"),
            ],
            ModelFamily::ScrfdArcface => [
                ("buffalo_l-scrfd-10g", "/opt/models/buffalo_l/detection"),
                ("buffalo_l-arcface-r50", "/opt/models/buffalo_l/recognition"),
            ],
        }
    }

    /// YuNet: score 0.6, NMS 0.3 (OpenCV's sample's NMS). 0.6 was chosen on the group and sample
    /// photos at native size (`tests/fixtures/faces/group/opencv_group_reference.json`): every
    /// threshold from 0.4 to 0.8 finds all 41 real faces and nothing else (the lowest real face
    /// scores 0.835, the highest non-face 0.351), while OpenCV's sample's 0.9 misses 2 of 41 (a
    /// 422 px face at 0.835 and the cameraman in grey.png at 0.894); 0.6 is the middle of that
    /// gap and the template's `FacesMinScore`. insightface's SCRFD uses its own 0.5 and 0.4.
    #[cfg(feature = "onnx")]
    fn default_thresholds(self) -> (f32, f32) {
        match self {
            ModelFamily::YunetSface => (0.6, 0.3),
            ModelFamily::ScrfdArcface => (0.5, 0.4),
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelFamily {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "yunet-sface" => Ok(ModelFamily::YunetSface),
            "scrfd-arcface" => Ok(ModelFamily::ScrfdArcface),
            _ => Err(()),
        }
    }
}

/// What the detector runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorInput {
    /// The photo at its own size (as OpenCV's `FaceDetectorYN` runs it), shrunk (aspect kept)
    /// only when its long side exceeds `max_side`, zero-padded right and bottom to a multiple of
    /// the largest stride (32). Needs a detector with a dynamic input size (the repaired YuNet);
    /// a fixed-size detector, and the SCRFD family (whose reference letterboxes), letterbox.
    Native { max_side: u32 },
    /// The photo letterboxed into the detector's fixed input (640 × 640 when dynamic).
    Letterbox,
}

/// The default cap on the long side of the detector's input: a 12-megapixel phone photo
/// (4000 × 3000) is still detected at its own size, which is what OpenCV's answer is; any
/// shrink moves YuNet's landmarks by several percent of the face (BENCHMARKS.md has the cost
/// curve and the accuracy at 1920 and 2560). Larger photos are shrunk to this long side.
pub const DEFAULT_DETECTOR_MAX_SIDE: u32 = 4096;

/// Detection settings; `min_score` and `max_faces` can be narrowed per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectOptions {
    /// Faces scoring below this are dropped (before NMS, as the references do).
    pub min_score: f32,
    /// NMS drops a face overlapping a better one by more than this IoU.
    pub nms_iou: f32,
    /// At most this many faces per photo, best scores first.
    pub max_faces: usize,
    /// Faces whose box is narrower or shorter than this, in the photo's own pixels, are dropped;
    /// 0 keeps every face the detector finds.
    pub min_face_size: f32,
}

#[cfg(feature = "onnx")]
#[derive(Debug, Clone, PartialEq)]
pub struct FacesConfig {
    pub family: ModelFamily,
    pub detector: ModelSpec,
    pub recognizer: ModelSpec,
    pub ort_library: PathBuf,
    pub session: SessionConfig,
    pub detect: DetectOptions,
    /// How photos are resampled to the detector's 640 × 640 input: `antialias` (default:
    /// bilinear widened when shrinking) or `linear` (OpenCV `INTER_LINEAR`, what the reference
    /// scripts do; aliases when shrinking a large photo).
    pub resample: Resample,
    /// `FACES_DETECTOR_INPUT` (`native`, the default, or `letterbox`) and
    /// `FACES_DETECTOR_MAX_SIDE` (default 4096, a multiple of 32).
    pub detector_input: DetectorInput,
    pub image_limits: ImageLimits,
    /// `COLDPATH_LIBHEIF_PATH` / `COLDPATH_LIBAVIF_PATH`: the HEIC and AVIF decoders.
    pub image_codecs: CodecPaths,
    /// Run one photo through both models at init so the first request does not pay ONNX
    /// Runtime's first-run cost.
    pub warmup: bool,
    /// `COLDPATH_METRICS`: whether metric lines (CloudWatch EMF, on stderr) are written.
    pub metrics: MetricsMode,
    /// Where remote (`s3://`) models are cached; Lambda only allows writes under /tmp.
    pub cache_dir: PathBuf,
}

/// A float setting in `[lo, hi]`, or `default` when unset.
#[cfg(feature = "onnx")]
fn float_in(
    env: &impl EnvSource,
    name: &str,
    (lo, hi): (f32, f32),
    default: f32,
) -> Result<f32, ConfigError> {
    let expected = format!("a number from {lo} to {hi}");
    let v: f32 = config::parse_or(env, name, &expected, default)?;
    if !(lo..=hi).contains(&v) {
        return Err(ConfigError::invalid(name, expected, v.to_string()));
    }
    Ok(v)
}

/// `FACES_DETECTOR_MAX_SIDE`: a multiple of 32 from 32 to 8192.
#[cfg(feature = "onnx")]
fn max_side(env: &impl EnvSource) -> Result<u32, ConfigError> {
    let expected = "a multiple of 32 from 32 to 8192";
    let v: u32 = config::parse_or(
        env,
        "FACES_DETECTOR_MAX_SIDE",
        expected,
        DEFAULT_DETECTOR_MAX_SIDE,
    )?;
    if v == 0 || !v.is_multiple_of(32) || v > 8192 {
        return Err(ConfigError::invalid(
            "FACES_DETECTOR_MAX_SIDE",
            expected,
            v.to_string(),
        ));
    }
    Ok(v)
}

#[cfg(feature = "onnx")]
impl FacesConfig {
    /// The variables [`FacesConfig::from_env`] reads itself; [`FacesConfig::env`] adds those of
    /// the readers it calls.
    pub const ENV: &'static [EnvVar] = &[
        EnvVar::optional("FACES_MODEL_FAMILY", "yunet-sface or scrfd-arcface"),
        EnvVar::optional("FACES_DETECTOR_NAME", "the detector's name"),
        EnvVar::optional(
            "FACES_DETECTOR_SOURCE",
            "the detector directory or s3:// prefix",
        ),
        EnvVar::optional(
            "FACES_DETECTOR_SHA256",
            "file=sha256 pins, required for s3://",
        ),
        EnvVar::optional("FACES_RECOGNIZER_NAME", "the recogniser's name"),
        EnvVar::optional(
            "FACES_RECOGNIZER_SOURCE",
            "the recogniser directory or s3:// prefix",
        ),
        EnvVar::optional(
            "FACES_RECOGNIZER_SHA256",
            "file=sha256 pins, required for s3://",
        ),
        EnvVar::optional("FACES_MIN_SCORE", "the lowest detection score kept"),
        EnvVar::optional("FACES_NMS_IOU", "the NMS overlap threshold"),
        EnvVar::optional("FACES_MAX_FACES", "faces per photo"),
        EnvVar::optional("FACES_MIN_FACE_SIZE", "the smallest face kept, in pixels"),
        EnvVar::optional("FACES_RESIZE", "antialias or linear"),
        EnvVar::optional("FACES_DETECTOR_INPUT", "native or letterbox"),
        EnvVar::optional(
            "FACES_DETECTOR_MAX_SIDE",
            "the detector input's longest side",
        ),
        EnvVar::optional("FACES_WARMUP", "one photo through both models at init"),
        EnvVar::optional("COLDPATH_CACHE_DIR", "where s3:// models are cached"),
    ];

    /// Every variable [`FacesConfig::from_env`] reads, its own and its readers'.
    pub fn env() -> Vec<EnvVar> {
        contract::union(&[
            Self::ENV,
            SessionConfig::ENV,
            OrtRuntime::ENV,
            ImageLimits::ENV,
            CodecPaths::ENV,
            MetricsMode::ENV,
        ])
    }

    pub fn from_env(env: &impl EnvSource) -> Result<Self, ConfigError> {
        let family = match config::get(env, "FACES_MODEL_FAMILY") {
            None => ModelFamily::YunetSface,
            Some(f) => f.parse().map_err(|()| {
                ConfigError::invalid("FACES_MODEL_FAMILY", "yunet-sface or scrfd-arcface", f)
            })?,
        };
        let [(det_name, det_source), (rec_name, rec_source)] = family.default_models();
        let detector = ModelSpec::from_env(
            env,
            "FACES_DETECTOR",
            ModelKind::FaceDetector,
            det_name,
            det_source,
            &MODEL_FILES,
        )?;
        let recognizer = ModelSpec::from_env(
            env,
            "FACES_RECOGNIZER",
            ModelKind::FaceRecognizer,
            rec_name,
            rec_source,
            &MODEL_FILES,
        )?;
        let (score, nms) = family.default_thresholds();
        Ok(FacesConfig {
            family,
            detector,
            recognizer,
            ort_library: OrtRuntime::library_from_env(env),
            session: SessionConfig::from_env_with(env, &session_defaults())?,
            detect: DetectOptions {
                min_score: float_in(env, "FACES_MIN_SCORE", (0.0, 1.0), score)?,
                nms_iou: float_in(env, "FACES_NMS_IOU", (0.0, 1.0), nms)?,
                max_faces: config::positive_or(env, "FACES_MAX_FACES", 100)?,
                min_face_size: float_in(env, "FACES_MIN_FACE_SIZE", (0.0, 1e6), 0.0)?,
            },
            resample: match config::get(env, "FACES_RESIZE").as_deref() {
                None => Resample::Bilinear,
                Some(r) if r.eq_ignore_ascii_case("antialias") => Resample::Bilinear,
                Some(r) if r.eq_ignore_ascii_case("linear") => Resample::Linear,
                Some(r) => {
                    return Err(ConfigError::invalid(
                        "FACES_RESIZE",
                        "antialias or linear",
                        r,
                    ));
                }
            },
            detector_input: match config::get(env, "FACES_DETECTOR_INPUT").as_deref() {
                None => DetectorInput::Native {
                    max_side: max_side(env)?,
                },
                Some(v) if v.eq_ignore_ascii_case("native") => DetectorInput::Native {
                    max_side: max_side(env)?,
                },
                Some(v) if v.eq_ignore_ascii_case("letterbox") => DetectorInput::Letterbox,
                Some(v) => {
                    return Err(ConfigError::invalid(
                        "FACES_DETECTOR_INPUT",
                        "native or letterbox",
                        v,
                    ));
                }
            },
            image_limits: ImageLimits::from_env(env)?,
            image_codecs: CodecPaths::from_env(env)?,
            warmup: config::bool_or(env, "FACES_WARMUP", true)?,
            metrics: MetricsMode::from_env(env)?,
            cache_dir: coldpath_models::cache_dir_from_env(env),
        })
    }
}

/// Faces' own session defaults, chosen by `benches/faces.rs` (see BENCHMARKS.md): the int8bq
/// convolutions run faster dequantised once at load than through QDQ fusion, and the detector's
/// and recogniser's thread pools must not spin against each other on Lambda's few vCPUs.
/// `COLDPATH_QDQ_FUSION` / `COLDPATH_THREAD_SPINNING` still override them.
#[cfg(feature = "onnx")]
fn session_defaults() -> SessionConfig {
    SessionConfig {
        qdq_fusion: false,
        thread_spinning: false,
        ..SessionConfig::default()
    }
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::*;
    use coldpath_core::MapEnv;
    use coldpath_models::ModelSource;

    /// The deploy contract: `from_env` reads exactly [`FacesConfig::env`].
    #[test]
    fn from_env_reads_exactly_its_list() {
        let env = coldpath_core::RecordingEnv::new(MapEnv::new([
            ("COLDPATH_INTRA_THREADS", "2"),
            ("COLDPATH_PROVIDER", "cuda"),
        ]));
        FacesConfig::from_env(&env).unwrap();
        let difference = env.difference(&[&FacesConfig::env()]);
        assert!(difference.is_empty(), "{difference:?}");
    }

    #[test]
    fn defaults_are_yunet_sface_at_the_measured_threshold() {
        let c = FacesConfig::from_env(&MapEnv::default()).unwrap();
        assert_eq!(c.family, ModelFamily::YunetSface);
        assert_eq!(c.detector.name, "yunet-2023mar-int8bq");
        assert_eq!(c.detector.kind, ModelKind::FaceDetector);
        assert_eq!(c.recognizer.kind, ModelKind::FaceRecognizer);
        assert_eq!(
            c.recognizer.source,
            ModelSource::Local("/opt/models/sface-2021dec-int8bq".into())
        );
        assert_eq!(
            c.detect,
            DetectOptions {
                min_score: 0.6,
                nms_iou: 0.3,
                max_faces: 100,
                min_face_size: 0.0
            }
        );
        assert!(c.warmup);
        assert_eq!(c.resample, Resample::Bilinear);
        assert_eq!(
            c.detector_input,
            DetectorInput::Native {
                max_side: DEFAULT_DETECTOR_MAX_SIDE
            }
        );
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/coldpath"));
        assert_eq!(c.image_limits, ImageLimits::default());
    }

    #[test]
    fn detector_input_is_native_up_to_a_cap_or_the_letterbox() {
        let c = FacesConfig::from_env(&MapEnv::new([("FACES_DETECTOR_MAX_SIDE", "1920")])).unwrap();
        assert_eq!(c.detector_input, DetectorInput::Native { max_side: 1920 });
        let c =
            FacesConfig::from_env(&MapEnv::new([("FACES_DETECTOR_INPUT", "Letterbox")])).unwrap();
        assert_eq!(c.detector_input, DetectorInput::Letterbox);
    }

    #[test]
    fn scrfd_family_has_its_own_defaults_and_overrides_apply() {
        let env = MapEnv::new([
            ("FACES_MODEL_FAMILY", "SCRFD-ArcFace"),
            ("FACES_DETECTOR_SOURCE", "s3://models/scrfd"),
            ("FACES_MAX_FACES", "7"),
            ("FACES_MIN_FACE_SIZE", "40"),
            ("FACES_NMS_IOU", "0.45"),
            ("FACES_RESIZE", "Linear"),
        ]);
        let c = FacesConfig::from_env(&env).unwrap();
        assert_eq!(c.family, ModelFamily::ScrfdArcface);
        assert_eq!(c.detector.name, "buffalo_l-scrfd-10g");
        assert!(matches!(c.detector.source, ModelSource::S3 { .. }));
        assert_eq!(c.detect.min_score, 0.5);
        assert_eq!(c.detect.nms_iou, 0.45);
        assert_eq!(c.detect.max_faces, 7);
        assert_eq!(c.detect.min_face_size, 40.0);
        assert_eq!(c.resample, Resample::Linear);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("FACES_MODEL_FAMILY", "mtcnn"),
            ("FACES_MIN_SCORE", "1.5"),
            ("FACES_MIN_SCORE", "high"),
            ("FACES_NMS_IOU", "-0.1"),
            ("FACES_MAX_FACES", "0"),
            ("FACES_MIN_FACE_SIZE", "-3"),
            ("FACES_WARMUP", "maybe"),
            ("FACES_RESIZE", "cubic"),
            ("FACES_DETECTOR_INPUT", "tiles"),
            ("FACES_DETECTOR_MAX_SIDE", "1000"),
            ("FACES_DETECTOR_MAX_SIDE", "0"),
            ("FACES_DETECTOR_SHA256", "model.onnx=xyz"),
        ] {
            let err = FacesConfig::from_env(&MapEnv::new([(k, v)])).unwrap_err();
            assert!(err.to_string().starts_with(k), "{k}={v}: {err}");
        }
    }
}
