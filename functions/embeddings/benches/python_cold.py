#!/usr/bin/env python3
"""Python cold start equivalent of `embeddings invoke events/embeddings/direct.json`.

    .venv/bin/python functions/embeddings/benches/python_cold.py \
        [--model-dir DIR] [--threads N]

One process does what a cold function instance does for its first request:
import the libraries, load the tokenizer and the ONNX session, embed one text,
print the OpenAI-shaped response, exit. cold_start.py times it against the
Rust binary. The model directory defaults to EMBEDDINGS_MODEL_SOURCE (as set by
`bootstrap.py env`), threads to COLDPATH_INTRA_THREADS, like the function.
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
MODEL_NAME = "all-MiniLM-L6-v2"
TEXT = "a photo of a dog on the beach"
MAX_TOKENS = 256


def threads_from_env():
    """COLDPATH_INTRA_THREADS as the Rust function reads it: unset or `auto` -> ORT default (0)."""
    value = os.environ.get("COLDPATH_INTRA_THREADS", "auto")
    return 0 if value.lower() == "auto" else int(value)


def response(embedding, token_count):
    """The OpenAI embeddings API response body for one input."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "model": MODEL_NAME,
        "usage": {"prompt_tokens": token_count, "total_tokens": token_count},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path,
                        default=Path(os.environ.get("EMBEDDINGS_MODEL_SOURCE", DEFAULT_MODEL_DIR)))
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: COLDPATH_INTRA_THREADS, else ORT's)")
    args = parser.parse_args()
    threads = threads_from_env() if args.threads is None else args.threads
    tokenizer = load_tokenizer(args.model_dir / "tokenizer.json", MAX_TOKENS)
    session = load_session(args.model_dir / "model.onnx", threads)
    (embedding,), (token_count,) = embed(tokenizer, session, [TEXT])
    json.dump(response(embedding.tolist(), int(token_count)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
