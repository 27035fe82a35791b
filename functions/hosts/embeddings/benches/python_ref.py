#!/usr/bin/env python3
"""Python reference embedder, driven by the Rust bench over stdin/stdout (JSON lines).

    .venv/bin/python functions/hosts/embeddings/benches/python_ref.py \
        --model M/model.onnx --tokenizer M/tokenizer.json --threads 1 --max-tokens 256

Loads everything once, prints {"ready": true}, then answers one JSON line per
command line, so the bench times the Python pipeline without paying Python's
start-up on every sample:

    {"op": "latency", "text": "...", "iters": N, "warmup": W} -> {"times_ns": [...]}
    {"op": "batch", "texts": [...], "iters": N, "warmup": W}  -> {"times_ns": [...]}
    {"op": "embed", "texts": [...]}                           -> {"embeddings": [[...], ...]}
    {"op": "quit"}                                            -> (exits)

A timed call is the full request path: tokenize, run, pool, normalise. A bad
command gets {"error": "..."} so the bench fails with a message, not a hang.
The pipeline is the one tests/fixtures/gen_embeddings_reference.py defines;
python_cold.py imports it from here.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import onnxruntime as ort
from tokenizers import Tokenizer

# The pipeline itself (tokenise, run, mean-pool, normalise) is the reference the parity fixture
# was made with, imported rather than copied so the bench times exactly what the tests compare to.
sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tests" / "fixtures"))
from gen_embeddings_reference import embed  # noqa: E402


def load_tokenizer(path, max_tokens):
    """tokenizer.json with the model's truncation and pad-to-longest batching."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def load_session(path, threads):
    """A CPU session set up like the Rust function's (threads=0 means ORT's default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_calls(call, iters, warmup):
    """Run call() warmup times untimed, then iters times; return each duration in ns."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return times


def handle(command, tokenizer, session):
    """Answer one command (other than quit) with the reply object."""
    op = command.get("op")

    def run(texts):
        return embed(tokenizer, session, texts)

    if op == "latency":
        text = command["text"]
        return {"times_ns": time_calls(lambda: run([text]), command["iters"], command["warmup"])}
    if op == "batch":
        texts = command["texts"]
        return {"times_ns": time_calls(lambda: run(texts), command["iters"], command["warmup"])}
    if op == "embed":
        embeddings, _ = run(command["texts"])
        return {"embeddings": embeddings.tolist()}
    return {"error": f"unknown op {op!r}"}


def reply(obj):
    """Write one JSON line and flush: the bench blocks reading it."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(tokenizer, session):
    """Read commands from stdin until quit or end of input."""
    for line in sys.stdin:
        try:
            command = json.loads(line)
            if command.get("op") == "quit":
                return
            reply(handle(command, tokenizer, session))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            reply({"error": f"{type(err).__name__}: {err}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.onnx")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: ORT default)")
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer, args.max_tokens)
    session = load_session(args.model, args.threads)
    reply({"ready": True})
    serve(tokenizer, session)


if __name__ == "__main__":
    main()
