//! Three-way benchmark of the embeddings function, side by side in one run, same model and
//! thread count:
//!
//! - `function`: this function in-process, through its Lambda handler (request parsing,
//!   tokenisation, inference, pooling, response JSON);
//! - `python`: Python onnxruntime + tokenizers doing the same pipeline (`python_ref.py`, a child
//!   process that times itself, so pipe overhead is not counted);
//! - `floor`: the function's own ONNX Runtime session run on pre-tokenised tensors, the cost
//!   nothing can beat;
//! - `pipeline_without_handler` (reported, not a target): `Embed::embed` alone, which tells the
//!   handler's own cost (JSON in and out, the hop to a blocking thread) apart from the model's.
//!
//! Each round runs the three in turn, so drift on a noisy machine hits all of them alike; the
//! figures are medians and percentiles over all rounds, plus the median of per-round ratios.
//! Run with `make bench`; results go to stdout and `target/bench/embeddings.json`.

use std::process::Command;
use std::sync::Arc;

use coldpath_core::{MapEnv, ProcessEnv, config};
use coldpath_embeddings::{EmbeddingsConfig, EmbeddingsService, OnnxEmbedder};
use coldpath_embeddings_function::{EmbeddingsFunction, handle};
use coldpath_io::NoObjectStore;
use coldpath_models::SessionPool;
use coldpath_runtime::{Context, LambdaEvent};
use coldpath_test_support::bench::{JsonPeer, machine, median, time_calls};
use ndarray::Array2;
use ort::value::Tensor;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

const QUERY: &str = "photos of my dog at the beach last summer";
/// Query calls each contender makes before the next one takes over.
const CHUNK: usize = 20;

/// 32 texts of about 20 words, built from fixed parts so every run embeds the same batch.
fn batch_texts() -> Vec<String> {
    let subjects = [
        "my grandmother",
        "two children",
        "a golden retriever",
        "the wedding party",
    ];
    let actions = [
        "laughing together on a wooden bench",
        "walking slowly along the rocky coastline",
        "sharing a large birthday cake with candles",
        "posing in front of an old stone church",
        "playing football in a muddy green field",
        "watching fireworks over the harbour at night",
        "reading a map beside a rented red car",
        "cooking dinner over a small camp fire",
    ];
    let mut out = Vec::with_capacity(32);
    for (i, action) in actions.iter().enumerate() {
        for (j, subject) in subjects.iter().enumerate() {
            out.push(format!(
                "A photo of {subject} {action}, taken on day {} of our long family holiday in the mountains.",
                i * 4 + j + 1
            ));
        }
    }
    out
}

struct Settings {
    rounds: usize,
    latency_iters: usize,
    batch_iters: usize,
    threads: usize,
}

fn settings() -> Settings {
    let env = ProcessEnv;
    let get =
        |name, default| config::positive_or(&env, name, default).unwrap_or_else(|e| panic!("{e}"));
    Settings {
        rounds: get("BENCH_ROUNDS", 5),
        latency_iters: get("BENCH_LATENCY_ITERS", 200),
        batch_iters: get("BENCH_BATCH_ITERS", 10),
        threads: get("BENCH_THREADS", 1),
    }
}

/// The Python reference, loaded once, timing itself on request.
fn start_python_ref(model_dir: &str, threads: usize, max_tokens: usize) -> JsonPeer {
    let python = std::env::var("COLDPATH_PYTHON").expect("COLDPATH_PYTHON (run with `make bench`)");
    let mut command = Command::new(python);
    command
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python_ref.py"
        ))
        .args(["--model", &format!("{model_dir}/model.onnx")])
        .args(["--tokenizer", &format!("{model_dir}/tokenizer.json")])
        .args([
            "--threads",
            &threads.to_string(),
            "--max-tokens",
            &max_tokens.to_string(),
        ]);
    JsonPeer::start(command, "python_ref.py")
}

/// The floor: one session and input tensors built once, then only `Session::run` is timed.
struct Floor {
    /// Input tensors per workload (`[input_ids, attention_mask, token_type_ids]`).
    inputs: Vec<[Tensor<i64>; 3]>,
}

impl Floor {
    fn new(config: &EmbeddingsConfig, workloads: &[&[String]]) -> Floor {
        let dir = match &config.model.source {
            coldpath_models::ModelSource::Local(d) => d.clone(),
            other => panic!("the bench needs a local model, not {other}"),
        };
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: config.pipeline.max_tokens,
                ..Default::default()
            }))
            .expect("truncation");
        tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
        let inputs = workloads
            .iter()
            .map(|texts| {
                let enc = tokenizer
                    .encode_batch(texts.to_vec(), true)
                    .expect("encode");
                let (b, s) = (enc.len(), enc[0].len());
                let tensor = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| {
                    let flat: Vec<i64> = enc
                        .iter()
                        .flat_map(|e| f(e).iter().map(|&x| i64::from(x)))
                        .collect();
                    Tensor::from_array(Array2::from_shape_vec((b, s), flat).unwrap()).unwrap()
                };
                [
                    tensor(&|e| e.get_ids()),
                    tensor(&|e| e.get_attention_mask()),
                    tensor(&|e| e.get_type_ids()),
                ]
            })
            .collect();
        Floor { inputs }
    }

    /// Runs the function's own session on the prepared tensors: the same session object, so the
    /// only difference from the function is everything around `Session::run`.
    fn time(
        &self,
        sessions: &SessionPool,
        workload: usize,
        iters: usize,
        warmup: usize,
    ) -> Vec<f64> {
        let [ids, mask, types] = &self.inputs[workload];
        time_calls(iters, warmup, || {
            sessions.with(|session| {
                let outputs = session
                    .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask, "token_type_ids" => types])
                    .expect("floor run");
                drop(outputs);
            })
        })
    }
}

/// The function through its Lambda handler, as the runtime loop calls it.
fn time_function(
    rt: &tokio::runtime::Runtime,
    service: &Arc<EmbeddingsFunction<OnnxEmbedder>>,
    payload: &Value,
    iters: usize,
    warmup: usize,
) -> Vec<f64> {
    time_calls(iters, warmup, || {
        let event = LambdaEvent::new(payload.clone(), Context::default());
        let response = rt
            .block_on(handle(Arc::clone(service), event))
            .expect("handler");
        drop(response);
    })
}

/// The pipeline alone (tokenise, run, pool), without the handler's JSON and thread hop.
fn time_pipeline(
    service: &EmbeddingsService<OnnxEmbedder>,
    texts: &[String],
    iters: usize,
    warmup: usize,
) -> Vec<f64> {
    use coldpath_embeddings::Embed;
    time_calls(iters, warmup, || {
        let embedded = service.embedder().embed(texts).expect("embed");
        drop(embedded);
    })
}

/// Nearest-rank percentile; at p = 50 it is `median`'s sample.
fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[rank]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let s = settings();
    let threads = s.threads.to_string();
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.push(("COLDPATH_INTRA_THREADS".into(), threads.clone()));
    let config = EmbeddingsConfig::from_env(&MapEnv::new(vars)).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (service, record) = rt
        .block_on(coldpath_embeddings::init(&config, NoObjectStore))
        .expect("init");
    let service = Arc::new(EmbeddingsFunction::new(service));
    let model_dir = match &config.model.source {
        coldpath_models::ModelSource::Local(d) => d.display().to_string(),
        other => panic!("the bench needs a local model, not {other}"),
    };
    let mut python = start_python_ref(&model_dir, s.threads, config.pipeline.max_tokens);
    let batch = batch_texts();
    let query = [QUERY.to_string()];
    let (floor_query, floor_batch) = (0, 1);
    let floor = Floor::new(&config, &[&query, &batch]);
    let sessions = service.embeddings.embedder().sessions();

    let query_payload = json!({"input": QUERY});
    let batch_payload = json!({"input": batch});
    let (mut lat_f, mut lat_p, mut lat_0, mut lat_e) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut bat_f, mut bat_p, mut bat_0) = (Vec::new(), Vec::new(), Vec::new());
    let mut round_ratios: Vec<[f64; 4]> = Vec::new();
    eprintln!(
        "embeddings bench: {} rounds × ({} query, {} batch) calls each, {} thread(s)",
        s.rounds, s.latency_iters, s.batch_iters, s.threads
    );
    for round in 0..s.rounds {
        // Within a round the contenders alternate in short chunks, so a slow spell of this
        // shared machine lands on all of them rather than on whichever ran during it.
        let (mut f, mut e, mut z, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // The order rotates from chunk to chunk: whoever runs right after another process has
        // had the memory bus pays for it, and that must not always be the same contender.
        for chunk in 0..s.latency_iters.div_ceil(CHUNK) {
            for turn in 0..4 {
                match (chunk + turn) % 4 {
                    0 => f.extend(time_function(&rt, &service, &query_payload, CHUNK, 2)),
                    1 => e.extend(time_pipeline(
                        &service.embeddings,
                        &[QUERY.to_string()],
                        CHUNK,
                        2,
                    )),
                    2 => z.extend(floor.time(sessions, floor_query, CHUNK, 2)),
                    _ => p.extend(
                        python
                            .times(json!({"op": "latency", "text": QUERY, "iters": CHUNK, "warmup": 2}))
                            .0,
                    ),
                }
            }
        }
        let (mut bf, mut bz, mut bp) = (Vec::new(), Vec::new(), Vec::new());
        for call in 0..s.batch_iters {
            for turn in 0..3 {
                match (call + turn) % 3 {
                    0 => bf.extend(time_function(&rt, &service, &batch_payload, 1, 1)),
                    1 => bz.extend(floor.time(sessions, floor_batch, 1, 1)),
                    _ => bp.extend(
                        python
                            .times(json!({"op": "batch", "texts": batch, "iters": 1, "warmup": 1}))
                            .0,
                    ),
                }
            }
        }
        round_ratios.push([
            median(&f) / median(&z),
            median(&f) / median(&p),
            median(&bf) / median(&bz),
            median(&bf) / median(&bp),
        ]);
        eprintln!(
            "round {}: query p50 function {:.3} ms (pipeline {:.3}), floor {:.3} ms, python {:.3} ms; batch p50 function {:.1} ms, floor {:.1} ms, python {:.1} ms",
            round + 1,
            median(&f),
            median(&e),
            median(&z),
            median(&p),
            median(&bf),
            median(&bz),
            median(&bp)
        );
        lat_f.extend(f);
        lat_e.extend(e);
        lat_0.extend(z);
        lat_p.extend(p);
        bat_f.extend(bf);
        bat_0.extend(bz);
        bat_p.extend(bp);
    }
    let ratio = |k: usize| median(&round_ratios.iter().map(|r| r[k]).collect::<Vec<_>>());
    let throughput = |samples: &[f64]| batch.len() as f64 / (median(samples) / 1e3);
    let report = json!({
        "benchmark": "embeddings",
        "model": config.model.name,
        "threads": s.threads,
        "machine": machine(),
        "rounds": s.rounds,
        "cold_start_in_process": record,
        "query_latency_ms": {
            "text": QUERY,
            "function": {"p50": median(&lat_f), "p99": percentile(&lat_f, 99.0)},
            "pipeline_without_handler": {"p50": median(&lat_e), "p99": percentile(&lat_e, 99.0)},
            "python": {"p50": median(&lat_p), "p99": percentile(&lat_p, 99.0)},
            "floor": {"p50": median(&lat_0), "p99": percentile(&lat_0, 99.0)},
            "function_over_floor_p50": ratio(0),
            "function_over_python_p50": ratio(1),
        },
        "batch32_throughput_texts_per_s": {
            "function": throughput(&bat_f),
            "python": throughput(&bat_p),
            "floor": throughput(&bat_0),
            "function_time_over_floor": ratio(2),
            "function_time_over_python": ratio(3),
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let dir = coldpath_test_support::repo_root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(
        dir.join("embeddings.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write report");
}
