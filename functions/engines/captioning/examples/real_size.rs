//! One real-size captioning measurement in a fresh process, for
//! `functions/engines/captioning/benches/real_size.py` (`make bench-captioning-real`), which runs it once
//! per batch size and cache mode so that each process's peak memory belongs to one batch size.
//!
//! It loads the model (`CAPTIONING_MODEL_SOURCE`, a local optimum export; the usual
//! `CAPTIONING_*` and `COLDPATH_*` settings apply), captions one image (the cold start's first
//! caption), then captions `BENCH_BATCH` images (the committed test images, repeated, already
//! preprocessed: decode and resize are not timed) `BENCH_ROUNDS` times, greedy, and prints one
//! JSON object: load and first-caption seconds, per-round seconds, generated tokens, and the
//! process's peak resident memory (`VmHWM`).
//!
//! Run: `eval "$(python3 tools/setup/bootstrap.py env)"; CAPTIONING_MODEL_SOURCE=DIR BENCH_BATCH=8
//! cargo run --release -p coldpath-captioning --example real_size`

use std::path::Path;
use std::time::Instant;

use coldpath_captioning::model::{CaptionModel, CaptionModelConfig, DecodeOptions};
use coldpath_core::{ProcessEnv, config};
use coldpath_models::{OrtRuntime, SessionConfig};
use coldpath_test_support::bench::{files_with_extension, peak_rss_mib};
use serde_json::json;

fn main() {
    let env = ProcessEnv;
    let batch = config::positive_or(&env, "BENCH_BATCH", 1).expect("BENCH_BATCH");
    let rounds = config::positive_or(&env, "BENCH_ROUNDS", 3).expect("BENCH_ROUNDS");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let config = CaptionModelConfig::from_env(&env).expect("captioning config");
    let dir = std::path::PathBuf::from(
        std::env::var("CAPTIONING_MODEL_SOURCE").expect("CAPTIONING_MODEL_SOURCE"),
    );
    let session = SessionConfig::from_env(&env).expect("session config");
    let started = Instant::now();
    let runtime = OrtRuntime::load(&OrtRuntime::library_from_env(&env)).expect("runtime");
    let model = CaptionModel::load(&config, &dir, &runtime, &session).expect("load");
    let load_s = started.elapsed().as_secs_f64();

    let images: Vec<image::RgbImage> =
        files_with_extension(&repo.join("tests/fixtures/captioning/images"), "png")
            .iter()
            .map(|p| image::open(p).expect("image").to_rgb8())
            .collect();
    let options = DecodeOptions {
        num_beams: 1,
        use_cache: config.use_cache,
    };

    let first = Instant::now();
    let one = model
        .preprocessor()
        .pixel_values(&[&images[0]])
        .expect("preprocess");
    let captions = model
        .caption_pixels_with(one.view(), &[None], &options)
        .expect("first caption");
    let first_caption_s = first.elapsed().as_secs_f64();

    let refs: Vec<&image::RgbImage> = (0..batch).map(|i| &images[i % images.len()]).collect();
    let pixels = model
        .preprocessor()
        .pixel_values(&refs)
        .expect("preprocess");
    let limits = vec![None; batch];
    let mut per_round = Vec::new();
    let mut tokens = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let out = model
            .caption_pixels_with(pixels.view(), &limits, &options)
            .expect("caption");
        per_round.push(t.elapsed().as_secs_f64());
        tokens = out.iter().map(|c| c.token_ids.len()).sum::<usize>();
    }
    println!(
        "{}",
        json!({
            "batch": batch,
            "use_cache": options.use_cache,
            "threads": session.intra_threads.resolve(),
            "load_s": load_s,
            "first_caption_s": first_caption_s,
            "first_caption_tokens": captions[0].token_ids.len(),
            "max_new_tokens": model.generation().max_new_tokens,
            "per_round_s": per_round,
            "tokens_per_round": tokens,
            "peak_rss_mib": peak_rss_mib(),
        })
    );
}
