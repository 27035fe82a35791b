#!/usr/bin/env python3
"""Python cold start equivalent of `embeddings invoke events/embeddings/direct.json`.

    .venv/bin/python functions/hosts/embeddings/benches/python_cold.py \
        [--event events/embeddings/direct.json] [--model-dir DIR] [--threads N] [--graph-cache DIR]

One process does what a cold function instance does for its first request:
import the libraries, load the tokenizer and the ONNX session, embed the
event's input as one batch, print the OpenAI-shaped response, exit.
tools/cold_start.py times it against the Rust binary on the same event. The model
directory defaults to EMBEDDINGS_MODEL_SOURCE (as set by `tools/setup/bootstrap.py env`),
threads to COLDPATH_INTRA_THREADS and the truncation length to
EMBEDDINGS_MAX_TOKENS, as the function reads them.

--graph-cache DIR gives Python the same cache the function has with
COLDPATH_OPTIMIZED_MODEL_DIR: the first run saves ONNX Runtime's optimised graph
there with its weights in a separate file; later runs load that graph with
optimisation off. That is Python's best cache, for the "each side's best cache"
cold-start comparison.
"""

import argparse
import json
import os
import sys
from pathlib import Path

# Imported here, not lazily: loading numpy/onnxruntime/tokenizers is part of
# the cold start being measured. python_ref sits next to this file.
import onnxruntime as ort
from python_ref import embed, load_session, load_tokenizer

REPO = Path(__file__).resolve().parents[4]
DEFAULT_MODEL_DIR = REPO / ".cache" / "models" / "all-minilm-l6-v2"
DEFAULT_EVENT = REPO / "events" / "embeddings" / "direct.json"
# The served model name the function reports (its DEFAULT_MODEL_NAME).
MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MAX_TOKENS = 256


def threads_from_env():
    """COLDPATH_INTRA_THREADS as the Rust function reads it.

    Unset or `auto` means the CPUs this process may run on (affinity mask),
    like Rust's available_parallelism, not ORT's own default (physical cores).
    """
    value = os.environ.get("COLDPATH_INTRA_THREADS", "auto")
    return len(os.sched_getaffinity(0)) if value.lower() == "auto" else int(value)


def load_cached_session(model, cache_dir, threads):
    """The session from cache_dir's optimised graph, saving it there first if missing."""
    cached = cache_dir / "model.opt.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if cached.exists():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(cached), options, providers=["CPUExecutionProvider"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(cached)
    # Weights beside the graph, as the function stores them, so a later load can map them.
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", "model.opt.weights")
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def event_texts(path):
    """The texts of an embeddings request event: `input` is one string or a list."""
    request = json.loads(Path(path).read_text(encoding="utf-8"))
    texts = request["input"]
    return [texts] if isinstance(texts, str) else texts


def response(embeddings, token_counts):
    """The OpenAI embeddings API response body."""
    tokens = int(sum(token_counts))
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(embeddings)
        ],
        "model": MODEL_NAME,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event", type=Path, default=DEFAULT_EVENT)
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("EMBEDDINGS_MODEL_SOURCE", DEFAULT_MODEL_DIR)))
    parser.add_argument(
        "--threads", type=int, default=None,
        help="intra-op threads (default: COLDPATH_INTRA_THREADS, else all usable CPUs)",
    )
    parser.add_argument("--graph-cache", type=Path, default=None,
                        help="save/load ONNX Runtime's optimised graph in this directory")
    args = parser.parse_args()
    threads = threads_from_env() if args.threads is None else args.threads
    max_tokens = int(os.environ.get("EMBEDDINGS_MAX_TOKENS", DEFAULT_MAX_TOKENS))
    tokenizer = load_tokenizer(args.model_dir / "tokenizer.json", max_tokens)
    if args.graph_cache is None:
        session = load_session(args.model_dir / "model.onnx", threads)
    else:
        session = load_cached_session(args.model_dir / "model.onnx", args.graph_cache, threads)
    embeddings, token_counts = embed(tokenizer, session, event_texts(args.event))
    json.dump(response(embeddings.tolist(), token_counts), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
