#!/usr/bin/env python3
"""YuNet alone in onnxruntime (repaired model, 1 thread) at several input sizes: ms and peak RSS
(BENCHMARKS.md, native-size cost curve). Run from the repository root: .venv/bin/python functions/hosts/faces/benches/detector_cost.py"""
import time, numpy as np, onnxruntime as ort, resource
o=ort.SessionOptions(); o.intra_op_num_threads=1; o.inter_op_num_threads=1; o.log_severity_level=3
o.add_session_config_entry("session.disable_quant_qdq","1"); o.add_session_config_entry("session.intra_op.allow_spinning","0")
s=ort.InferenceSession('.cache/models/yunet-2023mar-int8bq-ort/model.onnx',o,providers=["CPUExecutionProvider"])
for w,h in [(640,640),(1024,768),(1280,960),(1600,1216),(1920,1440),(2560,1920),(4000,3008)]:
    x=np.random.default_rng(0).uniform(0,255,(1,3,h,w)).astype(np.float32)
    s.run(None,{"input":x}); t=[]
    for _ in range(3):
        t0=time.perf_counter(); s.run(None,{"input":x}); t.append(time.perf_counter()-t0)
    print(f"{w}x{h} {w*h/1e6:.2f}MP {min(t)*1e3:.0f} ms  maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f} MiB", flush=True)
