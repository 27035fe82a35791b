#!/usr/bin/env python3
"""Real-size captioning costs on this machine: the Rust function against optimum's own pipeline.

    make bench-captioning-real            (builds the model once, then runs this)
    .venv-fixtures/bin/python functions/engines/captioning/benches/real_size.py --model DIR [--rounds N]

DIR is the real ViT-GPT2 architecture (ViT-base/16 at 224, GPT-2 small, 50257 tokens) with random
weights, exported by optimum (`gen_optimum_fixtures.py --real-size DIR`): its compute is the real
model's, whatever the weights. Random weights stop at random, so every caption is forced to
`--max-new-tokens` (20): the Rust side decodes a copy of DIR whose generation_config.json sets
`max_new_tokens` 20 and an `eos_token_id` outside the vocabulary (50257, never generated), the
peer passes `min_new_tokens=max_new_tokens=20` to generate(); both assert they made 20 tokens per
image.

Each Rust measurement is a fresh process (`cargo run --release --example real_size`), one per
batch size and cache mode, so load time and first caption are cold-process figures and the peak
resident memory belongs to that batch size. The peer is `ORTModelForVision2Seq` (merged decoder,
same export, same onnxruntime release, same threads) in its own process too. Greedy search;
medians over `--rounds` calls. Also: one decoder step timed with the encoder's 197 states and
with 1 (`--step-split` alone), which shows what cross-attention costs per step; file sizes fp32,
and int8 after onnxruntime's dynamic quantisation (`quantize_dynamic`, the real-size model timed
as well when --int8), with how far the int8 tiny model's captions stay from transformers' on the
committed reference.

Writes target/bench/captioning-real.json (read by `coldpath plan --measurements`).
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
OUT = REPO / "target" / "bench" / "captioning-real.json"
FILES = ("encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json",
         "preprocessor_config.json", "generation_config.json")


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "")
    return {"cpu": cpu, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "kernel": platform.release()}


def size_mib(d):
    return sum(p.stat().st_size for p in Path(d).iterdir()
               if p.name.endswith((".onnx", ".onnx_data"))) / 2**20


def forced_copy(src, dst, max_new):
    """DIR with a generation_config.json that never stops before max_new tokens."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for p in Path(src).iterdir():
        if p.name != "generation_config.json":
            (dst / p.name).symlink_to(p.resolve())
    gen = json.loads((Path(src) / "generation_config.json").read_text())
    vocab = json.loads((Path(src) / "config.json").read_text())["decoder"]["vocab_size"]
    gen.update({"eos_token_id": vocab, "max_new_tokens": max_new})
    gen.pop("max_length", None)
    (dst / "generation_config.json").write_text(json.dumps(gen))
    return dst


def run_rust(model_dir, batch, use_cache, rounds, threads, prepared=None):
    """One fresh process. With `prepared`, the optimised-graph directory a packaging step would
    ship (COLDPATH_OPTIMIZED_MODEL_DIR): the session loads the saved graph with optimisation off."""
    env = dict(os.environ, CAPTIONING_MODEL_SOURCE=str(model_dir), CAPTIONING_DECODER_LAYOUT="merged",
               CAPTIONING_USE_CACHE=str(use_cache).lower(), BENCH_BATCH=str(batch),
               BENCH_ROUNDS=str(rounds), COLDPATH_INTRA_THREADS=str(threads))
    env.pop("CAPTIONING_MODEL_SHA256", None)
    # A cold session build each time: the optimised-graph cache would hide the cost measured.
    env.pop("COLDPATH_OPTIMIZED_MODEL_DIR", None)
    if prepared:
        env["COLDPATH_OPTIMIZED_MODEL_DIR"] = str(prepared)
    exe = REPO / "target" / "release" / "examples" / "real_size"
    out = subprocess.run([str(exe)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def peer(model_dir, batch, use_cache, rounds, threads, max_new):
    """optimum's own pipeline, in this (fresh) process."""
    import numpy as np
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForVision2Seq
    from PIL import Image
    from transformers import ViTImageProcessor

    started = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    model = ORTModelForVision2Seq.from_pretrained(
        str(model_dir), use_cache=use_cache, use_merged=True, session_options=so,
        provider="CPUExecutionProvider")
    load_s = time.perf_counter() - started
    processor = ViTImageProcessor.from_pretrained(str(model_dir))
    images = [Image.open(p).convert("RGB")
              for p in sorted((REPO / "tests/fixtures/captioning/images").glob("*.png"))]
    kwargs = dict(max_new_tokens=max_new, min_new_tokens=max_new, num_beams=1, do_sample=False)
    t = time.perf_counter()
    one = processor(images=images[:1], return_tensors="pt").pixel_values
    model.generate(pixel_values=one, **kwargs)
    first_s = time.perf_counter() - t
    pixels = processor(images=[images[i % len(images)] for i in range(batch)],
                       return_tensors="pt").pixel_values
    per_round = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = model.generate(pixel_values=pixels, **kwargs)
        per_round.append(time.perf_counter() - t)
        assert out.shape == (batch, max_new + 1), out.shape
    return {"batch": batch, "use_cache": use_cache, "load_s": load_s, "first_caption_s": first_s,
            "per_round_s": per_round, "tokens_per_round": batch * max_new,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_peer(model_dir, batch, use_cache, rounds, threads, max_new):
    out = subprocess.run(
        [sys.executable, __file__, "--peer", str(model_dir), "--batch", str(batch),
         "--cache", str(int(use_cache)), "--rounds", str(rounds), "--threads", str(threads),
         "--max-new-tokens", str(max_new)],
        check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def quantize(src, dst):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for p in Path(src).iterdir():
        if p.suffix == ".onnx":
            quantize_dynamic(str(p), str(dst / p.name), weight_type=QuantType.QInt8)
        elif not p.name.endswith(".onnx_data"):
            shutil.copy(p, dst / p.name)
    return dst


def int8_agreement(tmp):
    """Greedy ids of the int8 tiny optimum model against transformers' reference."""
    import numpy as np
    from optimum.onnxruntime import ORTModelForVision2Seq
    import torch

    fixtures = REPO / "tests/fixtures/captioning"
    ref = json.loads((fixtures / "optimum-vit-gpt2-tiny.reference.json").read_text())
    q = quantize(fixtures / "optimum-vit-gpt2-tiny", tmp / "tiny-int8")
    model = ORTModelForVision2Seq.from_pretrained(str(q), use_cache=True, use_merged=True)
    case = next(c for c in ref["cases"] if c["name"] == "mixed-greedy")
    pixels = torch.tensor(np.array([ref["images"][n]["pixel_values"] for n in case["images"]],
                                   dtype=np.float32))
    out = model.generate(pixel_values=pixels, max_new_tokens=case["max_new_tokens"], num_beams=1,
                         do_sample=False)
    eos = ref["eos_token_id"]
    same = 0
    total = 0
    rows_equal = 0
    for row, want in zip(out[:, 1:].tolist(), case["token_ids"]):
        if eos in row:
            row = row[: row.index(eos) + 1]
        rows_equal += row == want
        for a, b in zip(row, want):
            if a != b:
                break
            same += 1
        total += len(want)
    return {"captions_equal": rows_equal, "captions": len(case["token_ids"]),
            "tokens_before_first_difference": same, "tokens": total}


def prepared_cold_start(model_dir, work, name, rounds, threads):
    """Cold start from a model prepared ahead: one process builds the sessions and saves the
    optimised graphs (what packaging would do), then `rounds` fresh processes start from them."""
    graphs = work / f"graphs-{name}"
    if graphs.exists():
        shutil.rmtree(graphs)
    run_rust(model_dir, 1, True, 1, threads, prepared=graphs)
    runs = [run_rust(model_dir, 1, True, 1, threads, prepared=graphs) for _ in range(rounds)]
    load = statistics.median(r["load_s"] for r in runs)
    first = statistics.median(r["first_caption_s"] for r in runs)
    return {"model": name, "load_s": [r["load_s"] for r in runs],
            "first_caption_s": [r["first_caption_s"] for r in runs],
            "median_load_s": load, "median_first_caption_s": first,
            "median_total_s": statistics.median(r["load_s"] + r["first_caption_s"] for r in runs),
            "graphs_mib": sum(p.stat().st_size for p in graphs.rglob("*") if p.is_file()) / 2**20,
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs)}


def step_split(model_dir, threads, batch=8, past=10, rounds=7):
    """One cached step of the merged decoder with the encoder's full states and with a single
    state, everything else equal: the difference is what the step spends on cross-attention over
    the encoder states (GPT-2 re-projects them to keys and values at every step)."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(str(Path(model_dir) / "decoder_model_merged.onnx"), so,
                             providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in s.get_inputs()}
    heads = inputs["past_key_values.0.key"].shape[1]
    head_dim = inputs["past_key_values.0.key"].shape[3]
    hidden = inputs["encoder_hidden_states"].shape[2]
    full = json.loads((Path(model_dir) / "config.json").read_text())["encoder"]
    tokens = (full["image_size"] // full["patch_size"]) ** 2 + 1
    rng = np.random.default_rng(0)
    feeds = {"input_ids": np.ones((batch, 1), np.int64), "use_cache_branch": np.array([True])}
    for name in inputs:
        if name.startswith("past_key_values"):
            feeds[name] = rng.random((batch, heads, past, head_dim), np.float32)
    if "cache_position" in inputs:
        feeds["cache_position"] = np.array([past], np.int64)
    out = {"batch": batch, "past_length": past, "threads": threads}
    for n in (tokens, 1):
        f = dict(feeds, encoder_hidden_states=rng.random((batch, n, hidden), np.float32))
        s.run(None, f)
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            s.run(None, f)
            times.append(time.perf_counter() - t)
        out[f"step_ms_encoder_states_{n}"] = 1000 * statistics.median(times)
    out["cross_attention_share"] = 1 - out["step_ms_encoder_states_1"] / out[
        f"step_ms_encoder_states_{tokens}"]
    return out


def summarise(r):
    med = statistics.median(r["per_round_s"])
    return dict(r, median_s=med, images_per_s=r["batch"] / med,
                ms_per_image=1000 * med / r["batch"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--peer-batches", default="1,8")
    ap.add_argument("--no-cache-batches", default="1,8,32")
    ap.add_argument("--int8", action="store_true", help="also time the int8 real-size model")
    ap.add_argument("--hoisted", type=Path,
                    help="the model rewritten by tools/hoist_cross_attention.py (made from --model "
                         "if missing): timed at the same batch sizes with the cache")
    ap.add_argument("--step-split", action="store_true",
                    help="only time one decoder step with and without the encoder states' length")
    ap.add_argument("--out", type=Path, default=OUT)
    # Internal: one peer measurement in this process.
    ap.add_argument("--peer", type=Path)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--cache", type=int)
    args = ap.parse_args()
    if args.peer:
        print(json.dumps(peer(args.peer, args.batch, bool(args.cache), args.rounds, args.threads,
                              args.max_new_tokens)))
        return

    if args.step_split:
        print(json.dumps(step_split(args.model, args.threads), indent=1))
        return

    work = REPO / ".cache" / "bench-captioning-real"
    work.mkdir(parents=True, exist_ok=True)
    forced = forced_copy(args.model, work / "forced", args.max_new_tokens)
    result = {"benchmark": "captioning", "kind": "real-size ViT-GPT2, random weights",
              "model": str(args.model), "machine": machine(), "threads": args.threads,
              "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
              "sizes_mib": {"fp32": size_mib(args.model)}, "rust": [], "peer": []}
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "coldpath-captioning",
                    "--example", "real_size"], cwd=REPO, check=True)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    plan = [(b, True) for b in map(int, args.batches.split(","))]
    plan += [(b, False) for b in map(int, args.no_cache_batches.split(",")) if b]
    for batch, cache in plan:
        rounds = args.rounds if batch < 32 else max(1, args.rounds - 1 - (not cache))
        r = summarise(run_rust(forced, batch, cache, rounds, args.threads))
        assert r["tokens_per_round"] == batch * args.max_new_tokens, r
        result["rust"].append(r)
        print(f"rust batch {batch} cache {cache}: {r['ms_per_image']:.0f} ms/image, "
              f"load {r['load_s']:.2f} s, first {r['first_caption_s']:.2f} s, "
              f"peak {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        save()
    if args.hoisted:
        if not (args.hoisted / "decoder_cross_model.onnx").is_file():
            subprocess.run([str(REPO / ".venv/bin/python"), str(REPO / "tools/hoist_cross_attention.py"),
                            str(args.model), str(args.hoisted)], check=True)
        result["sizes_mib"]["hoisted"] = size_mib(args.hoisted)
        hf = forced_copy(args.hoisted, work / "hoisted-forced", args.max_new_tokens)
        for batch in map(int, args.batches.split(",")):
            rounds = args.rounds if batch < 32 else max(1, args.rounds - 1)
            r = summarise(run_rust(hf, batch, True, rounds, args.threads))
            assert r["tokens_per_round"] == batch * args.max_new_tokens, r
            result.setdefault("rust_hoisted", []).append(r)
            print(f"rust hoisted batch {batch}: {r['ms_per_image']:.0f} ms/image, "
                  f"load {r['load_s']:.2f} s, first {r['first_caption_s']:.2f} s, "
                  f"peak {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
            save()
    result["cold_start_prepared"] = [
        prepared_cold_start(forced, work, "fp32", args.rounds, args.threads)]
    if args.hoisted:
        result["cold_start_prepared"].append(
            prepared_cold_start(hf, work, "hoisted", args.rounds, args.threads))
    print(f"rust prepared cold start: {result['cold_start_prepared'][0]['median_total_s']:.2f} s",
          file=sys.stderr)
    save()
    for batch in [int(b) for b in args.peer_batches.split(",") if b]:
        r = summarise(run_peer(args.model, batch, True, max(1, args.rounds - 1), args.threads,
                               args.max_new_tokens))
        result["peer"].append(r)
        print(f"optimum batch {batch}: {r['ms_per_image']:.0f} ms/image, load {r['load_s']:.2f} s, "
              f"peak {r['peak_rss_mib']:.0f} MiB", file=sys.stderr)
        save()
    result["decoder_step_split"] = step_split(args.model, args.threads)
    save()
    result["int8_tiny_agreement"] = int8_agreement(work)
    save()
    q = quantize(args.model, work / "int8")
    result["sizes_mib"]["int8"] = size_mib(q)
    save()
    if args.int8:
        qf = forced_copy(q, work / "int8-forced", args.max_new_tokens)
        for batch in (1, 8):
            r = summarise(run_rust(qf, batch, True, args.rounds, args.threads))
            result.setdefault("rust_int8", []).append(r)
            print(f"rust int8 batch {batch}: {r['ms_per_image']:.0f} ms/image, "
                  f"load {r['load_s']:.2f} s", file=sys.stderr)
            save()
        result["cold_start_prepared"].append(
            prepared_cold_start(qf, work, "int8", args.rounds, args.threads))
        save()
    # The fields `coldpath plan --measurements` reads.
    # The plan's CPU figures: one image at the function's batch size (8, CAPTIONING_MAX_BATCH),
    # and a cold start from a session build (no prepared graph: what a fresh sandbox pays today),
    # of the hoisted model when it was measured (the one to deploy), else of the export. The cold
    # start is the median over those fresh processes (load + first caption, always one image):
    # one process's load time swings by a second on this machine.
    rows = [r for r in (result.get("rust_hoisted") or result["rust"]) if r["use_cache"]]
    b8 = next(r for r in rows if r["batch"] == 8)
    result["plan_figures_from"] = "rust_hoisted" if result.get("rust_hoisted") else "rust"
    result["query_latency_ms"] = {"function": {"p50": b8["ms_per_image"]}}
    result["cold_start_in_process"] = {"total_ms": 1000 * statistics.median(
        r["load_s"] + r["first_caption_s"] for r in rows)}
    result["peak_rss_mib"] = b8["peak_rss_mib"]
    save()
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("rust", "peer", "rust_hoisted", "rust_int8")}, indent=1))


if __name__ == "__main__":
    main()
