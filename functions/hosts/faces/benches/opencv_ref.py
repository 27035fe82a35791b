#!/usr/bin/env python3
"""The OpenCV contender for the faces side-by-side benchmark: YuNet + SFace through OpenCV's own
face API, the way an OpenCV user runs them.

    eval "$(python3 tools/setup/bootstrap.py env)"
    .venv/bin/python functions/hosts/faces/benches/opencv_ref.py \
        --photos events/data/photos/kafka.jpg events/data/photos/group.jpg \
        [--threads 1] [--rounds 10] [--warmup 1] [--mode native|letterbox640] \
        [--detector DIR_OR_FILE] [--recognizer DIR_OR_FILE]

Loads both models once (cv2.FaceDetectorYN / cv2.FaceRecognizerSF, the int8bq files from
FACES_DETECTOR_SOURCE / FACES_RECOGNIZER_SOURCE as `tools/setup/bootstrap.py env` sets them), reads every
photo's bytes into memory, then for each round and each photo times one request: decode the bytes
(cv2.imdecode, EXIF applied), setInputSize + detect at the photo's NATIVE size (OpenCV pads to a
multiple of 32 itself; `--mode letterbox640` instead letterboxes to 640x640 like the Rust function
and maps boxes back), alignCrop + feature for every face, L2-normalise. Thresholds are OpenCV's
sample defaults (score 0.9, NMS 0.3, top_k 5000), the ones tests/fixtures/faces/opencv_reference.json
uses. cv2.setNumThreads(--threads) bounds OpenCV's own parallelism (0 = OpenCV's default).

Prints one JSON object on stdout:
    {"per_photo_ms": {file: [total ms per round]}, "decode_ms": {file: [...]},
     "detect_ms": {file: [...]}, "recognise_ms": {file: [...]}, "faces": {file: n},
     "rss_peak_mib": peak RSS of this process (VmHWM), "threads": N, "mode": ..., "opencv": version,
     "machine": ...}
Timings are time.perf_counter per stage; medians are the harness's job. Warm-up rounds are not
reported.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[4]
SCORE_THRESHOLD = 0.9
NMS_THRESHOLD = 0.3
TOP_K = 5000
LETTERBOX = 640



def peak_rss_mib():
    """This process's own peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    fork and exec, so a child of the large benchmark process would report the parent's RSS."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")

def model_file(arg: str | None, env: str, default: Path) -> Path:
    """A model path from the flag, else the env var `tools/setup/bootstrap.py env` sets (a directory holding
    model.onnx, or the file itself), else the setup cache."""
    value = arg or os.environ.get(env)
    path = Path(value) if value else default
    return path / "model.onnx" if path.is_dir() else path


def load_models(detector: Path, recognizer: Path):
    det = cv2.FaceDetectorYN.create(str(detector), "", (LETTERBOX, LETTERBOX),
                                    SCORE_THRESHOLD, NMS_THRESHOLD, TOP_K)
    rec = cv2.FaceRecognizerSF.create(str(recognizer), "")
    return det, rec


def letterbox(img: np.ndarray) -> tuple[np.ndarray, float]:
    """Same recipe as gen_opencv_reference.py: s = min(640/w, 640/h), INTER_LINEAR, top-left."""
    h, w = img.shape[:2]
    s = min(LETTERBOX / w, LETTERBOX / h)
    nw, nh = min(LETTERBOX, round(w * s)), min(LETTERBOX, round(h * s))
    canvas = np.zeros((LETTERBOX, LETTERBOX, 3), np.uint8)
    canvas[:nh, :nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas, s


def decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # EXIF applied, BGR
    if img is None:
        raise ValueError("not a decodable image")
    return img


def detect(det, img: np.ndarray, mode: str) -> np.ndarray:
    if mode == "letterbox640":
        boxed, s = letterbox(img)
        det.setInputSize((LETTERBOX, LETTERBOX))
        _, faces = det.detect(boxed)
        if faces is not None:
            faces[:, :14] /= s
    else:
        det.setInputSize((img.shape[1], img.shape[0]))
        _, faces = det.detect(img)
    return np.zeros((0, 15), np.float32) if faces is None else faces


def recognise(rec, img: np.ndarray, faces: np.ndarray) -> list[np.ndarray]:
    out = []
    for row in faces:
        feature = rec.feature(rec.alignCrop(img, row)).reshape(-1).astype(np.float32)
        out.append(feature / np.linalg.norm(feature))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--mode", choices=["native", "letterbox640"], default="native")
    ap.add_argument("--detector")
    ap.add_argument("--recognizer")
    args = ap.parse_args()

    cv2.setNumThreads(args.threads)
    det, rec = load_models(
        model_file(args.detector, "FACES_DETECTOR_SOURCE", REPO / ".cache/models/yunet-2023mar-int8bq"),
        model_file(args.recognizer, "FACES_RECOGNIZER_SOURCE", REPO / ".cache/models/sface-2021dec-int8bq"))
    photos = {p: Path(p).read_bytes() for p in args.photos}

    stages = ("per_photo_ms", "decode_ms", "detect_ms", "recognise_ms")
    result = {k: {p: [] for p in photos} for k in stages}
    faces_found = {}
    for round_index in range(args.warmup + args.rounds):
        for name, data in photos.items():
            t0 = time.perf_counter()
            img = decode(data)
            t1 = time.perf_counter()
            faces = detect(det, img, args.mode)
            t2 = time.perf_counter()
            recognise(rec, img, faces)
            t3 = time.perf_counter()
            faces_found[name] = len(faces)
            if round_index >= args.warmup:
                for key, ms in zip(stages, ((t3 - t0), (t1 - t0), (t2 - t1), (t3 - t2))):
                    result[key][name].append(round(ms * 1000, 4))

    result.update({
        "faces": faces_found,
        "rss_peak_mib": round(peak_rss_mib(), 1),
        "threads": args.threads,
        "mode": args.mode,
        "opencv": cv2.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs".strip(),
    })
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
