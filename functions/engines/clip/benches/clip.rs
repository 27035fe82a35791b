//! Side-by-side benchmark of the CLIP engine against the same ONNX towers driven from Python
//! (onnxruntime + open_clip's tokenizer and preprocessing + PIL: `benches/clip_peer.py`), in one
//! run, same models, same inputs, same intra-op thread count, both warm or both cold:
//!
//! - `query`: one text through the text tower (`ClipEngine::embed_texts`: open_clip's cleaning
//!   and tokenizer rules, ids, the session, normalisation) against the peer's tokenizer + run, and
//!   against the `floor`: a session of the same textual graph, built by `coldpath-models`'
//!   `OrtRuntime` with the engine's options and held in a `SessionPool`, run on ids tokenised
//!   once beforehand (`Session::run` and nothing else);
//! - `batch32`: 32 queries in one call (one run where the graph's batch is symbolic,
//!   `CLIP_MAX_BATCH` = 32 on both sides; 32 runs where the exporter fixed it at 1);
//! - `photo`: one 12 MP JPEG (`tests/fixtures/faces/group/group8-4000.jpg`, 4000 × 3000) from
//!   its bytes in memory: `coldpath_image::decode` (EXIF applied) + `ClipEngine::embed_images`
//!   (open_clip's preprocessing, the session, normalisation), against PIL decode + open_clip's
//!   eval transform + the session; the engine's stages are also timed apart (decode, preprocess,
//!   the model on a prepared tensor) so a miss says where the time goes;
//! - `photos8`: eight photos of 0.14 to 12 MP in one call;
//! - `cold`: a fresh process each run, from an empty `COLDPATH_CACHE_DIR` with no prepared or
//!   cached graph (ONNX Runtime optimises each graph at session build, on both sides), to the
//!   first vector, per tower: `text` (text sessions and tokenizer, one query), `vision` (vision
//!   sessions, the 12 MP photo decoded and embedded) and `both` (both towers, one query and the
//!   photo), each through the engine's own `coldpath_clip::init_towers`. The Rust child is this
//!   bench binary re-run with `CLIP_BENCH_COLD_CHILD`; the peer is `clip_peer.py --cold`, timed from Python's start
//!   (imports included). Each reports its own peak RSS (`VmHWM`), which is the peak memory of
//!   that tower's process.
//!
//! Each round runs the contenders in turn, in short alternating chunks, so drift on a noisy
//! machine hits all of them alike; figures are medians over all rounds, ratios the median of
//! per-round ratios. Models: `BENCH_CLIP_MODELS` (comma-separated directories), by default the
//! real-size random-weight ViT-B-32 and ViT-B-16-SigLIP that `make bench-clip-models` builds in
//! `target/bench/clip-models/`. Run with `make bench-clip`; results go to stdout and
//! `target/bench/clip.json`, whose top-level figures (`query_latency_ms`, `photo_latency_ms`,
//! `cold_start_ms`, `peak_rss_mib`) are the first model's (ViT-B-32, Immich's default).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use coldpath_clip::towers::{Tower, TowerKind};
use coldpath_clip::{ClipConfig, ClipTokenizer, ModelLayout, Towers};
use coldpath_core::{MapEnv, ProcessEnv, config};
use coldpath_image::{ImageLimits, RgbImage, decode};
use coldpath_io::NoObjectStore;
use coldpath_models::{OrtRuntime, SessionPool};
use coldpath_test_support::bench::{JsonPeer, machine, median, peak_rss_mib, time_calls};
use ndarray::Array2;
use ort::value::Tensor;
use serde_json::{Value, json};

const QUERY: &str = "a dog running on the beach at sunset";
/// The 12 MP photo: 4000 × 3000, a phone camera's size.
const PHOTO: &str = "tests/fixtures/faces/group/group8-4000.jpg";
/// Eight photos of 0.14 to 12 MP, landscape and portrait, two with EXIF orientation.
const PHOTOS8: [&str; 8] = [
    "tests/fixtures/faces/group/group8-4000.jpg",
    "tests/fixtures/faces/group/group8-1600.jpg",
    "tests/fixtures/faces/group/group8-1600-exif8.jpg",
    "tests/fixtures/faces/group/insightface-t1-1280.jpg",
    "tests/fixtures/faces/group/insightface-t1-1280-exif6.jpg",
    "events/data/photos/cat.jpg",
    "events/data/photos/kafka.jpg",
    "events/data/photos/astronaut.jpg",
];
/// Both sides run this many rows in one session call where the graph's batch axis is symbolic.
const MAX_BATCH: usize = 32;
/// Calls each contender makes before the next takes over.
const CHUNK: usize = 5;
const COLD_CHILD: &str = "CLIP_BENCH_COLD_CHILD";
const TOWERS: [&str; 3] = ["text", "vision", "both"];

/// 32 queries of a few words, as people type them into a photo search box.
fn batch_texts() -> Vec<String> {
    let subjects = ["my dog", "two children", "grandma", "the wedding party"];
    let scenes = [
        "on the beach at sunset",
        "in the snow",
        "at a birthday party with a cake",
        "in front of an old church",
        "playing football in a muddy field",
        "watching fireworks over the harbour",
        "in a red car",
        "by a camp fire at night",
    ];
    scenes
        .iter()
        .flat_map(|scene| subjects.iter().map(move |s| format!("{s} {scene}")))
        .collect()
}

struct Settings {
    rounds: usize,
    query_iters: usize,
    photo_iters: usize,
    cold_runs: usize,
    threads: usize,
    models: Vec<PathBuf>,
}

fn settings() -> Settings {
    let env = ProcessEnv;
    let get =
        |name, default| config::positive_or(&env, name, default).unwrap_or_else(|e| panic!("{e}"));
    let models = match config::get(&env, "BENCH_CLIP_MODELS") {
        Some(list) => list.split(',').map(|p| repo().join(p.trim())).collect(),
        None => ["vit-b-32", "siglip-b-16"]
            .iter()
            .map(|m| repo().join("target/bench/clip-models").join(m))
            .collect(),
    };
    Settings {
        rounds: get("BENCH_ROUNDS", 5),
        query_iters: get("BENCH_QUERY_ITERS", 10),
        photo_iters: get("BENCH_PHOTO_ITERS", 2),
        cold_runs: get("BENCH_COLD_RUNS", 3),
        threads: get("BENCH_THREADS", 1),
        models,
    }
}

fn repo() -> PathBuf {
    coldpath_test_support::repo_root()
}

/// The environment both sides' processes get: one model, the thread count, no graph cache of
/// any kind (neither the writable one `bootstrap.py env` sets nor a prepared one).
fn bench_env(model: &Path, threads: usize) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k != "COLDPATH_OPTIMIZED_MODEL_DIR"
                && k != "COLDPATH_PREPARED_MODEL_DIR"
                && !k.starts_with("CLIP_")
        })
        .collect();
    vars.extend([
        ("COLDPATH_INTRA_THREADS".into(), threads.to_string()),
        ("CLIP_MODEL_SOURCE".into(), model.display().to_string()),
        (
            "CLIP_MODEL_NAME".into(),
            model.file_name().unwrap().to_string_lossy().into(),
        ),
        ("CLIP_MAX_BATCH".into(), MAX_BATCH.to_string()),
        ("CLIP_WARMUP".into(), "false".into()),
    ]);
    vars
}

fn python() -> String {
    std::env::var("COLDPATH_CLIP_PYTHON").unwrap_or_else(|_| {
        repo()
            .join(".venv-fixtures/bin/python")
            .display()
            .to_string()
    })
}

fn peer_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/benches/clip_peer.py")
}

/// The Python peer, loaded once, timing itself on request.
fn start_peer(model: &Path, threads: usize) -> JsonPeer {
    let mut command = Command::new(python());
    command
        .current_dir(repo())
        .arg(peer_script())
        .args(["--model", &model.display().to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--max-batch", &MAX_BATCH.to_string()]);
    JsonPeer::start(command, "clip_peer.py")
}

/// Nearest-rank percentile; at p = 50 it is `median`'s sample.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[rank]
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn as_vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .expect("vectors")
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// One tower's sessions, built as the engine builds them (`OrtRuntime::build_session` with the
/// same options), held in a `SessionPool`.
fn tower(
    runtime: &OrtRuntime,
    config: &ClipConfig,
    layout: &ModelLayout,
    kind: TowerKind,
) -> Tower {
    let file = format!("{}/model.onnx", kind.as_str());
    let path = layout.path(&file);
    let (session, _) = runtime
        .build_session(&format!("bench/{}", kind.as_str()), &path, &config.session)
        .expect("session");
    let expected = match kind {
        TowerKind::Textual => layout.text.rules.context_length,
        TowerKind::Visual => layout.preprocess.size as usize,
    };
    Tower::new(
        kind,
        SessionPool::new(vec![session]).unwrap(),
        &path,
        expected,
        MAX_BATCH,
    )
    .expect("tower")
}

fn ids(tokenizer: &ClipTokenizer, texts: &[String]) -> Array2<u32> {
    let mut ids = Array2::<u32>::zeros((texts.len(), tokenizer.context_length()));
    for (row, text) in texts.iter().enumerate() {
        let encoded = tokenizer.encode(text).expect("encode");
        ids.row_mut(row)
            .iter_mut()
            .zip(encoded)
            .for_each(|(d, s)| *d = s);
    }
    ids
}

/// A cold start in this process (`CLIP_BENCH_COLD_CHILD` = `text`, `vision` or `both`): the
/// engine's own `init_towers` for that tower (or both), then its first vector; prints its own
/// stages and peak RSS.
fn cold_child(which: &str) {
    let started = Instant::now();
    let towers = match which {
        "text" => Towers::Text,
        "vision" => Towers::Vision,
        _ => Towers::Both,
    };
    let config = ClipConfig::from_env(&ProcessEnv, towers).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (engine, _) = rt
        .block_on(coldpath_clip::init_towers(&config, NoObjectStore, towers))
        .expect("init");
    let init_ms = started.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    if towers.text() {
        engine.embed_texts(&[QUERY.to_string()]).expect("text");
    }
    if towers.vision() {
        let bytes = std::fs::read(repo().join(PHOTO)).expect("photo");
        let image = decode(&bytes, &ImageLimits::default())
            .expect("decode")
            .image;
        engine.embed_images(&[image]).expect("photo");
    }
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "{}",
        json!({"peak_rss_mib": peak_rss_mib(), "stages_ms": {"init_ms": init_ms, "first_vectors_ms": first_ms}})
    );
}

/// One fresh process: wall time from spawn to exit, and what it reported about itself.
fn cold_run(mut command: Command, cache: &Path) -> (f64, Value) {
    let _ = std::fs::remove_dir_all(cache);
    std::fs::create_dir_all(cache).expect("cache dir");
    let t = Instant::now();
    let out = command
        .env("COLDPATH_CACHE_DIR", cache)
        .stderr(Stdio::null())
        .output()
        .expect("cold start child");
    let wall = t.elapsed().as_secs_f64() * 1e3;
    assert!(out.status.success(), "cold start child failed: {command:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("cold child said {line:?}: {e}"));
    (wall, v)
}

fn cold_starts(s: &Settings, model: &Path) -> Value {
    let cache = repo().join("target/bench/clip-cold-cache");
    let env = bench_env(model, s.threads);
    let photo = repo().join(PHOTO);
    let mut out = serde_json::Map::new();
    for which in TOWERS {
        let rust = || {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.env_clear()
                .envs(env.iter().cloned())
                .env(COLD_CHILD, which);
            c
        };
        let python = || {
            let mut c = Command::new(python());
            c.current_dir(repo())
                .env_clear()
                .envs(env.iter().cloned())
                .arg(peer_script())
                .args(["--model", &model.display().to_string()])
                .args(["--threads", &s.threads.to_string()])
                .args(["--max-batch", &MAX_BATCH.to_string()])
                .args(["--cold", which, "--text", QUERY])
                .args(["--photo", &photo.display().to_string()]);
            c
        };
        // One untimed run each (the page cache, not process state, is what it can share), then
        // the two alternately.
        cold_run(rust(), &cache);
        cold_run(python(), &cache);
        let (mut rw, mut pw, mut rr, mut pr, mut ratios) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut rstages, mut pstages) = (Value::Null, Value::Null);
        for _ in 0..s.cold_runs {
            let (w, v) = cold_run(rust(), &cache);
            rw.push(w);
            rr.push(v["peak_rss_mib"].as_f64().unwrap());
            rstages = v["stages_ms"].clone();
            let (wp, v) = cold_run(python(), &cache);
            pw.push(wp);
            pr.push(v["peak_rss_mib"].as_f64().unwrap());
            pstages = v["stages_ms"].clone();
            ratios.push(w / wp);
        }
        eprintln!(
            "  cold {which}: function {:.0} ms {:.0} MiB, python {:.0} ms {:.0} MiB",
            median(&rw),
            median(&rr),
            median(&pw),
            median(&pr)
        );
        out.insert(
            which.to_string(),
            json!({
                "function": {"wall_ms": median(&rw), "wall_ms_runs": rw, "peak_rss_mib": median(&rr), "last_stages_ms": rstages},
                "python": {"wall_ms": median(&pw), "wall_ms_runs": pw, "peak_rss_mib": median(&pr), "last_stages_ms": pstages},
                "function_over_python": median(&ratios),
                "function_rss_over_python": median(&rr) / median(&pr),
            }),
        );
    }
    let _ = std::fs::remove_dir_all(&cache);
    Value::Object(out)
}

fn p(samples: &[f64]) -> Value {
    json!({"p50": median(samples), "p99": percentile(samples, 99.0), "n": samples.len()})
}

fn bench_model(s: &Settings, model: &Path) -> Value {
    let name = model.file_name().unwrap().to_string_lossy().to_string();
    eprintln!("clip bench: {name} ({})", model.display());
    let config = ClipConfig::from_env(&MapEnv::new(bench_env(model, s.threads)), Towers::Both)
        .expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (engine, record) = rt
        .block_on(coldpath_clip::init(&config, NoObjectStore))
        .expect("init");
    let runtime = OrtRuntime::load(&config.ort_library).expect("onnx runtime");
    let layout = ModelLayout::read(model).expect("layout");
    let text_signature = engine.text_signature().expect("text tower").clone();
    let floor_text = Floor::new(&runtime, &config, &layout, &text_signature);
    let floor_vision = tower(&runtime, &config, &layout, TowerKind::Visual);
    let mut peer = start_peer(model, s.threads);
    let limits = ImageLimits::default();

    let query = vec![QUERY.to_string()];
    let batch = batch_texts();
    let query_ids = ids(engine.tokenizer().expect("text tower"), &query);
    let batch_ids = ids(engine.tokenizer().expect("text tower"), &batch);
    let photo_path = repo().join(PHOTO).display().to_string();
    let photo_bytes = std::fs::read(&photo_path).expect("photo");
    let photos8: Vec<String> = PHOTOS8
        .iter()
        .map(|p| repo().join(p).display().to_string())
        .collect();
    let photos8_bytes: Vec<Vec<u8>> = photos8.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let decoded = decode(&photo_bytes, &limits).expect("decode").image;
    let prepared = engine
        .preprocess()
        .expect("vision tower")
        .tensor(&[&decoded])
        .expect("preprocess");

    // Same work on both sides: the same ids, and vectors that agree.
    let peer_ids = peer.ask(json!({"op": "ids", "texts": query}))["ids"][0].clone();
    let ours: Vec<u32> = query_ids.row(0).to_vec();
    let ids_equal = peer_ids
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .eq(ours.iter().copied());
    let q_ours = engine.embed_texts(&query).unwrap();
    let q_peer = as_vectors(&peer.ask(json!({"op": "embed_texts", "texts": query}))["vectors"]);
    let im_ours = engine.embed_images(std::slice::from_ref(&decoded)).unwrap();
    let im_peer =
        as_vectors(&peer.ask(json!({"op": "embed_photos", "paths": [photo_path]}))["vectors"]);
    let agreement = json!({
        "query_ids_equal": ids_equal,
        "query_cosine": cosine(&q_ours[0], &q_peer[0]),
        "photo_cosine": cosine(&im_ours[0], &im_peer[0]),
    });
    eprintln!("  agreement with the peer: {agreement}");

    let embed_photos = |bytes: &[Vec<u8>]| {
        let images: Vec<RgbImage> = bytes
            .iter()
            .map(|b| decode(b, &limits).expect("decode").image)
            .collect();
        drop(engine.embed_images(&images).expect("embed"));
    };
    let text = |texts: &[String]| drop(engine.embed_texts(texts).expect("embed"));
    let query_tensor = floor_text.tensor(&query_ids);
    let batch_tensor = floor_text.tensor(&batch_ids);

    // Samples per contender (all rounds) and per-round ratios.
    let mut q: [Vec<f64>; 3] = Default::default(); // function, floor, python
    let mut b: [Vec<f64>; 3] = Default::default();
    let mut ph: [Vec<f64>; 2] = Default::default(); // function, python
    let mut st: [Vec<f64>; 3] = Default::default(); // decode, preprocess, model
    let mut p8: [Vec<f64>; 2] = Default::default();
    let mut py_stages: [Vec<f64>; 3] = Default::default();
    let mut ratios: Vec<[f64; 5]> = Vec::new();
    for round in 0..s.rounds {
        let mut r: [Vec<f64>; 10] = Default::default();
        for chunk in 0..s.query_iters.div_ceil(CHUNK) {
            for turn in 0..3 {
                match (chunk + turn) % 3 {
                    0 => r[0].extend(time_calls(CHUNK, 1, || text(&query))),
                    1 => r[1].extend(floor_text.times(&query_tensor, CHUNK)),
                    _ => r[2].extend(
                        peer.times(
                            json!({"op": "texts", "texts": query, "iters": CHUNK, "warmup": 1}),
                        )
                        .0,
                    ),
                }
            }
        }
        for turn in 0..3 {
            match (round + turn) % 3 {
                0 => r[3].extend(time_calls(1, 1, || text(&batch))),
                1 => r[4].extend(floor_text.times(&batch_tensor, 1)),
                _ => r[5].extend(
                    peer.times(json!({"op": "texts", "texts": batch, "iters": 1, "warmup": 1}))
                        .0,
                ),
            }
        }
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                r[6].extend(time_calls(s.photo_iters, 1, || {
                    embed_photos(std::slice::from_ref(&photo_bytes))
                }));
                // The engine's stages apart: where a photo's time goes.
                st[0].extend(time_calls(s.photo_iters, 0, || {
                    drop(decode(&photo_bytes, &limits).expect("decode"))
                }));
                st[1].extend(time_calls(s.photo_iters, 0, || {
                    drop(
                        engine
                            .preprocess()
                            .expect("vision tower")
                            .tensor(&[&decoded])
                            .expect("preprocess"),
                    )
                }));
                st[2].extend(time_calls(s.photo_iters, 0, || {
                    drop(floor_vision.run_images(prepared.clone()).expect("model"))
                }));
            } else {
                let (t, reply) = peer.times(json!({"op": "photos", "paths": [photo_path], "iters": s.photo_iters, "warmup": 1}));
                r[7].extend(t);
                for (k, stage) in ["decode", "preprocess", "model"].iter().enumerate() {
                    py_stages[k].extend(
                        reply["stages_ns"][stage]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_f64().unwrap() / 1e6),
                    );
                }
            }
        }
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                r[8].extend(time_calls(1, 1, || embed_photos(&photos8_bytes)));
            } else {
                r[9].extend(
                    peer.times(json!({"op": "photos", "paths": photos8, "iters": 1, "warmup": 1}))
                        .0,
                );
            }
        }
        ratios.push([
            median(&r[0]) / median(&r[1]),
            median(&r[0]) / median(&r[2]),
            median(&r[3]) / median(&r[5]),
            median(&r[6]) / median(&r[7]),
            median(&r[8]) / median(&r[9]),
        ]);
        eprintln!(
            "  round {}: query {:.2} ms (floor {:.2}, python {:.2}); 32 texts {:.1} ms (floor {:.1}, python {:.1}); 12 MP photo {:.1} ms (python {:.1}); 8 photos {:.1} ms (python {:.1})",
            round + 1,
            median(&r[0]),
            median(&r[1]),
            median(&r[2]),
            median(&r[3]),
            median(&r[4]),
            median(&r[5]),
            median(&r[6]),
            median(&r[7]),
            median(&r[8]),
            median(&r[9]),
        );
        let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9] = r;
        q[0].extend(r0);
        q[1].extend(r1);
        q[2].extend(r2);
        b[0].extend(r3);
        b[1].extend(r4);
        b[2].extend(r5);
        ph[0].extend(r6);
        ph[1].extend(r7);
        p8[0].extend(r8);
        p8[1].extend(r9);
    }
    let warm_rss = json!({
        "function_process_after_this_model": peak_rss_mib(),
        "python": peer.ask(json!({"op": "rss"}))["peak_rss_mib"],
    });
    let versions = peer.ready["versions"].clone();
    let rows = json!({"text": text_signature.fixed_batch.unwrap_or(MAX_BATCH),
                      "image": engine.vision_signature().expect("vision tower").fixed_batch.unwrap_or(MAX_BATCH)});
    let generation = text_signature.generation.as_str();
    drop(peer);
    drop((engine, floor_text, floor_vision));
    let ratio = |k: usize| median(&ratios.iter().map(|r| r[k]).collect::<Vec<_>>());
    let cold = cold_starts(s, model);
    json!({
        "model": name,
        "exporter_generation": generation,
        "rows_per_run": rows,
        "in_process_init": record,
        "agreement_with_python": agreement,
        "python_versions": versions,
        "query_latency_ms": {
            "text": QUERY,
            "function": p(&q[0]), "floor": p(&q[1]), "python": p(&q[2]),
            "function_over_floor_p50": ratio(0), "function_over_python_p50": ratio(1),
        },
        "batch32_ms": {
            "function": p(&b[0]), "floor": p(&b[1]), "python": p(&b[2]),
            "function_over_python_p50": ratio(2),
            "function_over_floor_p50": median(&b[0]) / median(&b[1]),
        },
        "photo_latency_ms": {
            "photo": PHOTO, "megapixels": 12.0,
            "function": p(&ph[0]), "python": p(&ph[1]),
            "function_over_python_p50": ratio(3),
            "function_stages_p50": {"decode": median(&st[0]), "preprocess": median(&st[1]), "model": median(&st[2])},
            "python_stages_p50": {"decode": median(&py_stages[0]), "preprocess": median(&py_stages[1]), "model": median(&py_stages[2])},
        },
        "photos8_ms": {
            "photos": PHOTOS8,
            "function": p(&p8[0]), "python": p(&p8[1]),
            "function_over_python_p50": ratio(4),
        },
        "cold_start": cold,
        "warm_peak_rss_mib": warm_rss,
    })
}

/// The floor: a session of the textual graph (built by `OrtRuntime` with the engine's options,
/// held in a `SessionPool`) run on ids tokenised into a tensor beforehand: `Session::run` alone.
struct Floor {
    sessions: SessionPool,
    input: String,
    int64: bool,
    /// Rows per run: the graph's fixed batch (1 for the current exporter), else [`MAX_BATCH`].
    rows: usize,
}

impl Floor {
    fn new(
        runtime: &OrtRuntime,
        config: &ClipConfig,
        layout: &ModelLayout,
        signature: &coldpath_clip::TowerSignature,
    ) -> Floor {
        let path = layout.path("textual/model.onnx");
        let (session, _) = runtime
            .build_session("bench/floor/textual", &path, &config.session)
            .expect("floor session");
        Floor {
            sessions: SessionPool::new(vec![session]).unwrap(),
            input: signature.input.clone(),
            int64: signature.ids_int64,
            rows: signature.fixed_batch.unwrap_or(MAX_BATCH),
        }
    }

    /// The ids as input tensors, one per run, as the engine splits them.
    fn tensor(&self, ids: &Array2<u32>) -> Vec<ort::value::DynValue> {
        ids.axis_chunks_iter(ndarray::Axis(0), self.rows)
            .map(|chunk| {
                if self.int64 {
                    Tensor::from_array(chunk.mapv(i64::from)).unwrap().into()
                } else {
                    Tensor::from_array(chunk.mapv(|i| i as i32)).unwrap().into()
                }
            })
            .collect()
    }

    fn times(&self, tensors: &[ort::value::DynValue], iters: usize) -> Vec<f64> {
        time_calls(iters, 1, || {
            self.sessions.with(|session| {
                for tensor in tensors {
                    let outputs = session
                        .run(ort::inputs![self.input.as_str() => tensor])
                        .expect("floor run");
                    drop(outputs);
                }
            })
        })
    }
}

fn main() {
    if let Some(which) = config::get(&ProcessEnv, COLD_CHILD) {
        cold_child(&which);
        return;
    }
    let s = settings();
    let mut models = Vec::new();
    for model in &s.models {
        models.push(bench_model(&s, model));
    }
    let first = &models[0];
    let report = json!({
        "benchmark": "clip",
        "machine": machine(),
        "threads": s.threads,
        "rounds": s.rounds,
        "date": std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d").output().ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "plan_figures_from": format!("the top-level figures are {}'s (the first model): query_latency_ms one text query, photo_latency_ms one 12 MP JPEG (decode + preprocess + model), cold_start_ms and peak_rss_mib per tower from a fresh process with no graph cache, peak_rss_mib at top level both towers", first["model"].as_str().unwrap()),
        "query_latency_ms": first["query_latency_ms"],
        "photo_latency_ms": first["photo_latency_ms"],
        "cold_start_ms": TOWERS.iter().map(|t| (t.to_string(), first["cold_start"][t]["function"]["wall_ms"].clone())).collect::<serde_json::Map<_, _>>(),
        "peak_rss_mib_per_tower": TOWERS.iter().map(|t| (t.to_string(), first["cold_start"][t]["function"]["peak_rss_mib"].clone())).collect::<serde_json::Map<_, _>>(),
        "peak_rss_mib": first["cold_start"]["both"]["function"]["peak_rss_mib"],
        // The both-tower cold start again in `tools/cold_start.py`'s shape, where `coldpath plan`
        // reads a process's cold start and peak memory (`commands.rust.*_summary.median`).
        "commands": {
            "rust": {
                "wall_s_summary": {"median": first["cold_start"]["both"]["function"]["wall_ms"].as_f64().map(|ms| ms / 1e3)},
                "peak_rss_kib_summary": {"median": first["cold_start"]["both"]["function"]["peak_rss_mib"].as_f64().map(|m| m * 1024.0)},
            },
            "python": {
                "wall_s_summary": {"median": first["cold_start"]["both"]["python"]["wall_ms"].as_f64().map(|ms| ms / 1e3)},
                "peak_rss_kib_summary": {"median": first["cold_start"]["both"]["python"]["peak_rss_mib"].as_f64().map(|m| m * 1024.0)},
            },
        },
        "models": models,
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(dir.join("clip.json"), text).expect("write target/bench/clip.json");
}
