"""Writes the generated image seeds of fuzz/corpus/image_decode/ (tiny JPEG, PNG, WebP, HEIC, AVIF).

Deterministic; run from the repository root with the setup's Python (`.venv/bin/python
fuzz/gen_seeds.py`, OpenCV comes with the benchmark tools). Besides plain images in each
format it writes the variants the decoder treats differently: grey, alpha, 16-bit, progressive
JPEG, lossless WebP, EXIF orientations (JPEG APP1, PNG eXIf), and a truncated JPEG; HEIC
(pillow-heif, x265) and AVIF (OpenCV's libavif, 8- and 10-bit), one turned by `irot`, and a HEIC
whose `ispe` claims 100000 x 100000.
"""

import struct
import zlib
from pathlib import Path

import io

import cv2
import numpy as np
import pillow_heif

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


def heic(rgb: np.ndarray) -> bytes:
    h, w = rgb.shape[:2]
    buf = io.BytesIO()
    pillow_heif.from_bytes("RGB", (w, h), rgb.tobytes()).save(buf, quality=50)
    return buf.getvalue()


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """The same HEIF file with its (first) ispe claiming another size."""
    at = data.index(b"ispe") + 8  # type, then version and flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def with_irot(data: bytes, angle: int) -> bytes:
    """The same HEIF file with its pixi property (which the primary item has, in these one-item
    files) replaced in place by an irot of the same size: a turn without rebuilding the boxes."""
    at = data.index(b"pixi") - 4
    size = struct.unpack(">I", data[at : at + 4])[0]
    irot = struct.pack(">I", size) + b"irot" + bytes([angle]) + bytes(size - 9)
    return data[:at] + irot + data[at + size :]


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
    # HEVC and AV1 work in 8-pixel blocks: a 16 x 24 photo is the smallest that is not all edge.
    photo = np.ascontiguousarray(np.repeat(np.repeat(rgb, 3, axis=0), 3, axis=1)[:16, :24])
    tiny_heic = heic(photo)
    tiny_avif = encode(".avif", photo[:, :, ::-1], (cv2.IMWRITE_AVIF_QUALITY, 50))
    seeds.update({
        "tiny.heic": tiny_heic,
        "tiny-irot.heic": with_irot(tiny_heic, 1),
        "huge-ispe.heic": with_ispe(tiny_heic, 100_000, 100_000),
        "tiny.avif": tiny_avif,
        # 10-bit samples (0..1020) in 16-bit input, as OpenCV's AVIF writer takes them.
        "tiny-10bit.avif": encode(".avif", photo[:, :, ::-1].astype(np.uint16) * 4,
                                  (cv2.IMWRITE_AVIF_QUALITY, 50, cv2.IMWRITE_AVIF_DEPTH, 10)),
        "tiny-truncated.avif": tiny_avif[: len(tiny_avif) * 3 // 4],
    })
    for name, data in seeds.items():
        (OUT / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
