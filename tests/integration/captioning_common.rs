//! What the two captioning parity suites (`captioning.rs` against the numpy reference,
//! `captioning_optimum.rs` against transformers) share: the reference images' `pixel_values`, one
//! ONNX Runtime for the binary, the model loaded at one intra-op thread, and a model copy with
//! generation settings patched in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use coldpath_captioning::model::{CaptionError, CaptionModel, CaptionModelConfig};
use coldpath_core::MapEnv;
use coldpath_models::{OrtRuntime, SessionConfig, Threads};
use coldpath_test_support::setup_var;
use ndarray::{Array3, Array4, Axis, stack};
use serde::Deserialize;

/// One image of a reference file, with the exact `pixel_values` [3][H][W] the reference decoded.
#[derive(Debug, Deserialize)]
pub struct RefImage {
    pub path: String,
    pub pixel_values: Vec<Vec<Vec<f32>>>,
}

impl RefImage {
    pub fn pixels(&self) -> Array3<f32> {
        let p = &self.pixel_values;
        let (c, h, w) = (p.len(), p[0].len(), p[0][0].len());
        let flat: Vec<f32> = p.iter().flatten().flatten().copied().collect();
        Array3::from_shape_vec((c, h, w), flat).expect("pixel_values shape")
    }
}

/// The named reference images as one `[batch, 3, H, W]` input.
pub fn batch(images: &BTreeMap<String, RefImage>, names: &[String]) -> Array4<f32> {
    let planes: Vec<Array3<f32>> = names.iter().map(|n| images[n].pixels()).collect();
    let views: Vec<_> = planes.iter().map(|p| p.view()).collect();
    stack(Axis(0), &views).expect("stack")
}

pub fn runtime() -> Arc<OrtRuntime> {
    static RT: OnceLock<Arc<OrtRuntime>> = OnceLock::new();
    Arc::clone(RT.get_or_init(|| {
        OrtRuntime::load(Path::new(&setup_var("ORT_DYLIB_PATH")))
            .unwrap_or_else(|e| panic!("onnx runtime: {e}"))
    }))
}

/// Loads the model in `dir` with `layout` and any `extra` settings, at one intra-op thread: the
/// references ran with one, so logits agree bitwise.
pub fn load_model(
    dir: &Path,
    layout: &str,
    extra: &[(&str, &str)],
) -> Result<CaptionModel, CaptionError> {
    let mut env = MapEnv::new([
        ("CAPTIONING_MODEL_SOURCE", dir.display().to_string()),
        ("CAPTIONING_DECODER_LAYOUT", layout.to_string()),
    ]);
    for (k, v) in extra {
        env.0.insert(k.to_string(), v.to_string());
    }
    let config = CaptionModelConfig::from_env(&env).expect("captioning config");
    let session = SessionConfig {
        intra_threads: Threads::Fixed(1),
        ..SessionConfig::default()
    };
    CaptionModel::load(&config, dir, &runtime(), &session)
}

/// A copy of the model files in `dir` with `overrides` merged into its generation_config.json.
pub fn with_generation(
    dir: &Path,
    overrides: &serde_json::Map<String, serde_json::Value>,
) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(dir).expect("model dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, copy.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let gen_path = copy.path().join("generation_config.json");
    let mut generation: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&gen_path).expect("read"))
            .expect("generation_config.json");
    generation.extend(overrides.clone());
    std::fs::write(&gen_path, serde_json::to_string(&generation).expect("json")).expect("write");
    copy
}
