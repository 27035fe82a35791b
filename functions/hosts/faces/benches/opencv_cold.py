#!/usr/bin/env python3
"""OpenCV cold-start equivalent of `faces invoke <event>`: process start to first result.

    eval "$(python3 tools/setup/bootstrap.py env)"
    .venv/bin/python functions/hosts/faces/benches/opencv_cold.py [PHOTO] [--threads N] \
        [--mode native|letterbox640]

One process does what a cold function instance does for its first photo: import cv2 and numpy,
load YuNet and SFace (FACES_DETECTOR_SOURCE / FACES_RECOGNIZER_SOURCE, as `tools/setup/bootstrap.py env`
sets them), read and decode the photo (EXIF applied), detect, align and embed every face, print
the response the Rust function gives (faces/src/request.rs `response`: width, height, faces with
box {x, y, width, height}, score, five landmarks, L2-normalised embedding, and the model names),
exit. tools/cold_start.py times it against the Rust binary:

    python3 tools/cold_start.py \
        --rust "target/release/faces invoke events/faces/direct-path.json" \
        --python ".venv/bin/python functions/hosts/faces/benches/opencv_cold.py events/data/photos/group.jpg"

Threads default to COLDPATH_INTRA_THREADS (unset or `auto`: the CPUs this process may use),
as the Rust function reads it. Thresholds: FACES_MIN_SCORE (0.9) and FACES_NMS_IOU (0.3).
"""

import argparse
import json
import os
import sys
from pathlib import Path

# Imported at the top, not lazily: importing cv2 is part of the cold start being measured.
import cv2
import numpy as np

from opencv_ref import LETTERBOX, TOP_K, letterbox, model_file

REPO = Path(__file__).resolve().parents[4]
DEFAULT_PHOTO = REPO / "events" / "data" / "photos" / "group.jpg"


def threads_from_env() -> int:
    value = os.environ.get("COLDPATH_INTRA_THREADS", "auto")
    return len(os.sched_getaffinity(0)) if value.lower() == "auto" else int(value)


def short(x) -> float:
    """f32 printed shortest, as the Rust response does."""
    return float(str(np.float32(x)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", nargs="?", default=str(DEFAULT_PHOTO))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mode", choices=["native", "letterbox640"], default="native")
    args = ap.parse_args()
    cv2.setNumThreads(args.threads if args.threads is not None else threads_from_env())

    detector = model_file(None, "FACES_DETECTOR_SOURCE", REPO / ".cache/models/yunet-2023mar-int8bq")
    recognizer = model_file(None, "FACES_RECOGNIZER_SOURCE", REPO / ".cache/models/sface-2021dec-int8bq")
    min_score = float(os.environ.get("FACES_MIN_SCORE", "0.9"))
    nms = float(os.environ.get("FACES_NMS_IOU", "0.3"))
    det = cv2.FaceDetectorYN.create(str(detector), "", (LETTERBOX, LETTERBOX), min_score, nms, TOP_K)
    rec = cv2.FaceRecognizerSF.create(str(recognizer), "")

    img = cv2.imdecode(np.fromfile(args.photo, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        print(json.dumps({"errorType": "InvalidInput", "errorMessage": f"{args.photo}: not an image"}))
        return 1
    h, w = img.shape[:2]
    if args.mode == "letterbox640":
        boxed, s = letterbox(img)
        det.setInputSize((LETTERBOX, LETTERBOX))
        _, faces = det.detect(boxed)
        if faces is not None:
            faces[:, :14] /= s
    else:
        det.setInputSize((w, h))
        _, faces = det.detect(img)
    out = []
    for row in (faces if faces is not None else []):
        feature = rec.feature(rec.alignCrop(img, row)).reshape(-1)
        feature = feature / np.linalg.norm(feature)
        out.append({
            "box": {"x": short(row[0]), "y": short(row[1]), "width": short(row[2]), "height": short(row[3])},
            "score": short(row[14]),
            "landmarks": [[short(row[4 + 2 * i]), short(row[5 + 2 * i])] for i in range(5)],
            "embedding": [short(v) for v in feature],
        })
    print(json.dumps({"width": w, "height": h, "faces": out,
                      "models": {"detector": detector.parent.name, "recognizer": recognizer.parent.name}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
