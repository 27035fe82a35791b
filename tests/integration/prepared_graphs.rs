//! Graphs prepared at packaging time (`prepare <OUT_DIR>`, `COLDPATH_PREPARED_MODEL_DIR`) give the
//! outputs of the original model, on the setup's real models.
//!
//! Each test prepares the graphs into a fresh directory exactly as `tools/package.py` does (the
//! function's own init with `SessionConfig::preparing_into`), then starts the function as a fresh
//! Lambda sandbox would: the prepared directory, and an empty writable cache. That the writable
//! cache stays empty shows the session came from the prepared graph (a miss would have written
//! one there). Its outputs are compared with a session built from the original model, no cache.
//!
//! Tolerances. The prepared graph is saved at the Extended level and loaded at All, so the same
//! ONNX Runtime passes run in the same order as on the original model; the only room for a
//! difference is float rounding in a fused kernel (none was seen: the figures printed were 0).
//! Embeddings: cosine ≥ 0.99999 and max |Δ| ≤ 1e-5 per component of unit vectors. Faces: the
//! same faces in the same order, box and landmark coordinates within 0.01 px, score within 1e-4,
//! embedding cosine ≥ 0.99999.

use std::path::Path;

use coldpath_core::MapEnv;
use coldpath_core::vector::cosine;
use coldpath_embeddings::{Embed, EmbeddingsConfig, EmbeddingsService, OnnxEmbedder};
use coldpath_faces::{AnalyzeFaces, DetectOptions, FacesConfig, OnnxFaces};
use coldpath_image::ImageLimits;
use coldpath_io::NoObjectStore;
use coldpath_test_support::repo_root;
use coldpath_tests::{embeddings_env, embeddings_reference, faces_env};

/// The file names in `dir`, sorted (empty when it does not exist).
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `init` on its own runtime thread (each test has its own tokio runtime).
fn on_runtime<T: Send + 'static>(init: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(init)
    })
    .join()
    .expect("init thread")
}

fn embeddings(env: &MapEnv, prepare: Option<&Path>) -> EmbeddingsService<OnnxEmbedder> {
    let mut config = EmbeddingsConfig::from_env(env).expect("embeddings config");
    if let Some(dir) = prepare {
        config.session = config.session.preparing_into(dir);
    }
    on_runtime(async move {
        coldpath_embeddings::init(&config, NoObjectStore)
            .await
            .map(|(service, _)| service)
            .unwrap_or_else(|e| panic!("embeddings init failed: {e}"))
    })
}

fn faces(env: &MapEnv, prepare: Option<&Path>) -> (OnnxFaces, DetectOptions) {
    let mut config = FacesConfig::from_env(env).expect("faces config");
    if let Some(dir) = prepare {
        config.session = config.session.preparing_into(dir);
    }
    on_runtime(async move {
        let (faces, _) = coldpath_faces::init_faces(&config, NoObjectStore)
            .await
            .unwrap_or_else(|e| panic!("faces init failed: {e}"));
        (faces, config.detect)
    })
}

/// Two dirs as a fresh sandbox sees them: `(prepared, writable)` settings for the env.
fn sandbox<'a>(prepared: &'a str, writable: &'a str) -> [(&'a str, &'a str); 2] {
    [
        ("COLDPATH_PREPARED_MODEL_DIR", prepared),
        ("COLDPATH_OPTIMIZED_MODEL_DIR", writable),
    ]
}

#[test]
fn prepared_embeddings_graph_gives_the_original_models_vectors() {
    let reference = embeddings_reference();
    let prepared = tempfile::tempdir().unwrap();
    let writable = tempfile::tempdir().unwrap();
    let (p, w) = (
        prepared.path().display().to_string(),
        writable.path().display().to_string(),
    );
    // Whatever the caches hold, `prepare` builds from the model and writes only to OUT_DIR.
    let packaging = embeddings(&embeddings_env(&sandbox(&p, &w)), Some(prepared.path()));
    let shipped = files(prepared.path());
    assert_eq!(shipped.len(), 2, "one graph and its weights: {shipped:?}");
    assert!(
        shipped[0].ends_with(".data") && shipped[1].ends_with(".onnx"),
        "{shipped:?}"
    );
    assert!(files(writable.path()).is_empty());

    let original = embeddings(&embeddings_env(&[]), None);
    let fresh = embeddings(&embeddings_env(&sandbox(&p, &w)), None);
    assert!(
        files(writable.path()).is_empty(),
        "a prepared graph was found, so nothing is optimised or cached at cold start"
    );
    assert_eq!(
        files(prepared.path()),
        shipped,
        "the prepared dir is only read"
    );

    let want = original.embedder().embed(&reference.texts).unwrap().vectors;
    for (label, service) in [("prepare mode", &packaging), ("fresh sandbox", &fresh)] {
        let got = service.embedder().embed(&reference.texts).unwrap().vectors;
        let (mut min_cos, mut max_diff) = (f32::MAX, 0.0f32);
        for (g, w) in got.iter().zip(&want) {
            min_cos = min_cos.min(cosine(g, w));
            for (a, b) in g.iter().zip(w) {
                max_diff = max_diff.max((a - b).abs());
            }
        }
        eprintln!(
            "{label}: {} texts, min cosine {min_cos}, max |diff| {max_diff:e}",
            got.len()
        );
        assert_eq!(got.len(), want.len());
        assert!(min_cos >= 0.99999, "{label}: cosine {min_cos}");
        assert!(max_diff <= 1e-5, "{label}: max |diff| {max_diff}");
    }
}

#[test]
fn unusable_prepared_graph_is_ignored_and_left_alone() {
    let prepared = tempfile::tempdir().unwrap();
    let writable = tempfile::tempdir().unwrap();
    drop(embeddings(&embeddings_env(&[]), Some(prepared.path())));
    // A damaged file in the (read-only in Lambda) package: never repaired or removed there; the
    // cold start builds from the model and caches in the writable directory instead.
    let graph = files(prepared.path())
        .into_iter()
        .find(|f| f.ends_with(".onnx"))
        .unwrap();
    std::fs::write(prepared.path().join(&graph), b"garbage").unwrap();
    let env = embeddings_env(&sandbox(
        &prepared.path().display().to_string(),
        &writable.path().display().to_string(),
    ));
    let service = embeddings(&env, None);
    let reference = embeddings_reference();
    let got = service.embedder().embed(&reference.texts[..1]).unwrap();
    assert!(cosine(&got.vectors[0], &reference.embeddings[0]) >= 0.9999);
    assert_eq!(
        std::fs::read(prepared.path().join(&graph)).unwrap(),
        b"garbage"
    );
    assert_eq!(files(writable.path()).len(), 2, "rebuilt into the cache");
}

#[test]
fn prepared_face_graphs_give_the_original_models_faces() {
    let prepared = tempfile::tempdir().unwrap();
    let writable = tempfile::tempdir().unwrap();
    let (p, w) = (
        prepared.path().display().to_string(),
        writable.path().display().to_string(),
    );
    let (packaging, _) = faces(&faces_env(&[]), Some(prepared.path()));
    let shipped = files(prepared.path());
    assert_eq!(
        shipped.iter().filter(|f| f.ends_with(".onnx")).count(),
        2,
        "detector and recogniser: {shipped:?}"
    );
    let (original, options) = faces(&faces_env(&[]), None);
    let (fresh, _) = faces(&faces_env(&sandbox(&p, &w)), None);
    assert!(files(writable.path()).is_empty(), "both graphs were found");

    let bytes = std::fs::read(repo_root().join("events/data/photos/group.jpg")).unwrap();
    let photo = coldpath_image::decode(&bytes, &ImageLimits::default())
        .unwrap()
        .image;
    let want = original.analyze(&photo, &options).unwrap();
    assert!(want.len() >= 3, "the group photo has faces: {}", want.len());
    for (label, faces) in [("prepare mode", &packaging), ("fresh sandbox", &fresh)] {
        let got = faces.analyze(&photo, &options).unwrap();
        assert_eq!(got.len(), want.len(), "{label}: faces found");
        let (mut max_px, mut max_score, mut min_cos) = (0.0f32, 0.0f32, f32::MAX);
        for (g, w) in got.iter().zip(&want) {
            let (a, b) = (&g.detection, &w.detection);
            let coords = |d: &coldpath_faces::Detection| {
                let mut v = vec![d.x, d.y, d.width, d.height];
                v.extend(d.landmarks.iter().flatten());
                v
            };
            for (x, y) in coords(a).iter().zip(coords(b)) {
                max_px = max_px.max((x - y).abs());
            }
            max_score = max_score.max((a.score - b.score).abs());
            min_cos = min_cos.min(cosine(&g.embedding, &w.embedding));
        }
        eprintln!(
            "{label}: {} faces, max coordinate |diff| {max_px:e} px, max score |diff| {max_score:e}, min embedding cosine {min_cos}",
            got.len()
        );
        assert!(max_px <= 0.01, "{label}: {max_px} px");
        assert!(max_score <= 1e-4, "{label}: score {max_score}");
        assert!(min_cos >= 0.99999, "{label}: cosine {min_cos}");
    }
}
