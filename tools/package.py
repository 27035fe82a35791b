#!/usr/bin/env python3
"""Package coldpath for Lambda: one zip per function, the ONNX Runtime layer and the image-codecs
layer.

Builds every function with `cargo lambda build --release` (x86_64, Amazon Linux 2023's glibc),
builds the layers from the libraries setup fetched into .cache/lib (lib/ lands in /opt/lib):
`onnxruntime` (every function) and `image-codecs` (the HEIC and AVIF decoders coldpath-image
loads at run time: faces, clip and captioning, the functions that decode photos), and checks Lambda's
size limit: function + its layers at most 250 MB unzipped. A zip over
50 MB (the embeddings zip, with its 90 MB of prepared float weights) cannot be uploaded directly
with the CreateFunction/UpdateFunctionCode call; it must go through S3, which is what `sam
deploy` does with every artefact, so that is reported, not failed.

The embeddings and faces zips carry their models and the optimised graphs prepared from them, so
a fresh sandbox (empty /tmp) neither downloads a model nor runs ONNX Runtime's graph
optimisation:

    bootstrap
    models/embeddings/{model.onnx,tokenizer.json}          (embeddings)
    models/faces-detector/model.onnx                        (faces)
    models/faces-recognizer/model.onnx                      (faces)
    graphs/<model>-<key>.onnx, graphs/<model>-<key>.<n>.data

The models are the files `make setup` put in .cache/models, checked against the sha256 setup
pins. The graphs are written by the built binary itself (`bootstrap prepare graphs/`, the code
path a cold start loads them with) under the environment the template gives the function
(TEMPLATE_ENV below), and the staged package is then cold-started once from a read-only view
with an empty writable cache, which must stay empty (every graph found). The template points the
function at them: <PREFIX>_SOURCE=/var/task/models/<dir>, COLDPATH_PREPARED_MODEL_DIR=
/var/task/graphs. captioning's ~1 GB model does not fit; it keeps fetching it from S3 and ships
only `bootstrap`, as does clip (CLIP's vision tower, 353 MB, fetched from the model bucket with
the text tower's host, embeddings, pinned by the same CLIP_MODEL_SHA256).

The staged cold start of faces also loads the HEIC and AVIF decoders from the image-codecs
layer's content directory (COLDPATH_LIBHEIF_PATH, COLDPATH_LIBAVIF_PATH), as the template points
the function at /opt/lib; a decoder it logs as not available (say, a libheif that cannot find its
libde265) fails the packaging.

Writes target/lambda/<function>.zip (staged in target/lambda/<function>/package/),
target/lambda/layers/<layer>.zip and each layer's content directory
target/lambda/layers/<layer>/ (infra/template.yaml's ContentUri), and prints a size table.
Exit status: 0 all within limits, 1 a limit exceeded or a check failed, 2 cargo-lambda, the
library or a model missing.

cargo-lambda (with zig, as the ziglang wheel) is in the deploy toolchain's venv, .venv-deploy,
which `make setup-deploy` installs from the hash-locked tools/setup/requirements-deploy.txt; `make package`
runs that first.

Usage: python3 tools/package.py [--skip-build] [--function NAME ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ["embeddings", "faces", "clip", "captioning"]
ORT_VERSION = "1.31.1"
LIB_DIR = ROOT / ".cache" / "lib"
# The layers: name -> (name in the zip -> the file setup put in .cache/lib).
LAYERS = {
    # ONNX Runtime under its versioned name (ORT_DYLIB_PATH in the template), the provider bridge
    # it dlopens beside it, and the licence texts it must ship with.
    "onnxruntime": {
        f"lib/libonnxruntime.so.{ORT_VERSION}": LIB_DIR / f"libonnxruntime.so.{ORT_VERSION}",
        "lib/libonnxruntime_providers_shared.so": LIB_DIR / "libonnxruntime_providers_shared.so",
        "LICENSE": LIB_DIR / "LICENSE",
        "ThirdPartyNotices.txt": LIB_DIR / "ThirdPartyNotices.txt",
    },
    # The HEIC and AVIF decoders coldpath-image dlopens (COLDPATH_LIBHEIF_PATH and
    # COLDPATH_LIBAVIF_PATH in the template) and their licence texts: libheif 1.23.0 and libde265
    # from the pi-heif 1.4.0 wheel (LGPL-3.0: separate shared libraries loaded at run time, which a
    # user can replace), libavif 1.4.2 with dav1d from the pillow 13.0.0 wheel (BSD-2-Clause).
    # libde265 keeps the hashed name libheif's DT_NEEDED asks for; libheif has no RPATH, and
    # coldpath-image loads the libde265 beside it first.
    "image-codecs": {
        "lib/libheif.so.1": LIB_DIR / "libheif.so.1",
        "lib/libde265-90fb0ce1.so.0.2.0": LIB_DIR / "libde265-90fb0ce1.so.0.2.0",
        "lib/libavif.so.16": LIB_DIR / "libavif.so.16",
        "LICENSES-libheif-libde265.txt": LIB_DIR / "LICENSES-libheif-libde265.txt",
        "LICENSES-libavif.txt": LIB_DIR / "LICENSES-libavif.txt",
        "LGPL-3.0.txt": LIB_DIR / "LGPL-3.0.txt",
        "GPL-3.0.txt": LIB_DIR / "GPL-3.0.txt",
        # What each file is, its version, licence and source, and how to replace it.
        "NOTICE.txt": ROOT / "infra" / "image-codecs" / "NOTICE.txt",
    },
}
# The layers each function runs with (infra/template.yaml: Globals' onnxruntime layer and the
# function's own, which SAM appends); the 250 MB limit counts the zip and all of them.
FUNCTION_LAYERS = {
    "embeddings": ["onnxruntime"],
    "faces": ["onnxruntime", "image-codecs"],
    # The photo's CLIP vector decodes uploads as faces does; its model (the vision tower, 353 MB)
    # is fetched from the model bucket at init, never in the zip.
    "clip": ["onnxruntime", "image-codecs"],
    "captioning": ["onnxruntime", "image-codecs"],
}
# The variables that point a function at a layer's library, and the file each names in the layer:
# the template sets them to /opt/<file>, the staged cold start to the layer's content directory.
LAYER_ENV = {
    "image-codecs": {
        "COLDPATH_LIBHEIF_PATH": "lib/libheif.so.1",
        "COLDPATH_LIBAVIF_PATH": "lib/libavif.so.16",
    },
}
LAMBDA_DIR = ROOT / "target" / "lambda"
# The models each zip carries: directory in the zip -> (the spec's env prefix, its files). The
# local copies and their pinned digests come from `tools/setup/bootstrap.py env` (<PREFIX>_SOURCE, _SHA256).
BUNDLED_MODELS = {
    "embeddings": {"embeddings": ("EMBEDDINGS_MODEL", ["model.onnx", "tokenizer.json"])},
    "faces": {
        "faces-detector": ("FACES_DETECTOR", ["model.onnx"]),
        "faces-recognizer": ("FACES_RECOGNIZER", ["model.onnx"]),
    },
}
# What infra/template.yaml sets for the function that shapes its optimised graphs. A graph is
# keyed by the model's sha256, the ONNX Runtime build, the optimisation level and QDQ fusion, so
# the prepare step must run with the same values: set here any of COLDPATH_GRAPH_OPT,
# COLDPATH_QDQ_FUSION or FACES_MODEL_FAMILY the template sets. A mismatch is safe (the cold start
# logs "no prepared graph" and optimises as before) but slow.
TEMPLATE_ENV = {
    "embeddings": {},
    "faces": {"FACES_MODEL_FAMILY": "yunet-sface"},
}
# A sample event per function for the staged package's own cold start.
CHECK_EVENTS = {
    "embeddings": ROOT / "events" / "embeddings" / "direct.json",
    "faces": ROOT / "events" / "faces" / "direct.json",
}
# What coldpath-image logs at init for a decoder library it could not load.
CODEC_UNAVAILABLE = "image decoder not available"
GLIBC_TARGET = "x86_64-unknown-linux-gnu.2.34"
# Lambda's documented quotas, in bytes: deployment package (zipped, direct upload; through S3 only
# the unzipped quota applies) and function + layers unzipped.
MAX_ZIPPED = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024


def cargo_lambda() -> list[str] | None:
    """The cargo-lambda command: from the deploy venv (make setup-deploy), else on PATH."""
    for candidate in (
        ROOT / ".venv-deploy" / "bin" / "cargo-lambda",
        shutil.which("cargo-lambda"),
        ROOT / ".venv" / "bin" / "cargo-lambda",
    ):
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
    # into its virtual environment, so that environment's python3 must come first on PATH.
    env = dict(os.environ)
    env["PATH"] = f"{Path(command[0]).parent}{os.pathsep}{env.get('PATH', '')}"
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


def layer_content(name: str) -> Path:
    """The layer's content directory (what lands in /opt)."""
    return LAMBDA_DIR / "layers" / name


def layer(name: str) -> Path:
    files = LAYERS[name]
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        print(f"package: missing {', '.join(missing)}; run `make setup` first", file=sys.stderr)
        sys.exit(2)
    content = layer_content(name)
    if content.exists():
        shutil.rmtree(content)
    for zip_name, src in files.items():
        dst = content / zip_name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    zip_path = LAMBDA_DIR / "layers" / f"{name}.zip"
    zip_files(zip_path, files, executable=set())
    return zip_path


def setup_env() -> dict[str, str]:
    """The variables `tools/setup/bootstrap.py env` prints (model paths and digests, the ORT library)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/setup/bootstrap.py"), "env"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, value = words[1].split("=", 1)
            env[key] = value
    return env


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PackageError(Exception):
    """A check failed; the message says which and what was found."""


def bundled_models(function: str, setup: dict[str, str]) -> dict[str, Path]:
    """zip name -> local file of every model file the function's zip carries, each checked
    against the digest setup pins (a model that is not the pinned one never ships)."""
    files = {}
    for dirname, (prefix, names) in BUNDLED_MODELS.get(function, {}).items():
        source = setup.get(f"{prefix}_SOURCE")
        if not source or not Path(source).is_dir():
            raise FileNotFoundError(f"{prefix}_SOURCE ({source}); run `make setup` first")
        pins = dict(
            entry.strip().split("=", 1)
            for entry in setup.get(f"{prefix}_SHA256", "").split(",")
            if "=" in entry
        )
        for name in names:
            path = Path(source) / name
            if name not in pins:
                raise PackageError(f"{prefix}_SHA256 pins no digest for {name}")
            found = sha256_of(path)
            if found != pins[name]:
                raise PackageError(f"{path}: sha256 {found}, setup pins {pins[name]}")
            files[f"models/{dirname}/{name}"] = path
    return files


def function_env(function: str, setup: dict[str, str], package: Path) -> dict[str, str]:
    """The environment of the function in its sandbox, with /var/task at `package`: the
    template's graph-shaping settings, the bundled model directories and their digests."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["ORT_DYLIB_PATH"] = setup["ORT_DYLIB_PATH"]
    for name in FUNCTION_LAYERS[function]:
        for var, file in LAYER_ENV.get(name, {}).items():
            env[var] = str(layer_content(name) / file)
    env.update(TEMPLATE_ENV.get(function, {}))
    for dirname, (prefix, _) in BUNDLED_MODELS.get(function, {}).items():
        env[f"{prefix}_SOURCE"] = str(package / "models" / dirname)
        env[f"{prefix}_SHA256"] = setup[f"{prefix}_SHA256"]
    return env


def stage(function: str, setup: dict[str, str]) -> dict[str, Path]:
    """Stages the function's package (bootstrap, models, prepared graphs) and returns the zip's
    name -> file map. Raises PackageError when preparing or the staged cold start fails."""
    bootstrap = LAMBDA_DIR / function / "bootstrap"
    package = LAMBDA_DIR / function / "package"
    if package.exists():
        shutil.rmtree(package)
    files = {"bootstrap": bootstrap}
    models = bundled_models(function, setup)
    if not models:
        return files
    for name, src in models.items():
        dst = package / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    files.update(models)
    env = function_env(function, setup, package)
    graphs = package / "graphs"
    run = subprocess.run(
        [str(bootstrap), "prepare", str(graphs)], cwd=ROOT, env=env,
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        raise PackageError(f"{function}: `bootstrap prepare` exited {run.returncode}:\n{run.stderr[-4000:]}")
    listing = json.loads(run.stdout)
    for name in listing["files"]:
        files[f"graphs/{name}"] = graphs / name
    # The staged package's own cold start, as a fresh sandbox: prepared graphs, an empty
    # writable cache. A graph the cold start does not find would be optimised and cached there.
    with tempfile.TemporaryDirectory(prefix="coldpath-tmp-") as tmp:
        env["COLDPATH_PREPARED_MODEL_DIR"] = str(graphs)
        env["COLDPATH_OPTIMIZED_MODEL_DIR"] = str(Path(tmp) / "graphs")
        check = subprocess.run(
            [str(bootstrap), "invoke", str(CHECK_EVENTS[function])], cwd=ROOT, env=env,
            capture_output=True, text=True,
        )
        if check.returncode != 0:
            raise PackageError(f"{function}: the staged package's invoke failed:\n{check.stdout}{check.stderr[-4000:]}")
        # A decoder that does not load is only a warning at init (that format alone is refused),
        # so the layer's libraries are held to loading here.
        unloaded = [line for line in check.stderr.splitlines() if CODEC_UNAVAILABLE in line]
        if unloaded:
            raise PackageError(
                f"{function}: the staged cold start could not load a decoder from the image-codecs layer:\n"
                + "\n".join(unloaded)
            )
        cached = list((Path(tmp) / "graphs").glob("*")) if (Path(tmp) / "graphs").exists() else []
        if cached:
            raise PackageError(
                f"{function}: the staged cold start optimised {[p.name for p in cached]} instead "
                "of loading a prepared graph (do TEMPLATE_ENV and the template agree?)"
            )
    return files


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

    layers_unzipped = {}
    print(f"{'artefact':<36} {'zipped':>12} {'unzipped':>12}  {'+ layers':>12}  limits")
    for name in LAYERS:
        layer_zip = layer(name)
        layers_unzipped[name] = unzipped_size(layer_zip)
        print(f"{'layers/' + name + '.zip':<36} {mb(layer_zip.stat().st_size)} {mb(layers_unzipped[name])}")
    setup = setup_env()
    failed = False
    for f in functions:
        bootstrap = LAMBDA_DIR / f / "bootstrap"
        if not bootstrap.exists():
            print(f"package: {bootstrap} is missing; build it (drop --skip-build)", file=sys.stderr)
            return 2
        try:
            files = stage(f, setup)
        except FileNotFoundError as err:
            print(f"package: {f}: missing {err}", file=sys.stderr)
            return 2
        except PackageError as err:
            print(f"package: {err}", file=sys.stderr)
            return 1
        zip_path = LAMBDA_DIR / f"{f}.zip"
        zip_files(zip_path, files, executable={"bootstrap"})
        zipped = zip_path.stat().st_size
        total = unzipped_size(zip_path) + sum(layers_unzipped[n] for n in FUNCTION_LAYERS[f])
        ok = total <= MAX_UNZIPPED
        failed |= not ok
        verdict = "ok" if ok else "OVER (250 MB unzipped with layers)"
        if ok and zipped > MAX_ZIPPED:
            verdict = "ok (over 50 MB zipped: deploy through S3, as sam deploy does)"
        print(f"{f + '.zip':<36} {mb(zipped)} {mb(unzipped_size(zip_path))}  {mb(total)}  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
