//! The faces engine: detect, align, recognise. A photo reference in, its faces out; it knows
//! nothing of Lambda, S3 events or HTTP, which its hosts (the `faces` Lambda function, the
//! always-on server) bring.
//!
//! For each photo the engine finds every face with five landmarks, aligns each face
//! onto the standard ArcFace five-point template (112 × 112), embeds it with a face recogniser,
//! and answers the faces with their embeddings. It shares the embeddings function's warm placement:
//! the models load once at init (ONNX Runtime, both sessions, a warm-up photo) and every request
//! after that is pure inference.
//!
//! The default models are OpenCV Zoo's YuNet and SFace, decoded exactly as OpenCV's own
//! `FaceDetectorYN` / `FaceRecognizerSF` do; insightface's SCRFD + ArcFace (Immich's
//! `buffalo_l`) are the other family. YuNet's ONNX input is fixed at 640 × 640, so every photo is
//! letterboxed (aspect kept, top-left, black padding) to that size and detections are mapped back
//! to the photo's own pixels; alignment then cuts faces from the full-resolution photo.
//!
//! The model parts (both sessions behind `AnalyzeFaces`, `FacesConfig`, the service and init)
//! sit behind the default `onnx` feature. Without it the crate is the request and response
//! (`request`, with `Face` and `Detection`), the detection settings, and the decode, NMS and
//! alignment arithmetic, with no ONNX Runtime in the build: the fuzz targets take it that way.

pub mod align;
pub mod config;
pub mod detect;
pub mod nms;
#[cfg(feature = "onnx")]
pub mod pipeline;
pub mod request;
#[cfg(feature = "onnx")]
pub mod service;

#[cfg(feature = "onnx")]
pub use config::FacesConfig;
pub use config::{DetectOptions, DetectorInput, ModelFamily};
pub use detect::Detection;
#[cfg(feature = "onnx")]
pub use pipeline::{AnalyzeFaces, FaceError, OnnxFaces};
pub use request::Face;
#[cfg(feature = "onnx")]
pub use service::{FacesError, FacesService, InitError, init, init_faces};
