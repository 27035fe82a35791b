#!/usr/bin/env python3
"""SFace on a photo's faces: one batched run against one run per face (BENCHMARKS.md).

The repaired SFace (`tools/setup/bootstrap.py setup`: .cache/models/sface-2021dec-int8bq-ort) in onnxruntime
with the function's session options (QDQ fusion off, no spinning), at 1 and 2 intra-op threads,
on N 112 x 112 aligned-face-sized inputs (seeded; the cost does not depend on the pixels).
Alternates the two modes round by round and prints medians and the batched / one-by-one ratio.
Run from the repository root: .venv/bin/python functions/hosts/faces/benches/sface_batch.py [--faces 8]
"""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

MODEL = ".cache/models/sface-2021dec-int8bq-ort/model.onnx"


def session(threads):
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    o.add_session_config_entry("session.disable_quant_qdq", "1")
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(MODEL, o, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    x = np.random.default_rng(0).uniform(0, 255, (args.faces, 3, 112, 112)).astype(np.float32)
    for threads in (1, 2):
        s = session(threads)
        name = s.get_inputs()[0].name
        s.run(None, {name: x})
        for i in range(args.faces):
            s.run(None, {name: x[i:i + 1]})
        batched, single = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            s.run(None, {name: x})
            batched.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i in range(args.faces):
                s.run(None, {name: x[i:i + 1]})
            single.append(time.perf_counter() - t)
        b, o = statistics.median(batched) * 1000, statistics.median(single) * 1000
        print(f"{threads} thread(s), {args.faces} faces: batched {b:.1f} ms, one by one {o:.1f} ms, "
              f"batched / one by one {b / o:.3f}x (medians of {args.rounds})", flush=True)


if __name__ == "__main__":
    main()
