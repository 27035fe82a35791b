#!/usr/bin/env python3
"""The Python registry decoders on one photo, for benches/formats.rs: Pillow (libjpeg-turbo) for
JPEG, pillow-heif (libheif 1.23.6 with libde265) for HEIC, Pillow (libavif with dav1d) for AVIF;
each to RGB, as the Rust side decodes to RGB8. Prints one JSON line: the median of the decodes
after the first, the first, and this process's peak resident set (VmHWM).

    .venv/bin/python shared/image/benches/formats_peer.py PHOTO DECODES
"""

import io
import json
import statistics
import sys
import time

import pillow_heif
from PIL import Image, features


def peak_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    path, decodes = sys.argv[1], int(sys.argv[2])
    data = open(path, "rb").read()
    before = peak_mib()
    if path.endswith(".heic"):
        pillow_heif.register_heif_opener()
        decoder = f"pillow-heif {pillow_heif.__version__} (libheif {pillow_heif.libheif_version()})"
    elif path.endswith(".avif"):
        decoder = f"Pillow {Image.__version__} (libavif {features.version('avif')})"
    else:
        decoder = f"Pillow {Image.__version__} (libjpeg-turbo {features.version('libjpeg_turbo')})"
    times = []
    size = None
    for _ in range(decodes):
        t = time.perf_counter()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        img.load()
        times.append((time.perf_counter() - t) * 1e3)
        size = img.size
        del img
    print(json.dumps({
        "first_ms": times[0],
        "ms": statistics.median_high(times[1:]),
        "peak_mib": peak_mib(),
        "before_mib": before,
        "size": list(size),
        "decoder": decoder,
    }))


if __name__ == "__main__":
    main()
