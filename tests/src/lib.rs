//! Helpers shared by coldpath's integration tests that need the function crates: settings for
//! the setup's models, the committed reference fixtures and a process-wide embeddings service.
//! Paths, setup variables and the moto server are in `coldpath-test-support`, which the function
//! crates' own tests use too.

use std::sync::{Arc, OnceLock};

use coldpath_core::MapEnv;
use coldpath_embeddings::{EmbeddingsConfig, EmbeddingsService, OnnxEmbedder};
use coldpath_io::NoObjectStore;
use coldpath_test_support::{repo_root, setup_var};
use serde::Deserialize;

/// Settings for an embeddings service on the setup's model, plus `extra` overrides.
pub fn embeddings_env(extra: &[(&str, &str)]) -> MapEnv {
    let mut env = MapEnv::new([
        ("ORT_DYLIB_PATH", setup_var("ORT_DYLIB_PATH")),
        (
            "EMBEDDINGS_MODEL_SOURCE",
            setup_var("EMBEDDINGS_MODEL_SOURCE"),
        ),
        (
            "EMBEDDINGS_MODEL_SHA256",
            setup_var("EMBEDDINGS_MODEL_SHA256"),
        ),
        // The reference fixture was computed with one intra-op thread; match it so results
        // compare like for like.
        ("COLDPATH_INTRA_THREADS", "1".to_string()),
    ]);
    for (k, v) in extra {
        env.0.insert(k.to_string(), v.to_string());
    }
    env
}

/// Builds a service on its own runtime thread (tests each run their own tokio runtime, which
/// cannot block on another future).
pub fn build_service(env: &MapEnv) -> EmbeddingsService<OnnxEmbedder> {
    let config = EmbeddingsConfig::from_env(env).expect("embeddings config");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(coldpath_embeddings::init(&config, NoObjectStore))
            .map(|(service, _)| service)
            .unwrap_or_else(|e| panic!("embeddings init failed: {e}"))
    })
    .join()
    .expect("init thread")
}

/// One embeddings service on the real model for the whole test binary.
pub fn service() -> Arc<EmbeddingsService<OnnxEmbedder>> {
    static SERVICE: OnceLock<Arc<EmbeddingsService<OnnxEmbedder>>> = OnceLock::new();
    Arc::clone(SERVICE.get_or_init(|| Arc::new(build_service(&embeddings_env(&[])))))
}

/// `tests/fixtures/embeddings/reference.json`, written by `gen_embeddings_reference.py`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsReference {
    pub model_sha256: String,
    pub max_tokens: usize,
    pub texts: Vec<String>,
    pub token_counts: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
    pub paraphrases: Vec<[usize; 2]>,
    pub unrelated: Vec<[usize; 2]>,
}

pub fn embeddings_reference() -> EmbeddingsReference {
    let path = repo_root().join("tests/fixtures/embeddings/reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Settings for a faces pipeline on the setup's YuNet + SFace models, plus `extra` overrides.
pub fn faces_env(extra: &[(&str, &str)]) -> MapEnv {
    let mut env = MapEnv::new([
        ("ORT_DYLIB_PATH", setup_var("ORT_DYLIB_PATH")),
        ("FACES_DETECTOR_SOURCE", setup_var("FACES_DETECTOR_SOURCE")),
        ("FACES_DETECTOR_SHA256", setup_var("FACES_DETECTOR_SHA256")),
        (
            "FACES_RECOGNIZER_SOURCE",
            setup_var("FACES_RECOGNIZER_SOURCE"),
        ),
        (
            "FACES_RECOGNIZER_SHA256",
            setup_var("FACES_RECOGNIZER_SHA256"),
        ),
        // The references ran with one thread; match them so results compare like for like.
        ("COLDPATH_INTRA_THREADS", "1".to_string()),
        // The setup's HEIC and AVIF decoders: the codecs load once per process, so every init
        // in this test binary must name the same ones.
        ("COLDPATH_LIBHEIF_PATH", setup_var("COLDPATH_LIBHEIF_PATH")),
        ("COLDPATH_LIBAVIF_PATH", setup_var("COLDPATH_LIBAVIF_PATH")),
    ]);
    for (k, v) in extra {
        env.0.insert(k.to_string(), v.to_string());
    }
    env
}

/// Settings for the scrfd-arcface family on the synthetic insightface-shaped models that
/// `tests/fixtures/faces/gen_insightface_models.py` wrote.
pub fn insightface_env() -> MapEnv {
    let dir = repo_root().join("tests/fixtures/faces/insightface");
    let mut env = faces_env(&[]);
    env.0.remove("FACES_DETECTOR_SHA256");
    env.0.remove("FACES_RECOGNIZER_SHA256");
    for (k, v) in [
        ("FACES_MODEL_FAMILY", "scrfd-arcface".to_string()),
        (
            "FACES_DETECTOR_SOURCE",
            dir.join("detection").display().to_string(),
        ),
        (
            "FACES_RECOGNIZER_SOURCE",
            dir.join("recognition").display().to_string(),
        ),
    ] {
        env.0.insert(k.to_string(), v);
    }
    env
}

/// One face as the faces references write it: box `[x, y, w, h]`, score, five landmarks and a
/// unit-length embedding, in the upright photo's pixels.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceFace {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
    pub embedding: Vec<f32>,
}

#[derive(Debug, Deserialize)]
pub struct OpenCvPhoto {
    pub file: String,
    pub width: u32,
    pub height: u32,
    /// OpenCV's API at the photo's native size.
    pub faces: Vec<ReferenceFace>,
    /// OpenCV on the photo letterboxed to 640 × 640 (the function's input recipe).
    pub faces_letterbox640: Vec<ReferenceFace>,
    /// The same input through onnxruntime, decoded per OPENCV_NOTES.md.
    pub faces_letterbox640_ort: Vec<ReferenceFace>,
    /// As `faces_letterbox640_ort`, but shrunk with `cv2.INTER_AREA` (antialiased).
    pub faces_letterbox640_ort_area: Vec<ReferenceFace>,
}

#[derive(Debug, Deserialize)]
pub struct OpenCvPair {
    pub a: [usize; 2],
    pub b: [usize; 2],
    pub cosine: f32,
    pub same: bool,
}

/// `tests/fixtures/faces/opencv_reference.json`, written by `gen_opencv_reference.py`.
#[derive(Debug, Deserialize)]
pub struct OpenCvReference {
    pub detector_sha256: String,
    pub recognizer_sha256: String,
    pub score_threshold: f32,
    pub cosine_threshold: f32,
    pub photos: Vec<OpenCvPhoto>,
    pub pairs: Vec<OpenCvPair>,
}

pub fn opencv_reference() -> OpenCvReference {
    read_json("tests/fixtures/faces/opencv_reference.json")
}

#[derive(Debug, Deserialize)]
pub struct InsightFacePhoto {
    pub file: String,
    pub width: u32,
    pub height: u32,
    pub faces: Vec<ReferenceFace>,
}

#[derive(Debug, Deserialize)]
pub struct InsightFaceDetector {
    pub score_threshold: f32,
    pub nms_threshold: f32,
}

/// `tests/fixtures/faces/insightface/reference.json`, written by `gen_insightface_models.py`.
#[derive(Debug, Deserialize)]
pub struct InsightFaceReference {
    pub detector: InsightFaceDetector,
    pub photos: Vec<InsightFacePhoto>,
}

pub fn insightface_reference() -> InsightFaceReference {
    read_json("tests/fixtures/faces/insightface/reference.json")
}

fn read_json<T: serde::de::DeserializeOwned>(rel: &str) -> T {
    let path = repo_root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads the setup's HEIC and AVIF decoders (`COLDPATH_LIBHEIF_PATH`, `COLDPATH_LIBAVIF_PATH`)
/// for this test process, and fails loudly if either is missing: a test of those formats must
/// not pass by refusing them.
pub fn image_codecs() {
    let paths = coldpath_image::CodecPaths {
        libheif: setup_var("COLDPATH_LIBHEIF_PATH").into(),
        libavif: setup_var("COLDPATH_LIBAVIF_PATH").into(),
        ..Default::default()
    };
    let status = coldpath_image::load_native_codecs(&paths);
    assert!(
        status.heic.is_ok() && status.avif.is_ok(),
        "HEIC/AVIF decoders: {status:?}"
    );
}

/// One file of `shared/image/fixtures/heif/manifest.json` (written by `gen_heif_avif.py`).
#[derive(Debug, Clone, Deserialize)]
pub struct HeifFixture {
    pub file: String,
    pub format: String,
    /// The JPEG it was encoded from, repo-relative.
    pub source: Option<String>,
    /// `ok`, `too_many_pixels` or `undecodable`.
    pub expect: String,
    /// Upright size, for `ok` files.
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub bit_depth: Option<u32>,
    /// `none`, `irot1`, `imir0`, `grid3x2`, ...
    pub transform: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HeifManifest {
    pub files: Vec<HeifFixture>,
}

pub fn heif_fixtures() -> HeifManifest {
    read_json("shared/image/fixtures/heif/manifest.json")
}
