#!/usr/bin/env python3
"""Real-size random-weight CLIP and SigLIP models in Immich's layout, for the CLIP benchmark.

    nice -n 10 .venv-fixtures/bin/python functions/engines/clip/benches/make_bench_models.py \
        [--out target/bench/clip-models] [--only vit-b-32 | siglip-b-16]     (make bench-clip-models)

Writes, under --out (not committed: about 1.4 GB in all):

  vit-b-32/      open_clip's ViT-B-32 (OpenAI CLIP: 88M-parameter ViT-B/32 vision tower, 12-layer
                 512-wide causal text tower, 49,408-token BPE vocabulary), exported as Immich's
                 current exporter does (output `embedding`, batch fixed at 1, opset 19)
  siglip-b-16/   open_clip's ViT-B-16-SigLIP (timm's full-size `vit_base_patch16_siglip_224` trunk
                 with its MAP head, 12-layer 768-wide text tower, 64-token context), exported as
                 Immich's earlier exporter did (outputs `image_embedding` / `text_embedding`, batch
                 axis `batch_size`, opset 17)

Same generations as the test fixtures (tests/fixtures/clip/gen_clip_fixtures.py), whose
tokenizer and export functions this script imports rather than copies, so the benchmark runs
what the tests check, at the real widths and depths. Differences from the models Immich
publishes: the weights are random (open_clip's own initialisation, seeded), so the vectors mean
nothing, and the SigLIP tokenizer is the fixtures' small SentencePiece-style Unigram model (the
real one is a 32,000-piece C4 model on the Hub, which is not fetched here): the text tower's
graph and its 64 positions are the real ones, tokenisation is a few microseconds either way.
Nothing is downloaded: open_clip ships ViT-B-32's BPE merges and both model configs.

Deterministic for a given torch build: seeds are fixed and the export runs on the CPU.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path

import open_clip
import torch

REPO = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "clip"))
# The fixtures' tokenizer builders and exporter: imported so both places export alike.
import gen_clip_fixtures as fixtures  # noqa: E402

# (directory, open_clip model name, pretrained tag whose preprocessing it takes, exporter
# generation, seed)
MODELS = [
    ("vit-b-32", "ViT-B-32", "openai", "current", 1),
    ("siglip-b-16", "ViT-B-16-SigLIP", "webli", "earlier", 2),
]
# The fixtures train their SigLIP tokenizer to this many pieces at most; on their small corpus
# the trainer stops well below the real model's 32,000.
SIGLIP_TOKENIZER_PIECES = 32000


def log(msg):
    print(f"make_bench_models: {msg}", file=sys.stderr)


def build(name, pretrained_like, seed):
    """open_clip's full-size model with random weights and the pretrained tag's preprocessing."""
    torch.manual_seed(seed)
    model = open_clip.create_model(
        name,
        pretrained=None,
        force_preprocess_cfg=open_clip.get_pretrained_cfg(name, pretrained_like),
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make(out, key, name, pretrained_like, generation, seed):
    started = time.perf_counter()
    model_dir = out / key
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "textual").mkdir(parents=True)
    (model_dir / "visual").mkdir(parents=True)
    cfg = open_clip.get_model_config(name)
    context = cfg["text_cfg"].get("context_length", 77)
    model = build(name, pretrained_like, seed)
    if "hf_tokenizer_name" in cfg["text_cfg"]:
        fixtures.siglip_tokenizer(model_dir / "textual", context, SIGLIP_TOKENIZER_PIECES)
    else:
        fixtures.clip_tokenizer(model_dir / "textual", context)
    fixtures.save_json(open_clip.get_model_preprocess_cfg(model), model_dir / "visual" / "preprocess_cfg.json")
    fixtures.save_json(cfg, model_dir / "config.json")
    fixtures.export(model, cfg, model_dir, generation)
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    log(f"{key}: {name} ({params / 1e6:.0f}M parameters, {generation} exporter) -> {model_dir} "
        f"({size / 1e6:.0f} MB) in {time.perf_counter() - started:.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "target" / "bench" / "clip-models")
    parser.add_argument("--only", choices=[m[0] for m in MODELS], action="append")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for key, name, pretrained_like, generation, seed in MODELS:
        if args.only and key not in args.only:
            continue
        make(args.out, key, name, pretrained_like, generation, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
