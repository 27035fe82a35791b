//! Side-by-side benchmark of the faces function against OpenCV's own face API on the same
//! models (YuNet 2023mar + SFace 2021dec int8bq), the same photos and the same thread count, in
//! one run:
//!
//! - `function`: this function in-process, per photo: decode the JPEG/PNG bytes (EXIF applied),
//!   letterbox, detect, align and embed every face (`coldpath_image::decode` +
//!   `AnalyzeFaces::analyze`);
//! - `handler` (reported, not a target): the whole Lambda handler on a direct invoke
//!   (`{"image": {"s3": ...}}` from the local object directory, response JSON included);
//! - `opencv`: `benches/opencv_ref.py` (cv2.imdecode, cv2.FaceDetectorYN at the photo's native
//!   size, cv2.FaceRecognizerSF alignCrop + feature per face), a child process that times itself;
//! - `opencv_lb640`: the same with the photo letterboxed to 640 × 640 first, the work the
//!   function does.
//!
//! Each round runs the contenders in turn (Rust, then an `opencv_ref.py` process per mode, each
//! with one untimed warm-up round), so drift on a noisy machine hits all of them alike; figures
//! are medians over rounds and repeats. Thread counts: `BENCH_THREADS` (default `1,<CPUs>`),
//! applied as `COLDPATH_INTRA_THREADS` for the function and `cv2.setNumThreads` for OpenCV.
//! Peak memory: the function's `VmHWM` (this process holds only the Rust contender; OpenCV runs
//! in child processes) after the first thread count, and `opencv_ref.py`'s own peak RSS.
//! Results go to stdout and `target/bench/faces.json`. Its top-level `query_latency_ms` is the
//! figure `coldpath plan` prices a photo with: the function's median on the largest photo at
//! one thread (the template gives faces one vCPU; a phone upload is the large photo).
//!
//! Photos: the four sample photos, or `BENCH_PHOTOS` (comma-separated paths from the repository
//! root; e.g. the group photos in `tests/fixtures/faces/group/` for the cost curve).
//!
//! Run: `eval "$(make -s env)" && cargo bench -p coldpath-faces --bench faces`.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use coldpath_aws::{ResultSink, SinkTarget};
use coldpath_core::{MapEnv, ProcessEnv, config};
use coldpath_faces::{AnalyzeFaces, FacesConfig, FacesService};
use coldpath_faces_function::{FacesFunction, handle};
use coldpath_image::{ImageLoader, decode};
use coldpath_io::{LocalObjectDir, NoObjectStore};
use coldpath_runtime::{Context, LambdaEvent};
use coldpath_test_support::bench::{machine, median, peak_rss_mib};
use serde_json::{Value, json};

const DEFAULT_PHOTOS: [&str; 4] = [
    "events/data/photos/kafka.jpg",
    "events/data/photos/astronaut.jpg",
    "events/data/photos/group.jpg",
    "events/data/photos/cat.jpg",
];

/// `BENCH_PHOTOS` or the sample photos.
fn photos() -> &'static [String] {
    static PHOTOS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PHOTOS.get_or_init(|| match config::get(&ProcessEnv, "BENCH_PHOTOS") {
        Some(list) => list.split(',').map(|p| p.trim().to_string()).collect(),
        None => DEFAULT_PHOTOS.iter().map(|p| p.to_string()).collect(),
    })
}

struct Settings {
    rounds: usize,
    /// Timed repeats of every photo per round and contender.
    repeats: usize,
    threads: Vec<usize>,
}

fn settings() -> Settings {
    let env = ProcessEnv;
    let get =
        |name, default| config::positive_or(&env, name, default).unwrap_or_else(|e| panic!("{e}"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match config::get(&env, "BENCH_THREADS") {
        None => {
            let mut t = vec![1, cpus];
            t.dedup();
            t
        }
        Some(list) => list
            .split(',')
            .map(|t| {
                t.trim()
                    .parse()
                    .expect("BENCH_THREADS: comma-separated counts")
            })
            .collect(),
    };
    Settings {
        rounds: get("BENCH_ROUNDS", 5),
        repeats: get("BENCH_REPEATS", 3),
        threads,
    }
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

/// One `opencv_ref.py` process: `repeats` timed rounds over every photo after one warm-up.
/// Returns per-photo times (ms) and the process's report.
fn opencv(threads: usize, repeats: usize, mode: &str) -> (Vec<Vec<f64>>, Value) {
    let python = std::env::var("COLDPATH_PYTHON").expect("COLDPATH_PYTHON (eval bootstrap env)");
    let out = Command::new(python)
        .current_dir(repo())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/opencv_ref.py"
        ))
        .arg("--photos")
        .args(photos())
        .args(["--threads", &threads.to_string()])
        .args(["--rounds", &repeats.to_string(), "--warmup", "1"])
        .args(["--mode", mode])
        .output()
        .expect("run opencv_ref.py");
    assert!(
        out.status.success(),
        "opencv_ref.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("opencv_ref.py JSON");
    let times = photos()
        .iter()
        .map(|p| {
            v["per_photo_ms"][p.as_str()]
                .as_array()
                .expect("per_photo_ms")
                .iter()
                .map(|t| t.as_f64().unwrap())
                .collect()
        })
        .collect();
    (times, v)
}

fn main() {
    let s = settings();
    let bytes: Vec<Vec<u8>> = photos()
        .iter()
        .map(|p| std::fs::read(repo().join(p)).expect("photo"))
        .collect();
    let mut report = Vec::new();
    println!(
        "faces benchmark: {} rounds x {} repeats, photos {:?}, machine {}",
        s.rounds,
        s.repeats,
        photos(),
        machine()
    );
    let mut hwm_first = None;
    let mut pixels = vec![0u64; bytes.len()];
    // (photo index, median ms) of the largest photo at one thread: the plan's figure.
    let mut plan_figure: Option<(usize, f64)> = None;
    for &threads in &s.threads {
        let mut vars: Vec<(String, String)> = std::env::vars().collect();
        vars.push(("COLDPATH_INTRA_THREADS".into(), threads.to_string()));
        let config = FacesConfig::from_env(&MapEnv::new(vars)).expect("config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (faces, record) = rt
            .block_on(coldpath_faces::init_faces(&config, NoObjectStore))
            .expect("init");
        let faces = Arc::new(faces);
        let sink_dir = tempfile::tempdir().unwrap();
        let service = Arc::new(FacesFunction::new(
            FacesService::with_shared(
                Arc::clone(&faces),
                ImageLoader::new(LocalObjectDir::new(repo()), config.image_limits, false),
                config.detect,
            ),
            ResultSink::new("faces", SinkTarget::Local(sink_dir.path().to_path_buf())).unwrap(),
        ));

        let n = photos().len();
        let (mut f, mut h, mut cv, mut lb) = (
            vec![vec![]; n],
            vec![vec![]; n],
            vec![vec![]; n],
            vec![vec![]; n],
        );
        let mut found = vec![0usize; n];
        let mut cv_reports = Vec::new();
        for round in 0..s.rounds {
            // The function: warm-up pass, then `repeats` timed passes.
            for rep in 0..=s.repeats {
                for (i, b) in bytes.iter().enumerate() {
                    let t = Instant::now();
                    let image = decode(b, &config.image_limits).expect("decode").image;
                    pixels[i] = u64::from(image.width()) * u64::from(image.height());
                    let out = faces.analyze(&image, &config.detect).expect("analyze");
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    found[i] = out.len();
                    if rep > 0 {
                        f[i].push(ms);
                    }
                }
            }
            for rep in 0..=s.repeats {
                for (i, p) in photos().iter().enumerate() {
                    // Bucket = the path's first folder, under the repository root.
                    let uri = format!("s3://{p}");
                    let payload = json!({"image": {"s3": uri}});
                    let t = Instant::now();
                    rt.block_on(handle(
                        Arc::clone(&service),
                        LambdaEvent::new(payload, Context::default()),
                    ))
                    .expect("handler");
                    if rep > 0 {
                        h[i].push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
            let (times, native) = opencv(threads, s.repeats, "native");
            times
                .into_iter()
                .enumerate()
                .for_each(|(i, t)| cv[i].extend(t));
            let (times, boxed) = opencv(threads, s.repeats, "letterbox640");
            times
                .into_iter()
                .enumerate()
                .for_each(|(i, t)| lb[i].extend(t));
            if round == 0 {
                cv_reports.push(native);
                cv_reports.push(boxed);
            }
        }
        if hwm_first.is_none() {
            hwm_first = Some(peak_rss_mib());
        }
        let mut rows = Vec::new();
        println!(
            "\nthreads {threads} (cold start {:.0} ms; function peak RSS {:.1} MiB after the 1st thread count)",
            record.total_ms,
            hwm_first.unwrap_or(f64::NAN)
        );
        println!(
            "{:<34} {:>6} {:>10} {:>10} {:>10} {:>12} {:>9} {:>9}",
            "photo",
            "faces",
            "function",
            "handler",
            "opencv",
            "opencv_lb640",
            "f/opencv",
            "f/lb640"
        );
        for (i, p) in photos().iter().enumerate() {
            let (mf, mh, mc, ml) = (median(&f[i]), median(&h[i]), median(&cv[i]), median(&lb[i]));
            let cv_faces = &cv_reports[0]["faces"][p.as_str()];
            let lb_faces = &cv_reports[1]["faces"][p.as_str()];
            println!(
                "{:<34} {:>6} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>10.2}ms {:>8.3}x {:>8.3}x",
                p,
                format!("{}/{}/{}", found[i], cv_faces, lb_faces),
                mf,
                mh,
                mc,
                ml,
                mf / mc,
                mf / ml
            );
            rows.push(json!({
                "photo": p, "faces": {"function": found[i], "opencv": cv_faces, "opencv_lb640": lb_faces},
                "median_ms": {"function": mf, "handler": mh, "opencv": mc, "opencv_lb640": ml},
                "function_over_opencv": mf / mc, "function_over_opencv_lb640": mf / ml,
            }));
        }
        if threads == 1 {
            let largest = (0..n)
                .max_by_key(|&i| pixels[i])
                .expect("at least one photo");
            plan_figure = Some((largest, median(&f[largest])));
        }
        let total = |v: &[Vec<f64>]| v.iter().map(|x| median(x)).sum::<f64>();
        println!(
            "all photos: function {:.1} ms, opencv {:.1} ms ({:.3}x), opencv_lb640 {:.1} ms ({:.3}x); opencv peak RSS {} / {} MiB",
            total(&f),
            total(&cv),
            total(&f) / total(&cv),
            total(&lb),
            total(&f) / total(&lb),
            cv_reports[0]["rss_peak_mib"],
            cv_reports[1]["rss_peak_mib"]
        );
        report.push(json!({
            "threads": threads,
            "cold_start": record,
            "photos": rows,
            "sum_of_medians_ms": {"function": total(&f), "opencv": total(&cv), "opencv_lb640": total(&lb)},
            "peak_rss_mib": {"function_after_first_thread_count": hwm_first,
                              "opencv": cv_reports[0]["rss_peak_mib"], "opencv_lb640": cv_reports[1]["rss_peak_mib"]},
            "opencv_version": cv_reports[0]["opencv"],
        }));
    }
    let out = repo().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let mut doc =
        json!({"machine": machine(), "rounds": s.rounds, "repeats": s.repeats, "runs": report});
    if let Some((i, ms)) = plan_figure {
        doc["query_latency_ms"] = json!({"function": {"p50": ms}});
        doc["plan_figures_from"] = json!(format!(
            "query_latency_ms: the function on the largest photo, {} ({:.1} MP), at one thread",
            photos()[i],
            pixels[i] as f64 / 1e6
        ));
    }
    std::fs::write(
        out.join("faces.json"),
        serde_json::to_string_pretty(&doc).unwrap(),
    )
    .expect("write target/bench/faces.json");
}
