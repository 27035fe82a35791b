#!/usr/bin/env python3
"""Python cold start equivalent of `embeddings invoke events/embeddings/direct.json`.

    .venv/bin/python functions/embeddings/benches/python_cold.py \
        [--event events/embeddings/direct.json] [--model-dir DIR] [--threads N]

One process does what a cold function instance does for its first request:
import the libraries, load the tokenizer and the ONNX session, embed the
event's input as one batch, print the OpenAI-shaped response, exit.
tools/cold_start.py times it against the Rust binary on the same event. The model
directory defaults to EMBEDDINGS_MODEL_SOURCE (as set by `bootstrap.py env`),
threads to COLDPATH_INTRA_THREADS and the truncation length to
EMBEDDINGS_MAX_TOKENS, as the function reads them.
"""

import argparse
import json
import os
import sys
from pathlib import Path

# Imported here, not lazily: loading numpy/onnxruntime/tokenizers is part of
# the cold start being measured. python_ref sits next to this file.
from python_ref import embed, load_session, load_tokenizer

REPO = Path(__file__).resolve().parents[3]
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
    args = parser.parse_args()
    threads = threads_from_env() if args.threads is None else args.threads
    max_tokens = int(os.environ.get("EMBEDDINGS_MAX_TOKENS", DEFAULT_MAX_TOKENS))
    tokenizer = load_tokenizer(args.model_dir / "tokenizer.json", max_tokens)
    session = load_session(args.model_dir / "model.onnx", threads)
    embeddings, token_counts = embed(tokenizer, session, event_texts(args.event))
    json.dump(response(embeddings.tolist(), token_counts), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
