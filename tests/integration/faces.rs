//! The faces function on the real YuNet + SFace models against OpenCV's own face API, the
//! scrfd-arcface family against insightface's own code, bad inputs, and S3 events
//! (a local object directory, and moto's S3 wire protocol with an S3 result sink).
//!
//! References: `tests/fixtures/faces/opencv_reference.json` (written by
//! `tests/fixtures/faces/gen_opencv_reference.py`: cv2.FaceDetectorYN / cv2.FaceRecognizerSF,
//! plus the same input through onnxruntime decoded per `OPENCV_NOTES.md`) and
//! `tests/fixtures/faces/insightface/reference.json` (written with its synthetic models by
//! `tests/fixtures/faces/gen_insightface_models.py`: insightface 0.7.3's own `SCRFD.detect`,
//! `face_align.norm_crop` and `ArcFaceONNX.get`, from its pinned sdist, run with onnxruntime).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use coldpath_aws::{ResultSink, S3Fetcher, SinkTarget};
use coldpath_core::vector::cosine;
use coldpath_core::{Classify, ErrorType, MapEnv};
use coldpath_faces::{
    AnalyzeFaces, DetectOptions, Face, FacesConfig, FacesError, FacesService, OnnxFaces,
};
use coldpath_faces_function::{FacesFunction, handle};
use coldpath_image::{ImageLimits, ImageLoader, RgbImage};
use coldpath_io::{LocalObjectDir, NoObjectStore, ObjectFetcher};
use coldpath_runtime::{Context, LambdaEvent};
use coldpath_test_support::moto::MotoServer;
use coldpath_test_support::repo_root;
use coldpath_tests::{
    ReferenceFace, faces_env, insightface_env, insightface_reference, opencv_reference,
};
use serde_json::{Value, json};

/// Builds a pipeline on its own runtime thread (each test runs its own tokio runtime).
fn build_faces(env: &MapEnv) -> (OnnxFaces, DetectOptions) {
    let config = FacesConfig::from_env(env).expect("faces config");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (faces, _) = rt
            .block_on(coldpath_faces::init_faces(&config, NoObjectStore))
            .unwrap_or_else(|e| panic!("faces init failed: {e}"));
        (faces, config.detect)
    })
    .join()
    .expect("init thread")
}

/// One YuNet + SFace pipeline for the whole test binary, at its defaults (detection at the
/// photo's own size, up to `FACES_DETECTOR_MAX_SIDE`).
fn yunet() -> (Arc<OnnxFaces>, DetectOptions) {
    static FACES: OnceLock<(Arc<OnnxFaces>, DetectOptions)> = OnceLock::new();
    let (f, o) = FACES.get_or_init(|| {
        let (f, o) = build_faces(&faces_env(&[]));
        (Arc::new(f), o)
    });
    (Arc::clone(f), *o)
}

/// The fixed 640 × 640 letterbox at OpenCV's sample threshold (0.9), the recipe the
/// `faces_letterbox640*` references were recorded with.
fn yunet_letterbox() -> (Arc<OnnxFaces>, DetectOptions) {
    static FACES: OnceLock<(Arc<OnnxFaces>, DetectOptions)> = OnceLock::new();
    let (f, o) = FACES.get_or_init(|| {
        let (f, o) = build_faces(&faces_env(&[
            ("FACES_DETECTOR_INPUT", "letterbox"),
            ("FACES_MIN_SCORE", "0.9"),
        ]));
        (Arc::new(f), o)
    });
    (Arc::clone(f), *o)
}

/// The letterbox resampling with OpenCV's `INTER_LINEAR`, as the reference scripts do.
fn yunet_linear() -> (Arc<OnnxFaces>, DetectOptions) {
    static FACES: OnceLock<(Arc<OnnxFaces>, DetectOptions)> = OnceLock::new();
    let (f, o) = FACES.get_or_init(|| {
        let (f, o) = build_faces(&faces_env(&[
            ("FACES_DETECTOR_INPUT", "letterbox"),
            ("FACES_MIN_SCORE", "0.9"),
            ("FACES_RESIZE", "linear"),
        ]));
        (Arc::new(f), o)
    });
    (Arc::clone(f), *o)
}

/// SCRFD + ArcFace (synthetic insightface-shaped models), with insightface's `INTER_LINEAR`.
fn scrfd() -> (Arc<OnnxFaces>, DetectOptions) {
    static FACES: OnceLock<(Arc<OnnxFaces>, DetectOptions)> = OnceLock::new();
    let (f, o) = FACES.get_or_init(|| {
        let mut env = insightface_env();
        env.0.insert("FACES_RESIZE".into(), "linear".into());
        let (f, o) = build_faces(&env);
        (Arc::new(f), o)
    });
    (Arc::clone(f), *o)
}

fn photo(rel: &str) -> RgbImage {
    let bytes = std::fs::read(repo_root().join(rel)).unwrap();
    coldpath_image::decode(&bytes, &ImageLimits::default())
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .image
}

/// A reference fixture's photo, decoded as the function decodes it (EXIF applied), at the size
/// the reference recorded.
fn reference_photo(rel: &str, size: (u32, u32)) -> RgbImage {
    let image = photo(rel);
    assert_eq!((image.width(), image.height()), size, "{rel}");
    image
}

fn bbox(f: &Face) -> [f32; 4] {
    let d = &f.detection;
    [d.x, d.y, d.width, d.height]
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = ((a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0])).max(0.0);
    let ih = ((a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / (a[2] * a[3] + b[2] * b[3] - inter)
}

/// Pairs each reference face with the face of ours that overlaps it most; `None` where none
/// overlaps at all.
fn matches(ours: &[Face], refs: &[ReferenceFace]) -> Vec<Option<(usize, f32)>> {
    refs.iter()
        .map(|r| {
            ours.iter()
                .enumerate()
                .map(|(i, f)| (i, iou(bbox(f), r.bbox)))
                .filter(|(_, v)| *v > 0.0)
                .max_by(|a, b| a.1.total_cmp(&b.1))
        })
        .collect()
}

fn max_landmark_error(f: &Face, r: &ReferenceFace) -> f32 {
    f.detection
        .landmarks
        .iter()
        .zip(&r.landmarks)
        .map(|(a, b)| (a[0] - b[0]).abs().max((a[1] - b[1]).abs()))
        .fold(0.0, f32::max)
}

/// Per-photo agreement with one reference, with the tolerances a comparison states.
struct Tolerance {
    min_iou: f32,
    /// Landmarks within `max(px, frac * face width)`.
    landmark_px: f32,
    landmark_frac: f32,
    score: f32,
    min_cosine: f32,
}

fn assert_agrees(
    label: &str,
    ours: &[Face],
    refs: &[ReferenceFace],
    tol: &Tolerance,
) -> Vec<usize> {
    if ours.len() != refs.len() {
        // Say which faces differ, so a failure can be told from a near-threshold flicker.
        let unmatched_ours: Vec<String> = ours
            .iter()
            .filter(|f| refs.iter().all(|r| iou(bbox(f), r.bbox) < 0.5))
            .map(|f| format!("{:?} score {}", bbox(f), f.detection.score))
            .collect();
        let unmatched_refs: Vec<String> = refs
            .iter()
            .filter(|r| ours.iter().all(|f| iou(bbox(f), r.bbox) < 0.5))
            .map(|r| format!("{:?} score {}", r.bbox, r.score))
            .collect();
        panic!(
            "{label}: we found {} faces, the reference {}; only ours: {unmatched_ours:?}; only the reference's: {unmatched_refs:?}",
            ours.len(),
            refs.len()
        );
    }
    let mut order = Vec::new();
    for (k, (m, r)) in matches(ours, refs).into_iter().zip(refs).enumerate() {
        let (i, v) = m.unwrap_or_else(|| panic!("{label}: reference face {k} not found"));
        check_face(&format!("{label} face {k}"), &ours[i], r, v, tol);
        assert!(!order.contains(&i), "{label}: face {i} matched twice");
        order.push(i);
    }
    order
}

/// One matched pair (box IoU `v`) within `tol`.
fn check_face(label: &str, f: &Face, r: &ReferenceFace, v: f32, tol: &Tolerance) {
    let lm = max_landmark_error(f, r);
    let lm_tol = tol.landmark_px.max(tol.landmark_frac * r.bbox[2]);
    let cos = cosine(&f.embedding, &r.embedding);
    let score = (f.detection.score - r.score).abs();
    eprintln!(
        "{label}: IoU {v:.4}, landmarks {lm:.3} px (tol {lm_tol:.2}), score diff {score:.4}, cosine {cos:.5}"
    );
    assert!(v >= tol.min_iou, "{label}: IoU {v} < {}", tol.min_iou);
    assert!(lm <= lm_tol, "{label}: landmarks off by {lm} px > {lm_tol}");
    assert!(score <= tol.score, "{label}: score off by {score}");
    assert!(
        cos >= tol.min_cosine,
        "{label}: cosine {cos} < {}",
        tol.min_cosine
    );
}

/// Same input recipe as the pipeline (640 × 640 top-left letterbox, onnxruntime, OpenCV's
/// decode and alignment rules): the check that the implementation is right. What is left is JPEG
/// decoding (the `image` crate vs libjpeg-turbo) and resize/warp arithmetic (OpenCV quantises
/// sample positions to 1/32 px).
const TIGHT: Tolerance = Tolerance {
    min_iou: 0.98,
    landmark_px: 1.0,
    landmark_frac: 0.0,
    score: 0.002,
    min_cosine: 0.995,
};

/// The pipeline as deployed (antialiased shrink) against the reference's `INTER_AREA`
/// letterbox run through onnxruntime (measured: IoU ≥ 0.982, landmarks ≤ 0.54 px, score
/// ≤ 0.0007, cosine ≥ 0.9959), and the OpenCV-recipe pipeline (`FACES_RESIZE=linear`) against
/// the reference's `INTER_LINEAR` letterbox, both through onnxruntime and through OpenCV's own
/// `FaceDetectorYN` / `FaceRecognizerSF` (measured: IoU ≥ 0.9966, landmarks ≤ 0.23 px,
/// cosine ≥ 0.9994).
#[test]
fn yunet_sface_matches_opencv_on_the_same_640_letterbox_tightly() {
    let (deployed, options) = yunet_letterbox();
    let (linear, _) = yunet_linear();
    let reference = opencv_reference();
    assert_eq!(options.min_score, reference.score_threshold);
    for p in &reference.photos {
        let image = reference_photo(&p.file, (p.width, p.height));
        let ours = deployed.analyze(&image, &options).unwrap();
        assert_agrees(
            &format!("{} (antialiased vs INTER_AREA, ort)", p.file),
            &ours,
            &p.faces_letterbox640_ort_area,
            &TIGHT,
        );
        // group-exif6.jpg is group.jpg re-encoded turned: under INTER_LINEAR's ×0.4 shrink
        // (no antialiasing) the re-encoding noise alone moves a landmark of its largest face by
        // about 6 px, in OpenCV's own runs too (checked below), so the two JPEG decoders'
        // differences are amplified the same way. It is compared under the antialiased shrink
        // only; that instability is why the pipeline does not shrink with INTER_LINEAR.
        if p.file.ends_with("group-exif6.jpg") {
            continue;
        }
        let ours = linear.analyze(&image, &options).unwrap();
        for (what, refs) in [
            ("ort", &p.faces_letterbox640_ort),
            ("OpenCV", &p.faces_letterbox640),
        ] {
            assert_agrees(
                &format!("{} (INTER_LINEAR, {what})", p.file),
                &ours,
                refs,
                &TIGHT,
            );
        }
    }
    // OpenCV itself: group.jpg and group-exif6.jpg give the same faces once shrunk with
    // INTER_AREA (landmarks within 0.5 px), but not with INTER_LINEAR (more than 3 px apart).
    let by_name = |n: &str| {
        reference
            .photos
            .iter()
            .find(|p| p.file.ends_with(n))
            .expect("photo in fixture")
    };
    let (g, e) = (by_name("/group.jpg"), by_name("/group-exif6.jpg"));
    let spread = |a: &[ReferenceFace], b: &[ReferenceFace]| {
        a.iter()
            .map(|fa| {
                let fb = b
                    .iter()
                    .max_by(|x, y| iou(fa.bbox, x.bbox).total_cmp(&iou(fa.bbox, y.bbox)))
                    .expect("a face");
                fa.landmarks
                    .iter()
                    .zip(&fb.landmarks)
                    .map(|(p, q)| (p[0] - q[0]).abs().max((p[1] - q[1]).abs()))
                    .fold(0.0, f32::max)
            })
            .fold(0.0, f32::max)
    };
    assert!(
        spread(
            &g.faces_letterbox640_ort_area,
            &e.faces_letterbox640_ort_area
        ) < 0.5
    );
    assert!(spread(&g.faces_letterbox640_ort, &e.faces_letterbox640_ort) > 3.0);
}

/// OpenCV's API run at each photo's NATIVE size, which is what an OpenCV user gets, against the
/// 640 × 640 letterbox (`FACES_DETECTOR_INPUT=letterbox`, the only recipe while YuNet's ONNX
/// input was fixed; the default now detects at native size, tested below). The letterbox shrinks
/// or grows every photo (group.jpg shrinks
/// ×0.4, its faces to 36–80 px; kafka.jpg ×0.98; astronaut.jpg grows ×1.25), and YuNet's
/// answer moves with its input size, for OpenCV too. Measured against native: same faces
/// everywhere, box IoU ≥ 0.857 (holds the ≥ 0.85 target), scores within 0.011, but landmarks
/// up to 9.6 px off on group.jpg's 195 px face, 8.1 px (8.7% of the width) on its 92 px face and
/// 7.4 px (7.7%) on kafka.jpg's 95 px face at a mere ×0.98 shrink (the max(3 px, 2%) target
/// does not hold), and embedding cosine 0.919–0.970 (the ≥ 0.98 target does not hold), because
/// the crop follows the landmarks. The tolerances below are therefore what the input size
/// allows, stated, not the brief's: IoU ≥ 0.85, landmarks within 10% of the face width,
/// cosine ≥ 0.9. That the gap is the input size and not the code is the
/// test above (OpenCV on the same letterboxed input agrees with us to cosine ≥ 0.995), and the
/// same-person decisions at OpenCV's threshold are identical to OpenCV's native ones (below).
#[test]
fn yunet_sface_agrees_with_opencv_at_native_size_within_letterbox_limits() {
    let (faces, options) = yunet_letterbox();
    let reference = opencv_reference();
    let native = Tolerance {
        min_iou: 0.85,
        landmark_px: 3.0,
        landmark_frac: 0.1,
        score: 0.02,
        min_cosine: 0.9,
    };
    for p in &reference.photos {
        let ours = faces.analyze(&photo(&p.file), &options).unwrap();
        assert_agrees(&format!("{} (native)", p.file), &ours, &p.faces, &native);
    }
}

/// The function at its defaults (detection at the photo's own size) against OpenCV's API at
/// each sample photo's native size, at the reference's threshold (0.9), within the native bounds:
/// box IoU ≥ 0.9, landmarks within 2% of the face's width, cosine ≥ 0.98.
#[test]
fn yunet_sface_matches_opencv_at_native_size() {
    let (faces, mut options) = yunet();
    let reference = opencv_reference();
    options.min_score = reference.score_threshold;
    let native = Tolerance {
        min_iou: 0.9,
        landmark_px: 0.0,
        landmark_frac: 0.02,
        score: 0.02,
        min_cosine: 0.98,
    };
    for p in &reference.photos {
        let ours = faces.analyze(&photo(&p.file), &options).unwrap();
        assert_agrees(&format!("{} (native)", p.file), &ours, &p.faces, &native);
    }
}

#[test]
fn same_person_decisions_match_opencv_at_its_threshold() {
    let (faces, mut options) = yunet();
    let reference = opencv_reference();
    options.min_score = reference.score_threshold;
    // Our faces, in the order of OpenCV's native faces, photo by photo.
    let mut ours: Vec<Vec<Face>> = Vec::new();
    for p in &reference.photos {
        let found = faces.analyze(&photo(&p.file), &options).unwrap();
        let order: Vec<usize> = matches(&found, &p.faces)
            .into_iter()
            .map(|m| m.expect("every OpenCV face is found").0)
            .collect();
        ours.push(order.into_iter().map(|i| found[i].clone()).collect());
    }
    assert!(reference.pairs.len() >= 10, "{}", reference.pairs.len());
    let (mut same, mut different) = (0, 0);
    for pair in &reference.pairs {
        let a = &ours[pair.a[0]][pair.a[1]];
        let b = &ours[pair.b[0]][pair.b[1]];
        let c = cosine(&a.embedding, &b.embedding);
        assert_eq!(
            c >= reference.cosine_threshold,
            pair.same,
            "pair {:?} ~ {:?}: our cosine {c}, OpenCV's {}",
            pair.a,
            pair.b,
            pair.cosine
        );
        if pair.same {
            same += 1;
        } else {
            different += 1;
        }
    }
    // The fixture must exercise both decisions (group.jpg holds two people).
    assert!(
        same > 0 && different > 0,
        "{same} same, {different} different"
    );
}

#[test]
fn exif_orientation_is_applied_before_detection() {
    // group-exif6.jpg stores group.jpg's pixels turned, with EXIF orientation 6: once upright
    // it must give the same faces in the same (upright) coordinates.
    let (faces, options) = yunet();
    let upright = faces
        .analyze(&photo("events/data/photos/group.jpg"), &options)
        .unwrap();
    let turned = faces
        .analyze(&photo("events/data/photos/group-exif6.jpg"), &options)
        .unwrap();
    assert_eq!(upright.len(), 3);
    assert_eq!(turned.len(), 3);
    for f in &upright {
        let best = turned
            .iter()
            .map(|g| iou(bbox(f), bbox(g)))
            .fold(0.0, f32::max);
        assert!(best >= 0.9, "{best}");
    }
}

#[test]
fn sface_and_arcface_batch_equals_single() {
    // SFace ships with its batch fixed at 1; the setup repair (tools/ort_compat.py) makes it
    // dynamic, as ArcFace exports are, so a photo's faces go as one batch for both families,
    // and that batch must give what single runs give.
    let (sface, _) = yunet();
    assert!(sface.batched());
    assert_eq!(sface.dimensions(), 128);
    let (arc, options) = scrfd();
    assert!(arc.batched());
    assert_eq!(arc.dimensions(), 512);
    let image = photo("events/data/photos/group.jpg");
    let dets = arc.detect(&image, &options).unwrap();
    assert!(dets.len() >= 3, "{}", dets.len());
    let crops = arc.align(&image, &dets).unwrap();
    let refs: Vec<&RgbImage> = crops.iter().collect();
    let batch = arc.embed_aligned(&refs).unwrap();
    let single = arc.embed_each(&refs).unwrap();
    assert_eq!(batch.len(), single.len());
    for (b, s) in batch.iter().zip(&single) {
        let c = cosine(b, s);
        assert!(c >= 0.99999, "batch vs single cosine {c}");
    }
    // And SFace's batch equals its single runs.
    let (sface, yoptions) = yunet();
    let dets = sface.detect(&image, &yoptions).unwrap();
    assert!(dets.len() >= 3, "{}", dets.len());
    let crops = sface.align(&image, &dets).unwrap();
    let refs: Vec<&RgbImage> = crops.iter().collect();
    let batch = sface.embed_aligned(&refs).unwrap();
    let single = sface.embed_each(&refs).unwrap();
    assert_eq!(batch.len(), single.len());
    for (b, s) in batch.iter().zip(&single) {
        let c = cosine(b, s);
        assert!(c >= 0.99999, "sface batch vs single cosine {c}");
    }
}

/// The scrfd-arcface family against insightface's own code (SCRFD.detect, norm_crop,
/// ArcFaceONNX.get from the pinned insightface 0.7.3 sdist) on the same synthetic models, so a
/// misreading of insightface shared by our decode and a port of it cannot pass both sides.
#[test]
fn scrfd_arcface_matches_the_insightface_reference() {
    let (faces, options) = scrfd();
    let reference = insightface_reference();
    assert_eq!(options.min_score, reference.detector.score_threshold);
    assert_eq!(options.nms_iou, reference.detector.nms_threshold);
    // The synthetic detector's scores cluster near the threshold (OPENCV_NOTES.md, last
    // section), so a face within 0.01 of it may come or go with JPEG decoding differences
    // (the `image` crate vs libjpeg-turbo). So: every reference face scoring above that margin
    // must be found and agree within `tol`, and every face we find above it must be in the
    // reference; faces within the margin on either side are not counted against us.
    const MARGIN: f32 = 0.01;
    // Measured over 120 faces against insightface's own output: IoU ≥ 0.9978, landmarks
    // ≤ 0.27 px, score ≤ 0.005, cosine ≥ 0.9998.
    let tol = Tolerance {
        min_iou: 0.99,
        landmark_px: 1.0,
        landmark_frac: 0.0,
        score: 0.01,
        min_cosine: 0.999,
    };
    let firm = options.min_score + MARGIN;
    let mut compared = 0;
    for p in &reference.photos {
        let ours = faces.analyze(&photo(&p.file), &options).unwrap();
        for (k, (m, r)) in matches(&ours, &p.faces)
            .into_iter()
            .zip(&p.faces)
            .enumerate()
        {
            if r.score < firm {
                continue;
            }
            let label = format!("{} (insightface) face {k}", p.file);
            let (i, v) = m.unwrap_or_else(|| panic!("{label}: not found"));
            check_face(&label, &ours[i], r, v, &tol);
            compared += 1;
        }
        for f in ours.iter().filter(|f| f.detection.score >= firm) {
            assert!(
                p.faces.iter().any(|r| iou(bbox(f), r.bbox) >= 0.5),
                "{}: we found {:?} (score {}), the reference did not",
                p.file,
                bbox(f),
                f.detection.score
            );
        }
        let near = ours.len().abs_diff(p.faces.len());
        assert!(
            near <= 2,
            "{}: {} faces vs {}",
            p.file,
            ours.len(),
            p.faces.len()
        );
    }
    assert!(compared >= 100, "only {compared} faces compared");
}

/// A service over the shared YuNet pipeline, reading `s3://` from `events/data`, writing results
/// to `sink_dir`.
fn local_service(
    sink_dir: &Path,
    allow_local_paths: bool,
) -> FacesFunction<OnnxFaces, LocalObjectDir> {
    let (faces, options) = yunet();
    let loader = ImageLoader::new(
        LocalObjectDir::new(repo_root().join("events/data")),
        ImageLimits::default(),
        allow_local_paths,
    );
    let sink = ResultSink::new("faces", SinkTarget::Local(sink_dir.to_path_buf())).unwrap();
    FacesFunction::new(FacesService::with_shared(faces, loader, options), sink)
}

async fn invoke<F: ObjectFetcher + 'static>(
    service: &Arc<FacesFunction<OnnxFaces, F>>,
    payload: Value,
) -> Result<Value, coldpath_runtime::HandlerError> {
    handle(
        Arc::clone(service),
        LambdaEvent::new(payload, Context::default()),
    )
    .await
}

fn event_file(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join(rel)).unwrap()).unwrap()
}

/// The phone-format sample events (`make demo` runs them): an iPhone-named HEIC by local path
/// and an AVIF by `s3://` reference, both the real six-person t1 photo, give its six faces.
#[tokio::test]
async fn heic_and_avif_sample_events_find_the_six_people() {
    coldpath_tests::image_codecs();
    let sink = tempfile::tempdir().unwrap();
    let service = Arc::new(local_service(sink.path(), true));
    for event in [
        "events/faces/direct-heic.json",
        "events/faces/direct-avif.json",
    ] {
        let mut payload = event_file(event);
        // Local paths are relative to the repository, where `make demo` runs.
        if let Some(p) = payload["image"]["path"].as_str() {
            payload["image"]["path"] = json!(repo_root().join(p));
        }
        let out = invoke(&service, payload)
            .await
            .unwrap_or_else(|e| panic!("{event}: {e:?}"));
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(1280), Some(886)),
            "{event}"
        );
        assert_eq!(out["faces"].as_array().map(Vec::len), Some(6), "{event}");
    }
}

#[tokio::test]
async fn direct_invoke_sample_event_finds_the_group() {
    let sink = tempfile::tempdir().unwrap();
    let service = Arc::new(local_service(sink.path(), false));
    let out = invoke(&service, event_file("events/faces/direct.json"))
        .await
        .unwrap();
    assert_eq!(
        (out["width"].as_u64(), out["height"].as_u64()),
        (Some(1600), Some(1000))
    );
    let faces = out["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3);
    for f in faces {
        let e: Vec<f32> = f["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(e.len(), 128);
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_eq!(f["landmarks"].as_array().unwrap().len(), 5);
        assert!(f["score"].as_f64().unwrap() >= 0.9);
        assert!(f["box"]["width"].as_f64().unwrap() > 50.0);
    }
    assert_eq!(out["models"]["detector"], "yunet-2023mar-int8bq");
    // Narrowing per request: one face, the best.
    let one = invoke(
        &service,
        json!({"image": {"s3": "s3://photos/group.jpg"}, "max_faces": 1}),
    )
    .await
    .unwrap();
    assert_eq!(one["faces"].as_array().unwrap().len(), 1);
    assert_eq!(one["faces"][0]["score"], faces[0]["score"]);
    // No faces in a cat photo: an empty list.
    let none = invoke(&service, json!({"image": {"s3": "s3://photos/cat.jpg"}}))
        .await
        .unwrap();
    assert_eq!(none["faces"], json!([]));
    // The grey cameraman's face, half turned away, scores 0.894 at native size (OpenCV too):
    // found at the default threshold (0.6), not at OpenCV's sample's 0.9.
    let grey = invoke(&service, json!({"image": {"s3": "s3://photos/grey.png"}}))
        .await
        .unwrap();
    assert_eq!(grey["faces"].as_array().unwrap().len(), 1, "{grey}");
    let score = grey["faces"][0]["score"].as_f64().unwrap();
    assert!((0.874..0.9).contains(&score), "{score}");
    let strict = invoke(
        &service,
        json!({"image": {"s3": "s3://photos/grey.png"}, "min_score": 0.9}),
    )
    .await
    .unwrap();
    assert_eq!(strict["faces"], json!([]));
}

/// A PNG whose header claims `width` × `height`, with valid chunks and no pixels to speak of
/// (`IHDR`, a token `IDAT`, `IEND`): a decompression bomb as far as any header check can tell.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    // An empty zlib stream as the only image data.
    for (kind, data) in [
        (b"IHDR", ihdr),
        (
            b"IDAT",
            vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ),
        (b"IEND", Vec::new()),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn bad_inputs_are_typed_errors_and_the_service_keeps_serving() {
    let sink = tempfile::tempdir().unwrap();
    // Not local invoke mode: `path` references are refused.
    let service = Arc::new(local_service(sink.path(), false));
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let kafka = std::fs::read(repo_root().join("events/data/photos/kafka.jpg")).unwrap();
    let cases = [
        ("zero bytes", json!({"image": {"base64": ""}}), "empty"),
        // Cut inside the Huffman tables, before the scan. (A cut inside the scan data decodes
        // with the missing rows filled in: the `image` crate's JPEG decoder is lenient there,
        // which coldpath-image would have to catch.)
        (
            "truncated JPEG",
            json!({"image": {"base64": b64(&kafka[..300])}}),
            "jpeg",
        ),
        (
            "a text file",
            json!({"image": {"s3": "s3://photos/not-a-photo.txt"}}),
            "format",
        ),
        (
            "a PNG claiming 100000 x 100000",
            json!({"image": {"base64": b64(&png_header(100_000, 100_000))}}),
            "100000",
        ),
        (
            "base64 garbage",
            json!({"image": {"base64": "%%% not base64 %%%"}}),
            "base64",
        ),
        (
            "a missing S3 key",
            json!({"image": {"s3": "s3://photos/nope.jpg"}}),
            "no such object",
        ),
        (
            "a path outside local mode",
            json!({"image": {"path": "events/data/photos/kafka.jpg"}}),
            "path",
        ),
        (
            "an unknown field",
            json!({"image": {"s3": "s3://photos/kafka.jpg"}, "x": 1}),
            "unknown field",
        ),
        (
            "min_score out of range",
            json!({"image": {"s3": "s3://photos/kafka.jpg"}, "min_score": 2}),
            "min_score",
        ),
        (
            "max_faces zero",
            json!({"image": {"s3": "s3://photos/kafka.jpg"}, "max_faces": 0}),
            "max_faces",
        ),
    ];
    for (what, payload, needle) in cases {
        let err = match invoke(&service, payload).await {
            Err(e) => e,
            Ok(v) => panic!("{what}: expected an error, got {v}"),
        };
        assert_eq!(err.error_type, ErrorType::InvalidInput, "{what}: {err}");
        assert!(
            err.message.to_lowercase().contains(needle),
            "{what}: {:?} does not mention {needle:?}",
            err.message
        );
        // Still serving after each one.
        let ok = invoke(&service, json!({"image": {"s3": "s3://photos/kafka.jpg"}}))
            .await
            .unwrap();
        assert_eq!(ok["faces"].as_array().unwrap().len(), 1, "after {what}");
    }
    // The same library errors, typed, below the Lambda edge.
    let err = service
        .service
        .handle_direct(&json!({"image": {"path": "x.jpg"}}))
        .await
        .unwrap_err();
    assert!(matches!(err, FacesError::Image(_)), "{err:?}");
    assert_eq!(err.error_type(), ErrorType::InvalidInput);
}

#[tokio::test]
async fn mixed_s3_event_writes_good_results_and_reports_bad_records() {
    let sink = tempfile::tempdir().unwrap();
    let service = Arc::new(local_service(sink.path(), false));
    let out = invoke(&service, event_file("events/faces/s3-put.json"))
        .await
        .unwrap();
    assert_eq!(out["succeeded"], 2, "{out}");
    assert_eq!(out["failed"], 2, "{out}");
    let records = out["records"].as_array().unwrap();
    assert_eq!(records[0]["key"], "group.jpg");
    assert_eq!(records[0]["faces"], 3);
    // `family+photo.jpg` in the event is the object `family photo.jpg`.
    assert_eq!(records[1]["key"], "family photo.jpg");
    assert_eq!(records[1]["status"], "ok");
    assert_eq!(records[1]["faces"], 1);
    for (i, key) in [(2, "not-a-photo.txt"), (3, "missing/IMG_0001.jpg")] {
        assert_eq!(records[i]["status"], "error");
        assert_eq!(records[i]["key"], key);
        assert_eq!(records[i]["errorType"], "InvalidInput");
    }
    // The results are in the sink, one per good photo, keyed by bucket and decoded key.
    for (key, n) in [("group.jpg", 3), ("family photo.jpg", 1)] {
        let path = sink.path().join("faces/photos").join(format!("{key}.json"));
        let result: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(result["faces"].as_array().unwrap().len(), n, "{key}");
        assert_eq!(result["source"], format!("s3://photos/{key}"));
        assert_eq!(
            records.iter().find(|r| r["key"] == key).unwrap()["result"],
            path.display().to_string()
        );
    }
    let written = std::fs::read_dir(sink.path().join("faces/photos"))
        .unwrap()
        .count();
    assert_eq!(written, 2);
    // Something that is not an S3 event at all is a typed error, not a panic.
    let err = invoke(&service, json!({"Records": [{"eventSource": "aws:s3"}]}))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, ErrorType::InvalidInput);
}

#[tokio::test]
async fn s3_event_through_moto_reads_photos_and_writes_results_to_s3() {
    let moto = MotoServer::start();
    let client = moto.s3_client().await;
    for bucket in ["uploads", "results"] {
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
    }
    let put = |key: &'static str, file: &'static str| {
        let client = client.clone();
        async move {
            let body = ByteStream::from_path(repo_root().join(file)).await.unwrap();
            client
                .put_object()
                .bucket("uploads")
                .key(key)
                .body(body)
                .send()
                .await
                .expect("put");
        }
    };
    put("2024/summer trip/group.jpg", "events/data/photos/group.jpg").await;
    put("2024/kafka+portrait.jpg", "events/data/photos/kafka.jpg").await;
    put("2024/notes.txt", "events/data/photos/not-a-photo.txt").await;

    let (faces, options) = yunet();
    let loader = ImageLoader::new(
        S3Fetcher::new(client.clone()),
        ImageLimits::default(),
        false,
    );
    let sink = ResultSink::new(
        "faces",
        SinkTarget::S3 {
            client: client.clone(),
            bucket: "results".into(),
            prefix: "v1".into(),
        },
    )
    .unwrap();
    let service = Arc::new(FacesFunction::new(
        FacesService::with_shared(faces, loader, options),
        sink,
    ));
    // The keys as S3 writes them into notifications: form-encoded.
    let mut event = event_file("events/faces/s3-put.json");
    let template = event["Records"][0].clone();
    let records: Vec<Value> = [
        "2024/summer+trip/group.jpg",
        "2024/kafka%2Bportrait.jpg",
        "2024/notes.txt",
        "2024/missing.jpg",
    ]
    .iter()
    .map(|key| {
        let mut r = template.clone();
        r["s3"]["bucket"]["name"] = json!("uploads");
        r["s3"]["object"]["key"] = json!(key);
        r
    })
    .collect();
    event["Records"] = json!(records);
    let out = invoke(&service, event).await.unwrap();
    assert_eq!(
        (out["succeeded"].as_u64(), out["failed"].as_u64()),
        (Some(2), Some(2)),
        "{out}"
    );
    for (key, n) in [
        ("2024/summer trip/group.jpg", 3),
        ("2024/kafka+portrait.jpg", 1),
    ] {
        let result_key = format!("v1/faces/uploads/{key}.json");
        let record = out["records"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .unwrap();
        assert_eq!(record["result"], format!("s3://results/{result_key}"));
        let body = client
            .get_object()
            .bucket("results")
            .key(&result_key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{result_key}: {e}"))
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let result: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(result["faces"].as_array().unwrap().len(), n, "{key}");
    }
}

#[test]
fn min_face_size_is_in_original_pixels() {
    // group.jpg's faces are about 210, 94 and 90 px wide in the photo but 84, 38 and 36 px in
    // the ×0.4 letterbox: a 150 px floor keeps only the big one, so it is measured in the photo.
    let (faces, options) = yunet();
    let image = photo("events/data/photos/group.jpg");
    let all = faces.detect(&image, &options).unwrap();
    assert_eq!(all.len(), 3);
    let big = faces
        .detect(
            &image,
            &DetectOptions {
                min_face_size: 150.0,
                ..options
            },
        )
        .unwrap();
    assert_eq!(big.len(), 1);
    assert!(big[0].width >= 150.0 && big[0].height >= 150.0, "{big:?}");
    let none = faces
        .detect(
            &image,
            &DetectOptions {
                min_face_size: 400.0,
                ..options
            },
        )
        .unwrap();
    assert!(none.is_empty());
}

/// `tests/fixtures/faces/group/opencv_group_reference.json` (written by
/// `gen_group_reference.py`): OpenCV's faces at each group photo's native size, recorded down
/// to a low score so a test can apply any threshold above it.
#[derive(Debug, serde::Deserialize)]
struct GroupReference {
    record_threshold: f32,
    cosine_threshold: f32,
    photos: Vec<GroupPhoto>,
}

#[derive(Debug, serde::Deserialize)]
struct GroupPhoto {
    file: String,
    width: u32,
    height: u32,
    /// How many people the photo shows (the composite's ground truth; counted by eye for the
    /// real photo).
    people: usize,
    faces: Vec<ReferenceFace>,
}

fn group_reference() -> GroupReference {
    let path = repo_root().join("tests/fixtures/faces/group/opencv_group_reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// The native-size bounds, on group photos (eight faces at 5–10% of the photo's width; the same
/// scene at 4000 × 3000, 1600 × 1200 and 800 × 600, shrunk with INTER_AREA and re-encoded as
/// JPEG, and an EXIF-rotated copy; `gen_group_photos.py`) and on a real one (insightface's demo
/// photo t1.jpg, six people, at its native 1280 × 886, shrunk to 800 × 553, and EXIF-rotated;
/// `gen_real_group_photos.py`), against OpenCV's `FaceDetectorYN` /
/// `FaceRecognizerSF` at each photo's NATIVE size, with the function at its defaults: every face
/// OpenCV finds above the default threshold is found with box IoU ≥ 0.9, its landmarks within
/// 2% of the face's width (Euclidean), its embedding at cosine ≥ 0.98, no other face is found,
/// and the same-person decisions at 0.363 are OpenCV's.
#[test]
fn group_photos_match_opencv_at_native_size_at_the_defaults() {
    let (faces, options) = yunet();
    let reference = group_reference();
    assert!(options.min_score >= reference.record_threshold);
    let (mut min_iou, mut max_lm, mut min_cos) = (f32::MAX, 0.0f32, f32::MAX);
    let (mut same, mut different) = (0, 0);
    for p in &reference.photos {
        let image = reference_photo(&p.file, (p.width, p.height));
        let ours = faces.analyze(&image, &options).unwrap();
        let refs: Vec<&ReferenceFace> = p
            .faces
            .iter()
            .filter(|r| r.score > options.min_score)
            .collect();
        assert!(
            refs.len() >= p.people,
            "{}: OpenCV finds {} of {} people",
            p.file,
            refs.len(),
            p.people
        );
        assert_eq!(ours.len(), refs.len(), "{}: faces found", p.file);
        let mut pairs: Vec<(&ReferenceFace, &Face)> = Vec::new();
        for (k, r) in refs.iter().enumerate() {
            let (i, v) = ours
                .iter()
                .enumerate()
                .map(|(i, f)| (i, iou(bbox(f), r.bbox)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("a face");
            let f = &ours[i];
            let lm = f
                .detection
                .landmarks
                .iter()
                .zip(&r.landmarks)
                .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]))
                .fold(0.0, f32::max)
                / r.bbox[2];
            let cos = cosine(&f.embedding, &r.embedding);
            eprintln!(
                "{} face {k} ({:.0} px): IoU {v:.4}, landmarks {:.2}% of the width, score {:.3} vs {:.3}, cosine {cos:.4}",
                p.file,
                r.bbox[2],
                lm * 100.0,
                f.detection.score,
                r.score
            );
            assert!(v >= 0.9, "{} face {k}: IoU {v}", p.file);
            assert!(
                lm <= 0.02,
                "{} face {k}: landmarks off by {lm} of the width",
                p.file
            );
            assert!(cos >= 0.98, "{} face {k}: cosine {cos}", p.file);
            assert!(
                pairs.iter().all(|(_, g)| !std::ptr::eq(*g, f)),
                "matched twice"
            );
            (min_iou, max_lm, min_cos) = (min_iou.min(v), max_lm.max(lm), min_cos.min(cos));
            pairs.push((r, f));
        }
        for (a, (ra, fa)) in pairs.iter().enumerate() {
            for (rb, fb) in &pairs[a + 1..] {
                let theirs = cosine(&ra.embedding, &rb.embedding);
                let mine = cosine(&fa.embedding, &fb.embedding);
                assert_eq!(
                    mine >= reference.cosine_threshold,
                    theirs >= reference.cosine_threshold,
                    "{}: our cosine {mine}, OpenCV's {theirs}",
                    p.file
                );
                if theirs >= reference.cosine_threshold {
                    same += 1;
                } else {
                    different += 1;
                }
            }
        }
    }
    eprintln!(
        "all group photos: min IoU {min_iou:.4}, max landmark error {:.2}% of the width, min cosine {min_cos:.4}; {same} same-person and {different} different-person pairs",
        max_lm * 100.0
    );
    assert!(
        same > 0 && different > 0,
        "{same} same, {different} different"
    );
}

/// A phone's HEIC and a browser's AVIF of a group photo give the faces its JPEG gives (HEIC/AVIF
/// bounds: box IoU ≥ 0.95, embedding cosine ≥ 0.99): each format decoded by its own library, the
/// same faces found at the defaults, none more. The files are `gen_heif_avif.py`'s encodes of
/// the committed JPEGs: t1 at HEIC quality 80 / AVIF 90, the 8-face photo at 90 / 95, because
/// one of its faces moves under any lossy re-encode (a plain JPEG re-encode at quality 90 moved
/// it to IoU 0.86, cosine 0.968; see the generator), which would test the detector, not the
/// decoder.
#[test]
fn heic_and_avif_photos_give_the_faces_of_their_jpeg() {
    coldpath_tests::image_codecs();
    let (faces, options) = yunet();
    for (jpeg, copies) in [
        (
            "tests/fixtures/faces/group/group8-1600.jpg",
            ["group8-1600.heic", "group8-1600.avif"],
        ),
        (
            "tests/fixtures/faces/group/insightface-t1-1280.jpg",
            ["t1.heic", "t1.avif"],
        ),
    ] {
        let want = faces.analyze(&photo(jpeg), &options).unwrap();
        assert!(want.len() >= 6, "{jpeg}: {} faces", want.len());
        for copy in copies {
            let rel = format!("shared/image/fixtures/heif/{copy}");
            let got = faces.analyze(&photo(&rel), &options).unwrap();
            assert_eq!(got.len(), want.len(), "{copy}: faces found");
            let (mut min_iou, mut min_cos) = (f32::MAX, f32::MAX);
            for w in &want {
                let (i, v) = got
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (i, iou(bbox(g), bbox(w))))
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("a face");
                let cos = cosine(&got[i].embedding, &w.embedding);
                assert!(v >= 0.95, "{copy}: IoU {v}");
                assert!(cos >= 0.99, "{copy}: cosine {cos}");
                min_iou = min_iou.min(v);
                min_cos = min_cos.min(cos);
            }
            eprintln!(
                "{copy}: {} faces, IoU >= {min_iou:.4}, cosine >= {min_cos:.4}",
                got.len()
            );
        }
    }
}
