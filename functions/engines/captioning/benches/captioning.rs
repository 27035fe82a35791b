//! Captioning throughput: images per second at batch 1, 8 and 32, greedy and beam search, with
//! and without the KV cache, on the generated tiny ViT-GPT2
//! (`tests/fixtures/captioning/gen_tiny_model.py`).
//!
//! Every contender captions the same 32 images (the committed test images, repeated), `batch` at a
//! time. The timed call is `CaptionModel::caption_pixels_with` on prepared pixel tensors: encoder, the
//! decoding loop and detokenisation; image decoding and resizing are left out (they do not depend
//! on the cache or the decoding). Each round runs every contender in turn, rotating the order, so
//! drift on this shared machine hits them alike; figures are medians of per-round medians. After
//! the Rust rounds the Python reference decoder (`benches/gpu_bench.py --provider cpu`, which
//! imports the parity reference's search) measures the same grid in the same run, for scale.
//!
//! This model is tiny and synthetic: absolute figures say nothing about a real ViT-GPT2; only the
//! relative effects of the cache and of batching carry over.
//!
//! Run: `eval "$(make -s env)" && cargo bench -p coldpath-captioning --bench captioning`
//! (`CAPTIONING_BENCH_ROUNDS`, default 7; `COLDPATH_INTRA_THREADS`, default all cores).
//! Results go to stdout and `target/bench/captioning.json`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use coldpath_captioning::model::{CaptionModel, CaptionModelConfig, DecodeOptions};
use coldpath_core::{MapEnv, ProcessEnv, config};
use coldpath_models::{OrtRuntime, SessionConfig};
use coldpath_test_support::bench::{files_with_extension, machine, median};
use ndarray::{Array4, Axis};
use serde_json::{Value, json};

const BATCHES: [usize; 3] = [1, 8, 32];
const BEAMS: [usize; 2] = [1, 3];

/// The committed test images, preprocessed, repeated to `n`.
fn pixels(model: &CaptionModel, images_dir: &Path, n: usize) -> Array4<f32> {
    let images: Vec<image::RgbImage> = files_with_extension(images_dir, "png")
        .iter()
        .map(|p| image::open(p).expect("image").to_rgb8())
        .collect();
    let refs: Vec<&image::RgbImage> = (0..n).map(|i| &images[i % images.len()]).collect();
    model
        .preprocessor()
        .pixel_values(&refs)
        .expect("preprocess")
}

fn main() {
    let rounds = config::positive_or(&ProcessEnv, "CAPTIONING_BENCH_ROUNDS", 7).expect("rounds");
    let session = SessionConfig::from_env(&ProcessEnv).expect("session config");
    let threads = session.intra_threads.resolve();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let model_dir = repo.join("tests/fixtures/captioning/tiny-vit-gpt2");
    let env = MapEnv::new([("CAPTIONING_MODEL_SOURCE", model_dir.display().to_string())]);
    let config = CaptionModelConfig::from_env(&env).expect("config");
    let runtime = OrtRuntime::load(&OrtRuntime::library_from_env(&ProcessEnv)).expect("runtime");
    let model = CaptionModel::load(&config, &model_dir, &runtime, &session).expect("load");
    let max_new = model.generation().max_new_tokens;
    let all = pixels(
        &model,
        &repo.join("tests/fixtures/captioning/images"),
        *BATCHES.iter().max().unwrap_or(&1),
    );

    let mut contenders = Vec::new();
    for &beams in &BEAMS {
        for &batch in &BATCHES {
            for use_cache in [true, false] {
                contenders.push((beams, batch, use_cache));
            }
        }
    }
    // Per contender: per-round median seconds per call.
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut tokens: Vec<usize> = vec![0; contenders.len()];
    eprintln!(
        "captioning bench: {rounds} rounds, {threads} intra-op thread(s), max_new_tokens {max_new}"
    );
    for round in 0..rounds {
        for turn in 0..contenders.len() {
            let c = (turn + round) % contenders.len();
            let (num_beams, batch, use_cache) = contenders[c];
            let options = DecodeOptions {
                num_beams,
                use_cache,
            };
            let limits = vec![None; batch];
            let first = all.slice_axis(Axis(0), (0..batch).into());
            let _ = model
                .caption_pixels_with(first, &limits, &options)
                .expect("warm-up");
            // Every batch size captions the same images (all of them, `batch` at a time), so
            // the figures compare equal work: the images stop after different token counts.
            let started = Instant::now();
            let mut generated = 0;
            for chunk in 0..all.len_of(Axis(0)) / batch {
                let px = all.slice_axis(Axis(0), (chunk * batch..(chunk + 1) * batch).into());
                let out = model
                    .caption_pixels_with(px, &limits, &options)
                    .expect("caption");
                generated += out.iter().map(|c| c.token_ids.len()).sum::<usize>();
            }
            tokens[c] = generated;
            let times = [started.elapsed().as_secs_f64() / (all.len_of(Axis(0)) / batch) as f64];
            per_round[c].push(median(&times));
        }
        eprintln!("round {} done", round + 1);
    }

    let mut rust = Vec::new();
    for (c, &(num_beams, batch, use_cache)) in contenders.iter().enumerate() {
        let secs = median(&per_round[c]);
        rust.push(json!({
            "num_beams": num_beams,
            "batch": batch,
            "use_cache": use_cache,
            "ms_per_batch": secs * 1e3,
            "images_per_s": batch as f64 / secs,
            "generated_tokens": tokens[c],
        }));
    }
    // The same grid in Python (CPU provider), in this run, for scale.
    let python = std::env::var("COLDPATH_PYTHON").ok().and_then(|py| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gpu_bench.py");
        let out = Command::new(py)
            .arg(script)
            .args(["--provider", "cpu", "--threads", &threads.to_string()])
            .args(["--rounds", &rounds.to_string()])
            .arg("--model")
            .arg(&model_dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("python: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout).ok()
    });
    let report = json!({
        "benchmark": "captioning",
        "model": "tiny-vit-gpt2 (synthetic, tests/fixtures/captioning/gen_tiny_model.py)",
        "machine": machine(),
        "threads": threads,
        "rounds": rounds,
        "max_new_tokens": max_new,
        "rust": rust,
        "python_reference_cpu": python,
    });
    let text = serde_json::to_string_pretty(&report).expect("json");
    println!("{text}");
    eprintln!("\n  beams batch cache   rust img/s   python img/s");
    for r in report["rust"].as_array().into_iter().flatten() {
        let py = report["python_reference_cpu"]["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["num_beams"] == r["num_beams"]
                    && p["batch"] == r["batch"]
                    && p["use_cache"] == r["use_cache"]
            })
            .and_then(|p| p["images_per_s"].as_f64());
        eprintln!(
            "  {:>5} {:>5} {:>5} {:>12.1} {:>14}",
            r["num_beams"],
            r["batch"],
            r["use_cache"],
            r["images_per_s"].as_f64().unwrap_or(f64::NAN),
            py.map_or("-".to_string(), |v| format!("{v:.1}"))
        );
    }
    let dir = repo.join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(dir.join("captioning.json"), text).expect("write report");
}
