#!/usr/bin/env python3
"""The Python peer of the CLIP benchmark: the same ONNX towers driven the way a Python service
(Immich's machine-learning server, a notebook) drives them: onnxruntime sessions, open_clip's
tokenizer and eval preprocessing, PIL decoding.

    .venv-fixtures/bin/python functions/engines/clip/benches/clip_peer.py --model DIR \
        [--threads 1] [--max-batch 32] [--cold text|vision|both --photo P --text T]

Without --cold it loads both towers once, prints {"ready": true, ...} and answers one JSON line
per command line (the bench times Python's pipeline, not its start-up):

    {"op": "texts", "texts": [...], "iters": N, "warmup": W}   -> {"times_ns": [...]}
    {"op": "photos", "paths": [...], "iters": N, "warmup": W}  -> {"times_ns": [...],
                                                                   "stages_ns": {decode, preprocess, model}}
    {"op": "ids", "texts": [...]}                              -> {"ids": [[...], ...]}
    {"op": "embed_texts", "texts": [...]} / {"op": "embed_photos", "paths": [...]}
                                                               -> {"vectors": [[...], ...]}
    {"op": "rss"}                                              -> {"peak_rss_mib": ...}
    {"op": "quit"}

A timed text call: open_clip's tokenizer (`open_clip.get_tokenizer`'s rules over the model's
textual/ files), int32 ids, session.run, L2 normalisation. A timed photo call, per photo: the
bytes (read into memory beforehand, as the Rust side holds them) opened with PIL, EXIF orientation
applied, converted to RGB; open_clip's `image_transform_v2` (eval) from visual/preprocess_cfg.json;
the photos stacked and run in one call where the graph's batch axis is symbolic (one by one where
it is fixed at 1, as the engine does); L2 normalisation.

With --cold it is a cold start instead: this process's start, the imports (onnxruntime, open_clip
with torch, PIL), the sessions of the towers asked for, and the first vector (the query --text for
`text`, the photo --photo for `vision`, both for `both`); it prints {"peak_rss_mib": ...,
"stages_ms": {...}} and exits. The bench times it from spawn to exit.

ONNX Runtime is set up as the engine sets it: --threads intra-op threads (0: ORT's default),
one inter-op thread, sequential, all graph optimisations, CPU; torch (open_clip's Normalize on the
tensor) gets the same thread count.
"""

import argparse
import io
import json
import sys
import time

T0 = time.perf_counter()

# Imported at the top: loading them is part of the cold start being measured.
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

T_IMPORTED = time.perf_counter()


def peak_rss_mib():
    """This process's own peak RSS (VmHWM): getrusage's ru_maxrss carries the parent's across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def tokenizer_for(model_dir, cfg):
    """open_clip's tokenizer for the model, as open_clip.get_tokenizer picks it, over its files."""
    text_cfg = cfg["text_cfg"]
    context = text_cfg.get("context_length", 77)
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    if "hf_tokenizer_name" in text_cfg:
        return open_clip.tokenizer.HFTokenizer(str(model_dir / "textual"), context_length=context, **kwargs)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context, **kwargs)


class Tower:
    def __init__(self, path, threads, max_batch):
        self.session = session(path, threads)
        inp = self.session.get_inputs()[0]
        self.input = inp.name
        batch = inp.shape[0]
        self.rows = batch if isinstance(batch, int) and batch > 0 else max_batch

    def run(self, batch):
        out = []
        for start in range(0, len(batch), self.rows):
            out.append(self.session.run(None, {self.input: batch[start : start + self.rows]})[0])
        vectors = np.concatenate(out)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Peer:
    def __init__(self, model_dir, threads, max_batch, towers=("text", "vision")):
        from pathlib import Path

        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        self.stages = {}
        t = time.perf_counter()
        if "text" in towers:
            self.tokenizer = tokenizer_for(model_dir, cfg)
            self.text = Tower(model_dir / "textual" / "model.onnx", threads, max_batch)
        self.stages["text_sessions_ms"] = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        if "vision" in towers:
            pre = json.loads((model_dir / "visual" / "preprocess_cfg.json").read_text())
            self.preprocess = open_clip.transform.image_transform_v2(
                open_clip.transform.PreprocessCfg(**pre), is_train=False)
            self.vision = Tower(model_dir / "visual" / "model.onnx", threads, max_batch)
        self.stages["vision_sessions_ms"] = (time.perf_counter() - t) * 1e3
        self.photo_bytes = {}

    def ids(self, texts):
        return self.tokenizer(texts).numpy().astype(np.int32)

    def embed_texts(self, texts):
        return self.text.run(self.ids(texts))

    def embed_photos(self, paths, stages=None):
        t0 = time.perf_counter_ns()
        images = []
        for p in paths:
            data = self.photo_bytes.get(p)
            if data is None:
                data = self.photo_bytes[p] = open(p, "rb").read()
            image = Image.open(io.BytesIO(data))
            image.load()
            images.append(ImageOps.exif_transpose(image).convert("RGB"))
        t1 = time.perf_counter_ns()
        batch = torch.stack([self.preprocess(im) for im in images]).numpy()
        t2 = time.perf_counter_ns()
        vectors = self.vision.run(batch)
        t3 = time.perf_counter_ns()
        if stages is not None:
            stages["decode"].append(t1 - t0)
            stages["preprocess"].append(t2 - t1)
            stages["model"].append(t3 - t2)
        return vectors


def time_calls(call, iters, warmup):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return times


def handle(peer, command):
    op = command.get("op")
    if op == "texts":
        texts = command["texts"]
        return {"times_ns": time_calls(lambda: peer.embed_texts(texts), command["iters"], command["warmup"])}
    if op == "photos":
        paths = command["paths"]
        for p in paths:
            peer.photo_bytes.setdefault(p, open(p, "rb").read())
        stages = {"decode": [], "preprocess": [], "model": []}
        for _ in range(command["warmup"]):
            peer.embed_photos(paths)
        times = time_calls(lambda: peer.embed_photos(paths, stages), command["iters"], 0)
        return {"times_ns": times, "stages_ns": stages}
    if op == "ids":
        return {"ids": peer.ids(command["texts"]).tolist()}
    if op == "embed_texts":
        return {"vectors": peer.embed_texts(command["texts"]).tolist()}
    if op == "embed_photos":
        return {"vectors": peer.embed_photos(command["paths"]).tolist()}
    if op == "rss":
        return {"peak_rss_mib": peak_rss_mib()}
    return {"error": f"unknown op {op!r}"}


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model directory (Immich's layout)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: ORT default)")
    parser.add_argument("--max-batch", type=int, default=32, help="rows per run where the batch is symbolic")
    parser.add_argument("--cold", choices=["text", "vision", "both"])
    parser.add_argument("--text", default="a dog on the beach")
    parser.add_argument("--photo")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.cold:
        towers = ("text", "vision") if args.cold == "both" else (args.cold,)
        peer = Peer(args.model, args.threads, args.max_batch, towers)
        t = time.perf_counter()
        if "text" in towers:
            peer.embed_texts([args.text])
        if "vision" in towers:
            peer.embed_photos([args.photo])
        stages = dict(peer.stages, imports_ms=(T_IMPORTED - T0) * 1e3,
                      first_vectors_ms=(time.perf_counter() - t) * 1e3)
        reply({"peak_rss_mib": peak_rss_mib(), "stages_ms": stages})
        return 0
    peer = Peer(args.model, args.threads, args.max_batch)
    reply({"ready": True, "text_rows_per_run": peer.text.rows, "image_rows_per_run": peer.vision.rows,
           "versions": {"onnxruntime": ort.__version__, "open_clip": open_clip.__version__,
                        "torch": torch.__version__, "pillow": Image.__version__}})
    for line in sys.stdin:
        try:
            command = json.loads(line)
            if command.get("op") == "quit":
                return 0
            reply(handle(peer, command))
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
            reply({"error": f"{type(err).__name__}: {err}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
