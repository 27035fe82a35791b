//! The raw batch floor of the embeddings model, for `make bench-serve` (`benches/load.py`): the
//! server's own session (loaded by the embeddings engine's `init`, from the same `EMBEDDINGS_*`
//! and `COLDPATH_INTRA_THREADS` settings) run back to back on one pre-tokenised batch of the
//! short query, timing only `Session::run`, as the embeddings benchmark's floor does. No HTTP,
//! JSON, tokenising or batching: what the model alone does with a batch of that size.
//!
//! `floor <batch> <seconds> [run|embed]` prints one JSON line: the batch, the runs made, texts a
//! second (requests a second, one query a request) and texts a CPU-second of the thread that ran
//! them (the figure that holds on a machine shared with other work). `embed` times the embedder's
//! own `embed_encodings` (tensors, run, pooling) instead of the bare run.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use coldpath_core::ProcessEnv;
use coldpath_embeddings::EmbeddingsConfig;
use coldpath_io::NoObjectStore;
use ndarray::Array2;
use ort::value::Tensor;
use serde_json::json;

const QUERY: &str = "photos of my dog at the beach last summer";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (batch, seconds, mode) = match args.as_slice() {
        [b, s] => (b, s, "run"),
        [b, s, m] => (b, s, m.as_str()),
        _ => bail!("usage: floor <batch> <seconds> [run|embed]"),
    };
    let batch: usize = batch.parse().context("batch")?;
    let seconds: f64 = seconds.parse().context("seconds")?;
    let config = EmbeddingsConfig::from_env(&ProcessEnv)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (service, _record) = runtime.block_on(coldpath_embeddings::init(&config, NoObjectStore))?;
    let embedder = service.embedder();
    let encodings = embedder.tokenize(&vec![QUERY.to_string(); batch])?;
    let seq = encodings[0].len();
    let tensor = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> anyhow::Result<Tensor<i64>> {
        let flat: Vec<i64> = encodings
            .iter()
            .flat_map(|e| f(e).iter().map(|&x| i64::from(x)))
            .collect();
        Ok(Tensor::from_array(Array2::from_shape_vec(
            (batch, seq),
            flat,
        )?)?)
    };
    let ids = tensor(&|e| e.get_ids())?;
    let mask = tensor(&|e| e.get_attention_mask())?;
    let types = tensor(&|e| e.get_type_ids())?;
    let run = || -> anyhow::Result<()> {
        if mode == "embed" {
            embedder.embed_encodings(&encodings)?;
            return Ok(());
        }
        embedder.sessions().with(|session| {
            let inputs = ort::inputs![
                "input_ids" => &ids,
                "attention_mask" => &mask,
                "token_type_ids" => &types
            ];
            session.run(inputs).map(drop)
        })?;
        Ok(())
    };
    for _ in 0..3 {
        run()?;
    }
    let until = Duration::from_secs_f64(seconds);
    let (started, cpu_started) = (Instant::now(), thread_cpu_seconds());
    let mut runs = 0u64;
    while started.elapsed() < until {
        run()?;
        runs += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // With one intra-op thread the session runs on this thread: its CPU time is the model's.
    let cpu = thread_cpu_seconds()
        .zip(cpu_started)
        .map(|(end, start)| end - start);
    println!(
        "{}",
        json!({
            "batch": batch,
            "tokens": seq,
            "runs": runs,
            "seconds": elapsed,
            "texts_per_s": runs as f64 * batch as f64 / elapsed,
            "ms_per_run": elapsed * 1e3 / runs as f64,
            "cpu_seconds": cpu,
            "texts_per_cpu_s": cpu.map(|c| runs as f64 * batch as f64 / c),
        })
    );
    Ok(())
}

/// CPU time this thread has used (`/proc/thread-self/schedstat`, nanoseconds on a CPU), so the
/// floor can be read per CPU-second on a machine shared with other work.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}
