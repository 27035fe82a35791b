//! The engine against open_clip, on both architectures.
//!
//! The models are the tiny random-weight ViT-B-32 (OpenAI CLIP) and ViT-B-16-SigLIP that
//! `tests/fixtures/clip/gen_clip_fixtures.py` built with open_clip and exported in Immich's layout
//! (the CLIP one as Immich's current exporter does, the SigLIP one as its earlier exporter did);
//! `reference.json` holds what open_clip itself gave for them in torch: token ids, text and image
//! embeddings, and its preprocessed image tensors (as 8-bit PNGs in `preprocessed/`, plus sampled
//! float values). Tolerances: cosine ≥ 0.9999 per vector; preprocessed pixels within one 8-bit
//! level; token ids equal.

use std::path::PathBuf;
use std::sync::OnceLock;

use coldpath_clip::{
    ClipConfig, ClipEngine, ClipTokenizer, ExporterGeneration, ModelLayout, Towers, init,
};
use coldpath_core::{Classify, ErrorType, MapEnv};
use coldpath_image::{CodecPaths, ImageLimits, Isolation, RgbImage, decode, load_native_codecs};
use coldpath_io::NoObjectStore;
use coldpath_models::{OrtRuntime, SessionConfig, SessionPool};
use coldpath_test_support::{repo_root, setup_var};
use serde_json::Value;

const MODELS: [&str; 2] = ["vit-b-32-tiny", "siglip-b-16-tiny"];
const MIN_COSINE: f32 = 0.9999;

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/clip")
}

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn model_ref(key: &str) -> &'static Value {
    &reference()["models"][key]
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn runtime() -> std::sync::Arc<OrtRuntime> {
    OrtRuntime::load(&PathBuf::from(setup_var("ORT_DYLIB_PATH"))).unwrap()
}

/// The engine over a fixture directory, built from its parts (the init path has its own test).
fn engine(key: &str) -> &'static ClipEngine {
    static ENGINES: OnceLock<Vec<(String, ClipEngine)>> = OnceLock::new();
    let all = ENGINES.get_or_init(|| {
        let rt = runtime();
        let config = SessionConfig::default();
        MODELS
            .iter()
            .map(|key| {
                let layout = ModelLayout::read(&fixtures().join(key)).unwrap();
                let tokenizer = ClipTokenizer::load(
                    &layout.path("textual/tokenizer.json"),
                    layout.text.rules,
                    layout.text.pad_token.as_deref(),
                )
                .unwrap();
                let pool = |file: &str| {
                    let (s, _) = rt
                        .build_session(&format!("{key}/{file}"), &layout.path(file), &config)
                        .unwrap();
                    SessionPool::new(vec![s]).unwrap()
                };
                let engine = ClipEngine::new(
                    *key,
                    &layout,
                    tokenizer,
                    pool("textual/model.onnx"),
                    pool("visual/model.onnx"),
                    4,
                )
                .unwrap();
                (key.to_string(), engine)
            })
            .collect()
    });
    &all.iter().find(|(k, _)| k == key).unwrap().1
}

/// A photo decoded as the hosts decode it: EXIF (or `irot`/`imir`) orientation applied, RGB8.
/// `file` is a sample photo's name, or `inputs/<name>` for the fixture's lossless copies.
fn photo(file: &str) -> RgbImage {
    let codecs = load_native_codecs(&CodecPaths {
        libheif: setup_var("COLDPATH_LIBHEIF_PATH").into(),
        libavif: setup_var("COLDPATH_LIBAVIF_PATH").into(),
        isolation: Isolation {
            enabled: false,
            ..Isolation::default()
        },
    });
    assert!(
        codecs.heic.is_ok() && codecs.avif.is_ok(),
        "HEIC/AVIF decoders: {codecs:?}"
    );
    let path = match file.strip_prefix("inputs/") {
        Some(_) => fixtures().join(file),
        None => repo_root().join("events/data/photos").join(file),
    };
    let bytes = std::fs::read(&path).unwrap();
    decode(&bytes, &ImageLimits::default()).unwrap().image
}

/// Level differences between two same-sized 8-bit images: the largest, the mean, and the share
/// of values more than one level apart.
fn level_diff(a: &RgbImage, b: &RgbImage) -> (u8, f64, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    let max = d.iter().copied().max().unwrap_or(0);
    let mean = d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
    let over = d.iter().filter(|&&v| v > 1).count() as f64 / d.len() as f64;
    (max, mean, over)
}

fn png(rel: &str) -> RgbImage {
    coldpath_image::image::open(fixtures().join(rel))
        .unwrap()
        .to_rgb8()
}

#[test]
fn exporter_generations_are_told_apart_by_output_name() {
    let clip = engine("vit-b-32-tiny");
    assert_eq!(model_ref("vit-b-32-tiny")["exporter_generation"], "current");
    for sig in [
        clip.text_signature().unwrap(),
        clip.vision_signature().unwrap(),
    ] {
        assert_eq!(sig.generation, ExporterGeneration::Current);
        assert_eq!(sig.output, "embedding");
        assert_eq!(sig.fixed_batch, Some(1));
    }
    let siglip = engine("siglip-b-16-tiny");
    assert_eq!(
        model_ref("siglip-b-16-tiny")["exporter_generation"],
        "earlier"
    );
    assert_eq!(siglip.text_signature().unwrap().output, "text_embedding");
    assert_eq!(siglip.vision_signature().unwrap().output, "image_embedding");
    for sig in [
        siglip.text_signature().unwrap(),
        siglip.vision_signature().unwrap(),
    ] {
        assert_eq!(sig.generation, ExporterGeneration::Earlier);
        assert_eq!(sig.fixed_batch, None);
    }
}

#[test]
fn token_ids_equal_open_clip_including_truncation() {
    for key in MODELS {
        let tokenizer = engine(key).tokenizer().unwrap();
        let texts = model_ref(key)["texts"].as_array().unwrap();
        let mut truncated = 0;
        for t in texts {
            let text = t["text"].as_str().unwrap();
            let want: Vec<u32> = t["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(want.len(), tokenizer.context_length(), "{key}");
            let got = tokenizer.encode(text).unwrap();
            assert_eq!(got, want, "{key}: ids for {text:?}");
            // The long text fills the context: no padding before the end token kept last (SigLIP
            // pads with its end token, so the one before the last is what tells).
            if want[want.len() - 2] != tokenizer.pad_id() {
                truncated += 1;
            }
        }
        assert_eq!(
            truncated, 1,
            "{key}: one reference text is longer than the context"
        );
    }
}

#[test]
fn text_embeddings_match_open_clip() {
    for key in MODELS {
        let engine = engine(key);
        let texts = model_ref(key)["texts"].as_array().unwrap();
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| t["text"].as_str().unwrap().to_string())
            .collect();
        // All at once (the SigLIP graph takes batches of 4 here, the CLIP one runs one by one).
        let vectors = engine.embed_texts(&inputs).unwrap();
        assert_eq!(vectors.len(), inputs.len());
        for (t, got) in texts.iter().zip(&vectors) {
            let want = floats(&t["embedding"]);
            assert_eq!(got.len(), engine.dimensions());
            let c = cosine(got, &want);
            assert!(c >= MIN_COSINE, "{key}: {:?}: cosine {c}", t["text"]);
            let norm = got.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{key}: norm {norm}");
        }
    }
}

/// The lossless inputs: open_clip started from exactly these pixels, so resize, crop and
/// normalisation are compared alone. Grey-scale PNG among the photos counts too.
fn same_pixels(r: &Value) -> bool {
    r["lossless"].as_bool().unwrap() || r["file"] == "grey.png"
}

#[test]
fn preprocessing_matches_open_clip_within_one_level_on_the_same_pixels() {
    for key in MODELS {
        let pre = engine(key).preprocess().unwrap();
        let std = pre.config.std;
        let refs: Vec<&Value> = model_ref(key)["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| same_pixels(r))
            .collect();
        assert_eq!(refs.len(), 4, "{key}: cat, kafka, t1 at 640x443 and grey");
        for r in refs {
            let file = r["file"].as_str().unwrap();
            let image = photo(file);
            let prepared = pre.prepare(&image);
            let want = png(r["preprocessed_png"].as_str().unwrap());
            let (max, mean, _) = level_diff(&prepared, &want);
            assert!(
                max <= 1,
                "{key}/{file}: preprocessed pixels differ from open_clip's by up to {max} levels (mean {mean:.3})"
            );

            // The float tensor: scaling and normalisation, at open_clip's own sampled values.
            let tensor = pre.tensor(&[&image]).unwrap();
            for s in r["samples"].as_array().unwrap() {
                let (c, y, x) = (
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                    s[2].as_u64().unwrap() as usize,
                );
                let want = s[3].as_f64().unwrap() as f32;
                let got = tensor[[0, c, y, x]];
                // One 8-bit level in normalised units, plus float rounding.
                let level = 1.0 / 255.0 / std[c] + 1e-5;
                assert!(
                    (got - want).abs() <= level,
                    "{key}/{file}: tensor[{c},{y},{x}] = {got}, open_clip {want}"
                );
            }
            for (c, m) in floats(&r["channel_means"]).iter().enumerate() {
                let got = tensor.index_axis(ndarray::Axis(1), c).mean().unwrap();
                assert!(
                    (got - m).abs() < 0.1 / 255.0 / std[c],
                    "{key}/{file}: channel {c} mean {got}, open_clip {m}"
                );
            }
        }
    }
}

/// JPEG (with and without EXIF orientation), HEIC and AVIF through our decoders against open_clip
/// on PIL's (libjpeg-turbo, pillow-heif's libheif, Pillow's libavif). The resize is PIL's to the
/// bit (previous test); what is left is the decoders. The JPEG decoders differ in chroma
/// upsampling and IDCT rounding: measured up to 4 levels on `cat.jpg` (colour subsampled; 2.4% of
/// values more than one level apart, mean 0.23), 2 on `group-exif6.jpg`, 1 on `kafka.jpg`; JPEGs
/// are held to max 4, mean 0.3, 3% over one level. The PNG, HEIC and AVIF came out identical
/// (0 levels) and are held to one level.
#[test]
fn photos_decode_upright_and_preprocess_close_to_open_clip() {
    for key in MODELS {
        let pre = engine(key).preprocess().unwrap();
        for r in model_ref(key)["images"].as_array().unwrap() {
            if r["lossless"].as_bool().unwrap() {
                continue;
            }
            let file = r["file"].as_str().unwrap();
            let image = photo(file);
            let upright: Vec<u64> = r["upright_size"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(
                [u64::from(image.width()), u64::from(image.height())].to_vec(),
                upright,
                "{key}/{file}: upright size (orientation applied)"
            );
            let want = png(r["preprocessed_png"].as_str().unwrap());
            let (max, mean, over) = level_diff(&pre.prepare(&image), &want);
            // PNG, HEIC and AVIF come out of the decoders exactly as PIL's (measured: 0 levels).
            let jpeg = file.ends_with(".jpg");
            let ok = if jpeg {
                max <= 4 && mean <= 0.3 && over <= 0.03
            } else {
                max <= 1
            };
            assert!(
                ok,
                "{key}/{file}: preprocessed pixels differ from open_clip's by up to {max} levels, mean {mean:.3}, {:.2}% over one level",
                over * 100.0
            );
        }
    }
}

#[test]
fn image_embeddings_match_open_clip() {
    for key in MODELS {
        let engine = engine(key);
        let refs = model_ref(key)["images"].as_array().unwrap();
        let images: Vec<RgbImage> = refs
            .iter()
            .map(|r| photo(r["file"].as_str().unwrap()))
            .collect();
        let vectors = engine.embed_images(&images).unwrap();
        for (r, got) in refs.iter().zip(&vectors) {
            let c = cosine(got, &floats(&r["embedding"]));
            assert!(c >= MIN_COSINE, "{key}/{}: cosine {c}", r["file"]);
        }
        // The photos are told apart: no two different photos come out as one.
        let max = reference()["models"][key]["max_cosine_between_photos"]
            .as_f64()
            .unwrap();
        assert!(
            max < 0.99,
            "{key}: the fixture's photos are too alike ({max})"
        );
    }
}

#[test]
fn init_builds_both_towers_and_checks_pins() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = fixtures().join("siglip-b-16-tiny");
    let ort = setup_var("ORT_DYLIB_PATH");
    let env = MapEnv::new([
        ("CLIP_MODEL_NAME", "siglip-b-16-tiny"),
        ("CLIP_MODEL_SOURCE", dir.to_str().unwrap()),
        ("ORT_DYLIB_PATH", ort.as_str()),
    ]);
    let config = ClipConfig::from_env(&env, Towers::Both).unwrap();
    let (engine, record) = rt.block_on(init(&config, NoObjectStore)).unwrap();
    assert_eq!(record.function, "clip");
    assert!(record.session_build_ms > 0.0 && record.warmup_ms > 0.0);
    assert!(record.total_ms >= record.session_build_ms + record.warmup_ms);
    assert_eq!(engine.dimensions(), 32);

    // A wrong pin on a local bundle is a load error, not a silent start.
    let wrong = "00".repeat(32);
    let pinned = MapEnv::new([
        ("CLIP_MODEL_SOURCE", dir.to_str().unwrap()),
        ("ORT_DYLIB_PATH", ort.as_str()),
        ("CLIP_MODEL_SHA256", &*format!("visual/model.onnx={wrong}")),
    ]);
    let config = ClipConfig::from_env(&pinned, Towers::Both).unwrap();
    let err = match rt.block_on(init(&config, NoObjectStore)) {
        Ok(_) => panic!("a wrong sha256 must fail init"),
        Err(e) => e,
    };
    assert_eq!(err.error_type(), ErrorType::ModelLoad, "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// A copy of a fixture model without the files `drop` names.
fn model_without(key: &str, drop: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in coldpath_clip::MODEL_FILES {
        if drop.contains(&file) {
            continue;
        }
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixtures().join(key).join(file), to).unwrap();
    }
    dir
}

/// The search host loads only the text tower and the upload host only the vision tower: each
/// starts from a model directory that lacks the other tower's graph, gives the same vectors as
/// the engine with both, and refuses the other kind of input with a typed error.
#[test]
fn each_host_loads_only_its_tower() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ort = setup_var("ORT_DYLIB_PATH");
    let key = "vit-b-32-tiny";
    let both = engine(key);
    let text_only = model_without(key, &["visual/model.onnx"]);
    let vision_only = model_without(key, &["textual/model.onnx", "textual/tokenizer.json"]);
    for (dir, towers) in [
        (text_only.path(), Towers::Text),
        (vision_only.path(), Towers::Vision),
    ] {
        let env = MapEnv::new([
            ("CLIP_MODEL_SOURCE", dir.to_str().unwrap()),
            ("ORT_DYLIB_PATH", ort.as_str()),
        ]);
        let config = ClipConfig::from_env(&env, towers).unwrap();
        let (engine, _) = rt
            .block_on(coldpath_clip::init_towers(&config, NoObjectStore, towers))
            .unwrap_or_else(|e| panic!("{towers:?}: {e}"));
        assert_eq!(engine.towers(), towers);
        let text = vec!["a dog on the beach".to_string()];
        let photo = vec![png("inputs/cat.png")];
        match towers {
            Towers::Text => {
                assert_eq!(
                    engine.embed_texts(&text).unwrap(),
                    both.embed_texts(&text).unwrap()
                );
                let err = engine.embed_images(&photo).unwrap_err();
                assert_eq!(err.error_type(), ErrorType::InvalidInput);
                assert!(err.to_string().contains("text tower only"), "{err}");
            }
            _ => {
                assert_eq!(
                    engine.embed_images(&photo).unwrap(),
                    both.embed_images(&photo).unwrap()
                );
                let err = engine.embed_texts(&text).unwrap_err();
                assert_eq!(err.error_type(), ErrorType::InvalidInput);
            }
        }
    }
    // The engine with both towers cannot start from a directory that lacks one.
    let env = MapEnv::new([
        ("CLIP_MODEL_SOURCE", text_only.path().to_str().unwrap()),
        ("ORT_DYLIB_PATH", ort.as_str()),
    ]);
    let config = ClipConfig::from_env(&env, Towers::Both).unwrap();
    assert!(rt.block_on(init(&config, NoObjectStore)).is_err());
}
