#!/usr/bin/env python3
"""Package coldpath for Lambda: one zip per function and the ONNX Runtime layer.

Builds every function with `cargo lambda build --release` (x86_64, Amazon Linux 2023's glibc),
zips each `bootstrap` on its own (models are fetched from S3 by the shared loader, pinned by
sha256, so none ship in the zip), builds the layer from the ONNX Runtime library setup fetched
into .cache/lib (lib/ lands in /opt/lib), and checks Lambda's size limits: a function zip of at
most 50 MB for direct upload, and function + layers at most 250 MB unzipped.

Writes target/lambda/<function>.zip, target/lambda/layers/onnxruntime.zip and the layer's content
directory target/lambda/layers/onnxruntime/ (infra/template.yaml's ContentUri), and prints a size
table. Exit status: 0 all within limits, 1 a limit exceeded, 2 cargo-lambda or the library missing.

cargo-lambda is an optional tool, not part of the project's requirements:
    .venv/bin/python -m pip install cargo-lambda==1.9.2

Usage: python3 tools/package.py [--skip-build] [--function NAME ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ["embeddings", "faces", "captioning"]
ORT_VERSION = "1.31.1"
ORT_DIR = ROOT / ".cache" / "lib"
# The layer: the library under its versioned name (ORT_DYLIB_PATH in the template), the provider
# bridge ONNX Runtime dlopens beside it, and the licence texts it must ship with.
LAYER_FILES = {
    f"lib/libonnxruntime.so.{ORT_VERSION}": ORT_DIR / f"libonnxruntime.so.{ORT_VERSION}",
    "lib/libonnxruntime_providers_shared.so": ORT_DIR / "libonnxruntime_providers_shared.so",
    "LICENSE": ORT_DIR / "LICENSE",
    "ThirdPartyNotices.txt": ORT_DIR / "ThirdPartyNotices.txt",
}
LAMBDA_DIR = ROOT / "target" / "lambda"
GLIBC_TARGET = "x86_64-unknown-linux-gnu.2.34"
# Lambda's documented quotas, in bytes: deployment package (zipped, direct upload) and
# function + layers unzipped.
MAX_ZIPPED = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024


def cargo_lambda() -> list[str] | None:
    """The cargo-lambda command: on PATH, or in the project's virtual environment."""
    for candidate in (shutil.which("cargo-lambda"), ROOT / ".venv" / "bin" / "cargo-lambda"):
        if candidate and Path(candidate).exists():
            return [str(candidate), "lambda"]
    return None


def build(command: list[str], functions: list[str]) -> bool:
    # --disable-optimizations keeps the workspace's own release profile (panic = "unwind", so the
    # runtime reports a handler panic; strip = "debuginfo") instead of cargo-lambda's defaults.
    # The target pins glibc 2.34, Amazon Linux 2023's, so the binary never needs a newer symbol
    # than provided.al2023 has (cargo-lambda links through zig to make that possible).
    args = command + ["build", "--release", "--target", GLIBC_TARGET, "--disable-optimizations"]
    for f in functions:
        args += ["--bin", f]
    # cargo-lambda finds zig as `python3 -m ziglang`; the ziglang wheel comes with cargo-lambda
    # into the virtual environment, so that environment's python3 must come first on PATH.
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    print("+ " + " ".join(args), file=sys.stderr)
    return subprocess.run(args, cwd=ROOT, env=env).returncode == 0


def zip_files(zip_path: Path, files: dict[str, Path], executable: set[str]) -> None:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, src in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            # Lambda runs `bootstrap` directly: the zip must carry its execute bit.
            info.external_attr = (0o755 if name in executable else 0o644) << 16
            z.writestr(info, src.read_bytes())
    tmp.replace(zip_path)


def unzipped_size(zip_path: Path) -> int:
    with zipfile.ZipFile(zip_path) as z:
        return sum(i.file_size for i in z.infolist())


def layer() -> Path:
    missing = [str(p) for p in LAYER_FILES.values() if not p.exists()]
    if missing:
        print(f"package: missing {', '.join(missing)}; run `make setup` first", file=sys.stderr)
        sys.exit(2)
    content = LAMBDA_DIR / "layers" / "onnxruntime"
    if content.exists():
        shutil.rmtree(content)
    for name, src in LAYER_FILES.items():
        dst = content / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    zip_path = LAMBDA_DIR / "layers" / "onnxruntime.zip"
    zip_files(zip_path, LAYER_FILES, executable=set())
    return zip_path


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:7.2f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-build", action="store_true", help="package the last build")
    parser.add_argument("--function", action="append", choices=FUNCTIONS, help="only these")
    args = parser.parse_args()
    functions = args.function or FUNCTIONS

    command = cargo_lambda()
    if not args.skip_build:
        if command is None:
            print(
                "package: cargo-lambda is not installed. It is optional and not in the project's "
                "requirements; install it with\n"
                "    .venv/bin/python -m pip install cargo-lambda==1.9.2",
                file=sys.stderr,
            )
            return 2
        if not build(command, functions):
            print("package: cargo lambda build failed (see above)", file=sys.stderr)
            return 1

    layer_zip = layer()
    layer_unzipped = unzipped_size(layer_zip)
    failed = False
    print(f"{'artefact':<36} {'zipped':>12} {'unzipped':>12}  {'+ layer':>12}  limits")
    print(f"{'layers/onnxruntime.zip':<36} {mb(layer_zip.stat().st_size)} {mb(layer_unzipped)}")
    for f in functions:
        bootstrap = LAMBDA_DIR / f / "bootstrap"
        if not bootstrap.exists():
            print(f"package: {bootstrap} is missing; build it (drop --skip-build)", file=sys.stderr)
            return 2
        zip_path = LAMBDA_DIR / f"{f}.zip"
        zip_files(zip_path, {"bootstrap": bootstrap}, executable={"bootstrap"})
        zipped = zip_path.stat().st_size
        total = unzipped_size(zip_path) + layer_unzipped
        ok = zipped <= MAX_ZIPPED and total <= MAX_UNZIPPED
        failed |= not ok
        verdict = "ok" if ok else "OVER (50 MB zipped / 250 MB unzipped with layers)"
        print(f"{f + '.zip':<36} {mb(zipped)} {mb(unzipped_size(zip_path))}  {mb(total)}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
