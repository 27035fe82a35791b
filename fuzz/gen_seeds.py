"""Writes the generated image seeds of fuzz/corpus/image_decode/ (tiny JPEG, PNG, WebP).

Deterministic; run from the repository root with the setup's Python (`.venv/bin/python
fuzz/gen_seeds.py`, OpenCV comes with the benchmark tools). Besides plain images in each
format it writes the variants the decoder treats differently: grey, alpha, 16-bit, progressive
JPEG, lossless WebP, EXIF orientations (JPEG APP1, PNG eXIf), and a truncated JPEG.
"""

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

OUT = Path("fuzz/corpus/image_decode")


def exif(orientation: int) -> bytes:
    """A little-endian TIFF block with one IFD entry: Orientation."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def jpeg_with_exif(jpeg: bytes, orientation: int) -> bytes:
    payload = b"Exif\x00\x00" + exif(orientation)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def png_with_exif(png: bytes, orientation: int) -> bytes:
    data = exif(orientation)
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + data) & 0xFFFFFFFF)
    ihdr_end = 8 + 25  # signature + IHDR chunk
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def png_with_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with an IHDR that claims another size (a decompression-bomb header)."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF) + png[33:]


def encode(ext: str, image: np.ndarray, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    rgba = rng.integers(0, 256, (4, 3, 4), dtype=np.uint8)
    rgb16 = rng.integers(0, 65536, (3, 5, 3), dtype=np.uint16)
    jpeg = encode(".jpg", rgb, (cv2.IMWRITE_JPEG_QUALITY, 50))
    png = encode(".png", rgb)
    seeds = {
        "tiny.jpg": jpeg,
        "tiny-grey.jpg": encode(".jpg", grey, (cv2.IMWRITE_JPEG_QUALITY, 50)),
        "tiny-progressive.jpg": encode(".jpg", rgb, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        "tiny-exif6.jpg": jpeg_with_exif(jpeg, 6),
        "tiny-truncated.jpg": jpeg[: len(jpeg) * 2 // 3],
        "tiny.png": png,
        "tiny-grey.png": encode(".png", grey),
        "tiny-rgba.png": encode(".png", rgba),
        "tiny-16bit.png": encode(".png", rgb16),
        "tiny-exif8.png": png_with_exif(png, 8),
        "tiny.webp": encode(".webp", rgb, (cv2.IMWRITE_WEBP_QUALITY, 50)),
        "tiny-lossless.webp": encode(".webp", rgba, (cv2.IMWRITE_WEBP_QUALITY, 101)),
        "huge-header.png": png_with_size(png, 100_000, 100_000),
    }
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
