#!/usr/bin/env python3
"""Captioning throughput with onnxruntime in Python: the Rust bench's grid on a GPU (or the CPU).

    python functions/engines/captioning/benches/gpu_bench.py --provider cuda \
        [--model tests/fixtures/captioning/tiny-vit-gpt2] [--rounds 7] [--batches 1,8,32]

Needs onnxruntime-gpu (CUDAExecutionProvider) for `--provider cuda`, plus numpy and tokenizers;
`--provider cpu` runs anywhere onnxruntime does (the Rust bench calls it that way for a
side-by-side figure). The decoding is the parity reference's own greedy and beam search
(tests/fixtures/captioning/reference_decode.py, transformers' semantics): encoder once, merged
decoder with the KV cache (use_cache_branch) or decoder_model.onnx over the whole prefix without
it. Inputs are the committed test images, preprocessed like the reference, repeated to the
largest batch; every batch size captions all of them, b at a time. Prints one JSON object: per (num_beams, batch, use_cache) the median over rounds of the
per-round median time per batch, and images per second.

The session is told which provider to use and the script fails if onnxruntime silently falls back
to the CPU, so a GPU figure is really a GPU figure. On the tiny synthetic model a GPU mostly
measures launch overhead; the script is for the real export (point --model at it; it needs the
merged and the plain decoder, which `optimum-cli export onnx --task image-to-text-with-past`
writes).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "captioning"))
import reference_decode as ref  # noqa: E402

PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ref.MODEL)
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cuda")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--beams", default="1,3")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = p.parse_args()

    provider = PROVIDERS[args.provider]
    if provider not in ort.get_available_providers():
        sys.exit(f"{provider} is not available in this onnxruntime ({ort.get_available_providers()}); "
                 "install onnxruntime-gpu with a matching CUDA")
    providers = (provider,) if provider == "CPUExecutionProvider" else (provider, "CPUExecutionProvider")
    model = ref.Model(args.model, providers=providers, threads=args.threads)
    for s in (model.encoder, model.decoder, model.merged):
        if s.get_providers()[0] != provider:
            sys.exit(f"session fell back to {s.get_providers()}")
    prep = json.loads((args.model / "preprocessor_config.json").read_text())
    images = [ref.read_rgb(p) for p in sorted(ref.IMAGES.glob("*.png"))]
    batches = [int(b) for b in args.batches.split(",")]
    beams = [int(b) for b in args.beams.split(",")]
    all_pixels = np.stack([ref.preprocess(images[i % len(images)], prep) for i in range(max(batches))])
    max_new = model.gen["max_length"] - 1

    grid = [(nb, b, c) for nb in beams for b in batches for c in (True, False)]
    per_round = {g: [] for g in grid}
    tokens = {}
    for r in range(args.rounds):
        for turn in range(len(grid)):
            nb, b, use_cache = grid[(turn + r) % len(grid)]

            def run(px):
                if nb == 1:
                    return ref.greedy(model, px, max_new, use_cache)
                return ref.beam_search(model, px, max_new, nb, use_cache)

            run(all_pixels[:b])  # warm-up
            # Every batch size captions the same images, b at a time (equal work).
            t = time.perf_counter()
            generated = 0
            for chunk in range(len(all_pixels) // b):
                out = run(all_pixels[chunk * b:(chunk + 1) * b])
                generated += sum(len(x) for x in out)
            times = [(time.perf_counter() - t) / (len(all_pixels) // b)]
            tokens[(nb, b, use_cache)] = generated
            per_round[(nb, b, use_cache)].append(statistics.median(times))
    results = []
    for g in grid:
        secs = statistics.median(per_round[g])
        results.append({"num_beams": g[0], "batch": g[1], "use_cache": g[2], "ms_per_batch": secs * 1e3,
                        "images_per_s": g[1] / secs, "generated_tokens": tokens[g]})
    print(json.dumps({
        "provider": provider,
        "onnxruntime": ort.__version__,
        "device": ort.get_device(),
        "model": str(args.model),
        "rounds": args.rounds,
        "threads": args.threads,
        "max_new_tokens": max_new,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
